"""Settings: the documented example equals the defaults; env and flags override in order."""

import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from pydantic import ValidationError

from cluster.settings import Settings, env_var_for, load_settings

EXAMPLE = Path(str(resources.files("deploy").joinpath("streamrec.example.toml")))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("STREAMREC_") or key == "KAFKA_HOME":
            monkeypatch.delenv(key)


def _leaves(model, prefix=""):
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if hasattr(type(value), "model_fields"):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield prefix + name, value


def test_example_config_equals_defaults(monkeypatch):
    assert load_settings(EXAMPLE) == Settings()
    monkeypatch.setenv("STREAMREC_CONFIG", str(EXAMPLE))
    assert Settings() == load_settings()


def test_example_config_documents_every_setting():
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    for path, default in _leaves(Settings()):
        *sections, leaf = path.split(".")
        table = data
        for section in sections:
            table = table[section]
        if default is None:
            section_text = text if not sections else text.split(f"[{sections[0]}]")[1].split("\n[")[0]
            assert re.search(rf"^# {leaf} = ", section_text, re.M), f"{path} (default None) must appear commented"
        else:
            assert leaf in table, f"{path} is missing from the example config"


def test_env_overrides_file_and_flags_override_env(monkeypatch, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('bootstrap_servers = "file:9092"\n[topics]\nevents_partitions = 3\nprefix = "f-"\n')
    monkeypatch.setenv("STREAMREC_TOPICS__EVENTS_PARTITIONS", "5")
    s = load_settings(cfg)
    assert s.bootstrap_servers == "file:9092"
    assert s.topics.events_partitions == 5
    assert s.topics.prefix == "f-"
    s = load_settings(cfg, {"topics": {"events_partitions": 7}})
    assert s.topics.events_partitions == 7 and s.topics.prefix == "f-"


def test_kafka_home_read_from_plain_env(monkeypatch, tmp_path):
    monkeypatch.setenv("KAFKA_HOME", str(tmp_path))
    assert Settings().kafka_home == tmp_path


def test_unknown_keys_and_bad_values_are_refused(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[topics]\nevent_partitions = 3\n")
    with pytest.raises(ValidationError):
        load_settings(cfg)
    with pytest.raises(ValidationError):
        Settings(topics={"events_partitions": 0})
    with pytest.raises(ValidationError):
        Settings(kafka={"security_protocol": "TLS"})


def test_missing_config_file_is_a_clear_error(tmp_path):
    from cluster.errors import ConfigError

    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_secrets_are_redacted():
    s = Settings(kafka={"sasl_password": "hunter2", "security_protocol": "SASL_SSL"})
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump(mode="json"))
    conn = s.connection("h:1")
    assert "hunter2" not in repr(conn)
    assert conn.client_kwargs()["sasl_plain_password"] == "hunter2"
    assert conn.client_kwargs()["ssl_check_hostname"] is True


def test_changelog_is_copartitioned_with_events():
    specs = {s.role: s for s in Settings(topics={"events_partitions": 12, "prefix": "x-"}).topics.specs()}
    assert specs["changelog"].partitions == specs["events"].partitions == 12
    assert specs["events"].name == "x-events" and specs["dead_letters"].name == "x-dead-letters"
    assert specs["items"].configs["cleanup.policy"] == "compact"
    assert specs["recs"].configs["cleanup.policy"] == "compact"
    assert specs["events"].configs["cleanup.policy"] == "delete"


def test_env_var_names():
    assert env_var_for("broker.port") == "STREAMREC_BROKER__PORT"
    assert env_var_for("bootstrap_servers") == "STREAMREC_BOOTSTRAP_SERVERS"


def test_serve_yaml_is_a_valid_serve_config_and_its_builder_binds_the_api(monkeypatch):
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from deploy.serve_app import build_app

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else \
        ServeDeploySchema.parse_obj(doc)  # fmt: skip
    app = schema.applications[0]
    assert app.import_path == "deploy.serve_app:build_app" and app.deployments[0].name == "streamrec-api"
    monkeypatch.setenv("STREAMREC_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("STREAMREC_PIPELINE__WORKERS", "3")
    bound = build_app(app.args)
    cfg = bound._bound_deployment.init_args[0]
    assert cfg.namespace == "streamrec" and cfg.worker_names == tuple(f"streamrec-profiles-{w}" for w in range(3))
    assert cfg.connection.bootstrap_servers == "kafka:9092"


def test_api_refuses_a_public_address_without_a_key():
    import pytest

    from cluster.errors import ConfigError
    from cluster.serving import api_config

    with pytest.raises(ConfigError, match="without an API key"):
        api_config(Settings(api={"host": "0.0.0.0"}), "ns")
    assert api_config(Settings(api={"host": "0.0.0.0", "api_key": "k"}), "ns").api_key == "k"
