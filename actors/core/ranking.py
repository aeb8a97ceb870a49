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

__all__ = ["RankedCandidate", "rank_candidates", "profile_reason"]

COLD_START_WEIGHTS: Mapping[str, float] = {"popularity": 1.0}


@dataclass(frozen=True)
class RankedCandidate:
    index: int  # position in the candidate arrays
    score: float
    contributions: dict[str, float]  # weighted standardised score of each signal


def rank_candidates(vectors: np.ndarray, signals: Mapping[str, np.ndarray], weights: Mapping[str, float], k: int,
                    diversity: float = 0.0) -> list[RankedCandidate]:  # fmt: skip
    """The best ``k`` of C candidates, best first.

    ``vectors`` (C, d) are the candidates' unit vectors (for MMR); each signal is (C,)
    with NaN where it has no opinion. Signals are standardised over the candidates and
    summed with ``weights``; when no weighted signal has an opinion on any candidate
    (a user with no usable history), popularity alone ranks them. ``diversity`` in
    [0, 1): 0 is pure relevance, larger trades relevance for spread across interests.
    """
    c = len(vectors)
    if c == 0 or k <= 0:
        return []
    if not any(np.isfinite(signals[s]).any() for s, w in weights.items() if w and s in signals):
        weights = COLD_START_WEIGHTS
    contributions = {s: w * standardise(np.asarray(signals[s], dtype=np.float64)[None, :])[0]
                     for s, w in weights.items() if w and s in signals}  # fmt: skip
    if not contributions:
        raise ValueError("no signal has a non-zero weight")
    fused = sum(contributions.values())  # (C,)
    pool = top_k(fused[None, :], min(c, max(5 * k, k + 10)))[0]
    picked = pool[mmr(fused[pool], np.asarray(vectors, dtype=np.float32)[pool], k, 1.0 - diversity)]
    return [RankedCandidate(int(i), float(fused[i]), {s: float(v[i]) for s, v in contributions.items()})
            for i in picked.tolist()]  # fmt: skip


def profile_reason(item_vector: np.ndarray, queries: np.ndarray, qweights: np.ndarray,
                   interests: Sequence[Mapping], name=str) -> str | None:  # fmt: skip
    """Which part of the profile an item matches: an interest (with two of its
    representative items) or the live session; None for an empty profile."""
    if not len(qweights):
        return None
    slot = int(np.argmax(qweights * (queries @ item_vector)))
    if slot < len(interests):
        like = ", ".join(name(i) for i in interests[slot]["items"][:2])
        return f"matches interest {slot + 1} of {len(interests)} (like {like})"
    return "matches your current session"
