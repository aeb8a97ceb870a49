"""The fused recommender on synthetic data with planted interest clusters."""

import numpy as np
import pytest

from actors.core.baselines import Popularity
from actors.core.evaluation import encode_log, evaluate_loo, evaluate_prequential
from actors.core.profile_query import query_vectors
from actors.core.recommender import FusedConfig, FusedRecommender
from streams.datasets import synthetic


@pytest.fixture(scope="module")
def data():
    ds = synthetic(users=120, items=200, events=6000, seed=5, clusters=6)
    positive = [e for e in ds.events if e.kind not in ("dislike", "skip")]
    log, users, items = encode_log((e.user_id for e in positive), (e.item_id for e in positive),
                                   (e.ts for e in positive), (1.0 for _ in positive),
                                   [i.item_id for i in ds.items])  # fmt: skip
    return ds, log, items


def _text(ds, items):
    # a stand-in for text embeddings: one random direction per planted cluster, plus noise
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((8, 32))
    cluster = ds.truth["item_clusters"]
    v = np.stack([centers[cluster[i]] + 0.3 * rng.standard_normal(32) for i in items])
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_fused_beats_popularity_on_planted_clusters(data):
    ds, log, items = data
    fused = evaluate_loo(FusedRecommender(_text(ds, items)), log, k=10)
    pop = evaluate_loo(Popularity(), log, k=10)
    assert fused["NDCG@10"] > pop["NDCG@10"] * 1.2
    assert 0 < fused["coverage"] <= 1


def test_profile_signal_alone_finds_the_users_clusters(data):
    ds, log, items = data
    model = FusedRecommender(_text(ds, items), FusedConfig(weights={"profile": 1.0}))
    report = evaluate_loo(model, log, k=10)
    assert report["HR@10"] > evaluate_loo(Popularity(), log, k=10)["HR@10"]


def test_deterministic(data):
    ds, log, items = data
    a = evaluate_loo(FusedRecommender(_text(ds, items)), log, k=10)
    b = evaluate_loo(FusedRecommender(_text(ds, items)), log, k=10)
    assert a == b


def test_prequential_runs_and_updates_state(data):
    ds, log, items = data
    small = encode_log([str(u) for u in log.users[:400]], [items[i] for i in log.items[:400]],
                       log.ts[:400].tolist(), [1.0] * 400, items)[0]  # fmt: skip
    model = FusedRecommender(_text(ds, items))
    report = evaluate_prequential(model, small, k=10)
    assert report["events"] == 400 and 0 <= report["HR@10"] <= 1
    assert model.counts.sum() == 400 and model.covisit.memory_entries() > 0


def test_works_without_text(data):
    _, log, _ = data
    report = evaluate_loo(FusedRecommender(None), log, k=10)
    assert report["NDCG@10"] > 0


def test_recommend_filters_seen_explains_and_diversifies(data):
    ds, log, items = data
    model = FusedRecommender(_text(ds, items))
    model.fit(log, np.ones(len(log.users), dtype=bool))
    user = int(log.users[0])
    history = log.items[log.users == user].tolist()
    recs = model.recommend(user, history, 10, names=items)
    assert len(recs) == 10 and not {r.item for r in recs} & set(history)
    assert [r.score for r in recs] == sorted([r.score for r in recs], reverse=True)
    assert all(r.reasons for r in recs)
    assert any("next to" in reason or "interest" in reason or "session" in reason for r in recs for reason in r.reasons)
    diverse = model.recommend(user, history, 10, diversity=0.7)
    sim = lambda rs: np.mean([model.vectors[a.item] @ model.vectors[b.item] for a in rs for b in rs if a.item < b.item])
    assert sim(diverse) <= sim(recs) + 1e-6
    explored = model.recommend(user, history, 10, explore=True)
    assert explored[-1].reasons[0].startswith("exploring")
    coarse = model.bank.get(int(model.rows[user])).coarse
    assert coarse[model.item_cluster[explored[-1].item]] <= np.median(coarse)  # an under-explored cluster


def test_refit_rebuilds_profiles_from_rings_in_the_new_space(data):
    ds, log, items = data
    model = FusedRecommender(_text(ds, items), FusedConfig(refit_every=0))
    half = np.arange(len(log.users)) < len(log.users) // 2
    model.fit(log, np.zeros(len(log.users), dtype=bool))  # streaming start: no collaborative part yet
    for e in np.flatnonzero(half):
        model.update(int(log.users[e]), int(log.items[e]), 1.0, int(log.ts[e]))
    before = model.vectors.copy()
    user = int(log.users[0])
    version = model.bank.get(int(model.rows[user])).version
    model.refit()
    assert not np.allclose(before, model.vectors)  # the collaborative part now exists
    after = model.bank.get(int(model.rows[user]))
    assert after.version == version
    queries, _ = query_vectors(after, int(model.last_ts[user]), model.pcfg)
    assert queries.shape[1] == model.vectors.shape[1] and np.isfinite(queries).all()
