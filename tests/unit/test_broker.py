"""The local broker launcher's pure parts: configuration, state, and errors that say what to do."""

from pathlib import Path

import pytest

from streams import broker as broker_mod
from streams.broker import BrokerState, LocalBroker
from streams.errors import KafkaSetupError


def _broker(tmp_path, **kw):
    return LocalBroker(tmp_path / "state", tmp_path / "cache", **kw)


def test_server_properties_bind_localhost_and_never_auto_create(tmp_path):
    props = dict(
        line.split("=", 1)
        for line in _broker(tmp_path)._server_properties(19092, 19093).splitlines()
        if line and not line.startswith("#")
    )
    assert props["listeners"] == "PLAINTEXT://localhost:19092,CONTROLLER://localhost:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://localhost:19092"
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@localhost:19093"
    assert props["auto.create.topics.enable"] == "false"
    assert props["transaction.state.log.replication.factor"] == "1"  # transactions work on one node
    assert props["log.dirs"] == str(tmp_path / "state" / "data")


def test_missing_maven_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(broker_mod.shutil, "which", lambda name: None)
    with pytest.raises(KafkaSetupError, match="apt-get install maven") as info:
        _broker(tmp_path).classpath()
    assert "KAFKA_HOME" in str(info.value)


def test_missing_java_says_what_to_install(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(broker_mod.shutil, "which", lambda name: None)
    with pytest.raises(KafkaSetupError, match="openjdk-17"):
        broker_mod._find_java()


def test_kafka_home_without_jars_is_refused(tmp_path):
    (tmp_path / "kh" / "libs").mkdir(parents=True)
    with pytest.raises(KafkaSetupError, match="KAFKA_HOME"):
        _broker(tmp_path, kafka_home=tmp_path / "kh").classpath()


def test_kafka_home_libs_are_used(tmp_path):
    libs = tmp_path / "kh" / "libs"
    libs.mkdir(parents=True)
    (libs / "kafka_2.13-4.1.0.jar").write_bytes(b"")
    b = _broker(tmp_path, kafka_home=tmp_path / "kh")
    assert b.classpath() == f"{libs}/*"
    assert b._version_label() == "4.1.0"


def test_cached_jars_are_not_fetched_again(tmp_path, monkeypatch):
    libs = tmp_path / "cache" / "kafka-4.2.0" / "libs"
    libs.mkdir(parents=True)
    (libs / ".complete").write_text("4.2.0")
    monkeypatch.setattr(broker_mod.shutil, "which", lambda name: pytest.fail("must not look for mvn"))
    assert _broker(tmp_path).classpath() == f"{libs}/*"


def test_stale_state_file_reads_as_not_running(tmp_path):
    b = _broker(tmp_path)
    b.state_dir.mkdir(parents=True)
    state = BrokerState(pid=2**22 + 12345, host="localhost", port=1, controller_port=2, data_dir="d",
                        log_dir="l", kafka_version="4.2.0", started_at=0.0)  # fmt: skip
    import json
    from dataclasses import asdict

    b.state_file.write_text(json.dumps(asdict(state)))
    assert b.status() is None
    assert not b.state_file.exists()
    assert b.stop() is False


def test_bootstrap_servers_of_state():
    s = BrokerState(1, "localhost", 4242, 4243, "d", "l", "4.2.0", 0.0)
    assert s.bootstrap_servers == "localhost:4242"


def test_free_port_is_bindable():
    import socket

    port = broker_mod.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
