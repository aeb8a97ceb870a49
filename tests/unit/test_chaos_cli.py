"""`streamrec chaos` wiring that needs no broker: the parser, the case table, unknown cases."""

from __future__ import annotations

import pytest

from cluster import cli
from cluster.chaos import CASES, run_chaos
from cluster.errors import ConfigError
from cluster.settings import Settings


def test_the_parser_takes_cases_events_mode_and_json():
    args = cli.build_parser().parse_args(["chaos", "--cases", "kill_worker_50,state_wiped", "--events", "500",
                                          "--mode", "at_least_once", "--json"])  # fmt: skip
    assert (args.cases, args.events, args.json) == ("kill_worker_50,state_wiped", 500, True)
    assert cli._overrides(args) == {"pipeline": {"mode": "at_least_once"}}


def test_every_case_is_documented_with_its_recovery_goal(repo_root):
    readme = (repo_root / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in CASES)
    assert {c.recovery_goal_s for c in CASES.values() if c.fault != "broker_restart"} == {30.0}
    assert CASES["broker_restart"].recovery_goal_s == 60.0


def test_an_unknown_case_is_refused_before_anything_starts():
    with pytest.raises(ConfigError, match="no_such_case"):
        run_chaos(Settings(), "localhost:1", ["kill_worker_50", "no_such_case"])
