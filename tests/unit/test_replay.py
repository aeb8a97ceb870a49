"""Replay pacing and delivery-error handling, without Kafka."""

import pytest

from streams.codec import decode_event, decode_item
from streams.datasets import synthetic
from streams.replay import pacing_delay, replay
from streams.testing import FakeClock, ListSink


def test_pacing_by_event_time_speed():
    # 10 s of event time at speed 10 is due 1 s after the start
    assert pacing_delay(index=5, event_ts_ms=10_000, first_ts_ms=0, elapsed_s=0.25, speed=10, rate=0) == pytest.approx(0.75)
    assert pacing_delay(index=5, event_ts_ms=10_000, first_ts_ms=0, elapsed_s=2.0, speed=10, rate=0) == 0.0


def test_pacing_by_rate_cap_and_unpaced():
    assert pacing_delay(index=100, event_ts_ms=0, first_ts_ms=0, elapsed_s=0.5, speed=0, rate=100) == pytest.approx(0.5)
    assert pacing_delay(index=10**6, event_ts_ms=10**12, first_ts_ms=0, elapsed_s=0, speed=0, rate=0) == 0.0
    # the slower of the two constraints wins
    assert pacing_delay(index=10, event_ts_ms=4_000, first_ts_ms=0, elapsed_s=0, speed=1, rate=100) == pytest.approx(4.0)


def test_replay_sends_items_first_then_events_in_order_keyed():
    data = synthetic(users=5, items=16, events=50, seed=2)
    sink = ListSink()
    stats = replay(sink, items=data.items, events=data.events, items_topic="it", events_topic="ev")
    assert (stats.items, stats.events) == (16, 50)
    topics = [s.topic for s in sink.sent]
    assert topics == ["it"] * 16 + ["ev"] * 50
    events = [decode_event(s.value, now_ms=2**62) for s in sink.sent[16:]]
    assert events == data.events
    assert all(s.key == e.user_id.encode() for s, e in zip(sink.sent[16:], events))
    assert [decode_item(s.value, now_ms=2**62) for s in sink.sent[:16]] == data.items


def test_replay_raises_on_delivery_failure():
    data = synthetic(users=2, items=8, events=3, seed=0)
    with pytest.raises(OSError, match="gone"):
        replay(ListSink(fail_with=OSError("gone")), items=data.items, events=data.events, items_topic="i", events_topic="e")


def test_replay_sleeps_to_respect_rate():
    data = synthetic(users=2, items=8, events=20, seed=0)
    clock, slept = FakeClock(0.0), []

    def sleep(s):
        slept.append(s)
        clock.advance(s)

    replay(ListSink(), items=[], events=data.events, items_topic="i", events_topic="e", rate=10, sleep=sleep, clock=clock)
    assert sum(slept) == pytest.approx(1.9)  # event 19 is due at 1.9 s
