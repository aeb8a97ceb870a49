"""Kafka client construction: one connection description, three client kinds.

Secrets live in :class:`KafkaConnection` only as long as a client is built; its
``repr`` redacts them.

kafka-python bootstraps in each client's constructor (up to
``request_timeout_ms`` here) and, when that fails, says only
"Unable to bootstrap". The ``make_*`` functions then raise
:class:`~streams.errors.KafkaConnectError` with the cause found by
:func:`diagnose_connection`: nothing listening, a TLS certificate refused (not
trusted, or not valid for the host name), a TLS/plaintext mismatch, or a rejected
SASL login, each with the setting to change.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from streams.errors import KafkaConnectError, KafkaSetupError, TopicMissing

__all__ = ["KafkaConnection", "assign_from_beginning", "diagnose_connection", "make_admin", "make_consumer",
           "make_producer", "make_reader"]  # fmt: skip

_PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    bootstrap_servers: str
    client_id: str = "streamrec"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True
    request_timeout_ms: int = 30_000

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by kafka-python's producer, consumer and admin client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism or "PLAIN",
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.security_protocol.endswith("SSL"):
            kwargs.update(
                ssl_cafile=self.ssl_cafile,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                ssl_password=self.ssl_password,
                ssl_check_hostname=self.ssl_check_hostname,
            )
        return kwargs


def make_admin(conn: KafkaConnection, **overrides: Any):
    from kafka import KafkaAdminClient

    options: dict[str, Any] = {"request_timeout_ms": conn.request_timeout_ms,
                               "bootstrap_timeout_ms": conn.request_timeout_ms}  # fmt: skip
    options.update(overrides)
    return _connected(conn, lambda: KafkaAdminClient(**conn.client_kwargs(), **options))


def make_producer(conn: KafkaConnection, **overrides: Any):
    """A producer tuned for throughput with durability: acks=all, idempotence on, small linger."""
    from kafka import KafkaProducer

    options: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "compression_type": None,
        "request_timeout_ms": conn.request_timeout_ms,
        "bootstrap_timeout_ms": conn.request_timeout_ms,
        "allow_auto_create_topics": False,  # topics are created explicitly, with their configs
    }
    options.update(overrides)
    return _connected(conn, lambda: KafkaProducer(**conn.client_kwargs(), **options))


def make_consumer(conn: KafkaConnection, *topics: str, **overrides: Any):
    """A consumer with manual offsets only (never auto-commit) that reads committed data."""
    from kafka import KafkaConsumer

    options: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "request_timeout_ms": max(conn.request_timeout_ms, 40_000),
        "bootstrap_timeout_ms": conn.request_timeout_ms,
        "allow_auto_create_topics": False,
    }
    options.update(overrides)
    return _connected(conn, lambda: KafkaConsumer(*topics, **conn.client_kwargs(), **options))


def make_reader(conn: KafkaConnection, **overrides: Any):
    """A group-less consumer for reading whole partitions in bulk (restores, rebuilds, benchmarks)."""
    options: dict[str, Any] = {"max_poll_records": 5000, "fetch_max_bytes": 64 << 20,
                               "max_partition_fetch_bytes": 16 << 20}  # fmt: skip
    options.update(overrides)
    return make_consumer(conn, group_id=None, **options)


def assign_from_beginning(consumer: Any, topic: str, wait_s: float = 0.0) -> list:
    """Assign every partition of ``topic`` to a group-less consumer and seek to the start.

    Waits up to ``wait_s`` for the topic's metadata; raises :class:`TopicMissing` after.
    """
    from kafka import TopicPartition

    deadline = time.monotonic() + wait_s
    partitions = consumer.partitions_for_topic(topic)
    while not partitions and time.monotonic() < deadline:
        time.sleep(0.5)
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise TopicMissing(f"topic {topic!r} does not exist: create it with `streamrec topics create`")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return tps


# ---------------------------------------------------------------- connection failures


def _connected(conn: KafkaConnection, build: Callable[[], Any]) -> Any:
    """``build()`` a client; a failed bootstrap becomes a :class:`KafkaConnectError` that says why."""
    from kafka.errors import KafkaTimeoutError

    protocol, mechanism = conn.security_protocol, conn.sasl_mechanism or "PLAIN"
    login = conn.sasl_username and conn.sasl_password
    if protocol.startswith("SASL") and mechanism in _PASSWORD_MECHANISMS and not login:
        raise KafkaSetupError(f"security_protocol {protocol} with {mechanism} needs kafka.sasl_username and "
                              "kafka.sasl_password (STREAMREC_KAFKA__SASL_USERNAME, STREAMREC_KAFKA__SASL_PASSWORD)")
    try:
        return build()
    except KafkaTimeoutError as exc:
        raise KafkaConnectError(diagnose_connection(conn)) from exc


def diagnose_connection(conn: KafkaConnection, timeout_s: float = 5.0) -> str:
    """Why clients cannot bootstrap from ``conn``: one message naming the setting to change.

    Meant for after a bootstrap failed: connects once to each bootstrap address
    the way the clients do (same TLS context, same SASL login) and explains the
    first failure. Never includes a password.
    """
    sasl = conn.security_protocol.startswith("SASL")
    attempts = _connection_attempts(conn, timeout_s, tries=3 if sasl else 1)
    head = f"cannot connect to Kafka at {conn.bootstrap_servers} (security_protocol {conn.security_protocol}): "
    for address, error in attempts:
        if error is not None:
            return head + _explain(conn, address, error, timeout_s)
    if attempts and not sasl:
        return head + ("a connection opens but the broker answers no metadata request; if its listener requires "
                       "a SASL login, set kafka.security_protocol to SASL_SSL or SASL_PLAINTEXT "
                       "(STREAMREC_KAFKA__SECURITY_PROTOCOL) and kafka.sasl_username / kafka.sasl_password")
    return head + "no broker answered a metadata request: check the address, the listener's protocol and its log"


def _connection_attempts(
    conn: KafkaConnection, timeout_s: float, tries: int = 1
) -> list[tuple[str, BaseException | None]]:
    """(address, error or None) of a connection to each bootstrap address, TLS and SASL included.

    kafka-python retries a failed bootstrap until its timeout and only logs the
    cause, so this opens the connections through its connection manager (not
    public API; kafka-python is pinned exactly in pyproject.toml). If that
    changes, the list is empty and the diagnosis stays generic. A bare
    disconnection is retried up to ``tries`` times: kafka-python 3.0.12 drops a
    response that arrives together with the connection's close, as the broker's
    answer to a rejected SASL login often does.
    """
    from kafka.errors import KafkaError, KafkaTimeoutError

    try:
        from kafka.net.compat import KafkaNetClient

        client = KafkaNetClient(**conn.client_kwargs(), request_timeout_ms=int(timeout_s * 1000))
    except Exception:
        return []
    attempts: list[tuple[str, BaseException | None]] = []
    try:
        for broker in client.cluster.bootstrap_brokers():
            for _ in range(tries):
                try:
                    client.maybe_connect(broker.node_id)
                    init = client._manager._conns[broker.node_id].init_future
                    client.poll(timeout_ms=int(timeout_s * 1000), future=init)
                    error = init.exception if init.is_done else KafkaTimeoutError(f"no answer within {timeout_s:.0f} s")
                except KafkaError as exc:
                    error = exc
                if not _disconnected(error):
                    break
                client.close(broker.node_id)
                client._manager.reset_backoff(broker.node_id)
            attempts.append((f"{broker.host}:{broker.port}", error))
    except Exception:  # kafka-python's internals moved: keep what was found
        pass
    finally:
        client.close()
    return attempts


def _explain(conn: KafkaConnection, address: str, error: BaseException, timeout_s: float) -> str:
    from kafka.errors import SaslAuthenticationFailedError, UnsupportedSaslMechanismError

    text = str(error)
    tls = conn.security_protocol.endswith("SSL")
    if isinstance(error, SaslAuthenticationFailedError):
        return (f"the broker at {address} rejected the {conn.sasl_mechanism or 'PLAIN'} login of user "
                f"{conn.sasl_username!r} ({text}): check kafka.sasl_username, kafka.sasl_password and "
                "kafka.sasl_mechanism (STREAMREC_KAFKA__SASL_USERNAME, STREAMREC_KAFKA__SASL_PASSWORD, "
                "STREAMREC_KAFKA__SASL_MECHANISM)")  # fmt: skip
    if isinstance(error, UnsupportedSaslMechanismError):
        return (f"the broker at {address} does not enable SASL mechanism {conn.sasl_mechanism or 'PLAIN'} ({text}): "
                "set kafka.sasl_mechanism (STREAMREC_KAFKA__SASL_MECHANISM) to one it enables")  # fmt: skip
    if "CERTIFICATE_VERIFY_FAILED" in text:
        reason = text.split("certificate verify failed:", 1)[-1].split("(_ssl.c", 1)[0].strip(" .")
        if "mismatch" in reason:
            host = address.rsplit(":", 1)[0]
            return (f"TLS: the certificate of the broker at {address} is not valid for {host!r} ({reason}): connect "
                    "with a host name the certificate names, or give the broker a certificate for this one "
                    "(kafka.ssl_check_hostname=false turns the check off: not recommended)")  # fmt: skip
        return (f"TLS: the certificate of the broker at {address} is not trusted ({reason}): set kafka.ssl_cafile "
                "(STREAMREC_KAFKA__SSL_CAFILE) to the PEM file of the CA that issued it")  # fmt: skip
    if conn.security_protocol.startswith("SASL") and _disconnected(error) and _connects_without_login(conn, timeout_s):
        return (f"the broker at {address} closed the connection during the {conn.sasl_mechanism or 'PLAIN'} login of "
                f"user {conn.sasl_username!r}, as it does when it rejects a login: check kafka.sasl_username, "
                "kafka.sasl_password and kafka.sasl_mechanism (STREAMREC_KAFKA__SASL_USERNAME, "
                "STREAMREC_KAFKA__SASL_PASSWORD, STREAMREC_KAFKA__SASL_MECHANISM)")  # fmt: skip
    if "refused" in text.lower() or isinstance(getattr(error, "__cause__", None), ConnectionRefusedError):
        return (f"nothing listens at {address} ({text}): check the bootstrap address (STREAMREC_BOOTSTRAP_SERVERS, "
                "`streamrec kafka status`) and that the broker is up")  # fmt: skip
    speaks_tls = _speaks_tls(address, timeout_s)
    if tls and speaks_tls is False:
        return (f"the listener at {address} does not speak TLS ({text}): set kafka.security_protocol "
                "(STREAMREC_KAFKA__SECURITY_PROTOCOL) to PLAINTEXT or SASL_PLAINTEXT, or use the broker's TLS "
                "listener")  # fmt: skip
    if not tls and speaks_tls:
        return (f"the listener at {address} expects TLS ({text}): set kafka.security_protocol "
                "(STREAMREC_KAFKA__SECURITY_PROTOCOL) to SSL or SASL_SSL, and kafka.ssl_cafile to the broker's CA")
    return f"the connection to {address} failed: {text}"


def _disconnected(error: BaseException | None) -> bool:
    from kafka.errors import KafkaConnectionError

    return isinstance(error, KafkaConnectionError) and "disconnected" in str(error)


def _connects_without_login(conn: KafkaConnection, timeout_s: float) -> bool:
    """Whether the same connection without its SASL login succeeds (so the login is what fails)."""
    plain = replace(conn, security_protocol=conn.security_protocol.removeprefix("SASL_"))
    attempts = _connection_attempts(plain, timeout_s)
    return bool(attempts) and all(error is None for _, error in attempts)


def _speaks_tls(address: str, timeout_s: float) -> bool | None:
    """Whether a TLS handshake (certificate unchecked) completes at ``address``; None if it cannot be reached."""
    host, _, port = address.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asks whether TLS is spoken; nothing is sent over it
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except (OSError, ValueError):
        return None
    try:
        with context.wrap_socket(sock, server_hostname=host.strip("[]")):
            return True
    except (ssl.SSLError, OSError):
        return False
    finally:
        sock.close()
