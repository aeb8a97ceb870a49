"""In-memory doubles of the Kafka clients, for unit tests of pure loop logic.

They reproduce only what streamrec's loops use (poll/commit, send/flush). Tests
that claim to test streaming use the real broker instead (tests/integration).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FakeClock", "ListSink", "ListSource", "Record", "SentRecord"]


@dataclass(frozen=True)
class Record:
    """The fields of kafka-python's ConsumerRecord that streamrec reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class ListSource:
    """A consumer double: serves records in order, ``max_records`` at a time; records commits."""

    def __init__(self, records: list[Record]):
        self._records = list(records)
        self._position = 0
        self.committed: dict[tuple[str, int], int] = {}
        self.commit_calls = 0

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[tuple[str, int], list[Record]]:
        end = len(self._records) if max_records is None else min(len(self._records), self._position + max_records)
        out: dict[tuple[str, int], list[Record]] = {}
        for record in self._records[self._position : end]:
            out.setdefault((record.topic, record.partition), []).append(record)
        self._position = end
        return out

    def seek(self, tp: Any, offset: int) -> None:
        """Move back to (tp, offset): the next poll re-serves records from there on."""
        for index, r in enumerate(self._records):
            if (r.topic, r.partition, r.offset) == (tp.topic, tp.partition, offset):
                self._position = min(self._position, index)
                return
        raise ValueError(f"no record at {tp.topic}[{tp.partition}]@{offset}")

    def commit(self, offsets: dict[Any, Any]) -> None:
        self.commit_calls += 1
        for tp, meta in offsets.items():
            self.committed[(tp.topic, tp.partition)] = meta.offset


@dataclass
class SentRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class _Future:
    def __init__(self, error: BaseException | None):
        self._error = error

    def add_errback(self, fn):
        if self._error is not None:
            fn(self._error)
        return self

    def get(self, timeout: float | None = None):
        if self._error is not None:
            raise self._error
        return None


class ListSink:
    """A producer double: keeps what was sent; ``fail_with`` makes every send fail."""

    def __init__(self, fail_with: BaseException | None = None):
        self.sent: list[SentRecord] = []
        self.fail_with = fail_with
        self.flushes = 0

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, headers=None) -> _Future:
        if self.fail_with is None:
            self.sent.append(SentRecord(topic, key, value, list(headers or [])))
        return _Future(self.fail_with)

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1


class FakeClock:
    """A settable clock in seconds (``time.time`` shaped)."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
