"""Index snapshots of an encoder shard: format, atomic writes, and which snapshots a restart may use."""

import json
import os

import numpy as np
import pytest

from actors import index_snapshot
from actors.core.ann import IndexConfig
from actors.core.retrieval import ShardIndex
from actors.index_snapshot import FORMAT_VERSION, IndexSnapshot, IndexSnapshotError, IndexSnapshotStore
from streams.records import ItemUpsert

NOW = 1_764_000_000.0
HNSW = IndexConfig(kind="hnsw", min_items=100)


def _index(config=IndexConfig(), n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d)).astype(np.float32)
    index = ShardIndex(d, config)
    index.upsert([f"i{j}" for j in range(n)], v / np.linalg.norm(v, axis=1, keepdims=True))
    index.delete(["i3", "i7"])
    return index


def _snap(index, created_at=NOW, model_version=2, shard=1, shards=3, positions=None):
    items = [ItemUpsert(item_id=i, title=f"title {i}", categories=("a", "b"), attributes={"year": 1999})
             for i in index.ids]  # fmt: skip
    return IndexSnapshot(items_topic="t-items", shard=shard, shards=shards, model_version=model_version,
                         created_at=created_at, positions=positions or {0: 120, 1: 0, 2: 77},
                         state=index.state(), items=items)  # fmt: skip


@pytest.mark.parametrize("config", [IndexConfig(), HNSW], ids=["flat", "hnsw"])
def test_round_trip_format(tmp_path, config):
    index = _index(config)
    store = IndexSnapshotStore(tmp_path, "t-items", 1, 3)
    path = store.write(_snap(index))
    assert path.parent == tmp_path / "t-items.shard-1-of-3" and path.name.startswith("snap-")
    files = {p.name for p in path.iterdir()}
    assert {"meta.json", "ids.json", "items.json", "vectors.npy"} <= files
    assert ("layer.npy" in files) == (config.kind != "flat")
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == FORMAT_VERSION and meta["model_version"] == 2 and meta["count"] == len(index)
    assert meta["positions"] == {"0": 120, "1": 0, "2": 77} and meta["created_at"] == NOW
    for npy in (p for p in path.iterdir() if p.suffix == ".npy"):
        np.load(npy, allow_pickle=False)  # plain arrays, no pickled objects

    back, why = store.latest(model_version=2, max_age_s=3600, now=NOW + 10)
    assert back is not None and "10 s old" in why
    assert back.positions == {0: 120, 1: 0, 2: 77} and back.created_at == NOW
    assert back.items[0] == ItemUpsert(item_id="i0", title="title i0", categories=("a", "b"), attributes={"year": 1999})
    restored = ShardIndex.from_state(back.state, config)
    assert restored.ids == index.ids and np.array_equal(restored.vectors(), index.vectors())
    assert restored.approximate == index.approximate
    q = index.vectors()[:20]
    assert restored.search(q, 10) == index.search(q, 10)


def test_refuses_other_model_version_shard_count_old_and_unknown_format(tmp_path):
    store = IndexSnapshotStore(tmp_path, "t-items", 1, 3)
    store.write(_snap(_index()))
    assert store.latest(model_version=2, max_age_s=3600, now=NOW)[0] is not None
    snap, why = store.latest(model_version=3, max_age_s=3600, now=NOW)
    assert snap is None and "model version 2" in why
    snap, why = store.latest(model_version=2, max_age_s=3600, now=NOW + 3601)
    assert snap is None and "older than 3600 s" in why
    other_count = IndexSnapshotStore(tmp_path, "t-items", 1, 4)
    assert other_count.latest(model_version=2, max_age_s=3600, now=NOW)[0] is None
    # a snapshot directory copied into another shard's place is refused by its metadata
    os.makedirs(other_count.dir)
    os.rename(store.snapshots()[0], other_count.dir / "snap-1")
    snap, why = other_count.latest(model_version=2, max_age_s=3600, now=NOW)
    assert snap is None and "shard 1 of 3" in why
    meta_path = other_count.dir / "snap-1" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(IndexSnapshotError, match="format 99"):
        other_count.read(other_count.dir / "snap-1")
    with pytest.raises(ValueError):
        other_count.write(_snap(_index()))  # a shard 1-of-3 snapshot into the 1-of-4 store


def test_newest_usable_wins_and_only_keep_remain(tmp_path):
    store = IndexSnapshotStore(tmp_path, "t-items", 1, 3, keep=2)
    store.write(_snap(_index(n=100), created_at=NOW, model_version=2))
    store.write(_snap(_index(n=200), created_at=NOW + 1, model_version=2))
    store.write(_snap(_index(n=300), created_at=NOW + 2, model_version=3))  # e.g. after a rollout
    assert len(store.snapshots()) == 2
    snap, _ = store.latest(model_version=2, max_age_s=3600, now=NOW + 5)
    assert snap is not None and len(snap.state.ids) == 198  # the newest for version 2
    assert len(store.latest(model_version=3, max_age_s=3600, now=NOW + 5)[0].state.ids) == 298


def test_write_is_atomic(tmp_path, monkeypatch):
    store = IndexSnapshotStore(tmp_path, "t-items", 1, 3)
    store.write(_snap(_index(n=100), created_at=NOW))
    real, calls = index_snapshot._write_npy, []

    def failing(path, array):  # the writer dies halfway through the second snapshot
        calls.append(path)
        raise OSError("disk full")

    monkeypatch.setattr(index_snapshot, "_write_npy", failing)
    with pytest.raises(OSError):
        store.write(_snap(_index(n=200), created_at=NOW + 1))
    assert calls and len(store.snapshots()) == 1 and not list(store.dir.glob(".tmp-*"))
    monkeypatch.setattr(index_snapshot, "_write_npy", real)
    # a writer killed outright leaves a temp directory: never read, removed by the next write
    (store.dir / ".tmp-dead").mkdir()
    (store.dir / ".tmp-dead" / "ids.json").write_text("[")
    assert len(store.latest(2, 3600, NOW + 2)[0].state.ids) == 98
    store.write(_snap(_index(n=150), created_at=NOW + 3))
    assert not (store.dir / ".tmp-dead").exists()
    # a damaged snapshot is skipped in favour of an older, intact one
    (store.snapshots()[0] / "vectors.npy").unlink()
    snap, why = store.latest(2, 3600, NOW + 4)
    assert len(snap.state.ids) == 98 and "unreadable" not in why


def test_positions_outside_the_topic_are_refused():
    from actors.index_snapshot import positions_outside

    begin, end = {0: 0, 1: 5}, {0: 100, 1: 50}
    assert positions_outside({0: 100, 1: 5}, begin, end) == []  # the end and the beginning are both fine
    assert positions_outside({}, begin, end) == []  # partitions without a position start at the beginning
    assert positions_outside({0: 101, 1: 4, 2: 7}, begin, end) == [
        "partition 2 is gone", "0@101 not in [0, 100]", "1@4 not in [5, 50]"]  # fmt: skip
