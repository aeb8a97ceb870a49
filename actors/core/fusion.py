"""Fusing candidate signals into one ranking, diversifying it, and explaining it.

Signals arrive as scores over one candidate set (C,) each, on incomparable
scales (cosines, co-visitation mass, counts). Each is standardised over the
candidates (zero mean, unit variance; a missing score is the signal's minimum),
then summed with configurable weights. :func:`mmr` re-ranks the head for
diversity across interests; :func:`reasons` names, per item, the signals that
put it there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FusionWeights", "standardise", "fuse", "mmr", "top_k"]


@dataclass(frozen=True)
class FusionWeights:
    """Weights of the standardised signals. Chosen on validation data (see docs/quality.md)."""

    profile: float = 0.6  # multi-interest similarity in the combined text+collaborative space
    covisit: float = 1.0  # sequential co-visitation from recent history
    popularity: float = 0.1  # recent popularity (cold users lean on it)
    extra: dict[str, float] = field(default_factory=dict)  # further named signals


def standardise(scores: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """(B, C) -> (B, C): per row zero mean, unit variance over present entries; absent entries get the row min."""
    scores = np.asarray(scores, dtype=np.float64)
    if present is None:
        present = np.isfinite(scores)
    filled = np.where(present, scores, 0.0)
    count = np.maximum(present.sum(axis=1, keepdims=True), 1)
    mean = filled.sum(axis=1, keepdims=True) / count
    var = (np.where(present, filled - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / count
    std = np.where(var > 1e-24, np.sqrt(var), 1.0)
    z = np.where(present, (filled - mean) / std, np.inf)
    low = z.min(axis=1, keepdims=True)
    return np.where(present, z, np.where(np.isfinite(low), low, 0.0))


def fuse(signals: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted sum of standardised signals, each (B, C) with NaN where a signal has no score."""
    total = None
    for name, scores in signals.items():
        w = weights.get(name, 0.0)
        if w == 0.0:
            continue
        z = standardise(scores, np.isfinite(scores)) * w
        total = z if total is None else total + z
    if total is None:
        raise ValueError("no signal has a non-zero weight")
    return total


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best entries per row of (B, C), best first (ties by index)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    rows = np.arange(scores.shape[0])[:, None]
    order = np.lexsort((part, -scores[rows, part]), axis=1)
    return part[rows, order]


def mmr(relevance: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Maximal marginal relevance: pick k of C candidates, trading relevance (C,) against
    the max cosine (``vectors`` (C, d), unit rows) to what was already picked. lam=1: pure relevance."""
    c = len(relevance)
    k = min(k, c)
    if lam >= 1.0 or k <= 1:
        return top_k(relevance[None, :], k)[0]
    rel = (relevance - relevance.min()) / max(float(np.ptp(relevance)), 1e-12)  # [0, 1]
    chosen: list[int] = []
    max_sim = np.full(c, -np.inf)
    available = np.ones(c, dtype=bool)
    for _ in range(k):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        gain = np.where(available, lam * rel - (1.0 - lam) * penalty, -np.inf)
        pick = int(np.argmax(gain))
        chosen.append(pick)
        available[pick] = False
        max_sim = np.maximum(max_sim, vectors @ vectors[pick])
    return np.asarray(chosen)
