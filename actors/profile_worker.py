"""A profile worker: consumes its ``events`` partitions, updates profiles, publishes refreshed top-K lists.

Worker ``w`` of ``W`` owns events partitions ``p`` with ``p % W == w`` (assigned by
the supervisor, no consumer-group rebalances) and keeps its consumer inside the
actor, so events never cross an actor boundary one by one. A background thread
runs micro-batches of up to ``max_batch`` records:

1. decode; invalid records become dead letters (inside the transaction);
2. apply the valid events to :class:`actors.user_state.UserState`;
3. write each touched user's snapshot to ``profiles-changelog`` (its events
   partition, keyed by user) and its refreshed :class:`Recommendations` to ``recs``;
4. **exactly-once** (default): steps 1-3 and the consumed offsets
   (``send_offsets_to_transaction``) form one Kafka transaction. **at-least-once**:
   flush, then commit the offsets; a replay after a crash is absorbed by the
   per-user last-applied offset, so no event is applied twice (a list may be
   published twice).

Recovery (start, restart by Ray, or any failed batch) follows the contract in
:mod:`streams.changelog`: a new transactional producer with this worker's fixed
transactional id (``init_transactions`` fences a zombie and completes or aborts
its open transaction), profiles restored from the changelog, the co-visitation
and popularity signals rebuilt by re-reading the owned events partitions up to
the committed offsets, and consumption resumed from the committed offsets. The
in-memory state is always discarded on failure: a transaction whose commit
outcome is unknown is never aborted; the fresh producer resolves it and the
restore reads whatever the log says was committed.

This is a plain class; ``cluster.pipeline`` applies ``ray.remote`` options.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from actors.core.clusters import TopicClusters
from actors.user_state import ItemSource, UserSideConfig, UserState
from streams.changelog import decode_changelog, encode_changelog, read_partitions
from streams.codec import Limits, decode_event, encode_recommendations
from streams.consumer import dead_letter_headers
from streams.records import Consumed, Event, Recommendations

__all__ = ["ProfileWorker", "WorkerConfig", "restore_profiles"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    worker: int
    workers: int
    events_topic: str
    changelog_topic: str
    recs_topic: str
    dead_letters_topic: str
    group_id: str  # consumed offsets are committed to this group (assignment is static)
    transactional_id: str  # prefix; the worker index is appended (stable across restarts)
    mode: Literal["exactly_once", "at_least_once"] = "exactly_once"
    max_batch: int = 10_000
    poll_timeout_ms: int = 100
    commit_retries: int = 5
    # Also read the other workers' partitions (read-only) so that co-visitation and
    # popularity are learned from every user, not only this worker's.
    shared_collaborative: bool = True
    model_version: int = 0
    user: UserSideConfig = field(default_factory=UserSideConfig)
    autostart: bool = True  # recover and start consuming in __init__, so a restarted actor resumes by itself


class _Failed(Exception):
    """A batch did not become durable: state is rebuilt from the log."""


class ProfileWorker:
    def __init__(self, cfg: WorkerConfig, connection: Any, items: ItemSource, clusters: TopicClusters | None,
                 limits: Limits = Limits()):  # fmt: skip
        if not 0 <= cfg.worker < cfg.workers:
            raise ValueError(f"worker {cfg.worker} is not in 0..{cfg.workers - 1}")
        self.cfg = cfg
        self.connection = connection
        self.items = items
        self.clusters = clusters
        self.limits = limits
        self.model_version = cfg.model_version
        self._pending_model: tuple[int, TopicClusters | None] | None = None
        self.state = UserState(cfg.user, items, clusters, cfg.model_version)
        self.partitions: list[int] = []
        self._consumer = self._producer = self._others = None
        self._lock = threading.RLock()  # guards self.state against readers (explain, recommend)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pending_freshness: list[int] = []
        self._freshness = deque(maxlen=20_000)  # ms from event produced to its recs being committed
        self._lag: dict[int, int] = {}
        self._lag_at = 0.0
        self.counters = {"events": 0, "dead_letters": 0, "batches": 0, "recs": 0, "recoveries": 0,
                         "restored_profiles": 0}  # fmt: skip
        self.seconds = {"apply": 0.0, "refresh": 0.0, "commit": 0.0}  # time spent per phase (profiling aid)
        self.restore_s = 0.0
        if cfg.autostart:
            self.start()

    # ------------------------------------------------------------ recovery

    def _recover(self) -> None:
        from kafka import TopicPartition

        from streams.client import make_consumer, make_producer

        self._close_clients()
        cfg = self.cfg
        started = time.monotonic()
        if cfg.mode == "exactly_once":
            producer = make_producer(self.connection, transactional_id=f"{cfg.transactional_id}-{cfg.worker}",
                                     linger_ms=1)  # fmt: skip
            producer.init_transactions()
        else:
            producer = make_producer(self.connection, linger_ms=1)
        consumer = make_consumer(self.connection, group_id=cfg.group_id, max_poll_records=cfg.max_batch)
        self._producer, self._consumer = producer, consumer
        partitions = _partitions(consumer, cfg.events_topic)
        self.partitions = [p for p in partitions if p % cfg.workers == cfg.worker]
        tps = [TopicPartition(cfg.events_topic, p) for p in self.partitions]
        consumer.assign(tps)
        committed = {tp.partition: consumer.committed(tp) or 0 for tp in tps}
        self._follow_items_model()
        state = UserState(cfg.user, self.items, self.clusters, self.model_version)
        restored = self._restore_profiles(state)
        self._rebuild_collaborative(state, committed)
        others = [p for p in partitions if p not in self.partitions] if cfg.shared_collaborative else []
        self._others = self._follow_others(state, others) if others else None
        for tp in tps:
            consumer.seek(tp, committed[tp.partition])
        with self._lock:
            self.state = state
        self.restore_s = time.monotonic() - started
        self.counters["restored_profiles"] = restored
        logger.info("profile worker %d: partitions %s, %d profiles restored, resuming at %s (%.2f s)", cfg.worker,
                    self.partitions, restored, committed, self.restore_s)  # fmt: skip

    def _follow_items_model(self) -> None:
        """After a restart, take the encoder version the shards serve now (a rollout may have
        happened since this actor was created): its topic clusters are refitted from the shards."""
        current = getattr(self.items, "model_version", None)
        version = current() if current is not None else self.model_version
        if version > self.model_version:
            from actors.core.clusters import fit_topic_clusters

            sample = self.items.sample_vectors(50_000, 0)
            self.clusters = fit_topic_clusters(sample, self.cfg.user.profile.n_clusters) if len(sample) else None
            self.model_version = version

    def rollout(self, model_version: int, clusters: TopicClusters | None) -> bool:
        """Switch to a newer encoder version between two micro-batches (profiles are rebuilt
        from their rings on next use). Returns False for a version that is not newer."""
        if model_version <= self.model_version:
            return False
        self._pending_model = (model_version, clusters)
        return True

    def _apply_pending_model(self) -> None:
        pending, self._pending_model = self._pending_model, None
        if pending is None or pending[0] <= self.model_version:
            return
        with self._lock:
            self.state.set_model(*pending)
            self.model_version, self.clusters = pending
        logger.info("profile worker %d now uses model version %d", self.cfg.worker, self.model_version)

    def _side_consumer(self):
        from streams.client import make_reader

        return make_reader(self.connection)

    def _restore_profiles(self, state: UserState) -> int:
        consumer = self._side_consumer()
        try:
            return restore_profiles(consumer, self.cfg.changelog_topic, self.partitions, state)
        finally:
            consumer.close()

    def _rebuild_collaborative(self, state: UserState, committed: dict[int, int]) -> None:
        consumer = self._side_consumer()
        now_ms = int(time.time() * 1000)
        batch: list[Event] = []
        try:
            for r in read_partitions(consumer, self.cfg.events_topic, self.partitions, until=committed):
                try:
                    batch.append(decode_event(r.value, now_ms=now_ms, limits=self.limits))
                except Exception:  # dead-lettered when it was first consumed
                    continue
                if len(batch) >= 10_000:
                    state.fold_collaborative(batch)
                    batch = []
        finally:
            consumer.close()
        state.fold_collaborative(batch)

    def _follow_others(self, state: UserState, partitions: list[int]):
        """Fold the other workers' partitions into the collaborative signals up to their end
        now, and return a consumer positioned there to keep following them."""
        from kafka import TopicPartition

        consumer = self._side_consumer()
        ends = consumer.end_offsets([TopicPartition(self.cfg.events_topic, p) for p in partitions])
        until = {tp.partition: o for tp, o in ends.items()}
        now_ms = int(time.time() * 1000)
        batch: list[Event] = []
        for r in read_partitions(consumer, self.cfg.events_topic, partitions, until=until):
            try:
                batch.append(decode_event(r.value, now_ms=now_ms, limits=self.limits))
            except Exception:  # their owner dead-letters it
                continue
        state.fold_collaborative(batch, own=False)
        consumer.resume(*consumer.assignment())
        for tp, offset in ends.items():
            consumer.seek(tp, offset)
        return consumer

    def _poll_others(self) -> None:
        if self._others is None:
            return
        polled = self._others.poll(timeout_ms=0, max_records=self.cfg.max_batch)
        now_ms = int(time.time() * 1000)
        events = []
        for records in polled.values():
            for r in records:
                try:
                    events.append(decode_event(r.value, now_ms=now_ms, limits=self.limits))
                except Exception:
                    continue
        if events:
            with self._lock:
                self.state.fold_collaborative(events, own=False)

    def _close_clients(self) -> None:
        for client in (self._consumer, self._producer, self._others):
            if client is not None:
                try:
                    client.close()
                except Exception as exc:  # closing a broken client must not block recovery
                    logger.warning("closing a Kafka client failed: %s", exc)
        self._consumer = self._producer = self._others = None

    # ------------------------------------------------------------ the loop

    def start(self) -> bool:
        """Recover, then consume in a background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return False
        self._recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"profile-worker-{self.cfg.worker}", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.run_once()
                failures = 0
            except Exception as exc:
                failures += 1
                logger.warning("profile worker %d: batch failed (%s); rebuilding state from the log", self.cfg.worker,
                               exc)  # fmt: skip
                self._error = exc
                time.sleep(min(30.0, 0.5 * 2**min(failures, 6)))
                try:
                    self._recover()
                    self.counters["recoveries"] += 1
                    self._error = None
                except Exception as again:
                    logger.exception("profile worker %d: recovery failed", self.cfg.worker)
                    self._error = again
        self._close_clients()

    def run_once(self) -> int:
        """One micro-batch; returns the number of records polled."""
        if self._pending_model is not None:
            self._apply_pending_model()
        self._poll_others()
        polled = self._consumer.poll(timeout_ms=self.cfg.poll_timeout_ms, max_records=self.cfg.max_batch)
        records = [r for rs in polled.values() for r in rs]
        self._update_lag()
        if not records:
            return 0
        exactly_once = self.cfg.mode == "exactly_once"
        producer = self._producer
        if exactly_once:
            producer.begin_transaction()
        try:
            published = self._process(records)
            if exactly_once:
                producer.send_offsets_to_transaction(_next_offsets(records), self.cfg.group_id)
        except Exception as exc:
            if exactly_once:
                producer.abort_transaction()  # nothing was committed yet: aborting is safe
            raise _Failed(f"batch of {len(records)} records failed: {exc}") from exc
        started = time.perf_counter()
        if exactly_once:
            self._commit_transaction()
        else:
            producer.flush()
            for future in published:
                future.get(timeout=60)  # raises a send error before the offsets are committed
            self._consumer.commit(offsets=_next_offsets(records))
        self.seconds["commit"] += time.perf_counter() - started
        now_ms = time.time() * 1000
        for source_ts in self._pending_freshness:
            self._freshness.append(now_ms - source_ts)
        return len(records)

    def _commit_transaction(self) -> None:
        last: Exception | None = None
        for attempt in range(self.cfg.commit_retries):
            try:
                self._producer.commit_transaction()
                return
            except Exception as exc:  # outcome unknown: retry the commit, never abort
                last = exc
                logger.warning("transaction commit failed (attempt %d): %s", attempt + 1, exc)
                time.sleep(0.2 * (attempt + 1))
        # Still unknown: the recovery's new producer (same transactional id) resolves it.
        raise _Failed(f"transaction commit outcome unknown after {self.cfg.commit_retries} attempts: {last}")

    def _process(self, records: list[Any]) -> list[Any]:
        cfg = self.cfg
        now_ms = int(time.time() * 1000)
        send = self._producer.send
        futures = []
        valid: list[Consumed[Event]] = []
        for r in records:
            try:
                valid.append(Consumed(decode_event(r.value, now_ms=now_ms, limits=self.limits), r.topic, r.partition,
                                      r.offset, r.timestamp, r.key))  # fmt: skip
            except Exception as exc:  # every invalid record is dead-lettered, never applied
                headers = dead_letter_headers(topic=r.topic, partition=r.partition, offset=r.offset,
                                              timestamp=r.timestamp, error=exc, now_ms=now_ms)  # fmt: skip
                logger.warning("dead-lettering %s[%d]@%d: %s", r.topic, r.partition, r.offset, exc)
                futures.append(send(cfg.dead_letters_topic, value=r.value, key=r.key, headers=headers))
                self.counters["dead_letters"] += 1
        with self._lock:
            started = time.perf_counter()
            touched = self.state.apply(valid)
            for user_id, rec in touched.items():
                offset, profile = self.state.snapshot(user_id)
                futures.append(send(cfg.changelog_topic, key=user_id.encode(), partition=rec.partition,
                                    value=encode_changelog(rec.partition, offset, profile,
                                                           self.state.model_version)))  # fmt: skip
            self.seconds["apply"] += time.perf_counter() - started
            started = time.perf_counter()
            refreshed = self.state.refresh(list(touched))
            self.seconds["refresh"] += time.perf_counter() - started
        generated = int(time.time() * 1000)
        self._pending_freshness = []
        for r in refreshed:
            src = touched[r.user_id]
            recs = Recommendations(r.user_id, r.items, self.state.model_version, r.profile_version, generated,
                                   src.partition, src.offset, src.value.ts)  # fmt: skip
            futures.append(send(cfg.recs_topic, key=r.user_id.encode(), value=encode_recommendations(recs)))
            self._pending_freshness.append(src.timestamp)
        self.counters["events"] += len(valid)
        self.counters["batches"] += 1
        self.counters["recs"] += len(refreshed)
        return futures

    def _update_lag(self) -> None:
        if time.monotonic() - self._lag_at < 1.0:
            return
        self._lag_at = time.monotonic()
        consumer = self._consumer
        try:
            tps = list(consumer.assignment())
            ends = consumer.end_offsets(tps)
            self._lag = {tp.partition: max(0, ends[tp] - consumer.position(tp)) for tp in tps}
        except Exception as exc:  # metrics must never break the loop
            logger.debug("lag update failed: %s", exc)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the current batch, then close the clients."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ------------------------------------------------------------ reading

    def stats(self) -> dict[str, Any]:
        fresh = np.asarray(self._freshness, dtype=np.float64)
        return {
            "worker": self.cfg.worker,
            "partitions": list(self.partitions),
            "mode": self.cfg.mode,
            "model_version": self.model_version,
            "users": len(self.state),
            "lag": dict(self._lag),
            "freshness_ms_p50": float(np.percentile(fresh, 50)) if fresh.size else None,
            "freshness_ms_p99": float(np.percentile(fresh, 99)) if fresh.size else None,
            "events_without_item_vector": self.state.without_vector,
            "restore_s": self.restore_s,
            "seconds": dict(self.seconds),
            "running": self._thread is not None and self._thread.is_alive(),
            "error": repr(self._error) if self._error else None,
            **self.counters,
        }

    def snapshots(self) -> dict[str, tuple[int, bytes]]:
        """Every owned user's (last applied offset, profile bytes): for checks against a fold."""
        with self._lock:
            return {u: self.state.snapshot(u) for u in self.state.user_ids()}

    def explain(self, user_id: str) -> dict | None:
        with self._lock:
            return self.state.explain(user_id)

    def recommend(self, user_id: str, k: int = 10) -> dict[str, Any]:
        """The user's top-k ranked now from the live profile (not the last published list).

        ``known`` is False for a user this worker has no state for: the list is then the
        popular items (the cold-start fallback)."""
        with self._lock:
            known = user_id in self.state.applied
            r = self.state.refresh([user_id], k)[0]  # reads only: an unknown user gets no state
        return {"user_id": user_id, "known": known, "profile_version": r.profile_version,
                "model_version": self.model_version,
                "items": [{"item_id": i.item_id, "score": i.score, "reasons": list(i.reasons)} for i in r.items]}

    def recommend_many(self, user_ids: list[str], k: int = 10) -> dict[str, list[str]]:
        """Item ids of many users' live top-k lists, in one call (evaluation)."""
        with self._lock:
            return {r.user_id: [i.item_id for i in r.items] for r in self.state.refresh(user_ids, k)}

    def rank(self, user_id: str, item_ids: list[str]) -> dict[str, Any]:
        """A caller's candidates ranked for the user now (see ``UserState.score_items``)."""
        with self._lock:
            known = user_id in self.state.applied
            ranked = self.state.score_items(user_id, item_ids)
        return {"user_id": user_id, "known": known, "model_version": self.model_version,
                "items": [{"item_id": i, "score": s, "reasons": list(r)} for i, s, r in ranked]}

    def pid(self) -> int:
        """The actor's process id (fault-injection tests SIGKILL it)."""
        return os.getpid()


def restore_profiles(consumer: Any, topic: str, partitions: list[int], state: UserState) -> int:
    """Load the latest snapshot of every user in the changelog ``partitions`` into ``state``
    (tombstones delete); returns the number of profiles restored. ``consumer`` is group-less."""
    latest: dict[bytes, Any] = {}
    for r in read_partitions(consumer, topic, partitions):
        latest[r.key] = r
    n = 0
    for key, r in latest.items():
        if r.value is None:  # tombstone: the user was forgotten
            continue
        rec = decode_changelog(key, r.value, f"{r.topic}[{r.partition}]@{r.offset}")
        state.restore(rec.user_id, rec.source_offset, rec.profile, rec.model_version)
        n += 1
    return n


def _partitions(consumer: Any, topic: str, wait_s: float = 60.0) -> list[int]:
    from streams.errors import TopicMissing

    deadline = time.monotonic() + wait_s
    while True:
        found = consumer.partitions_for_topic(topic)
        if found:
            return sorted(found)
        if time.monotonic() > deadline:
            raise TopicMissing(f"topic {topic!r} does not exist: create it with `streamrec topics create`")
        time.sleep(0.5)


def _next_offsets(records: list[Any]) -> dict:
    """Per partition, the offset after the batch's last record ("resume after the last applied")."""
    from kafka import OffsetAndMetadata, TopicPartition

    last: dict[Any, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        last[tp] = max(last.get(tp, -1), r.offset)
    return {tp: OffsetAndMetadata(o + 1, "", -1) for tp, o in last.items()}
