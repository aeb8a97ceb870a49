"""Kafka security without a broker: the secured launcher's configuration, connection diagnoses, and
secrets kept out of logs, `streamrec config` and `--help`. The real-broker proofs are in
tests/integration/test_security.py."""

from __future__ import annotations

import io
import logging
import socket
import time

import pytest

from cluster import cli
from streams.broker import LocalBroker
from streams.broker_security import BROKER_USER, BrokerSecurity
from streams.client import KafkaConnection, _explain, diagnose_connection, make_admin
from streams.errors import KafkaConnectError, KafkaSetupError

SASL_PASSWORD, KEY_PASSWORD = "hunter2-sasl", "hunter2-key"


def _pem_files(tmp_path):
    paths = [tmp_path / name for name in ("broker.crt", "broker.key", "ca.pem")]
    for path in paths:
        path.write_text(f"-----BEGIN TEST-----\n{path.name}\n-----END TEST-----\n")
    return paths


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_sasl_ssl_broker_has_one_secured_listener_that_is_also_inter_broker(tmp_path):
    security = BrokerSecurity(*_pem_files(tmp_path), scram_users={"alice": "alice-secret"})
    broker = LocalBroker(tmp_path / "state", tmp_path / "cache", security=security)
    props = _props(broker._server_properties(19092, 19093))
    assert props["listeners"] == "SASL_SSL://localhost:19092,CONTROLLER://localhost:19093"
    assert props["advertised.listeners"] == "SASL_SSL://localhost:19092"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    jaas = props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    broker_password = (tmp_path / "state" / "broker.secret").read_text()
    assert f'username="{BROKER_USER}" password="{broker_password}";' in jaas
    assert "alice-secret" not in "".join(props.values())  # user passwords go to the format command only
    assert (tmp_path / "state" / "broker.secret").stat().st_mode & 0o077 == 0
    assert security.broker_password(tmp_path / "state") == broker_password  # stable across restarts
    args = security.format_args(broker_password)
    assert args == ["--add-scram", f"SCRAM-SHA-512=[name={BROKER_USER},password={broker_password}]",
                    "--add-scram", "SCRAM-SHA-512=[name=alice,password=alice-secret]"]  # fmt: skip
    assert "alice-secret" not in repr(security)


def test_tls_only_broker_has_no_sasl(tmp_path):
    broker = LocalBroker(tmp_path / "state", tmp_path / "cache", security=BrokerSecurity(*_pem_files(tmp_path)))
    props = _props(broker._server_properties(19092, 19093))
    assert broker.security_protocol == "SSL" and props["listeners"].startswith("SSL://localhost:19092,")
    assert not [k for k in props if "sasl" in k]
    assert broker.security.format_args("x") == []
    health = broker._health_kwargs()
    assert health["security_protocol"] == "SSL" and health["ssl_check_hostname"] is False


def test_keystore_holds_key_then_certificate_owner_only(tmp_path):
    cert, key, ca = _pem_files(tmp_path)
    store = BrokerSecurity(cert, key, ca).write_keystore(tmp_path / "tls" / "keystore.pem")
    assert store.read_text().index("broker.key") < store.read_text().index("broker.crt")
    assert store.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("users, match", [
    ({"al ice": "pw"}, "user name"),
    ({BROKER_USER: "pw"}, "user name"),
    ({"alice": "pa,ss"}, "password of 'alice'"),
    ({"alice": 'pa"ss'}, "password of 'alice'"),
])  # fmt: skip
def test_unusable_scram_users_are_refused_before_start(tmp_path, users, match):
    with pytest.raises(KafkaSetupError, match=match) as info:
        BrokerSecurity(*_pem_files(tmp_path), scram_users=users).validate()
    assert "pa,ss" not in str(info.value) and 'pa"ss' not in str(info.value)


def test_missing_certificate_is_named(tmp_path):
    cert, key, ca = _pem_files(tmp_path)
    with pytest.raises(KafkaSetupError, match="keyfile .*missing.key"):
        BrokerSecurity(cert, tmp_path / "missing.key", ca).validate()


def test_sasl_without_a_login_is_a_setup_error():
    conn = KafkaConnection("localhost:1", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512")
    with pytest.raises(KafkaSetupError, match="STREAMREC_KAFKA__SASL_PASSWORD"):
        make_admin(conn)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_is_named_and_bounded():
    conn = KafkaConnection(f"127.0.0.1:{_closed_port()}", request_timeout_ms=500)
    started = time.monotonic()
    with pytest.raises(KafkaConnectError, match="nothing listens at 127.0.0.1"):
        make_admin(conn)
    assert time.monotonic() - started < 10


def test_connection_errors_are_explained_with_the_setting_to_change():
    from kafka.errors import KafkaConnectionError, SaslAuthenticationFailedError, UnsupportedSaslMechanismError

    scram = KafkaConnection("localhost:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                            sasl_username="alice", sasl_password=SASL_PASSWORD)  # fmt: skip
    rejected = _explain(scram, "localhost:9093", SaslAuthenticationFailedError("invalid credentials"), 1.0)
    assert "rejected the SCRAM-SHA-512 login of user 'alice'" in rejected and "kafka.sasl_password" in rejected
    assert SASL_PASSWORD not in rejected
    unsupported = _explain(scram, "localhost:9093", UnsupportedSaslMechanismError(), 1.0)
    assert "does not enable SASL mechanism SCRAM-SHA-512" in unsupported
    mismatch = KafkaConnectionError("Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                                    "Hostname mismatch, certificate is not valid for 'localhost'. (_ssl.c:1006)")
    assert "is not valid for 'localhost'" in _explain(scram, "localhost:9093", mismatch, 1.0)
    assert "ssl_check_hostname" in _explain(scram, "localhost:9093", mismatch, 1.0)
    untrusted = KafkaConnectionError("Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                                     "unable to get local issuer certificate (_ssl.c:1006)")
    assert "STREAMREC_KAFKA__SSL_CAFILE" in _explain(scram, "localhost:9093", untrusted, 1.0)


def test_kafka_python_configuration_log_is_redacted():
    """kafka-python logs its whole configuration at DEBUG; the CLI's filter masks the secrets in it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(cli._RedactSecrets())
    kafka_logger = logging.getLogger("kafka")
    level = kafka_logger.level
    kafka_logger.addHandler(handler)
    kafka_logger.setLevel(logging.DEBUG)
    conn = KafkaConnection(f"127.0.0.1:{_closed_port()}", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                           sasl_username="alice", sasl_password=SASL_PASSWORD, ssl_password=KEY_PASSWORD,
                           request_timeout_ms=300)  # fmt: skip
    try:
        with pytest.raises(KafkaConnectError) as info:
            make_admin(conn)
    finally:
        kafka_logger.removeHandler(handler)
        kafka_logger.setLevel(level)
    logged = stream.getvalue()
    assert "sasl_plain_password" in logged and "ssl_password" in logged  # it was logged ...
    assert SASL_PASSWORD not in logged and KEY_PASSWORD not in logged  # ... redacted
    assert SASL_PASSWORD not in str(info.value) and KEY_PASSWORD not in str(info.value)


def test_redaction_filter_masks_common_shapes():
    lines = [f"{{'sasl_plain_password': '{SASL_PASSWORD}', 'ssl_password': '{KEY_PASSWORD}'}}",
             f"sasl_password={SASL_PASSWORD} ssl_password={KEY_PASSWORD}",
             f'password="{SASL_PASSWORD}"; "ssl_password": "{KEY_PASSWORD}"']  # fmt: skip
    for line in lines:
        record = logging.LogRecord("kafka", logging.DEBUG, __file__, 1, "%s", (line,), None)
        cli._RedactSecrets().filter(record)
        assert SASL_PASSWORD not in record.getMessage() and KEY_PASSWORD not in record.getMessage(), line


@pytest.mark.parametrize("as_json", [False, True])
def test_config_output_and_help_never_show_kafka_secrets(monkeypatch, capsys, as_json):
    monkeypatch.setenv("STREAMREC_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMREC_KAFKA__SASL_USERNAME", "alice")
    monkeypatch.setenv("STREAMREC_KAFKA__SASL_PASSWORD", SASL_PASSWORD)
    monkeypatch.setenv("STREAMREC_KAFKA__SSL_PASSWORD", KEY_PASSWORD)
    assert cli.main(["config", "--json"] if as_json else ["config"]) == 0
    out = capsys.readouterr().out
    assert "sasl_password" in out and "ssl_password" in out and "SASL_SSL" in out
    assert SASL_PASSWORD not in out and KEY_PASSWORD not in out
    for argv in (["--help"], ["kafka", "start", "--help"], ["topics", "create", "--help"], ["config", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        shown = capsys.readouterr().out
        assert SASL_PASSWORD not in shown and KEY_PASSWORD not in shown


def test_a_login_cut_short_is_blamed_on_the_credentials(monkeypatch):
    """kafka-python may lose the broker's 'authentication failed' answer and see only the close."""
    from kafka.errors import KafkaConnectionError

    from streams import client

    scram = KafkaConnection("localhost:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                            sasl_username="alice", sasl_password=SASL_PASSWORD)  # fmt: skip
    monkeypatch.setattr(client, "_connection_attempts",
                        lambda conn, timeout_s, tries=1: [("localhost:9093", None if conn.security_protocol == "SSL"
                                                           else KafkaConnectionError("socket disconnected"))])
    message = diagnose_connection(scram)
    assert "closed the connection during the SCRAM-SHA-512 login of user 'alice'" in message
    assert "STREAMREC_KAFKA__SASL_PASSWORD" in message and SASL_PASSWORD not in message
