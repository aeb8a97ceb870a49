"""Collaborative item factors learned from interactions (a periodic, not per-event, model).

Item vectors come from a truncated SVD of the user x item interaction matrix
with popularity-damped columns (PureSVD-style): items consumed by the same
users get nearby unit vectors. They give every item, including items without
text, an embedding learned from interactions, and they live in the same FAISS
index as the text embeddings (see :func:`combine`), so one multi-interest
query scores both.

The fit is a randomized truncated SVD (Halko et al.) of the dense
``users x items`` matrix: fine up to ~10^8 cells (e.g. 20k users x 5k items);
larger logs are fitted on a sample of users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CollabConfig", "fit_item_factors", "combine"]

_MAX_CELLS = 200_000_000


@dataclass(frozen=True)
class CollabConfig:
    dim: int = 128  # factors per item
    alpha: float = 0.5  # column damping: divide item columns by count ** alpha
    seed: int = 0


def fit_item_factors(
    users: np.ndarray, items: np.ndarray, weights: np.ndarray, n_items: int, cfg: CollabConfig = CollabConfig()
) -> np.ndarray:
    """Unit item factors (n_items, dim) from interactions (parallel arrays (E,)); zero rows for unseen items.

    Item vectors are the top right singular vectors of the damped interaction
    matrix, scaled by their singular values, then L2-normalised.
    """
    users = np.asarray(users)
    items = np.asarray(items)
    weights = np.asarray(weights, dtype=np.float64)
    keep = weights > 0  # negative feedback does not define similarity
    users, items, weights = users[keep], items[keep], weights[keep]
    if len(items) == 0:
        return np.zeros((n_items, cfg.dim), dtype=np.float32)
    _, user_codes = np.unique(users, return_inverse=True)
    # one entry per (user, item): the strongest interaction
    key = user_codes.astype(np.int64) * n_items + items
    order = np.lexsort((-weights, key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    u, i = user_codes[order][first], items[order][first]
    counts = np.bincount(i, minlength=n_items).astype(np.float32)
    damp = 1.0 / np.power(np.maximum(counts, 1.0), cfg.alpha)
    n_users = int(u.max()) + 1
    if n_users * n_items > _MAX_CELLS:  # fit on a seeded sample of users
        keep_users = np.random.default_rng(cfg.seed).permutation(n_users)[: max(1, _MAX_CELLS // n_items)]
        remap = np.full(n_users, -1, dtype=np.int64)
        remap[keep_users] = np.arange(len(keep_users))
        sel = remap[u] >= 0
        u, i = remap[u[sel]], i[sel]
        n_users = len(keep_users)
    x = np.zeros((n_users, n_items), dtype=np.float32)
    x[u, i] = damp[i]
    dim = min(cfg.dim, n_items, n_users)
    top = _randomized_right_factors(x, dim, np.random.default_rng(cfg.seed))  # (n_items, dim)
    factors = np.zeros((n_items, cfg.dim), dtype=np.float32)
    factors[:, :dim] = top
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    return np.divide(factors, norms, out=np.zeros_like(factors), where=norms > 0)


def _randomized_right_factors(x: np.ndarray, rank: int, rng: np.random.Generator, oversample: int = 16,
                              power_iters: int = 4) -> np.ndarray:
    """Right singular vectors scaled by singular values, (n, rank), of x (m, n)."""
    m, n = x.shape
    k = min(rank + oversample, m, n)
    q = np.linalg.qr(x @ rng.standard_normal((n, k)).astype(np.float32))[0]  # (m, k)
    for _ in range(power_iters):
        q = np.linalg.qr(x @ (x.T @ q))[0]
    _, sing, vt = np.linalg.svd(q.T @ x, full_matrices=False)  # (k, n)
    return (vt[:rank].T * sing[:rank]).astype(np.float32)


def combine(text: np.ndarray | None, collab: np.ndarray | None, text_weight: float = 0.5) -> np.ndarray:
    """One unit vector per item from text (n, d_t) and collaborative (n, d_c) parts.

    ``q . v`` over combined vectors equals ``w * text_sim + (1 - w) * collab_sim``
    for combined queries, so one index serves the weighted sum of both similarities.
    Items missing a part (zero row) fall back to the other part alone.
    """
    parts = []
    if text is not None:
        parts.append(np.sqrt(text_weight) * _unit(text))
    if collab is not None:
        parts.append(np.sqrt(1.0 - text_weight) * _unit(collab))
    if not parts:
        raise ValueError("need text or collaborative vectors")
    out = np.concatenate(parts, axis=1).astype(np.float32)
    return _unit(out)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
