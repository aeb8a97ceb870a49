"""Co-visitation store, collaborative factors, topic clusters, fusion and MMR."""

import numpy as np
import pytest

from actors.core.baselines import CoVisitation, CoVisitConfig
from actors.core.clusters import fit_topic_clusters
from actors.core.collab import CollabConfig, combine, fit_item_factors
from actors.core.covisit import CoVisitParams, CoVisitStore
from actors.core.errors import StreamrecError
from actors.core.evaluation import encode_log
from actors.core.fusion import fuse, mmr, standardise, top_k


def _sequences(seed=0, users=30, items=40, length=25):
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, items, length).tolist() for u in range(users)}


def _fold(store, seqs):
    for seq in seqs.values():
        for t, item in enumerate(seq):
            store.add_sequence_step(seq[:t], item)
    return store


def test_covisit_store_matches_the_dense_reference_when_unbounded():
    seqs = _sequences()
    store = _fold(CoVisitStore(CoVisitParams(window=4, max_neighbours=10_000)), seqs)
    pairs = [(str(u), str(i)) for u, seq in seqs.items() for i in seq]
    log, _, _ = encode_log([p[0] for p in pairs], [p[1] for p in pairs], range(len(pairs)), [1.0] * len(pairs),
                           [str(i) for i in range(40)])  # fmt: skip
    dense = CoVisitation(CoVisitConfig(window=4))
    dense.fit(log, np.ones(len(pairs), dtype=bool))
    # codes: catalogue order is "0".."39" so code == item
    for a, row in store.neighbours.items():
        for b, w in row.items():
            assert w == pytest.approx(dense.pairs[a, b], rel=1e-5)
    hist = seqs[0]
    ids, scores = store.score(hist)
    ref = dense.score(np.array([0]), [np.array(hist)])[0]
    assert np.allclose(scores, ref[ids], rtol=1e-4)


def test_covisit_memory_is_bounded():
    store = _fold(CoVisitStore(CoVisitParams(window=10, max_neighbours=8)), _sequences(items=400, length=60))
    assert max(len(r) for r in store.neighbours.values()) < 16
    assert store.memory_entries() < 16 * 400


def test_covisit_snapshot_round_trip_and_version_check():
    store = _fold(CoVisitStore(), _sequences(users=5))
    again = CoVisitStore.from_bytes(store.to_bytes())
    assert again.neighbours == store.neighbours and again.counts == store.counts
    bad = bytearray(store.to_bytes())
    bad[4] = 99
    with pytest.raises(StreamrecError, match="version 99"):
        CoVisitStore.from_bytes(bytes(bad))


def test_collab_factors_group_items_of_the_same_users():
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(200):  # two communities: items 0-19 and 20-39
        base = 0 if u % 2 == 0 else 20
        for i in rng.choice(20, 8, replace=False):
            users.append(u)
            items.append(base + i)
    f = fit_item_factors(np.array(users), np.array(items), np.ones(len(items)), 41, CollabConfig(dim=8))
    assert f.shape == (41, 8)
    assert np.allclose(np.linalg.norm(f[:40], axis=1), 1.0, atol=1e-5)
    assert not f[40].any()  # an item nobody consumed has no collaborative vector
    same = (f[:20] @ f[:20].T).mean()
    cross = (f[:20] @ f[20:40].T).mean()
    assert same > cross + 0.5


def test_combine_is_a_weighted_sum_of_similarities():
    rng = np.random.default_rng(1)
    t = rng.standard_normal((5, 6)).astype(np.float32)
    c = rng.standard_normal((5, 3)).astype(np.float32)
    v = combine(t, c, text_weight=0.25)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    assert np.allclose(v @ v.T, 0.25 * tn @ tn.T + 0.75 * cn @ cn.T, atol=1e-5)


def test_topic_clusters_recover_planted_clusters():
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((4, 16))
    x = np.repeat(centers, 50, axis=0) + 0.05 * rng.standard_normal((200, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    clusters = fit_topic_clusters(x, 4)
    labels = clusters.assign(x)
    for g in range(4):
        assert len(set(labels[g * 50 : (g + 1) * 50])) == 1
    assert len(set(labels)) == 4


def test_standardise_and_fuse():
    a = np.array([[1.0, 2.0, 3.0, np.nan]])
    z = standardise(a)
    assert z[0, :3].mean() == pytest.approx(0.0) and z[0, 3] == pytest.approx(z[0, 0])
    scale_free = fuse({"x": np.array([[1.0, 2.0, 3.0]]), "y": np.array([[300.0, 200.0, 100.0]])}, {"x": 2.0, "y": 1.0})
    assert np.argmax(scale_free[0]) == 2  # x wins: weight 2 vs 1 on the same standardised scale
    with pytest.raises(ValueError):
        fuse({"x": a}, {"x": 0.0})


def test_top_k_is_ordered_with_ties_by_index():
    s = np.array([[0.1, 0.9, 0.5, 0.9]])
    assert top_k(s, 3).tolist() == [[1, 3, 2]]


def test_mmr_trades_relevance_for_diversity():
    v = np.array([[1, 0], [0.99, 0.141], [0, 1]], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rel = np.array([1.0, 0.95, 0.5])
    assert mmr(rel, v, 2, lam=1.0).tolist() == [0, 1]
    assert mmr(rel, v, 2, lam=0.5).tolist() == [0, 2]
