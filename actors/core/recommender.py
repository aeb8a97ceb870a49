"""The fused streamrec recommender, in process: what the pipeline computes, on integer-coded logs.

Signals, each scored over the whole catalogue and fused by :mod:`actors.core.fusion`:

- ``profile``: the user's hierarchical profile (actors.core.profile) queried with
  its multi-interest set (interests weighted by decayed mass, plus the live
  session vector) in the combined item space: transformer text embeddings
  concatenated with collaborative factors learned from interactions;
- ``covisit``: streaming co-visitation voted by the user's recent items;
- ``popularity``: interaction counts (the cold-start fallback).

``fit`` folds the training events in time order (profiles, co-visitation,
counts) after fitting the periodic parts (collaborative factors, topic
clusters); ``update`` folds one more event (prequential protocol).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from actors.core.clusters import fit_topic_clusters
from actors.core.collab import CollabConfig, combine, fit_item_factors
from actors.core.config import ProfileConfig
from actors.core.covisit import CoVisitParams, CoVisitStore
from actors.core.evaluation import Log
from actors.core.fusion import fuse, mmr, standardise, top_k
from actors.core.profile import ProfileBank, apply_batch, rebuild, ring_entries
from actors.core.profile_query import explain, query_vectors

__all__ = ["FusedConfig", "FusedRecommender", "Ranked"]


@dataclass(frozen=True)
class Ranked:
    """One recommended item (integer code), its fused score and why it is there."""

    item: int
    score: float
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class FusedConfig:
    text_weight: float = 0.3  # share of text similarity in the combined item space
    collab: CollabConfig = CollabConfig(dim=64)
    covisit: CoVisitParams = CoVisitParams()
    # Chosen on the ml-100k LOO validation split: rating logs arrive in bursts, so the
    # session vector needs a short half-life (15 s: profile-only NDCG@10 0.116 vs 0.074 at 30 min).
    profile: ProfileConfig = ProfileConfig(max_interests=4, n_clusters=32, session_share=0.7,
                                           short_half_life_ms=15_000)
    weights: dict[str, float] = field(default_factory=lambda: {"profile": 0.8, "covisit": 1.0, "popularity": 0.0})
    event_kind: str = "click"  # how log events are applied to profiles when the log has no kinds
    # Streaming (prequential) use: every ``refit_every`` updates, refit the periodic parts
    # (collaborative factors, topic clusters) on everything seen so far and rebuild every
    # profile from its recent-item ring, as a model rollout does. 0: never.
    refit_every: int = 10_000


class FusedRecommender:
    def __init__(self, text_vectors: np.ndarray | None, cfg: FusedConfig = FusedConfig()):
        self.text = None if text_vectors is None else np.asarray(text_vectors, dtype=np.float32)
        self.cfg = cfg

    # ------------------------------------------------------------ fitting

    def fit(self, log: Log, mask: np.ndarray) -> None:
        cfg = self.cfg
        n = log.n_items
        self._fit_item_space(log.users[mask], log.items[mask], log.weights[mask], n)
        self.pcfg = replace(cfg.profile, dim=self.vectors.shape[1])
        self.seen = {"users": list(log.users[mask]), "items": list(log.items[mask]), "weights": list(log.weights[mask])}
        self.since_refit = 0
        self.bank = ProfileBank(self.pcfg, capacity=max(16, log.n_users))
        self.rows = self.bank.rows(str(u) for u in range(log.n_users))
        self.covisit = CoVisitStore(cfg.covisit)
        self.counts = np.zeros(n, dtype=np.float64)
        self.last_ts = np.zeros(log.n_users, dtype=np.int64)
        self.sequences: dict[int, list[int]] = {}
        idx = np.flatnonzero(mask)
        self._fold(log.users[idx], log.items[idx], log.ts[idx], log.weights[idx])

    def _fit_item_space(self, users: np.ndarray, items: np.ndarray, weights: np.ndarray, n: int) -> None:
        """The periodic part: collaborative factors, the combined item space, topic clusters."""
        cfg = self.cfg
        collab = fit_item_factors(users, items, weights, n, cfg.collab)
        text = None if self.text is None else _pad(self.text, n)
        self.vectors = combine(text, collab, cfg.text_weight if text is not None else 0.0)  # (N, d)
        if np.linalg.norm(self.vectors, axis=1).max(initial=0.0) > 0:
            clusters = fit_topic_clusters(self.vectors, cfg.profile.n_clusters, seed=cfg.collab.seed)
            self.item_cluster = clusters.assign(self.vectors)
        else:  # nothing to embed yet (no text, no interactions)
            self.item_cluster = np.zeros(n, dtype=np.int32)

    def refit(self) -> None:
        """Refit the item space on everything seen and rebuild each profile from its ring (a rollout)."""
        seen = self.seen
        self._fit_item_space(np.asarray(seen["users"]), np.asarray(seen["items"]), np.asarray(seen["weights"]),
                             len(self.vectors))  # fmt: skip
        lookup = self._lookup
        for row in range(len(self.bank)):
            old = self.bank.get(row)
            if old.version:
                self.bank.put(row, rebuild(ring_entries(old), lookup, self.pcfg, version=old.version))
        self.since_refit = 0

    def _lookup(self, item_id: str):
        i = int(item_id)
        v = self.vectors[i]
        return (v, int(self.item_cluster[i])) if v.any() else None

    def _fold(self, users: np.ndarray, items: np.ndarray, ts: np.ndarray, weights: np.ndarray) -> None:
        if len(users) == 0:
            return
        embedded = np.linalg.norm(self.vectors[items], axis=1) > 0  # items without any vector yet
        e = np.flatnonzero(embedded)
        if len(e):
            apply_batch(
                self.bank, self.rows[users[e]], self.vectors[items[e]], self.item_cluster[items[e]],
                [str(i) for i in items[e].tolist()], [self.cfg.event_kind] * len(e), np.full(len(e), np.nan),
                ts[e], ["default"] * len(e), self.pcfg,
            )  # fmt: skip
        window = self.cfg.covisit.window
        for u, i in zip(users.tolist(), items.tolist()):
            seq = self.sequences.setdefault(u, [])
            self.covisit.add_sequence_step(seq, i)
            seq.append(i)
            if len(seq) > 4 * window:
                del seq[: -window]
        np.add.at(self.counts, items[weights > 0], 1.0)
        np.maximum.at(self.last_ts, users, ts)

    def update(self, user: int, item: int, weight: float, ts: int) -> None:
        self._fold(np.array([user]), np.array([item]), np.array([ts], dtype=np.int64), np.array([weight]))
        self.seen["users"].append(user)
        self.seen["items"].append(item)
        self.seen["weights"].append(weight)
        self.since_refit += 1
        if self.cfg.refit_every and self.since_refit >= self.cfg.refit_every:
            self.refit()

    # ------------------------------------------------------------ scoring

    def signals(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Each signal's scores (B, N); NaN where a signal has no opinion."""
        b, n = len(users), len(self.vectors)
        profile = np.full((b, n), np.nan)
        covisit = np.full((b, n), np.nan)
        for row, (user, hist) in enumerate(zip(users.tolist(), histories)):
            p = self.bank.get(int(self.rows[user]))
            queries, weights = query_vectors(p, int(self.last_ts[user]), self.pcfg)  # (Q, d), (Q,)
            if len(weights):
                # sum_q w_q (q . v) == (sum_q w_q q) . v: one mat-vec instead of Q
                profile[row] = self.vectors @ (weights @ queries)  # (N,)
            ids, scores = self.covisit.score(list(hist))
            if len(ids):
                covisit[row, ids] = scores
        popularity = np.broadcast_to(np.log1p(self.counts), (b, n))
        return {"profile": profile, "covisit": covisit, "popularity": popularity}

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return fuse(self.signals(users, histories), self.cfg.weights)


    # ------------------------------------------------------------ top-K with reasons

    def recommend(
        self, user: int, history: Sequence[int], k: int, *, diversity: float = 0.0, explore: bool = False,
        exclude: Sequence[int] = (), names: Sequence[str] | None = None,
    ) -> list[Ranked]:  # fmt: skip
        """The user's top-``k``: fused score, seen/excluded items filtered, MMR with
        ``diversity`` in [0, 1) (0: pure relevance), optionally the last slot given to an
        item from a cluster the user has not explored yet. Each item carries reasons."""
        name = (lambda i: names[i]) if names is not None else str
        signals = self.signals(np.array([user]), [np.asarray(history, dtype=np.int64)])
        weights = self.cfg.weights
        contributions = {s: weights.get(s, 0.0) * standardise(v)[0] for s, v in signals.items() if weights.get(s)}
        fused = sum(contributions.values())
        blocked = np.zeros(len(fused), dtype=bool)
        blocked[np.asarray(list(history) + list(exclude), dtype=np.int64)] = True
        fused = np.where(blocked, -np.inf, fused)
        pool = top_k(fused[None, :], min(len(fused), max(5 * k, k + 10)))[0]
        pool = pool[np.isfinite(fused[pool])]
        picked = pool[mmr(fused[pool], self.vectors[pool], k, 1.0 - diversity)].tolist()
        explored = None
        if explore and picked:
            explored = self._exploration_item(user, fused, set(picked))
            if explored is not None:
                picked[-1] = explored
        profile = self.bank.get(int(self.rows[user]))
        now = int(self.last_ts[user])
        queries, qweights = query_vectors(profile, now, self.pcfg)
        interests = explain(profile, now, self.pcfg)["interests"]
        out = []
        for item in picked:
            if item == explored:
                reasons = (f"exploring topic cluster {int(self.item_cluster[item])}",)
            else:
                reasons = self._reasons(item, contributions, list(history), queries, qweights, interests, name)
            out.append(Ranked(int(item), float(fused[item]), reasons))
        return out

    def _reasons(self, item, contributions, history, queries, qweights, interests, name) -> tuple[str, ...]:
        reasons = []
        for signal in sorted(contributions, key=lambda s: -contributions[s][item]):
            if contributions[signal][item] <= 0:
                continue
            if signal == "covisit" and history:
                votes = [(self.covisit.neighbours.get(h, {}).get(item, 0.0), h) for h in history[-10:]]
                weight, source = max(votes)
                if weight > 0:
                    reasons.append(f"often watched next to {name(source)}")
            elif signal == "profile" and len(qweights):
                slot = int(np.argmax(qweights * (queries @ self.vectors[item])))
                if slot < len(interests):
                    like = ", ".join(name(int(i)) for i in interests[slot]["items"][:2])
                    reasons.append(f"matches interest {slot + 1} of {len(interests)} (like {like})")
                else:
                    reasons.append("matches your current session")
            elif signal == "popularity":
                reasons.append("popular now")
        return tuple(reasons) or ("popular now",)

    def _exploration_item(self, user: int, fused: np.ndarray, taken: set[int]) -> int | None:
        """Best-scored item from the most popular cluster the user has the least mass in."""
        coarse = self.bank.get(int(self.rows[user])).coarse
        order = np.lexsort((-np.bincount(self.item_cluster, weights=self.counts, minlength=len(coarse)), coarse))
        for cluster in order[:3].tolist():
            members = np.flatnonzero((self.item_cluster == cluster) & np.isfinite(fused))
            members = [m for m in members.tolist() if m not in taken]
            if members:
                return max(members, key=lambda m: (fused[m], -m))
        return None


def _pad(vectors: np.ndarray, n: int) -> np.ndarray:
    if len(vectors) >= n:
        return vectors[:n]
    return np.vstack([vectors, np.zeros((n - len(vectors), vectors.shape[1]), dtype=vectors.dtype)])
