"""Approximate nearest-neighbour layers kept beside a shard's exact flat matrix.

:class:`actors.core.retrieval.ShardIndex` always keeps every vector in a dense
flat matrix: it is the source of truth (stored vectors, deletes, rollouts,
snapshots, and exact search below ``IndexConfig.min_items``). For a large
shard an :class:`AnnLayer` holds a second, approximate structure over the same
vectors, addressed by int64 *labels*: a label names one (item, vector) entry
and never changes while the entry lives, whereas flat rows move on delete.

* An update gives the item a new label; the old entry is removed, so a search
  never returns the old vector of an updated item.
* IVF (``IndexIVFFlat``) removes entries for real (``remove_ids`` through a
  hash-table direct map). It must be trained: the layer is built once the shard
  holds ``IndexConfig.ready_at()`` items (until then the shard answers exactly),
  and keeps its centroids when it is rebuilt.
* HNSW (``IndexHNSWFlat``) cannot remove nodes: removed labels become
  tombstones, filtered inside the graph search with an ``IDSelectorBitmap`` in
  ``SearchParametersHNSW`` (they still route the search, never appear in results).
* When removed labels exceed ``rebuild_fraction`` of all labels, the owner
  rebuilds the layer from the flat matrix (HNSW: a new graph; IVF: same
  centroids, compact labels). A :class:`LayerBuild` carries a copy of what the
  build needs, so it can run while the current layer keeps answering.

Both layers store float32 vectors (``*Flat``), so the score of a returned item
is its exact inner product; only *which* items are found is approximate.
Memory: the layer holds a second copy of the vectors (plus the HNSW graph).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import faiss
import numpy as np

__all__ = ["INDEX_KINDS", "IndexConfig", "AnnLayer", "HnswLayer", "IvfLayer", "LayerBuild", "build_layer",
           "load_layer"]

INDEX_KINDS = ("flat", "hnsw", "ivf")


@dataclass(frozen=True)
class IndexConfig:
    """Which index a shard searches. ``flat`` is exact; ``hnsw`` and ``ivf`` are approximate
    once the shard holds ``min_items`` items (IVF: and enough items to train its centroids)."""

    kind: str = "flat"
    min_items: int = 10_000  # below it a shard answers exactly from the flat matrix
    hnsw_m: int = 32  # graph neighbours per node
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64  # candidates explored per query (raised to k when k is larger)
    ivf_nlist: int = 256  # inverted lists (k-means centroids); about 4 * sqrt(items per shard)
    ivf_nprobe: int = 16  # lists scanned per query
    rebuild_fraction: float = 0.2  # rebuild once removed labels exceed this share of all labels

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind {self.kind!r} is not one of {INDEX_KINDS}")
        for name in ("min_items", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nlist", "ivf_nprobe"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if not 0.0 < self.rebuild_fraction <= 1.0:
            raise ValueError(f"rebuild_fraction must be in (0, 1], not {self.rebuild_fraction}")

    def ready_at(self) -> int:
        """Items at which the approximate layer is built (IVF: ~39 training points per centroid)."""
        if self.kind == "ivf":
            return max(self.min_items, 39 * self.ivf_nlist)
        return self.min_items

    def structure(self) -> dict[str, int | str]:
        """The parameters baked into a built layer (search-time ones excluded): a stored layer
        is reused only when these match."""
        if self.kind == "hnsw":
            return {"kind": "hnsw", "m": self.hnsw_m, "ef_construction": self.hnsw_ef_construction}
        if self.kind == "ivf":
            return {"kind": "ivf", "nlist": self.ivf_nlist}
        return {"kind": "flat"}


class AnnLayer:
    """An approximate index over (label, vector) entries, with a label -> item id table."""

    def __init__(self, index: faiss.Index, config: IndexConfig):
        self.index = index
        self.config = config
        self._table = np.full(1024, None, dtype=object)  # label -> item id; None once removed
        self.size = 0  # labels handed out (the next label)
        self.dead = 0  # labels removed

    def add(self, item_ids: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """Add entries; returns their labels (n,) int64."""
        labels = np.arange(self.size, self.size + len(item_ids), dtype=np.int64)
        if len(labels) == 0:
            return labels
        if self.size + len(labels) > len(self._table):
            grown = np.full(max(2 * len(self._table), self.size + len(labels)), None, dtype=object)
            grown[: self.size] = self._table[: self.size]
            self._table = grown
        self._table[labels] = list(item_ids)
        self._insert(labels, np.ascontiguousarray(vectors, dtype=np.float32))
        self.size += len(labels)
        return labels

    def remove(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels):
            self._table[labels] = None
            self.dead += len(labels)
            self._delete(labels)

    def stale_fraction(self) -> float:
        return self.dead / self.size if self.size else 0.0

    def search(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B, fetch) float32, ids (B, fetch) object), best first; (-inf, None) where
        fewer entries were found."""
        scores, labels = self.index.search(queries, fetch, params=self._params(fetch))  # (B, fetch)
        found = labels >= 0
        ids = np.where(found, self._table[np.where(found, labels, 0)], None)
        return np.where(found, scores, -np.inf).astype(np.float32), ids

    def serialize(self) -> np.ndarray:
        """The FAISS index in FAISS's own binary format (uint8 array; no pickle)."""
        return faiss.serialize_index(self.index)

    def restore_labels(self, item_ids: Sequence[str], labels: np.ndarray, size: int) -> None:
        """After :func:`load_layer`: the live entries' labels; every other label below ``size`` is removed."""
        self._table = np.full(max(size, 1024), None, dtype=object)
        self._table[np.asarray(labels, dtype=np.int64)] = list(item_ids)
        self.size, self.dead = size, size - len(item_ids)

    def _insert(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def _delete(self, labels: np.ndarray) -> None:
        raise NotImplementedError

    def _params(self, fetch: int) -> faiss.SearchParameters | None:
        raise NotImplementedError


class HnswLayer(AnnLayer):
    """HNSW graph; removed labels are tombstones filtered at search time. Labels are the graph's
    sequence numbers (0..ntotal-1)."""

    def __init__(self, index: faiss.IndexHNSWFlat, config: IndexConfig):
        super().__init__(index, config)
        self._alive = np.ones(index.ntotal, dtype=bool)  # by label
        self._selector: tuple[faiss.IDSelector, np.ndarray] | None = None  # over a bitmap of _alive

    @classmethod
    def empty(cls, dim: int, config: IndexConfig) -> HnswLayer:
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        return cls(index, config)

    def restore_labels(self, item_ids: Sequence[str], labels: np.ndarray, size: int) -> None:
        super().restore_labels(item_ids, labels, size)
        self._alive = np.zeros(size, dtype=bool)
        self._alive[np.asarray(labels, dtype=np.int64)] = True
        self._selector = None

    def _insert(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        assert labels[0] == self.index.ntotal, "HNSW labels are the graph's sequence numbers"
        self.index.add(vectors)
        self._alive = np.concatenate([self._alive, np.ones(len(labels), dtype=bool)])
        self._selector = None

    def _delete(self, labels: np.ndarray) -> None:
        self._alive[labels] = False
        self._selector = None

    def _params(self, fetch: int) -> faiss.SearchParameters:
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.config.hnsw_ef_search, fetch)
        if self.dead:
            if self._selector is None:
                bitmap = np.packbits(self._alive, bitorder="little")  # bit l = label l is live
                # both kept alive here: the selector reads the buffer during searches
                self._selector = (faiss.IDSelectorBitmap(len(self._alive), faiss.swig_ptr(bitmap)), bitmap)
            params.sel = self._selector[0]
        return params


class IvfLayer(AnnLayer):
    """Inverted lists over trained centroids; removal is real (hash-table direct map)."""

    def __init__(self, index: faiss.IndexIVFFlat, config: IndexConfig):
        super().__init__(index, config)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        self._quantizer: faiss.Index | None = None  # set when this layer, not the index, owns it

    @classmethod
    def trained(cls, vectors: np.ndarray, config: IndexConfig) -> IvfLayer:
        """A new, empty layer whose centroids are k-means (spherical, FAISS's fixed seed) of ``vectors``."""
        dim = vectors.shape[1]
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, config.ivf_nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.spherical = True
        index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        layer = cls(index, config)
        layer._quantizer = quantizer  # the index does not own it: keep it alive with the layer
        return layer

    def emptied(self) -> IvfLayer:
        """A new, empty layer with the same centroids (a rebuild does not retrain)."""
        clone = faiss.clone_index(self.index)
        clone.reset()
        return IvfLayer(clone, self.config)

    def _insert(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(vectors, labels)

    def _delete(self, labels: np.ndarray) -> None:
        self.index.remove_ids(faiss.IDSelectorArray(len(labels), faiss.swig_ptr(labels)))

    def _params(self, fetch: int) -> faiss.SearchParameters:
        params = faiss.SearchParametersIVF()
        params.nprobe = self.config.ivf_nprobe
        return params


@dataclass(frozen=True, eq=False)
class LayerBuild:
    """What a (re)build of a layer needs, copied from the index, so that :meth:`run` can go on
    without the index's owner holding a lock (see ``ShardIndex.begin_rebuild``)."""

    config: IndexConfig
    item_ids: list[str]
    vectors: np.ndarray  # (n, d), aligned with item_ids
    empty: IvfLayer | None = None  # an emptied IVF layer whose centroids are reused

    def run(self) -> tuple[AnnLayer, np.ndarray]:
        return build_layer(self.config, self.item_ids, self.vectors, self.empty)


def build_layer(config: IndexConfig, item_ids: Sequence[str], vectors: np.ndarray,
                empty: IvfLayer | None = None) -> tuple[AnnLayer, np.ndarray]:  # fmt: skip
    """A layer over all (item_ids, vectors (n, d)); returns it and the labels (n,). IVF fills
    ``empty`` (trained centroids, see :meth:`IvfLayer.emptied`), or trains on up to 256 vectors
    per list."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if config.kind == "hnsw":
        layer: AnnLayer = HnswLayer.empty(vectors.shape[1], config)
    elif config.kind == "ivf":
        if empty is not None:
            layer = empty
        else:
            cap = 256 * config.ivf_nlist
            if len(vectors) > cap:
                sample = vectors[np.sort(np.random.default_rng(0).choice(len(vectors), cap, replace=False))]
            else:
                sample = vectors
            layer = IvfLayer.trained(sample, config)
    else:
        raise ValueError("a flat index has no approximate layer")
    return layer, layer.add(item_ids, vectors)


def load_layer(config: IndexConfig, blob: np.ndarray, item_ids: Sequence[str], labels: np.ndarray,
               size: int) -> AnnLayer:  # fmt: skip
    """The inverse of :meth:`AnnLayer.serialize` plus the live entries' labels."""
    index = faiss.deserialize_index(np.asarray(blob, dtype=np.uint8))
    if config.kind == "hnsw" and isinstance(index, faiss.IndexHNSWFlat):
        layer: AnnLayer = HnswLayer(index, config)
    elif config.kind == "ivf" and isinstance(index, faiss.IndexIVFFlat):
        layer = IvfLayer(index, config)
    else:
        raise ValueError(f"a stored {type(index).__name__} does not match index kind {config.kind!r}")
    layer.restore_labels(item_ids, labels, size)
    return layer
