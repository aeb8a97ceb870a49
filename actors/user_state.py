"""The user-side state a profile worker owns for its partitions, without any Kafka or Ray.

:class:`UserState` holds, for the users of the events partitions it owns:

* their hierarchical profiles (:class:`actors.core.profile.ProfileBank`) and, per
  user, the offset of the last event applied (events of one user all live in one
  partition, so offsets order them);
* the partition-local collaborative signals: streaming co-visitation over the
  users' recent item sequences and interaction counts (popularity).

Items come from an :class:`ItemSource` (the encoder shards in the pipeline, a
local :class:`actors.core.retrieval.ShardIndex` in tests): item vectors for the
profile update, and multi-interest ANN search for the top-K refresh. Topic
clusters (the profiles' coarse level) are fixed per state, so a restart with the
same clusters folds the same events to the same bytes.

What an event does (:meth:`apply`):

* every valid event joins its user's seen items (never recommended again, the last
  ``seen_limit`` distinct ones) and extends the co-visitation sequence and
  popularity counts, except negative kinds (dislike, skip), which do not count as
  interest there;
* the event updates its user's profile unless its offset is at or below the
  user's last applied offset (idempotent replay), or its item has no vector yet
  (it is not in the catalogue): then only the collaborative signals learn from it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from actors.core.clusters import TopicClusters
from actors.core.config import ProfileConfig
from actors.core.covisit import CoVisitParams, CoVisitStore
from actors.core.profile import ProfileBank, apply_batch
from actors.core.profile_query import explain, interest_items, query_vectors
from actors.core.ranking import profile_reason, rank_candidates
from actors.core.snapshot import from_bytes, to_bytes
from streams.records import Consumed, Event, RecItem

__all__ = ["ItemSource", "UserSideConfig", "UserState", "Refreshed"]

_NEGATIVE = frozenset({"dislike", "skip"})


class ItemSource(Protocol):
    def vectors_of(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]: ...

    def search(self, queries: np.ndarray, k: int,
               exclude: Sequence[set[str]] | None = None) -> list[list[tuple[float, str]]]: ...  # fmt: skip


@dataclass(frozen=True)
class UserSideConfig:
    # The in-process defaults (FusedConfig.profile), with the encoder's dimension.
    profile: ProfileConfig = ProfileConfig(max_interests=4, n_clusters=32, session_share=0.7,
                                           short_half_life_ms=15_000)  # fmt: skip
    covisit: CoVisitParams = CoVisitParams()
    k: int = 10
    candidates_per_query: int = 50
    candidates_per_interest: int = 10
    covisit_candidates: int = 50
    popular_candidates: int = 20
    diversity: float = 0.0
    weights: Mapping[str, float] = field(default_factory=lambda: {"profile": 0.8, "covisit": 1.0, "popularity": 0.0})
    vector_cache: int = 100_000  # item vectors kept by a worker (LRU)
    seen_limit: int = 500  # most recent distinct items per user never recommended again


@dataclass(frozen=True)
class Refreshed:
    user_id: str
    items: tuple[RecItem, ...]
    profile_version: int


class UserState:
    def __init__(self, cfg: UserSideConfig, items: ItemSource, clusters: TopicClusters | None):
        self.cfg = cfg
        self.items = items
        self.clusters = clusters
        self.bank = ProfileBank(cfg.profile)
        self.applied: dict[str, int] = {}  # user -> offset of the last event applied to its profile
        # Restored snapshots are decoded on first use (an event, a refresh, a read): restore
        # is then a read of the changelog, and users who never come back cost no decoding.
        self._dormant: dict[str, bytes] = {}
        self.covisit = CoVisitStore(cfg.covisit)
        self._codes: dict[str, int] = {}
        self._names: list[str] = []
        self._counts = np.zeros(1024, dtype=np.float64)  # by item code
        self.sequences: dict[str, list[int]] = {}
        self.seen: dict[str, dict[int, None]] = {}  # user -> recent distinct item codes, oldest first
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self.without_vector = 0  # events whose item had no vector (not in the catalogue yet)

    # ------------------------------------------------------------ items

    def _code(self, item_id: str) -> int:
        c = self._codes.get(item_id)
        if c is None:
            c = self._codes[item_id] = len(self._names)
            self._names.append(item_id)
            if c >= len(self._counts):
                self._counts = np.concatenate([self._counts, np.zeros_like(self._counts)])
        return c

    def vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors of the given items known to the catalogue (cached, LRU)."""
        cache = self._vectors
        missing = list({i for i in item_ids if i not in cache})
        if missing:
            for i, v in self.items.vectors_of(missing).items():
                cache[i] = np.asarray(v, dtype=np.float32)
        out = {}
        for i in item_ids:
            v = cache.get(i)
            if v is not None:
                cache.move_to_end(i)
                out[i] = v
        while len(cache) > self.cfg.vector_cache:
            cache.popitem(last=False)
        return out

    def forget_vectors(self) -> None:
        """Drop cached item vectors (after a catalogue or model change)."""
        self._vectors.clear()

    def _cluster_of(self, vectors: np.ndarray) -> np.ndarray:
        if self.clusters is None:
            return np.zeros(len(vectors), dtype=np.int32)
        return self.clusters.assign(vectors)

    # ------------------------------------------------------------ applying events

    def fold_collaborative(self, events: Sequence[Event]) -> None:
        """Extend co-visitation sequences, popularity counts and seen items (no profile change)."""
        window, limit = self.cfg.covisit.window, self.cfg.seen_limit
        for e in events:
            code = self._code(e.item_id)
            seen = self.seen.setdefault(e.user_id, {})
            seen.pop(code, None)
            seen[code] = None
            if len(seen) > limit:
                del seen[next(iter(seen))]
            if e.kind in _NEGATIVE:
                continue
            seq = self.sequences.setdefault(e.user_id, [])
            self.covisit.add_sequence_step(seq, code)
            seq.append(code)
            if len(seq) > 4 * window:
                del seq[:-window]
            self._counts[code] += 1.0

    def apply(self, records: Sequence[Consumed[Event]]) -> dict[str, Consumed[Event]]:
        """Apply a micro-batch in order; returns each touched user's last record."""
        self.fold_collaborative([r.value for r in records])
        fresh = [r for r in records if r.offset > self.applied.get(r.value.user_id, -1)]
        if not fresh:
            return {}
        found = self.vectors([r.value.item_id for r in fresh])
        usable = [r for r in fresh if r.value.item_id in found]
        self.without_vector += len(fresh) - len(usable)
        self._hydrate({r.value.user_id for r in fresh})
        self.bank.rows(r.value.user_id for r in fresh)  # every touched user gets a row
        if usable:
            ev = [r.value for r in usable]
            vecs = np.stack([found[e.item_id] for e in ev])  # (B, d)
            apply_batch(self.bank, self.bank.rows(e.user_id for e in ev), vecs, self._cluster_of(vecs),
                        [e.item_id for e in ev], [e.kind for e in ev],
                        np.array([np.nan if e.value is None else e.value for e in ev], dtype=np.float64),
                        np.array([e.ts for e in ev], dtype=np.int64), [e.scene for e in ev],
                        self.cfg.profile)  # fmt: skip
        touched: dict[str, Consumed[Event]] = {}
        for r in fresh:
            self.applied[r.value.user_id] = r.offset
            touched[r.value.user_id] = r
        return touched

    # ------------------------------------------------------------ snapshots

    def user_ids(self) -> list[str]:
        """Every user with state here (decoded or not yet)."""
        return self.bank.user_ids + list(self._dormant)

    def __len__(self) -> int:
        return len(self.bank) + len(self._dormant)

    def snapshot(self, user_id: str) -> tuple[int, bytes]:
        """(offset of the last applied event, SRPF profile bytes) of a known user."""
        dormant = self._dormant.get(user_id)
        if dormant is not None:
            return self.applied[user_id], dormant
        row = int(self.bank.rows([user_id], create=False)[0])
        return self.applied.get(user_id, -1), to_bytes(self.bank.get(row))

    def restore(self, user_id: str, offset: int, profile: bytes) -> None:
        """Load a changelog snapshot (decoded lazily, on the user's first use)."""
        self._dormant[user_id] = profile
        self.applied[user_id] = offset
        try:
            self.bank.rows([user_id], create=False)
        except KeyError:
            return
        self._hydrate([user_id])  # the user already had a row: overwrite it now

    def _hydrate(self, user_ids) -> None:
        if not self._dormant:
            return
        for u in user_ids:
            blob = self._dormant.pop(u, None)
            if blob is not None:
                self.bank.put(int(self.bank.rows([u])[0]), from_bytes(blob))

    def profile_of(self, user_id: str):
        self._hydrate([user_id])
        try:
            return self.bank.get(int(self.bank.rows([user_id], create=False)[0]))
        except KeyError:
            return None

    # ------------------------------------------------------------ top-K refresh

    def refresh(self, user_ids: Sequence[str], k: int | None = None) -> list[Refreshed]:
        """Each user's top-k from the current state: one batched ANN query over the
        item source for all users' interests, plus co-visitation and popular items,
        fused, diversified; seen and disliked items filtered.

        ANN asks the shards for the ``2 x candidates_per_query`` best items of the
        mass-weighted mixture of the user's interests and session (exactly the best
        items by the profile signal) plus ``candidates_per_interest`` for each interest
        alone, and drops the user's seen items afterwards (a candidate generator needs
        no exact exclusion): heavy users may get fewer ANN candidates, never wrong ones.
        """
        cfg = self.cfg
        k = k or cfg.k
        empty_q, empty_w = np.zeros((0, cfg.profile.dim), np.float32), np.zeros(0, np.float32)
        plans, mixed, mixed_owner, single, single_owner = [], [], [], [], []
        for u in user_ids:
            profile = self.profile_of(u)
            if profile is not None and profile.version:
                q, w = query_vectors(profile, profile.last_ts, cfg.profile)  # (Q, d), (Q,)
                reps = interest_items(profile, profile.last_ts, cfg.profile)
            else:
                q, w, reps = empty_q, empty_w, []
            plans.append((u, profile, q, w, reps))
            if len(w):
                mixed.append(w @ q)  # (d,): ranks items exactly by the profile signal
                mixed_owner.append(len(plans) - 1)
            if len(w) > 1:
                single.extend(q)  # each interest on its own, for candidates the mixture buries
                single_owner.extend([len(plans) - 1] * len(q))
        ann: list[list[int]] = [[] for _ in plans]
        for queries, owner, fetch in ((mixed, mixed_owner, 2 * cfg.candidates_per_query),
                                      (single, single_owner, cfg.candidates_per_interest)):  # fmt: skip
            if queries and fetch:
                for o, found in zip(owner, self.items.search(np.stack(queries), fetch)):
                    ann[o].extend(self._code(i) for _, i in found)
        n = len(self._names)
        popular = np.argsort(-self._counts[:n], kind="stable")[: cfg.popular_candidates + cfg.seen_limit]
        pools, covisits = [], []
        for (u, *_), hits in zip(plans, ann):
            cov_ids, cov_scores = self.covisit.score(self.sequences.get(u, []))
            best = np.argsort(-cov_scores, kind="stable")[: cfg.covisit_candidates]
            cov_ids, cov_scores = cov_ids[best], cov_scores[best]
            seen = np.fromiter(self.seen.get(u, {}), dtype=np.int64)
            fresh_popular = popular[~np.isin(popular, seen)][: cfg.popular_candidates]
            pool = np.unique(np.concatenate([np.asarray(hits, dtype=np.int64), cov_ids, fresh_popular]))
            pools.append(pool[~np.isin(pool, seen)])
            order = np.argsort(cov_ids)
            covisits.append((cov_ids[order], cov_scores[order]))
        codes = np.unique(np.concatenate(pools)) if pools else np.zeros(0, np.int64)
        found = self.vectors([self._names[c] for c in codes.tolist()])
        # deleted or unknown items are never recommended
        known = np.array([self._names[c] in found for c in codes.tolist()], dtype=bool)
        codes = codes[known]
        matrix = np.stack([found[self._names[c]] for c in codes.tolist()]) if len(codes) else \
            np.zeros((0, cfg.profile.dim), np.float32)  # (N_c, d)  # fmt: skip
        out = []
        for (u, profile, q, w, reps), pool, covisit in zip(plans, pools, covisits):
            pool = pool[np.isin(pool, codes)]
            out.append(self._rank(u, profile, q, w, reps, pool, covisit, matrix[np.searchsorted(codes, pool)], k))
        return out

    def _rank(self, user_id, profile, q, w, reps, pool, covisit, v, k) -> Refreshed:
        version = profile.version if profile is not None else 0
        if not len(pool):
            return Refreshed(user_id, (), version)
        cov_ids, cov_scores = covisit
        at = np.minimum(np.searchsorted(cov_ids, pool), max(len(cov_ids) - 1, 0))
        has = (cov_ids[at] == pool) if len(cov_ids) else np.zeros(len(pool), dtype=bool)
        signals = {
            "profile": v @ (w @ q) if len(w) else np.full(len(pool), np.nan),  # (C,)
            "covisit": np.where(has, cov_scores[at] if len(cov_ids) else 0.0, np.nan),
            "popularity": np.log1p(self._counts[pool]),
        }
        ranked = rank_candidates(v, signals, self.cfg.weights, k, self.cfg.diversity)
        history = [self._names[c] for c in self.sequences.get(user_id, [])[-self.cfg.covisit.history:]]
        interests = [{"items": r} for r in reps]
        items = []
        for r in ranked:
            item = self._names[int(pool[r.index])]
            items.append(RecItem(item, round(r.score, 6), self._reasons(item, r.contributions, history, v[r.index],
                                                                        q, w, interests)))  # fmt: skip
        return Refreshed(user_id, tuple(items), version)

    def _reasons(self, item, contributions, history, vector, q, w, interests) -> tuple[str, ...]:
        reasons = []
        for signal in sorted(contributions, key=lambda s: -contributions[s]):
            if contributions[signal] <= 0:
                continue
            if signal == "covisit" and item in self._codes:
                code = self._codes[item]
                votes = [(self.covisit.neighbours.get(self._codes[h], {}).get(code, 0.0), h) for h in history]
                weight, source = max(votes, default=(0.0, ""))
                if weight > 0:
                    reasons.append(f"often chosen next to {source}")
            elif signal == "profile":
                reason = profile_reason(vector, q, w, interests)
                if reason:
                    reasons.append(reason)
            elif signal == "popularity":
                reasons.append("popular now")
        return tuple(reasons) or ("popular now",)

    def explain(self, user_id: str) -> dict | None:
        """The user's interest hierarchy (JSON-ready), or None for an unknown user."""
        profile = self.profile_of(user_id)
        if profile is None:
            return None
        out = explain(profile, profile.last_ts, self.cfg.profile)
        out["last_applied_offset"] = self.applied.get(user_id)
        return out
