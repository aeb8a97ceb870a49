"""Evaluation protocols and peer models on tiny hand-checked logs."""

import math

import numpy as np
import pytest

from actors.core.baselines import CoVisitation, CoVisitConfig, Popularity
from actors.core.evaluation import encode_log, evaluate_loo, evaluate_prequential, loo_split, rank_metrics


def _log(pairs, n_items=None):
    users = [u for u, _ in pairs]
    items = [i for _, i in pairs]
    catalogue = [str(i) for i in range(n_items or (max(int(i) for i in items) + 1))]
    log, _, _ = encode_log(users, items, range(len(pairs)), [1.0] * len(pairs), catalogue)
    return log


def test_rank_metrics_by_hand():
    scores = np.array([[0.9, 0.5, 0.1, -np.inf], [0.1, 0.2, 0.3, 0.4]])
    m = rank_metrics(scores, np.array([1, 0]), k=3)
    assert m["hr"].tolist() == [1.0, 0.0]
    assert m["ndcg"][0] == pytest.approx(1 / math.log2(3))  # rank 2 (1-based)
    assert m["mrr"][0] == pytest.approx(0.5)


def test_ties_count_against_the_target():
    m = rank_metrics(np.zeros((1, 20)), np.array([3]), k=10)
    assert m["hr"][0] == 0.0  # a constant scorer earns nothing


def test_masked_target_is_a_miss():
    m = rank_metrics(np.array([[-np.inf, 1.0]]), np.array([0]), k=2)
    assert m["hr"][0] == 0.0


def test_loo_split_takes_each_users_last_two_in_time_order():
    log = _log([("a", "0"), ("b", "1"), ("a", "2"), ("a", "3"), ("b", "4"), ("b", "5"), ("c", "6"), ("a", "7")])
    valid, test, users = loo_split(log)
    assert log.items[test].tolist() == [7, 5]  # users a, b (c has one event: not eligible)
    assert log.items[valid].tolist() == [3, 4]
    assert users.tolist() == [0, 1]


def test_popularity_loo_exact():
    # item 9 is the most popular in training; user x's test item is 9
    pairs = [("u1", "9"), ("u2", "9"), ("u3", "9"), ("u1", "1"), ("u2", "2"), ("u3", "3")]
    pairs += [("x", "4"), ("x", "5"), ("x", "6"), ("x", "9")]
    log = _log(pairs, n_items=10)
    report = evaluate_loo(Popularity(), log, k=1)
    assert report["users"] == 1 and report["HR@1"] == 1.0 and report["NDCG@1"] == 1.0


def test_covisit_recommends_the_item_seen_next_to_the_last_one():
    pairs = []
    for u in range(20):
        pairs += [(f"u{u}", str(3 + u % 5)), (f"u{u}", "1"), (f"u{u}", "2"), (f"u{u}", "0")]  # 2 follows 1
    pairs += [("x", "8"), ("x", "9"), ("x", "1"), ("x", "2")]  # x's test target is 2, after 1
    log = _log(pairs, n_items=10)
    report = evaluate_loo(CoVisitation(), log, k=1)
    assert report["users"] == 21
    # x's next item is predictable; the others' test item (0) never occurs in training
    assert report["HR@1"] == pytest.approx(1 / 21)


def test_covisit_incremental_updates_equal_batch_fit():
    rng = np.random.default_rng(0)
    pairs = [(f"u{rng.integers(6)}", str(rng.integers(15))) for _ in range(300)]
    log = _log(pairs, n_items=15)
    batch = CoVisitation(CoVisitConfig(window=3))
    batch.fit(log, np.ones(len(log.users), dtype=bool))
    stream = CoVisitation(CoVisitConfig(window=3))
    stream.fit(log, np.zeros(len(log.users), dtype=bool))
    for u, i in zip(log.users.tolist(), log.items.tolist()):
        stream.update(u, i, 1.0, 0)
    assert np.allclose(batch.pairs, stream.pairs, atol=1e-4)
    assert np.array_equal(batch.item_counts, stream.item_counts)


def test_prequential_never_sees_the_event_it_predicts():
    class Oracle:
        """Scores the item a user saw most recently highest: can only hit repeats, which are masked."""

        def fit(self, log, mask):
            self.n = log.n_items
            self.last = {}

        def score(self, users, histories):
            out = np.zeros((len(users), self.n))
            for r, u in enumerate(users):
                if int(u) in self.last:
                    out[r, self.last[int(u)]] = 1.0
            return out

        def update(self, user, item, weight, ts):
            self.last[user] = item

    log = _log([("a", str(i)) for i in range(30)], n_items=40)
    report = evaluate_prequential(Oracle(), log, k=1)
    assert report["HR@1"] == 0.0 and report["events"] == 30
    assert len(report["HR@1_over_stream"]) == 10
