"""Index snapshots of one encoder shard: a restart loads one and replays ``items`` after it.

Contract
--------
A snapshot is the complete state of shard ``s`` of ``S`` at a micro-batch
boundary: its index (:class:`actors.core.retrieval.IndexState`: ids, vectors
and, for HNSW/IVF, the approximate layer), the stored upserts of its items, the
encoder ``model_version`` that produced the vectors, and ``positions``:
partition -> the offset of the next record to read (= last applied offset + 1).
Every record of the items topic below ``positions`` is applied, none at or
above it: a restore loads the state and seeks each partition to its position
("resume after the last applied offset"); partitions without a position start
at the beginning.

A snapshot is *used* only if it was written for the same items topic, shard,
shard count and model version, in a known format, and is younger than
``max_age_s``. The age bound exists because the items topic is compacted:
the tombstone of a delete made after the snapshot is kept only for the topic's
``delete.retention.ms`` (24 h by default); replaying from an older snapshot
could miss it and resurrect the item. Keep ``max_age_s`` well below that.
The shard also refuses a snapshot whose positions lie outside a partition's
current offsets (a recreated or truncated topic). Whenever no snapshot is usable
the shard replays the whole compacted topic, as without snapshots: the topic is
the durable catalogue, a snapshot only shortens the replay. Embeddings set with
``upsert_vectors`` (not from the topic) survive a restore but not a full replay.

Layout (no pickle anywhere)::

    <root>/<items topic>.shard-<s>-of-<S>/snap-<created ms, 13 digits>-<tag>/
        meta.json     format, items_topic, shard, shards, model_version, dim, count,
                      created_at (s since the epoch), positions, structure, layer_size
        ids.json      item ids in row order
        items.json    the stored ItemUpserts of the shard's items
        vectors.npy   (n, d) float32, rows aligned with ids.json
        layer.npy     the approximate layer in FAISS's binary format (uint8; HNSW/IVF only)
        labels.npy    (n,) int64, each row's label in the layer (HNSW/IVF only)

Atomicity: a snapshot is written into ``.tmp-<uuid>`` beside the others, every
file is fsynced, then the directory is renamed to ``snap-*``: a ``snap-*``
directory is always complete. Only the newest ``keep`` snapshots are kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from actors.core.errors import StreamrecError
from actors.core.retrieval import IndexState
from streams.records import ItemUpsert

__all__ = ["FORMAT_VERSION", "IndexSnapshot", "IndexSnapshotError", "IndexSnapshotStore", "positions_outside"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class IndexSnapshotError(StreamrecError):
    """A stored index snapshot cannot be read (missing files, unknown format)."""


@dataclass(frozen=True, eq=False)
class IndexSnapshot:
    items_topic: str
    shard: int
    shards: int
    model_version: int
    created_at: float  # seconds since the epoch
    positions: dict[int, int]  # partition -> next offset to read
    state: IndexState
    items: list[ItemUpsert]


class IndexSnapshotStore:
    """The snapshots of one shard under ``root`` (see the module docstring for the contract)."""

    def __init__(self, root: str | Path, items_topic: str, shard: int, shards: int, keep: int = 2):
        self.items_topic, self.shard, self.shards, self.keep = items_topic, shard, shards, max(1, keep)
        self.dir = Path(root) / f"{items_topic}.shard-{shard}-of-{shards}"

    def write(self, snap: IndexSnapshot) -> Path:
        """Write ``snap`` atomically; returns its directory. Older snapshots beyond ``keep`` are removed."""
        if (snap.items_topic, snap.shard, snap.shards) != (self.items_topic, self.shard, self.shards):
            raise ValueError(f"snapshot of {snap.items_topic} shard {snap.shard}/{snap.shards} in the store of "
                             f"{self.items_topic} shard {self.shard}/{self.shards}")  # fmt: skip
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".tmp-*"):  # left by a writer that died (one writer per shard)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            state = snap.state
            meta = {
                "format": FORMAT_VERSION, "items_topic": snap.items_topic, "shard": snap.shard,
                "shards": snap.shards, "model_version": snap.model_version, "dim": int(state.vectors.shape[1]),
                "count": len(state.ids), "created_at": snap.created_at,
                "positions": {str(p): int(o) for p, o in sorted(snap.positions.items())},
                "structure": state.structure, "layer_size": state.layer_size,
            }  # fmt: skip
            _write_json(tmp / "ids.json", state.ids)
            _write_json(tmp / "items.json", [asdict(i) for i in snap.items])
            _write_npy(tmp / "vectors.npy", np.ascontiguousarray(state.vectors, dtype=np.float32))
            if state.layer is not None:
                _write_npy(tmp / "layer.npy", np.asarray(state.layer, dtype=np.uint8))
                _write_npy(tmp / "labels.npy", np.asarray(state.labels, dtype=np.int64))
            _write_json(tmp / "meta.json", meta)  # last: its presence marks a complete snapshot
            _fsync_dir(tmp)
            final = self.dir / f"snap-{int(snap.created_at * 1000):013d}-{uuid.uuid4().hex[:6]}"
            os.rename(tmp, final)
            _fsync_dir(self.dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.snapshots()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def snapshots(self) -> list[Path]:
        """Complete snapshot directories, newest first."""
        if not self.dir.is_dir():
            return []
        return sorted((p for p in self.dir.glob("snap-*") if p.is_dir()), key=lambda p: p.name, reverse=True)

    def read(self, path: Path) -> IndexSnapshot:
        """Read one snapshot directory (no checks beyond its format)."""
        try:
            meta = json.loads((path / "meta.json").read_text())
            if meta.get("format") != FORMAT_VERSION:
                raise IndexSnapshotError(f"{path}: snapshot format {meta.get('format')!r}, this version reads "
                                         f"{FORMAT_VERSION}; delete it to replay the items topic instead")  # fmt: skip
            ids = json.loads((path / "ids.json").read_text())
            vectors = np.load(path / "vectors.npy", allow_pickle=False)
            layer = labels = None
            if (path / "layer.npy").exists():
                layer = np.load(path / "layer.npy", allow_pickle=False)
                labels = np.load(path / "labels.npy", allow_pickle=False)
            items = [_item(d) for d in json.loads((path / "items.json").read_text())]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexSnapshotError(f"{path}: unreadable index snapshot ({exc!r})") from exc
        if len(ids) != len(vectors) or vectors.ndim != 2 or vectors.shape[1] != meta["dim"]:
            raise IndexSnapshotError(f"{path}: {len(ids)} ids for vectors of shape {vectors.shape}")
        state = IndexState(ids=ids, vectors=vectors, structure=meta["structure"], layer=layer, labels=labels,
                           layer_size=meta["layer_size"])  # fmt: skip
        return IndexSnapshot(items_topic=meta["items_topic"], shard=meta["shard"], shards=meta["shards"],
                             model_version=meta["model_version"], created_at=meta["created_at"],
                             positions={int(p): int(o) for p, o in meta["positions"].items()}, state=state,
                             items=items)  # fmt: skip

    def latest(self, model_version: int, max_age_s: float, now: float) -> tuple[IndexSnapshot | None, str]:
        """The newest usable snapshot for ``model_version`` at time ``now``, or None; and why."""
        reasons = []
        for path in self.snapshots():
            try:
                snap = self.read(path)
            except IndexSnapshotError as exc:
                logger.warning("skipping index snapshot: %s", exc)
                reasons.append(str(exc))
                continue
            why = self._refusal(snap, model_version, max_age_s, now)
            if why is None:
                return snap, f"{path.name}: {len(snap.state.ids)} items, {now - snap.created_at:.0f} s old"
            reasons.append(f"{path.name}: {why}")
        return None, "; ".join(reasons) or f"no snapshot in {self.dir}"

    def _refusal(self, snap: IndexSnapshot, model_version: int, max_age_s: float, now: float) -> str | None:
        if (snap.items_topic, snap.shard, snap.shards) != (self.items_topic, self.shard, self.shards):
            return f"written for {snap.items_topic} shard {snap.shard} of {snap.shards}"
        if snap.model_version != model_version:
            return f"model version {snap.model_version}, the shard serves {model_version}"
        if now - snap.created_at > max_age_s:
            return (f"{now - snap.created_at:.0f} s old, older than {max_age_s:.0f} s (deletes after it may have "
                    f"been compacted away)")  # fmt: skip
        return None


def positions_outside(positions: dict[int, int], begin: dict[int, int], end: dict[int, int]) -> list[str]:
    """Why a snapshot's ``positions`` cannot be resumed from, given each partition's current
    beginning and end offsets ([] if they can: every position within [begin, end])."""
    bad = [f"partition {p} is gone" for p in sorted(set(positions) - set(end))]
    return bad + [f"{p}@{o} not in [{begin[p]}, {end[p]}]" for p, o in sorted(positions.items())
                  if p in end and not begin[p] <= o <= end[p]]  # fmt: skip


def _item(d: dict) -> ItemUpsert:
    return ItemUpsert(**{**d, "categories": tuple(d.get("categories", ()))})


def _write_json(path: Path, value: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
