"""Kafka security against real brokers: SASL_SSL with SCRAM-SHA-512, and TLS host name verification.

Each broker here is this module's own, started by the same launcher as the
session broker (which stays PLAINTEXT) in a temporary directory, with
certificates from a throwaway CA (tests/integration/certs.py). Clients are built
the way streamrec builds them: from Settings, through streams.client.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cluster.settings import Settings
from streams.broker import LocalBroker
from streams.broker_security import BrokerSecurity
from streams.client import make_admin, make_consumer, make_producer
from streams.codec import decode_event, encode_event
from streams.errors import KafkaConnectError
from streams.records import Event
from streams.topics import ensure_topics
from tests.integration.certs import CertificateAuthority

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

USER, PASSWORD = "alice", "alice-Pa55-word"
WRONG_PASSWORD = "not-alices-password"
BOUND_MS = 5_000  # request_timeout_ms of the clients that must fail: it bounds their bootstrap
STREAMREC = shutil.which("streamrec", path=str(Path(sys.executable).parent)) or "streamrec"


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


def _start(tmp_path_factory, security: BrokerSecurity) -> LocalBroker:
    defaults = Settings().broker
    broker = LocalBroker(tmp_path_factory.mktemp("kafka-secure"), defaults.resolved_cache_dir(),
                         kafka_version=defaults.kafka_version, security=security)  # fmt: skip
    broker.start()
    return broker


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory, ca):
    """A broker whose only client listener is SASL_SSL (SCRAM-SHA-512), certificate for localhost."""
    cert = ca.issue("localhost")
    broker = _start(tmp_path_factory, BrokerSecurity(cert.certfile, cert.keyfile, ca.cafile, {USER: PASSWORD}))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def wrong_host_broker(tmp_path_factory, ca):
    """A TLS broker presenting a certificate (from the trusted CA) for another host name."""
    cert = ca.issue("kafka.wrong-host.example", stem="wrong-host")
    broker = _start(tmp_path_factory, BrokerSecurity(cert.certfile, cert.keyfile, ca.cafile))
    try:
        yield broker
    finally:
        broker.stop()


def _settings(broker: LocalBroker, **kafka) -> Settings:
    return Settings(bootstrap_servers=broker.status().bootstrap_servers,
                    topics={"prefix": f"t{uuid.uuid4().hex[:10]}-"}, kafka=kafka)  # fmt: skip


def _scram(broker: LocalBroker, cafile: Path, password: str = PASSWORD, **kafka) -> Settings:
    return _settings(broker, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username=USER,
                     sasl_password=password, ssl_cafile=cafile, **kafka)  # fmt: skip


def _connect_error(settings: Settings) -> tuple[str, float]:
    """The KafkaConnectError message of building an admin client, and how long it took to come."""
    started = time.monotonic()
    with pytest.raises(KafkaConnectError) as info:
        make_admin(settings.connection(settings.bootstrap_servers)).close()
    return str(info.value), time.monotonic() - started


def test_broker_listener_is_sasl_ssl(sasl_broker):
    state = sasl_broker.status()
    assert state.security_protocol == "SASL_SSL"
    props = (sasl_broker.state_dir / "server.properties").read_text()
    assert f"listeners=SASL_SSL://localhost:{state.port}," in props and "PLAINTEXT://localhost" not in props
    assert "inter.broker.listener.name=SASL_SSL" in props
    assert PASSWORD not in props  # user passwords live in the metadata log only, salted and hashed
    assert (sasl_broker.state_dir / "server.properties").stat().st_mode & 0o077 == 0


def test_sasl_ssl_scram_round_trip_of_an_event(sasl_broker, ca):
    settings = _scram(sasl_broker, ca.cafile)
    conn = settings.connection(settings.bootstrap_servers)
    admin = make_admin(conn)
    try:
        ensure_topics(admin, settings.topics.specs())
    finally:
        admin.close()
    topic = settings.topics.name("events")
    event = Event(event_id=f"e-{uuid.uuid4().hex[:8]}", user_id="42", item_id="1193", kind="rate",
                  ts=int(time.time() * 1000), value=5.0, context={"device": "tv"})  # fmt: skip
    # a transaction: its commit markers travel over the broker's own SASL_SSL (inter-broker) listener
    producer = make_producer(conn, transactional_id=f"sec-{uuid.uuid4().hex[:8]}")
    try:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, key=event.user_id.encode(), value=encode_event(event))
        producer.commit_transaction()
    finally:
        producer.close()
    consumer = make_consumer(conn, topic, group_id=f"sec-{uuid.uuid4().hex[:8]}")  # read_committed, in a group
    received, deadline = [], time.monotonic() + 90
    try:
        while not received and time.monotonic() < deadline:
            received = [r for rs in consumer.poll(timeout_ms=500).values() for r in rs]
        consumer.commit()
    finally:
        consumer.close()
    assert [decode_event(r.value, now_ms=int(time.time() * 1000)) for r in received] == [event]


def test_wrong_password_is_a_clear_error_within_the_bound(sasl_broker, ca):
    message, took = _connect_error(_scram(sasl_broker, ca.cafile, WRONG_PASSWORD, request_timeout_ms=BOUND_MS))
    assert "kafka.sasl_password" in message and repr(USER) in message, message
    assert WRONG_PASSWORD not in message and PASSWORD not in message
    assert took < BOUND_MS / 1000 + 20, took


def test_producer_and_consumer_surface_the_same_error(sasl_broker, ca):
    settings = _scram(sasl_broker, ca.cafile, WRONG_PASSWORD, request_timeout_ms=BOUND_MS)
    conn = settings.connection(settings.bootstrap_servers)
    for build in (lambda: make_producer(conn), lambda: make_consumer(conn, group_id=None)):
        with pytest.raises(KafkaConnectError, match="sasl_password"):
            build().close()


def test_untrusted_broker_certificate_is_refused(sasl_broker, tmp_path):
    other = CertificateAuthority(tmp_path / "other-ca", name="another CA")
    message, _ = _connect_error(_scram(sasl_broker, other.cafile, request_timeout_ms=BOUND_MS))
    assert "not trusted" in message and "kafka.ssl_cafile" in message, message


def test_plaintext_client_against_sasl_ssl_listener_fails_within_the_bound(sasl_broker):
    message, took = _connect_error(_settings(sasl_broker, request_timeout_ms=BOUND_MS))
    assert "expects TLS" in message and "SASL_SSL" in message, message
    assert took < BOUND_MS / 1000 + 20, took


def test_certificate_for_another_host_is_refused(wrong_host_broker, ca):
    settings = _settings(wrong_host_broker, security_protocol="SSL", ssl_cafile=ca.cafile, request_timeout_ms=BOUND_MS)
    assert settings.kafka.ssl_check_hostname is True  # the default
    message, took = _connect_error(settings)
    assert "not valid for 'localhost'" in message and "ssl_check_hostname" in message, message
    assert took < BOUND_MS / 1000 + 20, took
    # the same broker with the check off connects: the host name was the only thing refused
    unchecked = _settings(wrong_host_broker, security_protocol="SSL", ssl_cafile=ca.cafile, ssl_check_hostname=False)
    admin = make_admin(unchecked.connection(unchecked.bootstrap_servers))
    try:
        assert admin.describe_cluster()["brokers"]
    finally:
        admin.close()


def test_tls_client_against_a_plaintext_listener_is_told_so(local_broker):
    if local_broker is None:
        pytest.skip("tests run against an existing cluster: its listener may speak TLS")
    plaintext = Settings(bootstrap_servers=local_broker.status().bootstrap_servers,
                         kafka={"security_protocol": "SSL", "request_timeout_ms": BOUND_MS})  # fmt: skip
    message, took = _connect_error(plaintext)
    assert "does not speak TLS" in message and "PLAINTEXT" in message, message
    assert took < BOUND_MS / 1000 + 20, took


def _cli(settings: Settings, *args: str, password: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env |= {
        "STREAMREC_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "STREAMREC_TOPICS__PREFIX": settings.topics.prefix,
        "STREAMREC_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMREC_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "STREAMREC_KAFKA__SASL_USERNAME": USER,
        "STREAMREC_KAFKA__SASL_PASSWORD": password,
        "STREAMREC_KAFKA__SSL_CAFILE": str(settings.kafka.ssl_cafile),
        "STREAMREC_KAFKA__REQUEST_TIMEOUT_MS": str(BOUND_MS),
    }
    return subprocess.run([STREAMREC, "-vv", *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_over_sasl_ssl_never_prints_the_password(sasl_broker, ca):
    """Debug logging included: kafka-python logs its whole configuration there."""
    settings = _scram(sasl_broker, ca.cafile)
    ok = _cli(settings, "topics", "create", password=PASSWORD)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert f"{settings.topics.prefix}events: created" in ok.stdout
    assert "sasl_plain_password" in ok.stderr  # the configuration was logged, redacted
    assert PASSWORD not in ok.stdout + ok.stderr

    failed = _cli(settings, "topics", "describe", password=WRONG_PASSWORD)
    assert failed.returncode == 2
    error = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert error and "kafka.sasl_password" in error[0], failed.stderr[-3000:]
    assert WRONG_PASSWORD not in failed.stdout + failed.stderr
