"""Sharded retrieval: which shard owns an item, a per-shard FAISS index with
add/update/delete by item id (exact, or approximate for large shards), and the
exact top-k merge of per-shard answers.

``shard_of`` is *the* ownership function used everywhere (encoder shards, the
items topic consumer, Serve replicas): a stable 64-bit hash of the item id's
UTF-8 bytes modulo the shard count. It never depends on Python's randomised
``hash``.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import faiss
import numpy as np

from actors.core.ann import AnnLayer, IndexConfig, IvfLayer, LayerBuild, build_layer, load_layer

__all__ = ["shard_of", "IndexConfig", "IndexState", "ShardIndex", "merge_topk", "merge_top_arrays"]


def shard_of(item_id: str, shards: int) -> int:
    """The shard (0..shards-1) that owns ``item_id``: blake2b-64(item_id) mod shards."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


@dataclass(frozen=True, eq=False)
class IndexState:
    """Everything a :class:`ShardIndex` holds, as plain values (what an index snapshot stores)."""

    ids: list[str]  # row order
    vectors: np.ndarray  # (n, d) float32, aligned with ids
    structure: dict = field(default_factory=dict)  # IndexConfig.structure() of the layer; {} without one
    layer: np.ndarray | None = None  # the approximate layer in FAISS's binary format (uint8)
    labels: np.ndarray | None = None  # (n,) int64: each row's label in the layer
    layer_size: int = 0  # labels the layer has handed out


class ShardIndex:
    """Inner-product index over unit vectors, keyed by string item ids; exact by default.

    Rows are stored in a contiguous float32 matrix and searched with FAISS
    (``IndexFlatIP``); an update overwrites its row in place and a delete moves
    rows from the end into the holes, so memory stays dense and neither copies
    the index. This matrix is the source of truth. With ``config.kind`` ``hnsw``
    or ``ivf`` an :class:`actors.core.ann.AnnLayer` is kept beside it once the
    shard is large enough (``IndexConfig.ready_at``) and answers searches while
    the shard holds at least ``config.min_items`` items; updates and deletes reach
    both, so a search never returns a deleted item or an old vector.

    The layer is built (and rebuilt) inside :meth:`upsert`/:meth:`delete` when
    ``auto_maintain`` is set. An owner that serves searches meanwhile clears it
    and runs :meth:`begin_rebuild`, ``LayerBuild.run`` (no lock needed) and
    :meth:`finish_rebuild`, which applies what changed during the build.
    """

    def __init__(self, dim: int, config: IndexConfig = IndexConfig(), auto_maintain: bool = True):
        self.dim = dim
        self.config = config
        self.auto_maintain = auto_maintain
        self._index = faiss.IndexFlatIP(dim)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._ann: AnnLayer | None = None
        self._label: dict[str, int] = {}  # item id -> its label in _ann (every id, once _ann exists)
        self._changed: set[str] | None = None  # ids upserted or deleted while a rebuild is under way

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._row

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def approximate(self) -> bool:
        """Whether searches are answered by the approximate layer now."""
        return self._ann is not None and len(self._ids) >= self.config.min_items

    def _matrix(self) -> np.ndarray:
        """A writable (n, d) view of the vectors FAISS searches (no copy)."""
        n = len(self._ids)
        return faiss.rev_swig_ptr(self._index.get_xb(), n * self.dim).reshape(n, self.dim)

    def vectors(self) -> np.ndarray:
        """All stored vectors (n, d) in row order (aligned with ``ids``), copied."""
        if not self._ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._matrix().copy()

    def vector(self, item_id: str) -> np.ndarray | None:
        row = self._row.get(item_id)
        return None if row is None else self._matrix()[row].copy()

    def vectors_of(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Copies of the stored vectors of those ``item_ids`` that are in the index."""
        m = self._matrix()
        return {i: m[self._row[i]].copy() for i in item_ids if i in self._row}

    def upsert(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add or replace ``item_ids`` with ``vectors`` (n, d); replacements are written in place."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(item_ids) != len(vectors):
            raise ValueError(f"{len(item_ids)} ids for {len(vectors)} vectors")
        last: dict[str, int] = {}
        for pos, item_id in enumerate(item_ids):
            last[item_id] = pos  # the last occurrence wins within one call
        existing = [(self._row[i], p) for i, p in last.items() if i in self._row]
        if existing:
            matrix = self._matrix()
            for row, pos in existing:
                matrix[row] = vectors[pos]
        new = sorted(p for i, p in last.items() if i not in self._row)
        if new:
            base = len(self._ids)
            for offset, pos in enumerate(new):
                self._ids.append(item_ids[pos])
                self._row[item_ids[pos]] = base + offset
            self._index.add(vectors[new])
        if self._changed is not None:
            self._changed.update(last)
        if self._ann is not None and last:
            # an update is a new entry: the old one leaves the layer, so its old vector cannot be found
            self._ann.remove(np.array([self._label[i] for i in last if i in self._label], dtype=np.int64))
            labels = self._ann.add(list(last), vectors[list(last.values())])
            self._label.update(zip(last, labels.tolist()))
        self._maintain()

    def delete(self, item_ids: Iterable[str]) -> int:
        """Remove ``item_ids`` (unknown ids are ignored); returns how many were removed.

        Rows from the end of the matrix move into the holes, then the tail is cut:
        O(removed x d), independent of the index size.
        """
        rows = {self._row[i] for i in item_ids if i in self._row}
        if not rows:
            return 0
        n = len(self._ids)
        cut = n - len(rows)
        if self._changed is not None:
            self._changed.update(self._ids[r] for r in rows)
        if self._ann is not None:
            self._ann.remove(np.array([self._label.pop(self._ids[r]) for r in rows], dtype=np.int64))
        for row in rows:
            del self._row[self._ids[row]]
        holes = sorted(r for r in rows if r < cut)
        movers = [r for r in range(cut, n) if r not in rows]
        matrix = self._matrix()
        for hole, mover in zip(holes, movers):
            matrix[hole] = matrix[mover]
            moved = self._ids[mover]
            self._ids[hole] = moved
            self._row[moved] = hole
        del self._ids[cut:]
        self._index.remove_ids(faiss.IDSelectorRange(cut, n))
        self._maintain()
        return len(rows)

    def maintenance_due(self) -> bool:
        """Whether the approximate layer should be built (the index reached ``config.ready_at()``
        items) or rebuilt (removed entries exceed ``config.rebuild_fraction``), and no rebuild runs."""
        if self.config.kind == "flat" or self._changed is not None:
            return False
        if self._ann is None:
            return len(self._ids) >= self.config.ready_at()
        return self._ann.stale_fraction() > self.config.rebuild_fraction

    def _maintain(self) -> None:
        if self.auto_maintain and self.maintenance_due():
            empty = self._ann.emptied() if isinstance(self._ann, IvfLayer) else None
            self._ann, labels = build_layer(self.config, self._ids, self._matrix(), empty)
            self._label = dict(zip(self._ids, labels.tolist()))

    def begin_rebuild(self) -> LayerBuild | None:
        """If maintenance is due, a copy of what the build needs, and start recording changes; else None."""
        if not self.maintenance_due():
            return None
        self._changed = set()
        empty = self._ann.emptied() if isinstance(self._ann, IvfLayer) else None
        return LayerBuild(self.config, list(self._ids), self.vectors(), empty)

    def finish_rebuild(self, build: LayerBuild, layer: AnnLayer, labels: np.ndarray) -> None:
        """Install the layer ``build.run()`` returned, after applying the upserts and deletes made
        since :meth:`begin_rebuild` to it."""
        changed, self._changed = self._changed or set(), None
        label = dict(zip(build.item_ids, labels.tolist()))
        layer.remove(np.array([label.pop(i) for i in changed if i in label], dtype=np.int64))
        present = [i for i in changed if i in self._row]
        if present:
            label.update(zip(present, layer.add(present, self._matrix()[[self._row[i] for i in present]]).tolist()))
        self._ann, self._label = layer, label

    def abandon_rebuild(self) -> None:
        self._changed = None

    def state(self) -> IndexState:
        """A copy of everything this index holds (see :meth:`from_state`)."""
        ann = self._ann
        return IndexState(
            ids=list(self._ids), vectors=self.vectors(),
            structure=self.config.structure() if ann is not None else {},
            layer=ann.serialize() if ann is not None else None,
            labels=np.array([self._label[i] for i in self._ids], dtype=np.int64) if ann is not None else None,
            layer_size=ann.size if ann is not None else 0,
        )  # fmt: skip

    @classmethod
    def from_state(cls, state: IndexState, config: IndexConfig = IndexConfig(), auto_maintain: bool = True
                   ) -> ShardIndex:  # fmt: skip
        """The index that :meth:`state` described. A stored layer is reused when it was built with
        ``config``'s structure; otherwise the layer is built anew from the vectors (or not at all)."""
        vectors = np.ascontiguousarray(state.vectors, dtype=np.float32)
        index = cls(vectors.shape[1], config, auto_maintain)
        index._ids = list(state.ids)
        index._row = {i: r for r, i in enumerate(index._ids)}
        if len(index._row) != len(vectors):
            raise ValueError(f"{len(index._row)} distinct ids for {len(vectors)} vectors")
        index._index.add(vectors)
        if state.layer is not None and state.structure == config.structure():
            index._ann = load_layer(config, state.layer, index._ids, state.labels, state.layer_size)
            index._label = dict(zip(index._ids, np.asarray(state.labels).tolist()))
        index._maintain()
        return index

    def _candidates(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """Best-first (scores (B, fetch), ids (B, fetch) object), (-inf, None) where none was found."""
        if self.approximate:
            return self._ann.search(queries, fetch)
        found, rows = self._index.search(queries, fetch)  # (B, fetch)
        table = self._ids
        ids = np.array([table[r] if r >= 0 else None for r in rows.ravel().tolist()], dtype=object)
        return np.where(rows >= 0, found, -np.inf).astype(np.float32), ids.reshape(rows.shape)

    def search_top(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` per query as arrays: (scores (B, k) float32, ids (B, k) object), best first,
        ties by id; missing hits are (-inf, None). The fast path of :meth:`search` without exclusion."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)  # (B, d)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), None, dtype=object)
        if not self._ids or k <= 0:
            return scores, ids
        fetch = min(len(self._ids), k)
        scores[:, :fetch], ids[:, :fetch] = self._candidates(queries, fetch)
        _tie_free_order(scores, ids)
        return scores, ids

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[set[str]] | None = None
    ) -> list[list[tuple[float, str]]]:
        """Top-``k`` (score, item_id) per query row, best first, skipping each row's ``exclude`` set.

        Ties are broken by item id so the order is deterministic across shards.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)  # (B, d)
        if not self._ids or k <= 0:
            return [[] for _ in range(len(queries))]
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        fetch = min(len(self._ids), k + extra)
        scores, ids = self._candidates(queries, fetch)  # (B, fetch)
        out = []
        for b in range(len(queries)):
            skip = exclude[b] if exclude else ()
            hits: list[tuple[float, str]] = []
            for s, i in zip(scores[b].tolist(), ids[b].tolist()):
                if i is None:
                    continue  # nothing found in this slot
                if len(hits) >= k and s < hits[-1][0]:
                    break  # answers come best first: only ties with the k-th can still enter
                if i not in skip:
                    hits.append((s, i))
            hits.sort(key=lambda h: (-h[0], h[1]))
            out.append(hits[:k])
        return out


def _tie_free_order(scores: np.ndarray, ids: np.ndarray) -> None:
    """Re-sort, in place, the rows of (scores (B, k), ids (B, k)) that hold equal scores,
    so that ties are ordered by item id (rows without ties are already best first)."""
    same = (scores[:, 1:] == scores[:, :-1]) & np.isfinite(scores[:, 1:])  # (B, k-1)
    ties = np.flatnonzero(same.any(axis=1))
    for b in ties:
        pairs = sorted(((s, i) for s, i in zip(scores[b].tolist(), ids[b].tolist()) if i is not None),
                       key=lambda h: (-h[0], h[1]))  # fmt: skip
        scores[b, : len(pairs)] = [s for s, _ in pairs]
        ids[b, : len(pairs)] = [i for _, i in pairs]


def merge_top_arrays(per_shard: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of several shards' (scores (B, k_s), ids (B, k_s)) answers, ties by id."""
    scores = np.concatenate([s for s, _ in per_shard], axis=1)
    ids = np.concatenate([i for _, i in per_shard], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
    _tie_free_order(scores, ids)
    return scores, ids


def merge_topk(per_shard: Sequence[Sequence[tuple[float, str]]], k: int) -> list[tuple[float, str]]:
    """Exact top-``k`` of several best-first lists (score desc, then item id asc)."""
    merged = heapq.merge(*per_shard, key=lambda h: (-h[0], h[1]))
    return [hit for _, hit in zip(range(k), merged)]
