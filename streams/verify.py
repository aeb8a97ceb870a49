"""The fault-injection verifier: what the pipeline wrote, checked against what went in.

``read_outputs`` reads the events, changelog, recs and dead-letter topics back from
Kafka with ``read_committed`` (so aborted transactions never count). ``verify`` is
pure counting over those records and an oracle -- per user, the (last applied
offset, profile bytes) that a fault-free fold of the stored events produces:

* ``lost``: valid events whose effect is missing: input ids that never reached the
  topic, plus, per user, the events after the final profile's source offset (the
  changelog's last record per user, and the live profiles when given; the worse of
  the two counts).
* ``duplicate_effects``: users whose final profile has the oracle's offset but other
  bytes (an event applied twice), users with a profile the oracle has none for, and
  every step back in a user's changelog offsets or published profile versions.
* ``duplicate_outputs``: recs records published more than once for the same user and
  source event, and dead letters written more than once for the same origin record.
* ``dlq`` (distinct origins dead-lettered) vs ``injected`` (invalid records sent).
* ``missing_outputs``: users whose last published list was not triggered by their
  last event.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.changelog import ChangelogRecord, decode_changelog, read_partitions
from streams.codec import DEFAULT_LIMITS, Limits, decode_event, decode_recommendations
from streams.consumer import DLQ_HEADER_PREFIX
from streams.records import Consumed, Event, Recommendations

__all__ = ["Outputs", "read_outputs", "verify"]

Profiles = Mapping[str, tuple[int, bytes]]  # user -> (last applied offset, profile bytes)


@dataclass
class Outputs:
    """Everything the verifier reads back, each topic in log order per partition."""

    events: list[Consumed[Event]] = field(default_factory=list)  # the valid ones, as stored
    invalid: int = 0  # records of the events topic that do not decode
    changelog: list[ChangelogRecord] = field(default_factory=list)
    recs: list[Recommendations] = field(default_factory=list)
    dead_letter_origins: list[tuple[str, int, int]] = field(default_factory=list)  # (topic, partition, offset)


def read_outputs(connection: Any, topics: Mapping[str, str], *, limits: Limits = DEFAULT_LIMITS) -> Outputs:
    """Read ``topics`` (role -> name for events, changelog, recs, dead_letters) from the beginning."""
    from streams.client import make_reader

    out = Outputs()
    consumer = make_reader(connection)
    try:
        def records(role: str) -> Iterable[Any]:
            topic = topics[role]
            return read_partitions(consumer, topic, sorted(consumer.partitions_for_topic(topic) or ()))

        now_ms = int(time.time() * 1000)
        for r in records("events"):
            try:
                event = decode_event(r.value, now_ms=now_ms, limits=limits)
            except Exception:  # invalid: the pipeline must dead-letter it
                out.invalid += 1
                continue
            out.events.append(Consumed(event, r.topic, r.partition, r.offset, r.timestamp, r.key))
        for r in records("changelog"):
            if r.value is not None:
                out.changelog.append(decode_changelog(r.key, r.value, f"{r.topic}[{r.partition}]@{r.offset}"))
        out.recs = [decode_recommendations(r.value) for r in records("recs")]
        for r in records("dead_letters"):
            h = {k: v.decode() for k, v in r.headers if v is not None}
            p = DLQ_HEADER_PREFIX
            out.dead_letter_origins.append((h[p + "origin.topic"], int(h[p + "origin.partition"]),
                                            int(h[p + "origin.offset"])))  # fmt: skip
    finally:
        consumer.close()
    return out


def verify(sent_ids: Sequence[str], out: Outputs, oracle: Profiles, *, injected: int,
           live: Profiles | None = None) -> dict[str, int]:  # fmt: skip
    """Count what went wrong (see the module docstring); every count is 0 in a correct run
    except ``dlq``, which equals ``injected``."""
    stored = Counter(r.value.event_id for r in out.events)
    lost_inputs = sum(1 for i in set(sent_ids) if i not in stored)
    offsets: dict[str, list[int]] = defaultdict(list)  # user -> offsets of its valid events
    for r in out.events:
        offsets[r.value.user_id].append(r.offset)

    final: dict[str, tuple[int, bytes]] = {}
    steps_back = 0
    for rec in out.changelog:  # a user lives in one partition: this is its log order
        before = final.get(rec.user_id)
        if before is not None and (rec.source_offset < before[0]
                                   or (rec.source_offset == before[0] and rec.profile != before[1])):  # fmt: skip
            steps_back += 1
        final[rec.user_id] = (rec.source_offset, rec.profile)
    lost, dup = _compare(final, oracle, offsets)
    if live is not None:
        live_lost, live_dup = _compare(live, oracle, offsets)
        lost, dup = max(lost, live_lost), max(dup, live_dup)

    per_source = Counter((r.user_id, r.source_partition, r.source_offset) for r in out.recs)
    last_list: dict[str, Recommendations] = {}
    for r in out.recs:
        before_list = last_list.get(r.user_id)
        if before_list is not None and r.profile_version < before_list.profile_version:
            steps_back += 1
        last_list[r.user_id] = r
    missing_outputs = sum(1 for u, (offset, _) in oracle.items()
                          if u not in last_list or last_list[u].source_offset != offset)  # fmt: skip
    origins = Counter(out.dead_letter_origins)
    return {
        "lost": lost_inputs + lost,
        "duplicate_effects": dup + steps_back,
        "duplicate_outputs": sum(n - 1 for n in per_source.values()) + sum(n - 1 for n in origins.values()),
        "dlq": len(origins),
        "injected": injected,
        "invalid_stored": out.invalid,
        "missing_outputs": missing_outputs,
    }


def _compare(profiles: Profiles, oracle: Profiles, offsets: Mapping[str, list[int]]) -> tuple[int, int]:
    """(events missing, users with a wrong profile) of ``profiles`` against the oracle."""
    lost = dup = 0
    for user, (want_offset, want_bytes) in oracle.items():
        got = profiles.get(user)
        if got is None:
            lost += len(offsets.get(user, ()))
        elif got[0] < want_offset:
            lost += sum(1 for o in offsets.get(user, ()) if o > got[0])
        elif got != (want_offset, want_bytes):
            dup += 1
    dup += sum(1 for user in profiles if user not in oracle)
    return lost, dup
