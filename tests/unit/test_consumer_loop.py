"""The shared consumer loop: invalid records are dead-lettered with context, offsets committed after effects."""

import pytest

from streams.codec import decode_event, encode_event
from streams.consumer import DLQ_HEADER_PREFIX, DeadLetters, StreamLoop
from streams.errors import InvalidRecord
from streams.records import Event
from streams.testing import FakeClock, ListSink, ListSource, Record

NOW = FakeClock(1_700_000_000.0)


def _event(i: int, user: str = "u1") -> bytes:
    return encode_event(Event(event_id=f"e{i}", user_id=user, item_id=f"i{i}", kind="click", ts=1_699_999_000_000))


def _records(values, topic="events", partition=0):
    return [Record(topic, partition, offset, 1000 + offset, b"k", v) for offset, v in enumerate(values)]


def _decode(value, key, now_ms):
    return decode_event(value, now_ms=now_ms)


def _loop(records, handler, sink=None, **kw):
    source = ListSource(records)
    sink = sink or ListSink()
    loop = StreamLoop(source, _decode, handler, DeadLetters(sink, "dead-letters", clock=NOW), clock=NOW, **kw)
    return loop, source, sink


def test_invalid_record_is_dead_lettered_with_headers_and_loop_goes_on():
    applied = []
    values = [_event(0), b'{"event_id": "x"', b"\xff\xfe", _event(3)]
    loop, source, sink = _loop(_records(values), lambda batch: applied.extend(c.value.event_id for c in batch))
    stats = loop.run(max_events=4)
    assert applied == ["e0", "e3"]
    assert stats.dead_lettered == 2 and stats.applied == 2 and stats.polled == 4
    assert [s.value for s in sink.sent] == [values[1], values[2]]
    headers = dict(sink.sent[0].headers)
    assert headers[DLQ_HEADER_PREFIX + "origin.topic"] == b"events"
    assert headers[DLQ_HEADER_PREFIX + "origin.partition"] == b"0"
    assert headers[DLQ_HEADER_PREFIX + "origin.offset"] == b"1"
    assert headers[DLQ_HEADER_PREFIX + "origin.timestamp"] == b"1001"
    assert headers[DLQ_HEADER_PREFIX + "error.class"] == b"streams.errors.InvalidRecord"
    assert b"JSON" in headers[DLQ_HEADER_PREFIX + "error.reason"]
    assert sink.sent[0].key == b"k" and sink.sent[0].topic == "dead-letters"
    assert source.committed == {("events", 0): 4}


def test_commit_is_per_partition_after_the_last_record():
    recs = _records([_event(0), _event(1)], partition=0) + _records([_event(2)], partition=3)
    loop, source, _ = _loop(recs, lambda batch: None)
    loop.run(max_events=3)
    assert source.committed == {("events", 0): 2, ("events", 3): 1}


def test_handler_rejections_are_dead_lettered():
    def handler(batch):
        return [(c, InvalidRecord("unknown item", "item_id")) for c in batch if c.value.item_id == "i1"]

    loop, source, sink = _loop(_records([_event(0), _event(1), _event(2)]), handler)
    stats = loop.run(max_events=3)
    assert stats.dead_lettered == 1 and stats.applied == 2
    assert sink.sent[0].value == _event(1)
    assert dict(sink.sent[0].headers)[DLQ_HEADER_PREFIX + "error.reason"] == b"item_id: unknown item"


def test_handler_exception_commits_nothing():
    def handler(batch):
        raise RuntimeError("store down")

    loop, source, _ = _loop(_records([_event(0)]), handler)
    with pytest.raises(RuntimeError):
        loop.run_once()
    assert source.committed == {} and source.commit_calls == 0


def test_failed_dead_letter_delivery_commits_nothing():
    loop, source, _ = _loop(_records([b"not json"]), lambda b: None, sink=ListSink(fail_with=OSError("broker gone")))
    with pytest.raises(OSError):
        loop.run_once()
    assert source.committed == {}


def test_bounded_run_stops_at_max_events_and_when_idle():
    loop, source, _ = _loop(_records([_event(i) for i in range(10)]), lambda b: None, max_batch=3)
    assert loop.run(max_events=5).polled == 6  # whole batches: 3 + 3
    stats = loop.run(idle_timeout=0.05)
    assert stats.polled == 10 and source.committed == {("events", 0): 10}


def test_future_timestamp_is_dead_lettered_relative_to_the_loop_clock():
    far = encode_event(Event(event_id="f", user_id="u", item_id="i", kind="view", ts=int(NOW() * 1000) + 10**9))
    loop, _, sink = _loop(_records([far]), lambda b: None)
    loop.run(max_events=1)
    assert b"future" in dict(sink.sent[0].headers)[DLQ_HEADER_PREFIX + "error.reason"]


def test_a_retried_run_redelivers_the_failed_batch_instead_of_skipping_it():
    calls = []

    def handler(batch):
        calls.append([c.offset for c in batch])
        if len(calls) == 1:
            raise RuntimeError("store down")

    loop, source, _ = _loop(_records([_event(i) for i in range(4)]), handler, max_batch=2)
    with pytest.raises(RuntimeError):
        loop.run_once()
    loop.run(max_events=4, idle_timeout=0.05)
    assert calls[:3] == [[0, 1], [0, 1], [2, 3]]
    assert source.committed == {("events", 0): 4}
