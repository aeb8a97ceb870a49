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
from actors.core.profile import ProfileBank, apply_batch, rebuild, ring_entries
from actors.core.profile_query import explain, interest_items, query_vectors
from actors.core.fusion import top_k
from actors.core.ranking import fuse_rows, pick, profile_reason, profile_slots
from actors.core.snapshot import from_bytes, to_bytes
from streams.records import Consumed, Event, RecItem

__all__ = ["ItemSource", "UserSideConfig", "UserState", "Refreshed"]

_NEGATIVE = frozenset({"dislike", "skip"})


class ItemSource(Protocol):
    """Item vectors and ANN search. A source may also offer ``titles_of(ids) -> {id: title}``,
    used to name items in reasons ("often chosen next to <title>"), and
    ``search_top(queries, k) -> (scores, ids)`` arrays, the faster path for refreshes."""

    def vectors_of(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]: ...

    def search(self, queries: np.ndarray, k: int,
               exclude: Sequence[set[str]] | None = None) -> list[list[tuple[float, str]]]: ...  # fmt: skip


@dataclass(frozen=True)
class UserSideConfig:
    # The in-process defaults (FusedConfig.profile) with 3 interests instead of 4, so that a
    # snapshot fits 4 KiB at d = 384 (ml-100k leave-one-out through the pipeline's model:
    # NDCG@10 0.1091 with 3, 0.1084 with 4; docs/quality.md).
    profile: ProfileConfig = ProfileConfig(max_interests=3, n_clusters=32, session_share=0.7,
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
    def __init__(self, cfg: UserSideConfig, items: ItemSource, clusters: TopicClusters | None,
                 model_version: int = 0):  # fmt: skip
        self.cfg = cfg
        self.items = items
        self.clusters = clusters
        self.model_version = model_version  # the encoder version of the item vectors in use
        self.bank = ProfileBank(cfg.profile)
        self.applied: dict[str, int] = {}  # user -> offset of the last event applied to its profile
        # Restored snapshots are decoded on first use (an event, a refresh, a read): restore
        # is then a read of the changelog, and users who never come back cost no decoding.
        self._dormant: dict[str, tuple[bytes, int]] = {}  # user -> (snapshot, its model version)
        self.covisit = CoVisitStore(cfg.covisit)
        self._codes: dict[str, int] = {}
        self._names: list[str] = []
        self._counts = np.zeros(1024, dtype=np.float64)  # by item code
        self.sequences: dict[str, list[int]] = {}
        self.seen: dict[str, dict[int, None]] = {}  # user -> recent distinct item codes, oldest first
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._titles: dict[str, str] = {}  # of cached items, where the source has titles
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
            titles_of = getattr(self.items, "titles_of", None)
            if titles_of is not None:
                self._titles.update((i, t) for i, t in titles_of(missing).items() if t)
        out = {}
        for i in item_ids:
            v = cache.get(i)
            if v is not None:
                cache.move_to_end(i)
                out[i] = v
        while len(cache) > self.cfg.vector_cache:
            self._titles.pop(cache.popitem(last=False)[0], None)
        return out

    def forget_vectors(self) -> None:
        """Drop cached item vectors (after a catalogue or model change)."""
        self._vectors.clear()
        self._titles.clear()

    def _cluster_of(self, vectors: np.ndarray) -> np.ndarray:
        if self.clusters is None:
            return np.zeros(len(vectors), dtype=np.int32)
        return self.clusters.assign(vectors)

    # ------------------------------------------------------------ applying events

    def fold_collaborative(self, events: Sequence[Event], *, own: bool = True) -> None:
        """Extend co-visitation sequences, popularity counts and (for ``own`` users, those
        whose profiles live here) seen items; no profile changes. Events of other workers'
        users (``own=False``) make the item-item and popularity signals global."""
        window, limit = self.cfg.covisit.window, self.cfg.seen_limit
        for e in events:
            code = self._code(e.item_id)
            if own:
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
            return self.applied[user_id], dormant[0]
        row = int(self.bank.rows([user_id], create=False)[0])
        return self.applied.get(user_id, -1), to_bytes(self.bank.get(row))

    def restore(self, user_id: str, offset: int, profile: bytes, model_version: int = 0) -> None:
        """Load a changelog snapshot (decoded lazily, on the user's first use)."""
        self._dormant[user_id] = (profile, model_version)
        self.applied[user_id] = offset
        try:
            self.bank.rows([user_id], create=False)
        except KeyError:
            return
        self._hydrate([user_id])  # the user already had a row: overwrite it now

    def set_model(self, model_version: int, clusters: TopicClusters | None) -> None:
        """Switch to a new encoder version: every profile is rebuilt from its recent-item ring
        with the new item vectors and clusters when it is next used (versions are kept)."""
        for u in self.bank.user_ids:
            self._dormant[u] = (to_bytes(self.bank.get(int(self.bank.rows([u])[0]))), self.model_version)
        self.bank = ProfileBank(self.cfg.profile)
        self.forget_vectors()
        self.clusters, self.model_version = clusters, model_version

    def _hydrate(self, user_ids) -> None:
        if not self._dormant:
            return
        loaded = [(u, self._dormant.pop(u)) for u in user_ids if u in self._dormant]
        if not loaded:
            return
        profiles = [(u, from_bytes(blob), mv) for u, (blob, mv) in loaded]
        stale = [p for _, p, mv in profiles if mv < self.model_version]
        if stale:  # folded from an older model's vectors: re-project from the ring
            wanted = {e.item_id for p in stale for e in ring_entries(p)}
            vectors = self.vectors(list(wanted))
            ids = list(vectors)
            clusters = dict(zip(ids, self._cluster_of(np.stack([vectors[i] for i in ids])).tolist())) if ids else {}
            lookup = {i: (vectors[i], clusters[i]) for i in ids}
        for u, profile, mv in profiles:
            if mv < self.model_version:
                profile = rebuild(ring_entries(profile), lookup, self.cfg.profile, version=profile.version)
            self.bank.put(int(self.bank.rows([u])[0]), profile)

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
                for o, found in zip(owner, self._search(np.stack(queries), fetch)):
                    ann[o].extend(self._code(i) for i in found if i is not None)
        covisit = [self._top_covisit(u) for u, *_ in plans]
        pool = self._pools(plans, ann, covisit)
        if pool is None:
            return [Refreshed(u, (), p.version if p is not None else 0) for u, p, *_ in plans]
        owner, codes, matrix, rows = pool
        b, n_e = len(plans), len(owner)
        starts = np.searchsorted(owner, np.arange(b))
        col = np.arange(n_e) - starts[owner]  # (E,) position of each candidate in its user's row
        width = int(col.max()) + 1
        mix = np.zeros((b, cfg.profile.dim), np.float32)  # (B, d) each user's mixture query
        has_profile = np.zeros(b, dtype=bool)
        for i, (_, _, q, w, _) in enumerate(plans):
            if len(w):
                mix[i], has_profile[i] = w @ q, True
        profile = np.empty(n_e, np.float64)
        for lo in range(0, n_e, 32_768):  # (E, d) gathers in bounded chunks
            hi = min(n_e, lo + 32_768)
            profile[lo:hi] = np.einsum("ed,ed->e", matrix[rows[lo:hi]], mix[owner[lo:hi]])
        profile[~has_profile[owner]] = np.nan
        cov_keys, cov_scores = _flatten(covisit, len(self._names))
        keys = owner * len(self._names) + codes
        at = np.minimum(np.searchsorted(cov_keys, keys), max(len(cov_keys) - 1, 0))
        cov = np.where(cov_keys[at] == keys, cov_scores[at], np.nan) if len(cov_keys) else np.full(n_e, np.nan)
        signals = {}
        for name, values in (("profile", profile), ("covisit", cov), ("popularity", np.log1p(self._counts[codes]))):
            grid = np.full((b, width), np.nan)
            grid[owner, col] = values
            signals[name] = grid
        valid = np.zeros((b, width), dtype=bool)
        valid[owner, col] = True
        fused, contributions = fuse_rows(signals, valid, cfg.weights)
        if cfg.diversity > 0:
            cand_rows = np.full((b, width), -1, dtype=np.int64)
            cand_rows[owner, col] = rows
        else:
            picked_all = top_k(fused, min(k, width))
        code_grid = np.full((b, width), -1, dtype=np.int64)
        code_grid[owner, col] = codes
        out = []
        for i, (u, p, q, w, reps) in enumerate(plans):
            if cfg.diversity > 0:
                n_valid = int(valid[i].sum())
                picked = pick(fused[i, :n_valid], matrix[cand_rows[i, :n_valid]], k, cfg.diversity)
            else:
                picked = [c for c in picked_all[i].tolist() if np.isfinite(fused[i, c])]
            history = [self._names[c] for c in self.sequences.get(u, [])[-cfg.covisit.history:]]
            at = cand_rows[i, picked] if cfg.diversity > 0 else rows[starts[i] + np.asarray(picked, dtype=np.int64)]
            slots = profile_slots(matrix[at], q, w).tolist() if len(picked) else []
            items = []
            for c, slot in zip(picked, slots):
                item = self._names[int(code_grid[i, c])]
                parts = {s: float(v[i, c]) for s, v in contributions.items()}
                items.append(RecItem(item, round(float(fused[i, c]), 6), self._reasons(item, parts, history, slot, reps)))
            out.append(Refreshed(u, tuple(items), p.version if p is not None else 0))
        return out

    def score_items(self, user_id: str, item_ids: Sequence[str]) -> list[tuple[str, float | None, tuple[str, ...]]]:
        """A caller's candidates ranked for the user with the refresh's fused score, best
        first, with reasons; seen items are kept (the caller chose them), and ids not in
        the catalogue come last with score None."""
        cfg = self.cfg
        ids = list(dict.fromkeys(item_ids))
        found = self.vectors(ids)
        known = [i for i in ids if i in found]
        missing = [(i, None, ()) for i in ids if i not in found]
        if not known:
            return missing
        profile = self.profile_of(user_id)
        if profile is not None and profile.version:
            q, w = query_vectors(profile, profile.last_ts, cfg.profile)  # (Q, d), (Q,)
            reps = interest_items(profile, profile.last_ts, cfg.profile)
        else:
            q, w, reps = np.zeros((0, cfg.profile.dim), np.float32), np.zeros(0, np.float32), []
        v = np.stack([found[i] for i in known])  # (C, d)
        cov_ids, cov_scores = self.covisit.score(self.sequences.get(user_id, []))
        cov = dict(zip(cov_ids.tolist(), cov_scores.tolist()))
        codes = [self._codes.get(i) for i in known]
        signals = {
            "profile": v @ (w @ q) if len(w) else np.full(len(known), np.nan),
            "covisit": np.array([cov.get(c, np.nan) if c is not None else np.nan for c in codes]),
            "popularity": np.log1p([self._counts[c] if c is not None else 0.0 for c in codes]),
        }
        fused, contributions = fuse_rows({s: x[None, :] for s, x in signals.items()},
                                         np.ones((1, len(known)), dtype=bool), cfg.weights)  # fmt: skip
        slots = profile_slots(v, q, w).tolist()
        history = [self._names[c] for c in self.sequences.get(user_id, [])[-cfg.covisit.history:]]
        ranked = []
        for j in np.argsort(-fused[0], kind="stable").tolist():
            parts = {s: float(x[0, j]) for s, x in contributions.items()}
            ranked.append((known[j], round(float(fused[0, j]), 6),
                           self._reasons(known[j], parts, history, slots[j], reps)))  # fmt: skip
        return ranked + missing

    def _search(self, queries: np.ndarray, k: int):
        """Item ids (best first) per query row, through the source's array path when it has one."""
        search_top = getattr(self.items, "search_top", None)
        if search_top is not None:
            return search_top(queries, k)[1].tolist()
        return [[i for _, i in hits] for hits in self.items.search(queries, k)]

    def _top_covisit(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = self.covisit.score(self.sequences.get(user_id, []))
        best = np.argsort(-scores, kind="stable")[: self.cfg.covisit_candidates]
        return ids[best], scores[best]

    def _pools(self, plans, ann, covisit):
        """Every user's candidates, flattened: (owner (E,), item code (E,), vectors (V, d), row in
        vectors (E,)), sorted by (owner, code); seen, deleted and unknown items left out."""
        cfg = self.cfg
        n, b = len(self._names), len(plans)
        if n == 0:
            return None
        users = [u for u, *_ in plans]
        seen = [np.fromiter(self.seen.get(u, {}), dtype=np.int64) for u in users]
        seen_keys = np.concatenate([i * n + s for i, s in enumerate(seen)]) if seen else np.zeros(0, np.int64)
        popular = np.argsort(-self._counts[:n], kind="stable")[: cfg.popular_candidates + cfg.seen_limit]
        pop_keys = (np.arange(b)[:, None] * n + popular[None, :])  # (B, P)
        unseen = ~np.isin(pop_keys, seen_keys)
        unseen &= np.cumsum(unseen, axis=1) <= cfg.popular_candidates
        parts = [pop_keys[unseen]]
        parts += [i * n + np.asarray(a, dtype=np.int64) for i, a in enumerate(ann) if a]
        parts += [i * n + c for i, (c, _) in enumerate(covisit) if len(c)]
        keys = np.unique(np.concatenate(parts))
        keys = keys[~np.isin(keys, seen_keys)]
        owner, codes = keys // n, keys % n
        distinct = np.unique(codes)
        found = self.vectors([self._names[c] for c in distinct.tolist()])
        known = np.array([self._names[c] in found for c in distinct.tolist()], dtype=bool)
        distinct = distinct[known]  # deleted or unknown items are never recommended
        keep = np.isin(codes, distinct)
        owner, codes = owner[keep], codes[keep]
        if not len(owner):
            return None
        matrix = np.stack([found[self._names[c]] for c in distinct.tolist()])  # (V, d)
        return owner, codes, matrix, np.searchsorted(distinct, codes)

    def _reasons(self, item, contributions, history, slot, interests) -> tuple[str, ...]:
        reasons = []
        for signal in sorted(contributions, key=lambda s: -contributions[s]):
            if contributions[signal] <= 0:
                continue
            if signal == "covisit" and item in self._codes:
                code = self._codes[item]
                votes = [(self.covisit.neighbours.get(self._codes[h], {}).get(code, 0.0), h) for h in history]
                weight, source = max(votes, default=(0.0, ""))
                if weight > 0:
                    reasons.append(f"often chosen next to {self._titles.get(source, source)}")
            elif signal == "profile":
                reason = profile_reason(slot, interests, lambda i: self._titles.get(i, i))
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


def _flatten(per_user: list[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user (codes, scores) -> (sorted keys user * n + code, scores aligned)."""
    if not per_user or not any(len(c) for c, _ in per_user):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    keys = np.concatenate([i * n + c for i, (c, _) in enumerate(per_user)])
    scores = np.concatenate([s for _, s in per_user])
    order = np.argsort(keys, kind="stable")
    return keys[order], scores[order]
