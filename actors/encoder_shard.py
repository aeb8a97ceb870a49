"""One shard of the item catalogue: consumes the ``items`` topic, encodes the items it owns, serves search.

Ownership is :func:`actors.core.retrieval.shard_of` (item id hash mod S). Every
shard reads every partition of the compacted ``items`` topic and keeps its own
items, so a shard (re)starts by replaying the topic from the beginning: the
compacted topic *is* the durable catalogue, and no shard state needs a
separate snapshot to be correct. With ``snapshot_dir`` set, the shard writes
index snapshots (every ``snapshot_interval_s``, sooner after
``snapshot_records`` applied records, and when it stops) and a (re)started
shard loads the newest usable one and replays only the records after its
offsets; the contract is in :mod:`actors.index_snapshot`.

The index is exact (Flat) by default, or HNSW/IVF for large shards
(``ShardConfig.index``, see :mod:`actors.core.ann`).

A background thread runs the shared consumer loop; searches take a lock only
for the index read, so upserts become searchable as soon as their micro-batch
is encoded (sub-second for small batches on a CPU).

This is a plain class: ``cluster.encoders`` applies ``ray.remote`` options.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.core.ann import IndexConfig
from actors.core.retrieval import ShardIndex, shard_of
from actors.encoder import DEFAULT_MODEL, item_text, load_text_encoder
from actors.index_snapshot import IndexSnapshot, IndexSnapshotStore, positions_outside
from streams.codec import Limits, decode_item, normalize_id
from streams.errors import InvalidRecord
from streams.consumer import DeadLetters, StreamLoop
from streams.records import Consumed, ItemUpsert

__all__ = ["EncoderShard", "ShardConfig"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardConfig:
    shard: int
    shards: int
    items_topic: str
    dead_letters_topic: str
    model: str = DEFAULT_MODEL
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = 64
    torch_threads: int = 1
    max_poll_records: int = 256
    model_version: int = 0
    autostart: bool = True  # start consuming in __init__, so a restarted actor resumes by itself
    index: IndexConfig = IndexConfig()
    snapshot_dir: str | None = None  # index snapshots (actors.index_snapshot); None: off, full replay
    snapshot_interval_s: float = 300.0
    snapshot_records: int = 0  # also snapshot after this many applied records; 0: by time only
    snapshot_max_age_s: float = 43_200.0  # keep below the items topic's delete.retention.ms


class EncoderShard:
    def __init__(self, cfg: ShardConfig, connection: Any, limits: Limits = Limits()):
        import torch

        if not 0 <= cfg.shard < cfg.shards:
            raise ValueError(f"shard {cfg.shard} is not in 0..{cfg.shards - 1}")
        torch.set_num_threads(cfg.torch_threads)
        self.cfg = cfg
        self.connection = connection
        self.limits = limits
        self.encoder = load_text_encoder(cfg.model, device=cfg.device, dtype=cfg.dtype)
        # HNSW/IVF layers are (re)built by _maintain_index, outside the lock, while searches go on
        self.index = ShardIndex(self.encoder.dim, cfg.index, auto_maintain=False)
        self._maintainer: threading.Thread | None = None
        self._layer_built = False  # since the last snapshot
        self.model_version = cfg.model_version
        self._rollout: int | None = None  # the version being built in the background
        self._changed: set[str] | None = None  # ids upserted or deleted while a rollout builds
        self._rollout_error: str | None = None
        self.meta: dict[str, ItemUpsert] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.applied = 0
        self.positions: dict[int, int] = {}  # partition -> next offset to read
        self.last_applied_at = 0.0
        self.records_read = 0  # records polled from the topic since this shard started (its replay)
        self._store = (IndexSnapshotStore(cfg.snapshot_dir, cfg.items_topic, cfg.shard, cfg.shards)
                       if cfg.snapshot_dir else None)  # fmt: skip
        self._resume: dict[int, int] | None = None  # positions of the restored snapshot, for the first start
        self.restore: dict[str, Any] = {"restored": False, "reason": "snapshots off"}
        self._snapshot_mark = (time.monotonic(), 0, 0, cfg.model_version)  # when, read, applied, version
        self.snapshots_written = 0
        self.last_snapshot: dict[str, Any] | None = None
        if self._store is not None:
            self._restore()
        if cfg.autostart:
            self.start()

    # ------------------------------------------------------------ consuming

    def _make_loop(self) -> StreamLoop[ItemUpsert]:
        from streams.client import assign_from_beginning, make_consumer, make_producer

        consumer = make_consumer(self.connection, group_id=None, max_poll_records=self.cfg.max_poll_records)
        # Explicit assignment of every partition, replayed from the beginning (no group, no commits)
        # or from a restored snapshot's positions.
        try:
            tps = assign_from_beginning(consumer, self.cfg.items_topic, wait_s=60)
            resume, self._resume = self._resume, None
            if resume is not None:
                self._seek_to_snapshot(consumer, tps, resume)
        except BaseException:
            consumer.close()
            raise
        dlq = DeadLetters(make_producer(self.connection), self.cfg.dead_letters_topic)

        def decode(value: bytes | None, key: bytes | None, now_ms: int) -> ItemUpsert | None:
            # Records of other shards are skipped unparsed, so each invalid record is dead-lettered
            # by exactly one shard: the key's owner (shard 0 for records without a usable key).
            owner = self._owner(key)
            if owner != self.cfg.shard:
                return None
            return decode_item(value, key=key, now_ms=now_ms, limits=self.limits)

        return StreamLoop(consumer, decode, self._apply, dlq, commit=False,
                          max_batch=self.cfg.max_poll_records)  # fmt: skip

    def _owner(self, key: bytes | None) -> int:
        try:
            return shard_of(normalize_id(key.decode("utf-8"), "key", self.limits), self.cfg.shards)
        except (AttributeError, UnicodeDecodeError, InvalidRecord):
            return 0

    def _apply(self, batch: list[Consumed[ItemUpsert | None]]) -> None:
        latest: dict[str, ItemUpsert] = {}
        for record in batch:
            self.positions[record.partition] = record.offset + 1
            item = record.value
            if item is not None and shard_of(item.item_id, self.cfg.shards) == self.cfg.shard:
                latest[item.item_id] = item  # the last upsert of an id in the batch wins
        deletes = [i for i, item in latest.items() if item.deleted]
        upserts = [item for item in latest.values() if not item.deleted]
        encoder, version = self.encoder, self.model_version
        vectors = self._encode(encoder, upserts) if upserts else None
        with self._lock:
            if upserts and self.model_version != version:  # a rollout swapped models meanwhile
                vectors = self._encode(self.encoder, upserts)
            if self._changed is not None:
                self._changed.update(latest)
            if deletes:
                self.index.delete(deletes)
                for item_id in deletes:
                    self.meta.pop(item_id, None)
            if upserts:
                self.index.upsert([i.item_id for i in upserts], vectors)
                self.meta.update((i.item_id, i) for i in upserts)
            self.applied += len(latest)
            self.last_applied_at = time.time()

    def _encode(self, encoder, items: list[ItemUpsert]) -> np.ndarray:
        return encoder.encode([item_text(i.title, i.text, i.categories) for i in items], batch_size=self.cfg.batch_size,
                              item_ids=[i.item_id for i in items])  # fmt: skip

    # ------------------------------------------------------------ model rollout

    def load_model(self, version: int, path: str, dtype: str | None = None) -> dict[str, Any]:
        """Roll this shard to model ``version`` (a directory from the model registry).

        The new encoder re-encodes every owned item into a new index in the background
        while the current index keeps answering; items upserted or deleted meanwhile are
        brought up to date, then index, encoder and version are swapped under the lock,
        so no query ever sees a half-built index. Versions only increase: an older or
        equal version (or one while another rollout runs) is refused.
        """
        with self._lock:
            if version <= self.model_version or self._rollout is not None:
                return {"accepted": False, "model_version": self.model_version, "rolling_out": self._rollout}
            self._rollout, self._rollout_error, self._changed = version, None, set()
        threading.Thread(target=self._roll, args=(version, path, dtype or self.cfg.dtype),
                         name=f"rollout-{self.cfg.shard}-v{version}", daemon=True).start()  # fmt: skip
        return {"accepted": True, "model_version": self.model_version, "rolling_out": version}

    def _roll(self, version: int, path: str, dtype: str) -> None:
        try:
            encoder = load_text_encoder(path, device=self.cfg.device, dtype=dtype)
            with self._lock:
                items = list(self.meta.values())
            index = ShardIndex(encoder.dim, self.cfg.index)
            for lo in range(0, len(items), 256):
                chunk = items[lo:lo + 256]
                index.upsert([i.item_id for i in chunk], self._encode(encoder, chunk))
            index.auto_maintain = False  # from now on it serves: rebuilds go through _maintain_index
            with self._lock:
                changed, self._changed = self._changed or set(), None
                index.delete([i for i in changed if i not in self.meta])
                redo = [self.meta[i] for i in changed if i in self.meta]
                if redo:
                    index.upsert([i.item_id for i in redo], self._encode(encoder, redo))
                self.index, self.encoder, self.model_version = index, encoder, version
            logger.info("encoder shard %d now serves model version %d (%d items)", self.cfg.shard, version,
                        len(index))  # fmt: skip
        except Exception as exc:  # the shard keeps serving the previous version
            logger.exception("encoder shard %d: rollout to version %d failed", self.cfg.shard, version)
            self._rollout_error = f"version {version}: {exc!r}"
        finally:
            with self._lock:
                self._rollout, self._changed = None, None

    def start(self) -> bool:
        """Start consuming in a background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return False
        loop = self._make_loop()

        def run() -> None:
            clean = False
            try:
                while not self._stop.is_set():
                    self.records_read += loop.run_once()
                    if self.index.maintenance_due():
                        self._start_maintenance()
                    if self._snapshot_due():  # at a micro-batch boundary, in the thread that applies
                        self._snapshot(loop.consumer)
                clean = True
            except BaseException as exc:  # surfaced by stats() and health()
                logger.exception("encoder shard %d stopped", self.cfg.shard)
                self._error = exc
            finally:
                if clean and self._store is not None:
                    self._snapshot(loop.consumer)  # the last one, on stop
                loop.consumer.close()
                loop.dead_letters.close()

        self._stop.clear()
        self._thread = threading.Thread(target=run, name=f"items-consumer-{self.cfg.shard}", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop consuming (with snapshots on, after writing a last snapshot)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ------------------------------------------------------------ approximate layer, snapshots

    def _start_maintenance(self) -> None:
        if self._maintainer is None or not self._maintainer.is_alive():
            self._maintainer = threading.Thread(target=self._maintain_index, daemon=True,
                                                name=f"index-build-{self.cfg.shard}")  # fmt: skip
            self._maintainer.start()

    def _maintain_index(self) -> None:
        """Build or rebuild the HNSW/IVF layer without holding the lock: searches keep using the
        current layer (or the exact matrix) and upserts go on until the new layer is installed."""
        with self._lock:
            index = self.index
            build = index.begin_rebuild()
        if build is None:
            return
        try:
            layer, labels = build.run()
        except Exception:
            logger.exception("encoder shard %d: building the %s layer failed", self.cfg.shard, self.cfg.index.kind)
            with self._lock:
                index.abandon_rebuild()
            return
        with self._lock:
            index.finish_rebuild(build, layer, labels)  # a no-op for searches if a rollout swapped the index
            self._layer_built = True  # the next snapshot is due: it keeps the layer

    def _restore(self) -> None:
        """Load the newest usable index snapshot (contract in actors.index_snapshot); else full replay."""
        try:
            snap, reason = self._store.latest(self.model_version, self.cfg.snapshot_max_age_s, time.time())
            if snap is not None and snap.state.vectors.shape[1] != self.encoder.dim:
                dim = snap.state.vectors.shape[1]
                snap, reason = None, f"vectors of dimension {dim}, the encoder's is {self.encoder.dim}"
            index = ShardIndex.from_state(snap.state, self.cfg.index, auto_maintain=False) if snap else None
        except Exception as exc:  # a broken snapshot never stops a shard: it replays the topic instead
            logger.exception("encoder shard %d: index snapshot not loaded", self.cfg.shard)
            snap, index, reason = None, None, f"load failed: {exc!r}"
        if snap is None or index is None:
            logger.info("encoder shard %d: no usable index snapshot, replaying %s from the beginning (%s)",
                        self.cfg.shard, self.cfg.items_topic, reason)  # fmt: skip
            self.restore = {"restored": False, "reason": reason}
            return
        self.index, self.meta = index, {i.item_id: i for i in snap.items}
        self.positions, self._resume = dict(snap.positions), dict(snap.positions)
        self.restore = {"restored": True, "reason": reason, "created_at": snap.created_at, "items": len(index),
                        "positions": dict(snap.positions)}  # fmt: skip
        logger.info("encoder shard %d: restored %d items from an index snapshot (%s)", self.cfg.shard, len(index),
                    reason)  # fmt: skip

    def _seek_to_snapshot(self, consumer: Any, tps: list, resume: dict[int, int]) -> None:
        """Seek each partition to the restored snapshot's position; if one lies outside the partition's
        offsets (a recreated or truncated topic), drop the snapshot and replay from the beginning."""
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        bad = positions_outside(resume, {tp.partition: o for tp, o in begin.items()},
                                {tp.partition: o for tp, o in end.items()})  # fmt: skip
        if bad:
            logger.warning("encoder shard %d: index snapshot dropped, replaying %s from the beginning: %s",
                           self.cfg.shard, self.cfg.items_topic, "; ".join(bad))  # fmt: skip
            with self._lock:
                self.index, self.meta, self.positions = ShardIndex(self.encoder.dim, self.cfg.index, False), {}, {}
            self.restore = {"restored": False, "reason": "snapshot positions outside the topic: " + "; ".join(bad)}
            return
        for tp in tps:
            if tp.partition in resume:
                consumer.seek(tp, resume[tp.partition])

    def _snapshot_due(self) -> bool:
        if self._store is None:
            return False
        when, read, applied, version = self._snapshot_mark
        elapsed = time.monotonic() - when
        if self.cfg.snapshot_records and self.applied - applied >= self.cfg.snapshot_records:
            return True
        changed = self.records_read != read or self.model_version != version or self._layer_built
        # an idle shard still renews its snapshot, so that one younger than the max age exists
        return elapsed >= self.cfg.snapshot_interval_s and (changed or elapsed >= self.cfg.snapshot_max_age_s / 2)

    def _snapshot(self, consumer: Any) -> None:
        """Write a snapshot of the state at this micro-batch boundary; failures are logged, never raised."""
        try:
            positions = {tp.partition: consumer.position(tp) for tp in consumer.assignment()}
            with self._lock:
                state, items, version = self.index.state(), list(self.meta.values()), self.model_version
                self._layer_built = False
            snap = IndexSnapshot(items_topic=self.cfg.items_topic, shard=self.cfg.shard, shards=self.cfg.shards,
                                 model_version=version, created_at=time.time(), positions=positions, state=state,
                                 items=items)  # fmt: skip
            path = self._store.write(snap)
            self.snapshots_written += 1
            self.last_snapshot = {"path": str(path), "created_at": snap.created_at, "items": len(state.ids),
                                  "positions": positions, "layer": state.layer is not None}  # fmt: skip
        except Exception:
            logger.exception("encoder shard %d: index snapshot not written", self.cfg.shard)
        finally:
            self._snapshot_mark = (time.monotonic(), self.records_read, self.applied, self.model_version)

    # ------------------------------------------------------------ serving

    def search(self, queries: np.ndarray, k: int, exclude: list[set[str]] | None = None) -> list[list[tuple[float, str]]]:
        with self._lock:
            return self.index.search(queries, k, exclude)

    def search_top(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self.index.search_top(queries, k)

    def vectors_of(self, item_ids: list[str]) -> dict[str, np.ndarray]:
        """Stored vectors of the given items that this shard owns."""
        with self._lock:
            return self.index.vectors_of(item_ids)

    def sample_vectors(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` of this shard's vectors (m, d), a seeded sample (topic-cluster fitting)."""
        with self._lock:
            ids = sorted(self.index.ids)
            if len(ids) > n:
                ids = [ids[i] for i in np.random.default_rng(seed).choice(len(ids), n, replace=False)]
            found = self.index.vectors_of(ids)
        return np.stack([found[i] for i in ids]) if ids else np.zeros((0, self.encoder.dim), np.float32)

    def upsert_vectors(self, item_ids: list[str], vectors: np.ndarray) -> int:
        """Set embeddings learned elsewhere (e.g. from interactions, for items without text).

        Only ids this shard owns are stored; returns how many. A later text upsert of the
        same item from the items topic replaces the vector.
        """
        own = [(i, v) for i, v in zip(item_ids, np.asarray(vectors, dtype=np.float32))
               if shard_of(i, self.cfg.shards) == self.cfg.shard]  # fmt: skip
        if own:
            with self._lock:
                self.index.upsert([i for i, _ in own], np.stack([v for _, v in own]))
            self._maintain_index()  # in the caller's call: the layer is ready when it returns
        return len(own)

    def titles_of(self, item_ids: list[str]) -> dict[str, str]:
        """Titles of the given items that this shard owns."""
        with self._lock:
            return {i: self.meta[i].title for i in item_ids if i in self.meta}

    def item(self, item_id: str) -> ItemUpsert | None:
        """The stored upsert of an owned item (title, text, categories)."""
        with self._lock:
            return self.meta.get(item_id)

    def encode_query(self, texts: list[str]) -> np.ndarray:
        """Text queries in the same space as the items (for tests and text search)."""
        return self.encoder.encode(texts, batch_size=self.cfg.batch_size)

    def pid(self) -> int:
        """The actor's process id (fault-injection tests SIGKILL it)."""
        import os

        return os.getpid()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "shard": self.cfg.shard,
                "shards": self.cfg.shards,
                "items": len(self.index),
                "applied": self.applied,
                "positions": dict(self.positions),
                "model_version": self.model_version,
                "rolling_out": self._rollout,
                "rollout_error": self._rollout_error,
                "running": self._thread is not None and self._thread.is_alive(),
                "error": repr(self._error) if self._error else None,
                "last_applied_at": self.last_applied_at,
                "index": self.cfg.index.kind,
                "approximate": self.index.approximate,
                "restored_from_snapshot": self.restore["restored"],
                "restore": dict(self.restore),
                "replayed": self.records_read,  # records read since start: after the snapshot, if restored
                "snapshots_written": self.snapshots_written,
                "last_snapshot": self.last_snapshot,
            }
