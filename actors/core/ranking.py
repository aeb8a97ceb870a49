"""Ranking one user's candidate set: the fused score, diversity and reasons, shared by the
streaming pipeline and the ranking API.

The in-process evaluator (:mod:`actors.core.recommender`) scores every item; the
distributed pipeline scores a candidate set gathered from the encoder shards
(multi-interest ANN), co-visitation and popularity. Both fuse the same signals
with :func:`actors.core.fusion.fuse` semantics; this module holds the candidate
form so that every caller ranks alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from actors.core.fusion import mmr, standardise, top_k

__all__ = ["RankedCandidate", "fuse_rows", "rank_candidates", "pick", "profile_slots", "profile_reason"]

COLD_START_WEIGHTS: Mapping[str, float] = {"popularity": 1.0}


@dataclass(frozen=True)
class RankedCandidate:
    index: int  # position in the candidate arrays
    score: float
    contributions: dict[str, float]  # weighted standardised score of each signal


def fuse_rows(signals: Mapping[str, np.ndarray], valid: np.ndarray,
              weights: Mapping[str, float]) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # fmt: skip
    """Fused scores of B users' padded candidate rows.

    ``signals``: name -> (B, C) scores, NaN where the signal has no opinion; ``valid``
    (B, C) marks real candidates (rows are padded to C). Each signal is standardised
    per row over the entries where it has an opinion and weighted; a row in which no
    weighted signal has an opinion (a user with no usable history) is ranked by
    popularity alone. Returns (fused (B, C) with -inf on padding, contributions).
    """
    names = [s for s, w in weights.items() if w and s in signals]
    if not names:
        raise ValueError("no signal has a non-zero weight")
    fallback = [s for s in COLD_START_WEIGHTS if s in signals]
    present = {s: np.isfinite(signals[s]) & valid for s in {*names, *fallback}}
    cold = ~np.logical_or.reduce([present[s] for s in names]).any(axis=1)  # (B,)
    contributions: dict[str, np.ndarray] = {}
    for s in sorted({*names, *(fallback if cold.any() else ())}):
        w = np.where(cold, COLD_START_WEIGHTS.get(s, 0.0), weights.get(s, 0.0))[:, None]  # (B, 1)
        if w.any():
            contributions[s] = w * standardise(np.asarray(signals[s], dtype=np.float64), present[s])
    fused = np.where(valid, sum(contributions.values()), -np.inf)
    return fused, contributions


def rank_candidates(vectors: np.ndarray, signals: Mapping[str, np.ndarray], weights: Mapping[str, float], k: int,
                    diversity: float = 0.0) -> list[RankedCandidate]:  # fmt: skip
    """The best ``k`` of one user's C candidates, best first (:func:`fuse_rows` for one row).

    ``vectors`` (C, d) are the candidates' unit vectors (for MMR); each signal is (C,).
    ``diversity`` in [0, 1): 0 is pure relevance, larger trades relevance for spread.
    """
    c = len(vectors)
    if c == 0 or k <= 0:
        return []
    fused, contributions = fuse_rows({s: np.asarray(v)[None, :] for s, v in signals.items()},
                                     np.ones((1, c), dtype=bool), weights)  # fmt: skip
    picked = pick(fused[0], vectors, k, diversity)
    return [RankedCandidate(int(i), float(fused[0, i]), {s: float(v[0, i]) for s, v in contributions.items()})
            for i in picked.tolist()]  # fmt: skip


def pick(fused: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> np.ndarray:
    """Indices of the best ``k`` finite entries of one fused row (C,), MMR-diversified."""
    finite = int(np.isfinite(fused).sum())
    pool = top_k(fused[None, :], min(finite, max(5 * k, k + 10)))[0]
    if not len(pool):
        return pool
    return pool[mmr(fused[pool], np.asarray(vectors, dtype=np.float32)[pool], k, 1.0 - diversity)]


def profile_slots(item_vectors: np.ndarray, queries: np.ndarray, qweights: np.ndarray) -> np.ndarray:
    """For each item (k, d), the query (interest or session) that contributes most to its
    profile score: argmax_q w_q (q . v), as (k,) indices into ``queries``; -1 when Q = 0."""
    if not len(qweights):
        return np.full(len(item_vectors), -1)
    return np.argmax((item_vectors @ queries.T) * qweights, axis=1)  # (k, Q) -> (k,)


def profile_reason(slot: int, interests: Sequence[Sequence[str]], name=str) -> str | None:
    """Words for :func:`profile_slots`' answer: an interest with two of its representative
    items, or the live session (the query after the interests); None for no slot."""
    if slot < 0:
        return None
    if slot < len(interests):
        like = ", ".join(name(i) for i in interests[slot][:2])
        return f"matches interest {slot + 1} of {len(interests)} (like {like})"
    return "matches your current session"
