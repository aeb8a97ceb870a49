"""The CI subset of `streamrec chaos`: faults injected under load on the real broker and local Ray.

The full suite (every case, 20,000 events each) is `streamrec chaos --json`; here two
cases with a few thousand events, one per delivery mode. The verifier's own counting
is unit-tested in tests/unit/test_verify.py.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.mark.parametrize("case, mode", [("kill_worker_50", "exactly_once"), ("poison_pill_restarts", "at_least_once")])
def test_a_fault_under_load_loses_nothing_and_applies_nothing_twice(settings, ray_local, case, mode):
    from cluster.chaos import CASES, run_case

    settings = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update={"mode": mode})})
    result = run_case(settings, settings.bootstrap_servers, CASES[case], events=3000, progress=lambda m: None)
    assert result["lost"] == 0, result
    assert result["duplicate_effects"] == 0, result
    assert result["dlq"] == result["injected"] == (4 if case == "poison_pill_restarts" else 3), result
    if mode == "exactly_once":
        assert result["duplicate_outputs"] == 0 and result["missing_outputs"] == 0, result
    assert result["recovery_s"] <= 30, result
    assert result["restored_profiles"] > 0, result  # the killed worker came back from the changelog
    assert not result["worker_errors"] and result["ok"], result
