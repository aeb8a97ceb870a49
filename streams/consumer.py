"""The consumer loop every streamrec consumer uses: poll, decode, apply, dead-letter, commit.

Contract of one iteration (``run_once``):

1. poll up to ``max_batch`` records;
2. decode each record once; an :class:`~streams.errors.InvalidRecord` (or any
   decoder error) sends the original bytes to the dead-letter topic with context
   headers (:func:`dead_letter_headers`) instead of reaching the handler;
3. call ``handler(batch)`` with the valid records in partition order. The handler
   makes its effect durable before it returns, and may reject single records by
   returning ``[(record, exception), ...]``: those are dead-lettered too;
4. wait until every dead letter is acknowledged by the broker (acks=all);
5. commit, per partition, the offset *after* the last record of the batch
   ("resume after the last applied offset").

A crash anywhere before step 5 re-delivers the batch after restart, so the
handler must be idempotent or transactional (the pipeline's exactly-once mode
replaces step 5 with a transaction). A handler or dead-letter exception
propagates, nothing of that batch is committed, and the consumer is moved back
to the batch's first offsets so that calling ``run`` again re-delivers it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Sequence, TypeVar

from streams.records import Consumed

__all__ = ["DeadLetters", "LoopStats", "StreamLoop", "dead_letter_headers", "DLQ_HEADER_PREFIX"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
DLQ_HEADER_PREFIX = "streamrec.dlq."
_MAX_REASON_CHARS = 500

Decoder = Callable[[bytes | None, bytes | None, int], T]
Handler = Callable[[list[Consumed[T]]], Iterable[tuple[Consumed[T], Exception]] | None]


def dead_letter_headers(
    *, topic: str, partition: int, offset: int, timestamp: int, error: BaseException, now_ms: int
) -> list[tuple[str, bytes]]:
    """Context headers of a dead letter (names prefixed ``streamrec.dlq.``)."""
    reason = str(error) or type(error).__name__
    fields = {
        "origin.topic": topic,
        "origin.partition": str(partition),
        "origin.offset": str(offset),
        "origin.timestamp": str(timestamp),
        "error.class": f"{type(error).__module__}.{type(error).__qualname__}",
        "error.reason": reason[:_MAX_REASON_CHARS],
        "failed.at": str(now_ms),
    }
    return [(DLQ_HEADER_PREFIX + k, v.encode("utf-8", "replace")) for k, v in fields.items()]


class DeadLetters:
    """Sends invalid records to the dead-letter topic and tracks their acknowledgements."""

    def __init__(self, producer: Any, topic: str, clock: Callable[[], float] = time.time):
        self._producer = producer
        self.topic = topic
        self._clock = clock
        self._pending: list[Any] = []
        self.count = 0

    def send(
        self, *, value: bytes | None, key: bytes | None, topic: str, partition: int, offset: int, timestamp: int,
        error: BaseException,
    ) -> None:  # fmt: skip
        headers = dead_letter_headers(
            topic=topic, partition=partition, offset=offset, timestamp=timestamp, error=error,
            now_ms=int(self._clock() * 1000),
        )  # fmt: skip
        logger.warning("dead-lettering %s[%d]@%d: %s", topic, partition, offset, error)
        self._pending.append(self._producer.send(self.topic, value=value, key=key, headers=headers))
        self.count += 1

    def close(self) -> None:
        self._producer.close()

    def flush(self, timeout_s: float = 60.0) -> None:
        """Block until every sent dead letter is acknowledged; raise if one failed."""
        if not self._pending:
            return
        self._producer.flush(timeout=timeout_s)
        pending, self._pending = self._pending, []
        for future in pending:
            future.get(timeout=timeout_s)  # raises the send error, so the batch is not committed


@dataclass
class LoopStats:
    polled: int = 0
    applied: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commits: int = 0


class StreamLoop(Generic[T]):
    """Bounded, stoppable consume-apply-commit loop over a kafka-python consumer."""

    def __init__(
        self,
        consumer: Any,
        decode: Decoder[T],
        handler: Handler[T],
        dead_letters: DeadLetters,
        *,
        max_batch: int = 500,
        poll_timeout_ms: int = 200,
        clock: Callable[[], float] = time.time,
        commit: bool = True,
    ):
        self.consumer = consumer
        self.decode = decode
        self.handler = handler
        self.dead_letters = dead_letters
        self.max_batch = max_batch
        self.poll_timeout_ms = poll_timeout_ms
        self.clock = clock
        self.commit_offsets = commit
        self.stats = LoopStats()

    def run_once(self) -> int:
        """One poll-apply-commit iteration; returns the number of records polled."""
        polled = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.max_batch)
        records = [r for partition_records in polled.values() for r in partition_records]
        if not records:
            return 0
        try:
            self._process(records)
        except BaseException:
            # poll() already moved past the batch: move back, so a retried run re-delivers it
            # instead of committing past records whose effect never became durable.
            self._rewind(records)
            raise
        return len(records)

    def _process(self, records: Sequence[Any]) -> None:
        now_ms = int(self.clock() * 1000)
        batch: list[Consumed[T]] = []
        for record in records:
            try:
                value = self.decode(record.value, record.key, now_ms)
            except Exception as exc:  # every decode failure is a dead letter, never a crash
                self._dead_letter(record.value, record.key, record.topic, record.partition, record.offset,
                                  record.timestamp, exc)  # fmt: skip
                continue
            batch.append(Consumed(value, record.topic, record.partition, record.offset, record.timestamp, record.key))
        rejected = list(self.handler(batch) or ()) if batch else []
        for item, exc in rejected:
            self._dead_letter(_raw_of(item, records), item.key, item.topic, item.partition, item.offset,
                              item.timestamp, exc)  # fmt: skip
        self.dead_letters.flush()
        self.stats.polled += len(records)
        self.stats.applied += len(batch) - len(rejected)
        self.stats.batches += 1
        if self.commit_offsets:
            self._commit(records)

    def _rewind(self, records: Sequence[Any]) -> None:
        from kafka import TopicPartition

        first: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        for tp, offset in first.items():
            try:
                self.consumer.seek(tp, offset)
            except Exception as exc:  # e.g. the partition was revoked meanwhile: its new owner re-reads it
                logger.warning("could not rewind %s[%d] to %d: %s", tp.topic, tp.partition, offset, exc)

    def run(
        self,
        *,
        max_events: int | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> LoopStats:
        """Loop until ``max_events`` records were polled, ``timeout`` seconds passed,
        no record arrived for ``idle_timeout`` seconds, or ``stop`` is set."""
        start = last_record = time.monotonic()
        while True:
            if stop is not None and stop.is_set():
                break
            now = time.monotonic()
            if timeout is not None and now - start >= timeout:
                break
            if idle_timeout is not None and now - last_record >= idle_timeout:
                break
            if max_events is not None and self.stats.polled >= max_events:
                break
            if self.run_once():
                last_record = time.monotonic()
        return self.stats

    def _dead_letter(self, value, key, topic, partition, offset, timestamp, exc: BaseException) -> None:
        self.dead_letters.send(
            value=value, key=key, topic=topic, partition=partition, offset=offset, timestamp=timestamp, error=exc
        )
        self.stats.dead_lettered += 1

    def _commit(self, records: Sequence[Any]) -> None:
        from kafka import OffsetAndMetadata, TopicPartition

        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            last[tp] = max(last.get(tp, -1), r.offset)
        offsets = {tp: OffsetAndMetadata(offset + 1, "", -1) for tp, offset in last.items()}
        try:
            self.consumer.commit(offsets=offsets)
            self.stats.commits += 1
        except Exception as exc:
            from kafka.errors import CommitFailedError

            if not isinstance(exc, CommitFailedError):
                raise
            # The group rebalanced: the new owner re-delivers from the last commit (at-least-once).
            logger.warning("offset commit failed after a rebalance; the batch will be re-delivered: %s", exc)


def _raw_of(item: Consumed, records: Sequence[Any]) -> bytes | None:
    for r in records:
        if r.partition == item.partition and r.offset == item.offset and r.topic == item.topic:
            return r.value
    return None
