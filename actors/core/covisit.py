"""Streaming item-item co-visitation with bounded memory: the sequential collaborative signal.

Each event pairs the item with the user's previous ``window`` items (a pair d
steps apart adds ``distance_decay ** (d - 1)`` both ways). Every item keeps at
most ``max_neighbours`` neighbours: when its map reaches twice that, the
weakest half is dropped (amortised O(1) per update, memory O(items x L)).
Scores are cosine-normalised by item counts to damp popular items, and a user's
recent items vote with ``recency_decay ** r`` (r = 0 for the latest).

Ids are non-negative integers (the caller's item codes): the store is pure and picklable-free.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from actors.core.errors import StreamrecError

__all__ = ["CoVisitParams", "CoVisitStore"]

_DENSE_UP_TO = 65_536  # item ids below this are scored with a dense bincount


@dataclass(frozen=True)
class CoVisitParams:
    window: int = 10
    distance_decay: float = 0.8
    history: int = 10
    recency_decay: float = 0.8
    max_neighbours: int = 200


class CoVisitStore:
    def __init__(self, params: CoVisitParams = CoVisitParams()):
        self.params = params
        self.neighbours: dict[int, dict[int, float]] = {}
        self.counts: dict[int, float] = {}
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # array form of changed-since rows
        self._count_of = np.zeros(0, dtype=np.float64)  # counts by id, for vectorised scoring

    def add_sequence_step(self, previous: Sequence[int], item: int) -> None:
        """Fold one event: ``item`` follows ``previous`` (the user's items, oldest first)."""
        p = self.params
        recent = previous[-p.window :]
        for d, prev in enumerate(reversed(recent), start=1):
            if prev == item:
                continue
            w = p.distance_decay ** (d - 1)
            self._bump(prev, item, w)
            self._bump(item, prev, w)
        self.counts[item] = c = self.counts.get(item, 0.0) + 1.0
        self._set_count(item, c)

    def _set_count(self, item: int, count: float) -> None:
        if item >= len(self._count_of):
            grown = np.zeros(max(2 * len(self._count_of), item + 1, 1024), dtype=np.float64)
            grown[: len(self._count_of)] = self._count_of
            self._count_of = grown
        self._count_of[item] = count

    def _bump(self, a: int, b: int, w: float) -> None:
        row = self.neighbours.get(a)
        if row is None:
            row = self.neighbours[a] = {}
        row[b] = row.get(b, 0.0) + w
        self._rows.pop(a, None)
        if len(row) >= 2 * self.params.max_neighbours:
            keep = sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[: self.params.max_neighbours]
            self.neighbours[a] = dict(keep)

    def _row(self, item: int) -> tuple[np.ndarray, np.ndarray] | None:
        cached = self._rows.get(item)
        if cached is None:
            row = self.neighbours.get(item)
            if not row:
                return None
            cached = self._rows[item] = (np.fromiter(row.keys(), dtype=np.int64, count=len(row)),
                                         np.fromiter(row.values(), dtype=np.float64, count=len(row)))  # fmt: skip
        return cached

    def score(self, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Candidates (C,) ascending and their scores (C,), voted by the last ``history`` items (oldest first).

        score(j) = sum_r decay^r / sqrt(n_h_r) * w(h_r, j) / sqrt(n_j), over the recent items h_r
        (r = 0 for the latest); rows are kept in array form between their changes.
        """
        p = self.params
        recent = list(history[-p.history :])[::-1]  # most recent first
        ids, weights = [], []
        for r, h in enumerate(recent):
            row = self._row(h)
            if row is not None:
                ids.append(row[0])
                weights.append(row[1] * (p.recency_decay**r / np.sqrt(max(self.counts.get(h, 1.0), 1.0))))
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        ids, weights = np.concatenate(ids), np.concatenate(weights)
        if len(self._count_of) <= _DENSE_UP_TO:  # small catalogue: one dense pass beats sorting
            dense = np.bincount(ids, weights=weights, minlength=len(self._count_of))
            candidates = np.flatnonzero(dense)
            totals = dense[candidates]
        else:
            candidates, inverse = np.unique(ids, return_inverse=True)
            totals = np.bincount(inverse, weights=weights, minlength=len(candidates))
        counts = self._count_of[candidates] if len(self._count_of) > candidates[-1] else \
            np.array([self.counts.get(j, 1.0) for j in candidates.tolist()])  # fmt: skip
        return candidates, (totals / np.sqrt(np.maximum(counts, 1.0))).astype(np.float32)

    def similar(self, item: int, k: int) -> list[tuple[int, float]]:
        row = self.neighbours.get(item, {})
        return sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:k]

    def memory_entries(self) -> int:
        return sum(len(r) for r in self.neighbours.values())

    # ------------------------------------------------------------ snapshot

    _MAGIC = b"SRCV"
    _VERSION = 1

    def to_bytes(self) -> bytes:
        """Versioned binary snapshot (no pickle)."""
        parts = [self._MAGIC, struct.pack("<BI", self._VERSION, len(self.counts))]
        if self.counts:
            ids = np.fromiter(self.counts.keys(), dtype=np.int64)
            parts += [ids.tobytes(), np.fromiter(self.counts.values(), dtype=np.float64).tobytes()]
        parts.append(struct.pack("<I", len(self.neighbours)))
        for a, row in self.neighbours.items():
            parts.append(struct.pack("<qI", a, len(row)))
            parts.append(np.fromiter(row.keys(), dtype=np.int64, count=len(row)).tobytes())
            parts.append(np.fromiter(row.values(), dtype=np.float64, count=len(row)).tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, params: CoVisitParams = CoVisitParams()) -> "CoVisitStore":
        if data[:4] != cls._MAGIC:
            raise StreamrecError("not a co-visitation snapshot (bad magic)")
        version, n = struct.unpack_from("<BI", data, 4)
        if version != cls._VERSION:
            raise StreamrecError(f"co-visitation snapshot version {version} is not supported (expected {cls._VERSION})")
        pos = 9
        store = cls(params)
        ids = np.frombuffer(data, dtype=np.int64, count=n, offset=pos)
        pos += 8 * n
        vals = np.frombuffer(data, dtype=np.float64, count=n, offset=pos)
        pos += 8 * n
        store.counts = dict(zip(ids.tolist(), vals.tolist()))
        for item, count in store.counts.items():
            store._set_count(item, count)
        (rows,) = struct.unpack_from("<I", data, pos)
        pos += 4
        for _ in range(rows):
            a, m = struct.unpack_from("<qI", data, pos)
            pos += 12
            keys = np.frombuffer(data, dtype=np.int64, count=m, offset=pos)
            pos += 8 * m
            weights = np.frombuffer(data, dtype=np.float64, count=m, offset=pos)
            pos += 8 * m
            store.neighbours[a] = dict(zip(keys.tolist(), weights.tolist()))
        return store
