"""The chaos verifier's counting on hand-made records: each fault it must report, it does."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streams.changelog import ChangelogRecord
from streams.records import Consumed, Event, Recommendations
from streams.verify import Outputs, verify


def _events() -> list[Consumed[Event]]:
    # u1 at offsets 0, 2, 3 and u2 at offset 1, all in partition 0
    users = ["u1", "u2", "u1", "u1"]
    return [Consumed(Event(f"e{n}", u, "i1", "view", 1_700_000_000_000 + n), "events", 0, n, 0)
            for n, u in enumerate(users)]  # fmt: skip


ORACLE = {"u1": (3, b"u1-after-3"), "u2": (1, b"u2-after-1")}


def _recs(user: str, offset: int, version: int) -> Recommendations:
    return Recommendations(user, (), 0, version, 0, 0, offset, 0)


def _clean() -> Outputs:
    return Outputs(
        events=_events(),
        changelog=[ChangelogRecord("u1", 0, 0, b"u1-after-0"), ChangelogRecord("u2", 0, 1, b"u2-after-1"),
                   ChangelogRecord("u1", 0, 3, b"u1-after-3")],  # fmt: skip
        recs=[_recs("u1", 0, 1), _recs("u2", 1, 1), _recs("u1", 3, 3)],
        dead_letter_origins=[("events", 0, 4)],
        invalid=1,
    )


SENT = ["e0", "e1", "e2", "e3"]


def test_a_clean_run_counts_nothing():
    got = verify(SENT, _clean(), ORACLE, injected=1, live=dict(ORACLE))
    assert got == {"lost": 0, "duplicate_effects": 0, "duplicate_outputs": 0, "dlq": 1, "injected": 1,
                   "invalid_stored": 1, "missing_outputs": 0}  # fmt: skip


def test_a_missing_effect_is_lost():
    out = _clean()
    out.changelog = out.changelog[:2]  # u1's last snapshot (offset 3) never made it: events 2 and 3 are missing
    assert verify(SENT, out, ORACLE, injected=1)["lost"] == 2
    # the live profiles are checked too: a worker that lost u2 entirely
    assert verify(SENT, _clean(), ORACLE, injected=1, live={"u1": ORACLE["u1"]})["lost"] == 1


def test_an_event_that_never_reached_the_topic_is_lost():
    assert verify([*SENT, "e9"], _clean(), ORACLE, injected=1)["lost"] == 1


def test_an_event_applied_twice_is_a_duplicate_effect():
    out = _clean()
    out.changelog[-1] = replace(out.changelog[-1], profile=b"u1-with-event-3-twice")  # right offset, other bytes
    assert verify(SENT, out, ORACLE, injected=1)["duplicate_effects"] == 1


def test_steps_back_in_offsets_or_versions_are_duplicate_effects():
    out = _clean()
    out.changelog.append(ChangelogRecord("u1", 0, 2, b"u1-after-2"))
    out.changelog.append(ChangelogRecord("u1", 0, 3, b"u1-after-3"))  # the final profile is right again
    out.recs.append(_recs("u1", 3, 2))  # published profile version went back
    assert verify(SENT, out, ORACLE, injected=1)["duplicate_effects"] == 2


def test_a_duplicated_recs_record_and_dead_letter_are_duplicate_outputs():
    out = _clean()
    out.recs.insert(1, _recs("u1", 0, 1))
    out.dead_letter_origins.append(("events", 0, 4))
    got = verify(SENT, out, ORACLE, injected=1)
    assert got["duplicate_outputs"] == 2
    assert got["dlq"] == 1  # distinct origins


@pytest.mark.parametrize("dead, injected", [([], 1), ([("events", 0, 4), ("events", 0, 5)], 1)])
def test_dead_letters_are_compared_with_the_injected_records(dead, injected):
    out = _clean()
    out.dead_letter_origins = dead
    got = verify(SENT, out, ORACLE, injected=injected)
    assert got["dlq"] != got["injected"]


def test_a_last_list_not_triggered_by_the_last_event_is_a_missing_output():
    out = _clean()
    out.recs = out.recs[:2]
    assert verify(SENT, out, ORACLE, injected=1)["missing_outputs"] == 1


def test_a_profile_the_oracle_has_none_for_is_a_duplicate_effect():
    out = _clean()
    out.changelog.append(ChangelogRecord("ghost", 0, 7, b"?"))
    assert verify(SENT, out, ORACLE, injected=1)["duplicate_effects"] == 1
