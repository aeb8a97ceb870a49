"""A local single-node Apache Kafka 4.x broker (KRaft, combined broker/controller).

The broker's jars come from an Apache Kafka distribution (``KAFKA_HOME``) or are
resolved once from Maven Central through ``deploy/kafka/pom.xml`` into a user
cache directory. The broker runs as a detached subprocess bound to localhost;
its pid, ports and data directory are recorded in ``<state_dir>/broker.json`` so
that later commands (``streamrec kafka status|stop|logs``, ``topics``, ``produce``)
find it. ``start`` is idempotent and ``stop`` is clean (SIGTERM, then SIGKILL
after a grace period). Data survives a stop/start; ``reset=True`` wipes it.

Given a :class:`~streams.broker_security.BrokerSecurity`, the client listener
speaks TLS, or SASL_SSL with SCRAM-SHA-512 users (``streams/broker_security.py``).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

from streams.broker_security import BrokerSecurity, write_private
from streams.errors import BrokerUnavailable, KafkaSetupError

__all__ = ["BrokerState", "LocalBroker", "free_port", "wait_for_metadata"]

logger = logging.getLogger(__name__)

_MIN_JAVA = 17
_MAIN_CLASS = "kafka.Kafka"
_FORMAT_CLASS = "kafka.tools.StorageTool"


@dataclass(frozen=True, slots=True)
class BrokerState:
    """What ``start`` records about a running broker."""

    pid: int
    host: str
    port: int
    controller_port: int
    data_dir: str
    log_dir: str
    kafka_version: str
    started_at: float
    security_protocol: str = "PLAINTEXT"

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_metadata(
    bootstrap_servers: str,
    timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
    client_kwargs: dict[str, Any] | None = None,
) -> None:
    """Block until a broker at ``bootstrap_servers`` answers a metadata request.

    ``client_kwargs`` are kafka-python security arguments for a TLS or SASL listener.
    """
    from kafka import KafkaAdminClient  # local import: the launcher itself needs only the JVM
    from kafka.errors import KafkaConfigurationError

    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise BrokerUnavailable("the broker process exited during start-up")
        if not _any_port_open(bootstrap_servers):  # avoid the client's connection-refused log noise
            time.sleep(0.3)
            continue
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap_servers,
                request_timeout_ms=5000,
                bootstrap_timeout_ms=5000,
                client_id="streamrec-healthcheck",
                **(client_kwargs or {}),
            )
            try:
                admin.describe_cluster()
                return
            finally:
                admin.close()
        except KafkaConfigurationError:
            raise
        except Exception as exc:  # any other client error means "not ready yet"
            last_error = exc
            time.sleep(0.5)
    raise BrokerUnavailable(f"no broker answered at {bootstrap_servers} within {timeout_s:.0f} s: {last_error}")


class LocalBroker:
    """Start, inspect and stop the local broker recorded under ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        cache_dir: Path,
        *,
        kafka_version: str = "4.2.0",
        kafka_home: Path | None = None,
        host: str = "localhost",
        port: int = 0,
        controller_port: int = 0,
        heap: str = "512m",
        start_timeout_s: float = 90.0,
        pom_path: Path | None = None,
        security: BrokerSecurity | None = None,
    ):
        self.state_dir = Path(state_dir)
        self.cache_dir = Path(cache_dir)
        self.kafka_version = kafka_version
        self.kafka_home = Path(kafka_home) if kafka_home else None
        self.host = host
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.start_timeout_s = start_timeout_s
        self.pom_path = pom_path
        self.security = security
        self._process: subprocess.Popen | None = None

    # ------------------------------------------------------------ paths

    @property
    def state_file(self) -> Path:
        return self.state_dir / "broker.json"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def keystore_file(self) -> Path:
        return self.state_dir / "tls" / "keystore.pem"

    @property
    def security_protocol(self) -> str:
        """The client listener's protocol: PLAINTEXT, SSL or SASL_SSL."""
        return self.security.protocol if self.security else "PLAINTEXT"

    def _health_kwargs(self) -> dict[str, Any]:
        if self.security is None:
            return {}
        return self.security.client_kwargs(self.security.broker_password(self.state_dir))

    # ------------------------------------------------------------ jars

    def classpath(self, progress: Callable[[str], None] = logger.info) -> str:
        """The broker's class path, resolving jars from Maven Central on first use."""
        if self.kafka_home:
            libs = self.kafka_home / "libs"
            if not any(libs.glob("kafka_2.13-*.jar")):
                raise KafkaSetupError(
                    f"KAFKA_HOME={self.kafka_home} has no libs/kafka_2.13-*.jar: point it at an "
                    "unpacked Apache Kafka distribution, or unset it to fetch the jars from Maven Central"
                )
            return f"{libs}/*"
        libs = self.cache_dir / f"kafka-{self.kafka_version}" / "libs"
        if (libs / ".complete").exists():
            return f"{libs}/*"
        with _file_lock(self.cache_dir / f"kafka-{self.kafka_version}.lock"):
            if not (libs / ".complete").exists():
                self._resolve_jars(libs, progress)
        return f"{libs}/*"

    def _resolve_jars(self, libs: Path, progress: Callable[[str], None]) -> None:
        mvn = shutil.which("mvn")
        if not mvn:
            raise KafkaSetupError(
                "Maven (mvn) is needed once to fetch the Kafka broker jars: install it "
                "(Debian/Ubuntu: apt-get install maven), or set KAFKA_HOME to an Apache Kafka "
                "distribution, or STREAMREC_BOOTSTRAP_SERVERS to an existing cluster"
            )
        pom = self.pom_path or Path(str(resources.files("deploy").joinpath("kafka/pom.xml")))
        tmp = libs.with_name(f"libs.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        progress(f"fetching Apache Kafka {self.kafka_version} jars from Maven Central into {libs.parent} (once)")
        cmd = [
            mvn, "-q", "-B", "-f", str(pom), f"-Dkafka.version={self.kafka_version}",
            "dependency:copy-dependencies", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
            raise KafkaSetupError(
                f"could not fetch Apache Kafka {self.kafka_version} from Maven Central (mvn exit "
                f"{result.returncode}). Check network access to the Maven registry, or set KAFKA_HOME.\n"
                + "\n".join(tail)
            )
        (tmp / ".complete").write_text(self.kafka_version)
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)

    # ------------------------------------------------------------ state

    def status(self) -> BrokerState | None:
        """The recorded broker if its process is alive, else None (a stale record is removed)."""
        try:
            state = BrokerState(**json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None
        if self._alive(state.pid):
            return state
        self.state_file.unlink(missing_ok=True)
        return None

    def _alive(self, pid: int) -> bool:
        if self._process is not None and self._process.pid == pid:
            return self._process.poll() is None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return _pid_exists(pid)  # no /proc (macOS): best effort
        zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
        return not zombie and _MAIN_CLASS.encode() in cmdline and str(self.state_dir).encode() in cmdline

    # ------------------------------------------------------------ lifecycle

    def start(self, *, reset: bool = False, progress: Callable[[str], None] = logger.info) -> tuple[BrokerState, bool]:
        """Start the broker unless one is recorded and alive. Returns (state, started_now)."""
        with _file_lock(self.state_dir / "broker.lock"):
            running = self.status()
            if running is not None:
                wait_for_metadata(running.bootstrap_servers, self.start_timeout_s, client_kwargs=self._health_kwargs())
                return running, False
            if self.security is not None:
                self.security.validate()
                self.security.write_keystore(self.keystore_file)
            java = _find_java()
            classpath = self.classpath(progress)
            if reset:
                shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            port = self.port or free_port()
            controller_port = self.controller_port or free_port()
            props = self.state_dir / "server.properties"
            write_private(props, self._server_properties(port, controller_port))  # may hold the broker's password
            if not (self.data_dir / "meta.properties").exists():
                self._format(java, classpath, props)
            log4j = Path(str(resources.files("deploy").joinpath("kafka/log4j2.properties")))
            cmd = [
                java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={self.log_dir}",
                f"-Dstreamrec.state.dir={self.state_dir}", "-cp", classpath, _MAIN_CLASS, str(props),
            ]  # fmt: skip
            console = open(self.log_dir / "console.log", "ab")
            progress(f"starting Kafka broker on {self.host}:{port} ({self.security_protocol})")
            self._process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True
            )
            console.close()
            state = BrokerState(
                pid=self._process.pid,
                host=self.host,
                port=port,
                controller_port=controller_port,
                data_dir=str(self.data_dir),
                log_dir=str(self.log_dir),
                kafka_version=self._version_label(),
                started_at=time.time(),
                security_protocol=self.security_protocol,
            )
            try:
                wait_for_metadata(state.bootstrap_servers, self.start_timeout_s, lambda: self._alive(state.pid),
                                  self._health_kwargs())  # fmt: skip
            except BrokerUnavailable as exc:
                self._terminate(state.pid, 10.0)
                raise BrokerUnavailable(f"{exc}\nlast broker log lines:\n{self.tail_log(20)}") from None
            _atomic_write(self.state_file, json.dumps(asdict(state), indent=2))
            return state, True

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the recorded broker. Returns False if none was running."""
        state = self.status()
        if state is None:
            return False
        self._terminate(state.pid, timeout_s)
        self.state_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the broker (fault injection); its record stays so ``start`` can restart it on the same port."""
        state = self.status()
        if state is not None:
            os.kill(state.pid, signal.SIGKILL)
            self._wait_gone(state.pid, 10.0)

    def tail_log(self, lines: int = 50) -> str:
        out: list[str] = []
        for path in (self.log_dir / "console.log", self.log_file):
            if path.exists():
                out.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out[-lines:])

    # ------------------------------------------------------------ internals

    def _version_label(self) -> str:
        if not self.kafka_home:
            return self.kafka_version
        jars = sorted((self.kafka_home / "libs").glob("kafka_2.13-*.jar"))
        match = re.search(r"kafka_2\.13-([\w.\-]+)\.jar$", jars[0].name) if jars else None
        return match.group(1) if match else "unknown"

    def _terminate(self, pid: int, timeout_s: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout_s):
            logger.warning("broker pid %d did not stop within %.0f s; killing it", pid, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10.0)

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._alive(pid):
                if self._process is not None and self._process.pid == pid:
                    self._process.wait()
                return True
            time.sleep(0.1)
        return False

    def _format(self, java: str, classpath: str, props: Path) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # "--cluster-id=<id>", not "-t <id>": a urlsafe-base64 id may start with "-", which
        # argparse would take for an option (about 1 start in 64 failed that way).
        cmd = [java, "-Xmx256m", "-cp", classpath, _FORMAT_CLASS, "format", f"--cluster-id={cluster_id}", "-c",
               str(props)]  # fmt: skip
        hidden: list[str] = []
        if self.security is not None:  # SCRAM users exist from the first metadata record on
            password = self.security.broker_password(self.state_dir)
            cmd += self.security.format_args(password)
            hidden = self.security.passwords(password)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            output = result.stdout + result.stderr
            for secret in hidden:
                output = output.replace(secret, "***")
            raise KafkaSetupError(f"formatting KRaft storage in {self.data_dir} failed:\n{output}")

    def _server_properties(self, port: int, controller_port: int) -> str:
        host = self.host
        listener = self.security_protocol  # one client listener, named after its protocol, also inter-broker
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{controller_port}",
            "listeners": f"{listener}://{host}:{port},CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"{listener}://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": listener,
            "listener.security.protocol.map": f"{listener}:{listener},CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.network.threads": "2",
            "num.io.threads": "4",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.cleaner.backoff.ms": "5000",
        }
        if self.security is not None:
            lines |= self.security.server_properties(self.keystore_file, self.security.broker_password(self.state_dir))
        return "# written by streamrec kafka start\n" + "".join(f"{k}={v}\n" for k, v in lines.items())


def _find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else shutil.which("java")
    if not java:
        raise KafkaSetupError(
            f"Java {_MIN_JAVA}+ is needed to run the local Kafka broker: install a JDK or JRE "
            "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set JAVA_HOME, "
            "or set STREAMREC_BOOTSTRAP_SERVERS to use an existing Kafka cluster"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match:
        major = int(match.group(1)) if match.group(1) != "1" else int(match.group(2) or 0)
        if major < _MIN_JAVA:
            raise KafkaSetupError(f"Kafka 4 needs Java {_MIN_JAVA}+, found Java {major} at {java}: install a newer JDK")
    return java


def _any_port_open(bootstrap_servers: str) -> bool:
    for address in bootstrap_servers.split(","):
        host, _, port = address.strip().rpartition(":")
        with contextlib.suppress(OSError, ValueError):
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=1.0):
                return True
    return False


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
