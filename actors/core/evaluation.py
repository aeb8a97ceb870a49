"""Offline and streaming evaluation protocols over integer-coded interaction logs.

Both protocols rank the *whole* catalogue and mask each user's history:

- ``loo`` (time-ordered leave-one-out, RecBole-compatible): per user, the last
  interaction is the test target and the one before it the validation target;
  a model is fitted on everything else (validation) or on everything but the
  test targets (test), then asked for each user's top-K.
- ``prequential``: replay in time order; before an event is applied, check
  whether its item is in that user's current top-K; then apply it.

Models implement :class:`Recommender`. Everything here is pure numpy: the
caller codes ids to integers (see :func:`encode_log`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import numpy as np

__all__ = [
    "Log",
    "Recommender",
    "encode_log",
    "loo_split",
    "evaluate_loo",
    "evaluate_prequential",
    "rank_metrics",
]


@dataclass(frozen=True)
class Log:
    """An interaction log in event-time order: parallel int arrays (E,), plus the catalogue size."""

    users: np.ndarray  # (E,) int32
    items: np.ndarray  # (E,) int32
    ts: np.ndarray  # (E,) int64, ms
    weights: np.ndarray  # (E,) float32, signed event strength
    n_users: int
    n_items: int


class Recommender(Protocol):
    def fit(self, log: Log, mask: np.ndarray) -> None:
        """Fit on the events where ``mask`` is True (in log order)."""

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Scores (B, n_items) for ``users`` (B,) given each one's history, most recent last."""

    def update(self, user: int, item: int, weight: float, ts: int) -> None:
        """Apply one event (prequential protocol)."""


def encode_log(
    user_ids: Iterable[str], item_ids: Iterable[str], ts: Iterable[int], weights: Iterable[float],
    catalogue: Sequence[str],
) -> tuple[Log, list[str], list[str]]:  # fmt: skip
    """Integer-code string ids; items outside ``catalogue`` are appended to it."""
    item_index = {item: i for i, item in enumerate(catalogue)}
    items_list = list(catalogue)
    user_index: dict[str, int] = {}
    users_out, items_out = [], []
    for u, i in zip(user_ids, item_ids):
        users_out.append(user_index.setdefault(u, len(user_index)))
        if i not in item_index:
            item_index[i] = len(items_list)
            items_list.append(i)
        items_out.append(item_index[i])
    log = Log(
        users=np.asarray(users_out, dtype=np.int32),
        items=np.asarray(items_out, dtype=np.int32),
        ts=np.asarray(list(ts), dtype=np.int64),
        weights=np.asarray(list(weights), dtype=np.float32),
        n_users=len(user_index),
        n_items=len(items_list),
    )
    return log, list(user_index), items_list


def loo_split(log: Log, min_events: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of each eligible user's validation and test events, and the eligible users.

    Returns ``(valid_idx (U,), test_idx (U,), users (U,))`` for users with at
    least ``min_events`` events; events are taken in log (time) order.
    """
    order = np.lexsort((np.arange(len(log.users)), log.users))  # by user, then log position
    users_sorted = log.users[order]
    boundaries = np.flatnonzero(np.diff(users_sorted)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(order)]])
    eligible = (ends - starts) >= min_events
    test_idx = order[ends[eligible] - 1]
    valid_idx = order[ends[eligible] - 2]
    return valid_idx, test_idx, users_sorted[starts[eligible]]


def rank_metrics(scores: np.ndarray, targets: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-row HR@k, NDCG@k, MRR@k of ``targets`` (B,) under ``scores`` (B, N) (masked entries -inf).

    Ties are broken against the target (pessimistic), so a constant scorer earns nothing.
    """
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]  # (B,)
    rank = (scores >= target_scores[:, None]).sum(axis=1) - 1  # 0-based, ties count as ahead
    hit = (rank < k) & np.isfinite(target_scores)
    return {
        "hr": hit.astype(np.float64),
        "ndcg": np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0),
        "mrr": np.where(hit, 1.0 / (rank + 1.0), 0.0),
    }


def _histories(log: Log, mask: np.ndarray, users: np.ndarray) -> list[np.ndarray]:
    idx = np.flatnonzero(mask)
    order = idx[np.argsort(log.users[idx], kind="stable")]
    by_user = log.users[order]
    starts = np.searchsorted(by_user, users, side="left")
    ends = np.searchsorted(by_user, users, side="right")
    return [log.items[order[s:e]] for s, e in zip(starts, ends)]


def evaluate_loo(
    model: Recommender, log: Log, *, k: int = 10, phase: str = "test", batch: int = 256
) -> dict[str, float]:
    """Fit and evaluate one model under leave-one-out; ``phase`` is "valid" (for tuning) or "test"."""
    valid_idx, test_idx, users = loo_split(log)
    fit_mask = np.ones(len(log.users), dtype=bool)
    fit_mask[test_idx] = False
    if phase == "valid":
        fit_mask[valid_idx] = False
        targets_idx = valid_idx
    elif phase == "test":
        targets_idx = test_idx
    else:
        raise ValueError(f"phase must be 'valid' or 'test', got {phase!r}")
    model.fit(log, fit_mask)
    histories = _histories(log, fit_mask, users)
    totals = {"hr": 0.0, "ndcg": 0.0, "mrr": 0.0}
    recommended = np.zeros(log.n_items, dtype=bool)
    for start in range(0, len(users), batch):
        sl = slice(start, start + batch)
        scores = model.score(users[sl], histories[sl]).astype(np.float64, copy=True)  # (B, N)
        for row, hist in enumerate(histories[sl]):
            scores[row, hist] = -np.inf
        metrics = rank_metrics(scores, log.items[targets_idx[sl]], k)
        for name in totals:
            totals[name] += float(metrics[name].sum())
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        recommended[top.ravel()] = True
    n = len(users)
    return {
        f"HR@{k}": totals["hr"] / n,
        f"NDCG@{k}": totals["ndcg"] / n,
        f"MRR@{k}": totals["mrr"] / n,
        "coverage": float(recommended.mean()),
        "users": n,
    }


def evaluate_prequential(model: Recommender, log: Log, *, k: int = 10, buckets: int = 10) -> dict[str, object]:
    """Test-then-apply over the whole log; HR@k and NDCG@k overall and per stream bucket."""
    model.fit(log, np.zeros(len(log.users), dtype=bool))
    histories: dict[int, list[int]] = {}
    hits = np.zeros(len(log.users))
    gains = np.zeros(len(log.users))
    for e, (user, item) in enumerate(zip(log.users.tolist(), log.items.tolist())):
        hist = histories.setdefault(user, [])
        hist_arr = np.asarray(hist, dtype=np.int64)
        scores = model.score(np.asarray([user]), [hist_arr]).astype(np.float64, copy=True)
        scores[0, hist_arr] = -np.inf
        m = rank_metrics(scores, np.asarray([item]), k)
        hits[e], gains[e] = m["hr"][0], m["ndcg"][0]
        model.update(user, item, float(log.weights[e]), int(log.ts[e]))
        hist.append(item)
    edges = np.linspace(0, len(hits), buckets + 1).astype(int)
    return {
        f"HR@{k}": float(hits.mean()) if len(hits) else 0.0,
        f"NDCG@{k}": float(gains.mean()) if len(gains) else 0.0,
        "events": int(len(hits)),
        f"HR@{k}_over_stream": [float(hits[a:b].mean()) if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])],
    }
