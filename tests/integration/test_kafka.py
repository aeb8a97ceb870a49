"""Against the real broker: produce/consume round trip, dead letters, idempotent topic creation."""

from __future__ import annotations

import time
import uuid

import pytest

from streams.client import make_admin, make_consumer, make_producer
from streams.codec import decode_event
from streams.consumer import DLQ_HEADER_PREFIX, DeadLetters, StreamLoop
from streams.datasets import synthetic
from streams.replay import replay
from streams.topics import describe_topics, ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _loop(settings, handler, *, group: str | None = None):
    conn = settings.connection(settings.bootstrap_servers)
    consumer = make_consumer(conn, settings.topics.name("events"), group_id=group or f"g-{uuid.uuid4().hex[:8]}")
    producer = make_producer(conn)
    dlq = DeadLetters(producer, settings.topics.name("dead_letters"))
    loop = StreamLoop(consumer, lambda v, k, now: decode_event(v, now_ms=now), handler, dlq)
    return loop, consumer, producer


def _read_all(settings, role: str, expect: int, timeout: float = 30.0):
    conn = settings.connection(settings.bootstrap_servers)
    consumer = make_consumer(conn, settings.topics.name(role), group_id=None)
    out, deadline = [], time.monotonic() + timeout
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(records)
    finally:
        consumer.close()
    return out


def test_topic_creation_is_idempotent_and_configured(settings):
    admin = make_admin(settings.connection(settings.bootstrap_servers))
    try:
        specs = settings.topics.specs()
        assert set(ensure_topics(admin, specs).values()) == {"created"}
        assert set(ensure_topics(admin, specs).values()) == {"exists"}
        described = {t["role"]: t for t in describe_topics(admin, specs)}
    finally:
        admin.close()
    assert all(t["exists"] for t in described.values())
    assert described["events"]["partitions"] == 8
    assert described["changelog"]["partitions"] == 8
    assert described["items"]["configs"]["cleanup.policy"] == "compact"
    assert described["recs"]["configs"]["cleanup.policy"] == "compact"
    assert described["changelog"]["configs"]["cleanup.policy"] == "compact"


def test_produce_consume_round_trip(topics):
    data = synthetic(users=30, items=50, events=600, seed=7)
    producer = make_producer(topics.connection(topics.bootstrap_servers))
    try:
        stats = replay(producer, items=data.items, events=data.events,
                       items_topic=topics.topics.name("items"), events_topic=topics.topics.name("events"))  # fmt: skip
    finally:
        producer.close()
    assert (stats.items, stats.events) == (50, 600)

    received = []
    loop, consumer, dlq_producer = _loop(topics, lambda batch: received.extend(batch))
    try:
        loop.run(max_events=600, timeout=180)  # a group join can take long on a saturated 2-core box
    finally:
        consumer.close()
        dlq_producer.close()
    assert sorted(c.value.event_id for c in received) == sorted(e.event_id for e in data.events)
    assert {c.value.event_id: c.value for c in received} == {e.event_id: e for e in data.events}
    # keyed by user: every event of a user sits in one partition, in event-time order
    by_user: dict[str, set[int]] = {}
    for c in received:
        by_user.setdefault(c.value.user_id, set()).add(c.partition)
    assert all(len(parts) == 1 for parts in by_user.values())
    assert loop.stats.dead_lettered == 0
    assert len(_read_all(topics, "items", 50)) == 50


def test_malformed_record_from_any_producer_is_dead_lettered_and_loop_goes_on(topics):
    from kafka import KafkaProducer

    good = synthetic(users=3, items=8, events=4, seed=1).events
    from streams.codec import encode_event

    raw = KafkaProducer(bootstrap_servers=topics.bootstrap_servers)  # a foreign producer: no streamrec codec
    values = [encode_event(good[0]), b"\x00\x01garbage", b'{"event_id": 1}', encode_event(good[1]),
              b"[1,2,3]", encode_event(good[2]), encode_event(good[3])]  # fmt: skip
    for v in values:
        raw.send(topics.topics.name("events"), key=b"same-user", value=v)  # one partition: order kept
    raw.flush()
    raw.close()

    applied = []
    group = f"g-{uuid.uuid4().hex[:8]}"
    loop, consumer, producer = _loop(topics, lambda batch: applied.extend(c.value.event_id for c in batch), group=group)
    try:
        loop.run(max_events=len(values), timeout=180)
        committed = {tp.partition: consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        consumer.close()
        producer.close()
    assert applied == [e.event_id for e in good]
    assert loop.stats.dead_lettered == 3

    letters = _read_all(topics, "dead_letters", 3)
    assert [r.value for r in letters] == [values[1], values[2], values[4]]
    partition = letters[0].headers and dict(letters[0].headers)[DLQ_HEADER_PREFIX + "origin.partition"]
    for record, offset in zip(letters, (1, 2, 4)):
        headers = dict(record.headers)
        assert headers[DLQ_HEADER_PREFIX + "origin.topic"] == topics.topics.name("events").encode()
        assert headers[DLQ_HEADER_PREFIX + "origin.offset"] == str(offset).encode()
        assert headers[DLQ_HEADER_PREFIX + "origin.partition"] == partition
        assert int(headers[DLQ_HEADER_PREFIX + "origin.timestamp"]) > 0
        assert headers[DLQ_HEADER_PREFIX + "error.class"] == b"streams.errors.InvalidRecord"
        assert headers[DLQ_HEADER_PREFIX + "error.reason"]
        assert record.key == b"same-user"
    assert committed[int(partition)] == len(values)  # resume after the last record, bad ones included
