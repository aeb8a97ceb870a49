"""Replay a dataset into Kafka: items first, then events in event-time order.

``speed`` compresses event time (``speed=1000``: 1000 s of event time per
second; ``0``: as fast as possible); ``rate`` caps events per second. Pacing
is a pure function of (event time, start, wall clock) so it is unit-tested.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from streams.codec import encode_event, encode_item
from streams.records import Event, ItemUpsert

__all__ = ["ReplayStats", "pacing_delay", "replay"]

logger = logging.getLogger(__name__)


@dataclass
class ReplayStats:
    items: int = 0
    events: int = 0
    seconds: float = 0.0


def pacing_delay(
    *, index: int, event_ts_ms: int, first_ts_ms: int, elapsed_s: float, speed: float, rate: float
) -> float:
    """Seconds to wait before sending event number ``index`` (0-based) so that
    neither the event-time speed-up nor the rate cap is exceeded."""
    due = 0.0
    if speed > 0:
        due = max(due, (event_ts_ms - first_ts_ms) / 1000.0 / speed)
    if rate > 0:
        due = max(due, index / rate)
    return max(0.0, due - elapsed_s)


def replay(
    producer: Any,
    *,
    items: Sequence[ItemUpsert],
    events: Iterable[Event],
    items_topic: str,
    events_topic: str,
    speed: float = 0.0,
    rate: float = 0.0,
    on_item: Callable[[int], None] = lambda n: None,
    on_event: Callable[[int], None] = lambda n: None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayStats:
    """Send ``items`` then ``events``; returns once every record is acknowledged
    (raises the first delivery error otherwise: nothing is dropped silently)."""
    stats = ReplayStats()
    failures: list[BaseException] = []

    def send(topic: str, key: str, value: bytes) -> None:
        producer.send(topic, key=key.encode(), value=value).add_errback(failures.append)

    def flush() -> None:
        producer.flush()
        if failures:
            raise failures[0]

    start = clock()
    for item in items:
        send(items_topic, item.item_id, encode_item(item))
        stats.items += 1
        on_item(1)
    flush()
    events_start = clock()
    first_ts: int | None = None
    for index, event in enumerate(events):
        if first_ts is None:
            first_ts = event.ts
        if speed > 0 or rate > 0:
            delay = pacing_delay(
                index=index, event_ts_ms=event.ts, first_ts_ms=first_ts, elapsed_s=clock() - events_start,
                speed=speed, rate=rate,
            )  # fmt: skip
            if delay > 0:
                sleep(delay)
        send(events_topic, event.user_id, encode_event(event))
        stats.events += 1
        on_event(1)
    flush()
    stats.seconds = clock() - start
    return stats
