"""Approximate shard indexes (HNSW, IVF): recall against Flat on seeded synthetic data, updates and
deletes never leak, small shards stay exact, and the state round trip keeps the answers."""

import numpy as np
import pytest

from actors.core.ann import IndexConfig
from actors.core.retrieval import ShardIndex

D = 32


def _clustered(rng, n, centers):
    """Unit vectors around latent cluster centres (low intrinsic dimension, like text embeddings)."""
    c = rng.integers(0, len(centers), n)
    x = centers[c] + 0.2 * rng.standard_normal((n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(42)
    centers = rng.standard_normal((60, D)) / np.sqrt(D)
    return _clustered(rng, 6000, centers), _clustered(rng, 200, centers)


def _pair(config, vectors):
    ids = [f"i{j}" for j in range(len(vectors))]
    flat, ann = ShardIndex(D), ShardIndex(D, config)
    flat.upsert(ids, vectors)
    ann.upsert(ids, vectors)
    return flat, ann


def _recall(want, got, k=10):
    return np.mean([len({i for _, i in w} & {i for _, i in g}) / k for w, g in zip(want, got)])


HNSW = IndexConfig(kind="hnsw", min_items=1000)
IVF = IndexConfig(kind="ivf", min_items=1000, ivf_nlist=64, ivf_nprobe=8)


@pytest.mark.parametrize("config", [HNSW, IVF], ids=["hnsw", "ivf"])
def test_recall_at_10_against_flat(config, data):
    vectors, queries = data
    flat, ann = _pair(config, vectors)
    assert ann.approximate
    want, got = flat.search(queries, 10), ann.search(queries, 10)
    assert _recall(want, got) >= 0.9
    # scores are exact inner products of the stored vectors, only the set found is approximate
    for row, q in zip(got, queries):
        assert np.allclose([s for s, _ in row], [float(q @ ann.vector(i)) for _, i in row], atol=1e-5)
    scores, ids = ann.search_top(queries, 10)
    assert ids.tolist() == [[i for _, i in row] for row in got]


@pytest.mark.parametrize("config", [HNSW, IVF], ids=["hnsw", "ivf"])
def test_small_index_stays_exact(config, data):
    vectors, queries = data
    flat, ann = _pair(config, vectors[:900])  # below min_items
    assert not ann.approximate
    assert ann.search(queries, 10) == flat.search(queries, 10)


def test_ivf_answers_exactly_until_it_can_train(data):
    vectors, queries = data
    config = IndexConfig(kind="ivf", min_items=100, ivf_nlist=64)  # training needs 39 * 64 items
    assert config.ready_at() == 39 * 64
    flat, ann = _pair(config, vectors[:2000])
    assert not ann.approximate and ann.search(queries, 10) == flat.search(queries, 10)
    more = [f"i{j}" for j in range(2000, 3000)]
    ann.upsert(more, vectors[2000:3000])
    assert ann.approximate


@pytest.mark.parametrize("config", [HNSW, IVF], ids=["hnsw", "ivf"])
def test_deletes_and_updates_never_leak(config, data):
    vectors, _ = data
    rng = np.random.default_rng(5)
    n = 3000
    _, ann = _pair(config, vectors[:n])
    truth = {f"i{j}": vectors[j] for j in range(n)}
    probes = []  # old vectors of deleted and updated items: they would find themselves first
    for step in range(8):  # 8 x 100 changes: past the rebuild fraction, so a rebuild happens too
        picked = rng.choice(sorted(truth), 100, replace=False)
        gone, moved = list(picked[:50]), list(picked[50:])
        probes += [truth[i] for i in gone + moved]
        assert ann.delete(gone) == 50
        new = vectors[rng.integers(n, len(vectors), len(moved))]
        ann.upsert(moved, new)
        for i in gone:
            del truth[i]
        truth.update(zip(moved, new))
        assert ann.approximate and len(ann) == len(truth)
    assert ann._ann.stale_fraction() <= config.rebuild_fraction
    queries = np.stack(probes)
    for q, row in zip(queries, ann.search(queries, 10)):
        assert len(row) == 10
        for score, item_id in row:
            assert item_id in truth  # never a deleted item
            assert score == pytest.approx(float(q @ truth[item_id]), abs=1e-5)  # never an old vector
    _, ids = ann.search_top(queries, 10)
    assert set(ids.ravel().tolist()) <= set(truth)


@pytest.mark.parametrize("config", [IndexConfig(), HNSW, IVF], ids=["flat", "hnsw", "ivf"])
def test_state_round_trip_answers_the_same(config, data):
    vectors, queries = data
    _, ann = _pair(config, vectors[:3000])
    ann.delete([f"i{j}" for j in range(0, 3000, 7)])
    ann.upsert(["i1", "new"], vectors[3000:3002])
    state = ann.state()
    back = ShardIndex.from_state(state, config)
    assert back.ids == ann.ids and np.array_equal(back.vectors(), ann.vectors())
    assert back.approximate == ann.approximate
    assert back.search(queries, 10) == ann.search(queries, 10)
    back.upsert(["newer"], vectors[3002:3003])  # keeps working after the restore
    ann.upsert(["newer"], vectors[3002:3003])
    assert back.search(queries, 10) == ann.search(queries, 10)


def test_a_layer_of_another_structure_is_rebuilt_not_reused(data):
    vectors, queries = data
    _, hnsw = _pair(HNSW, vectors[:3000])
    as_ivf = ShardIndex.from_state(hnsw.state(), IVF)
    assert as_ivf.approximate and type(as_ivf._ann).__name__ == "IvfLayer"
    as_flat = ShardIndex.from_state(hnsw.state(), IndexConfig())
    flat, _ = _pair(IndexConfig(), vectors[:3000])
    assert not as_flat.approximate and as_flat.search(queries, 10) == flat.search(queries, 10)


def test_config_is_validated():
    with pytest.raises(ValueError):
        IndexConfig(kind="lsh")
    with pytest.raises(ValueError):
        IndexConfig(kind="hnsw", hnsw_m=0)
    assert IndexConfig(kind="hnsw").structure() != IndexConfig(kind="hnsw", hnsw_m=16).structure()
    assert IndexConfig(kind="hnsw").structure() == IndexConfig(kind="hnsw", hnsw_ef_search=8).structure()


@pytest.mark.parametrize("config", [HNSW, IVF], ids=["hnsw", "ivf"])
def test_deferred_rebuild_applies_the_changes_made_while_it_ran(config, data):
    vectors, queries = data
    ids = [f"i{j}" for j in range(3000)]
    index = ShardIndex(D, config, auto_maintain=False)
    index.upsert(ids, vectors[:3000])
    assert not index.approximate and index.maintenance_due()  # due, but left to the owner
    build = index.begin_rebuild()
    assert build is not None and index.begin_rebuild() is None  # one rebuild at a time
    # changes while the build runs (without the owner's lock in a shard)
    index.delete(ids[:100])
    index.upsert(ids[100:200], vectors[3000:3100])  # updates
    index.upsert([f"n{j}" for j in range(100)], vectors[3100:3200])  # new items
    layer, labels = build.run()
    index.finish_rebuild(build, layer, labels)
    assert index.approximate and not index.maintenance_due()
    truth = dict(zip(ids[200:3000], vectors[200:3000])) | dict(zip(ids[100:200], vectors[3000:3100]))
    truth |= dict(zip([f"n{j}" for j in range(100)], vectors[3100:3200]))
    assert set(index.ids) == set(truth)
    flat = ShardIndex(D)
    flat.upsert(list(truth), np.stack(list(truth.values())))
    probes = np.concatenate([queries, vectors[:200]])  # incl. the deleted and the old vectors of updated items
    got = index.search(probes, 10)
    assert _recall(flat.search(probes, 10), got) >= 0.9
    for q, row in zip(probes, got):
        assert all(i in truth and s == pytest.approx(float(q @ truth[i]), abs=1e-5) for s, i in row)
