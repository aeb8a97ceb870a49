"""Encoder shard actors on real Ray, fed by the real items topic: sharded search == one flat index,
updates and deletes through Kafka, and a killed shard rebuilds from the compacted topic."""

from __future__ import annotations

import os
import signal
import time
import uuid

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

QUERIES = ["a film about space travel and aliens", "romantic comedy in paris", "a crime thriller with a heist",
           "animated movie for children", "a war drama"]  # fmt: skip


@pytest.fixture(scope="module")
def local_encoder():
    from actors.encoder import load_text_encoder

    return load_text_encoder()


def _catalogue(n: int = 120):
    from streams.datasets import synthetic

    return synthetic(users=10, items=n, events=10, seed=11).items


def _produce(settings, items=(), tombstones=()):
    from streams.client import make_producer
    from streams.codec import encode_item

    producer = make_producer(settings.connection(settings.bootstrap_servers))
    for item in items:
        producer.send(settings.topics.name("items"), key=item.item_id.encode(), value=encode_item(item))
    for item_id in tombstones:
        producer.send(settings.topics.name("items"), key=item_id.encode(), value=None)
    producer.flush()
    producer.close()


def test_sharded_search_updates_deletes_and_restart(topics, ray_local, local_encoder):
    from actors.core.retrieval import ShardIndex
    from actors.encoder import item_text
    from cluster.encoders import EncoderOptions, ShardedSearch, start_encoder_shards

    items = _catalogue()
    _produce(topics, items)
    handles = start_encoder_shards(topics, topics.bootstrap_servers, EncoderOptions(shards=2, num_cpus=0.25),
                                   namespace_prefix=f"t{uuid.uuid4().hex[:6]}-")  # fmt: skip
    search = ShardedSearch(handles)
    stats = search.wait_for_items(len(items))
    assert sorted(s["items"] for s in stats) != [0, len(items)]  # both shards own items

    flat = ShardIndex(local_encoder.dim)
    flat.upsert([i.item_id for i in items], local_encoder.encode([item_text(i.title, i.text, i.categories) for i in items]))
    queries = local_encoder.encode(QUERIES)
    got, want = search.search(queries, 10), flat.search(queries, 10)
    for g, w in zip(got, want):
        assert np.allclose([s for s, _ in g], [s for s, _ in w], atol=1e-4)
        # identical ids, except that near-ties (< 1e-4 apart) may swap
        assert [i for _, i in g] == [i for _, i in w] or {i for _, i in g} ^ {i for _, i in w} <= {g[-1][1], w[-1][1]}

    # item-to-item: the owner shard's vector, searched over all shards, itself excluded
    probe = items[5].item_id
    similar = search.similar(probe, 5)
    expected = flat.search(flat.vectors()[flat.ids.index(probe)][None, :], 5, [{probe}])[0]
    assert probe not in {i for _, i in similar} and len(similar) == 5
    assert np.allclose([s for s, _ in similar], [s for s, _ in expected], atol=1e-4)
    assert search.similar("no-such-item", 5) == []

    # an update and a delete travel through Kafka and become visible
    changed = items[0].__class__(item_id=items[0].item_id, title="Starship captains explore alien galaxies")
    removed = items[1].item_id
    sent = time.monotonic()
    _produce(topics, [changed], [removed])
    target = local_encoder.encode([item_text(changed.title)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        hits = search.search(target, 1)[0]
        present = {i for row in search.search(queries, 200) for _, i in row}
        if hits and hits[0][1] == changed.item_id and removed not in present:
            break
        time.sleep(0.1)
    else:
        pytest.fail("update/delete did not become visible within 60 s")
    print(f"upsert visible to search after {time.monotonic() - sent:.2f} s")
    assert hits[0][0] == pytest.approx(1.0, abs=1e-4)
    assert sum(s["items"] for s in search.stats()) == len(items) - 1

    # a shard SIGKILLed by the OS is restarted by Ray, rebuilds its part from the compacted
    # topic, and answers exactly as before
    before = search.search(queries, 20)
    os.kill(ray_local.get(handles[0].pid.remote()), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if sum(s["items"] for s in search.stats()) == len(items) - 1:
                break
        except Exception:  # the actor is restarting
            pass
        time.sleep(0.5)
    else:
        pytest.fail("the killed shard did not come back with its items")
    after = search.search(queries, 20)
    for b, a in zip(before, after):
        assert [i for _, i in a] == [i for _, i in b]
        assert np.allclose([s for s, _ in a], [s for s, _ in b], atol=1e-5)
    assert removed not in {i for row in search.search(queries, 200) for _, i in row}
    for h in handles:
        ray_local.kill(h, no_restart=True)


def test_bench_search_is_exact_and_learned_vectors_hook(ray_local):
    from cluster.bench import bench_search

    result = bench_search(items=3000, shards=2, queries=64, rounds=1)
    assert result["recall_at_10"] == 1.0  # Flat shards + exact merge == one Flat index
    assert result["sharded_qps"] > 0 and result["single_qps"] > 0


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_bench_search_reports_recall_of_approximate_shards(ray_local, kind):
    from actors.core.ann import IndexConfig
    from cluster.bench import bench_search

    index = IndexConfig(kind=kind, min_items=1000, ivf_nlist=32)
    result = bench_search(items=6000, shards=2, queries=64, rounds=1, index=index)
    assert result["index"] == kind and result["approximate"]  # 3,000 items per shard: past min_items
    assert 0.9 <= result["recall_at_10"] <= 1.0


def test_model_rollout_swaps_atomically_and_versions_only_increase(topics, ray_local, tmp_path):
    import threading

    import ray

    from actors.encoder import default_model_path, item_text, load_text_encoder
    from cluster.encoders import EncoderOptions, ShardedSearch, start_encoder_shards
    from cluster.registry import ModelRegistry

    items = _catalogue(60)
    _produce(topics, items)
    handles = start_encoder_shards(topics, topics.bootstrap_servers, EncoderOptions(shards=2, num_cpus=0.25),
                                   namespace_prefix=f"t{uuid.uuid4().hex[:6]}-")  # fmt: skip
    search = ShardedSearch(handles)
    try:
        search.wait_for_items(len(items))
        v1 = ModelRegistry(tmp_path / "registry").publish(default_model_path(), {"dtype": "bf16"})
        query = ray.get(handles[0].encode_query.remote(["a film about space travel"]))
        before = search.vectors_of([items[0].item_id])[items[0].item_id]

        answers, stop = [], threading.Event()

        def keep_searching():  # queries during the rollout always see a complete index
            while not stop.is_set():
                answers.append(search.search(query, 60)[0])

        reader = threading.Thread(target=keep_searching)
        reader.start()
        accepted = search.load_model(v1.version, str(v1.path), dtype="bf16")
        late = items[1].__class__(item_id="late-arrival", title="A documentary about deep sea creatures")
        _produce(topics, [late])  # upserted while the shards re-encode
        stats = search.load_model(v1.version, str(v1.path), dtype="bf16", wait_s=300)
        stop.set()
        reader.join()

        assert all(a["accepted"] for a in accepted)
        assert all(s["model_version"] == 1 and s["rollout_error"] is None for s in stats)
        assert answers and all(len(a) == len({i for _, i in a}) >= len(items) for a in answers)
        search.wait_for_items(len(items) + 1)
        after = search.vectors_of([items[0].item_id, "late-arrival"])
        bf16 = load_text_encoder(str(v1.path), dtype="bf16")
        want = bf16.encode([item_text(items[0].title, items[0].text, items[0].categories), item_text(late.title)])
        assert not np.allclose(after[items[0].item_id], before, atol=1e-6)  # re-encoded by the new model
        assert np.allclose(after[items[0].item_id], want[0], atol=2e-2)
        assert np.allclose(after["late-arrival"], want[1], atol=2e-2)  # the mid-rollout upsert, new model
        refused = search.load_model(1, str(v1.path)) + search.load_model(0, str(v1.path))
        assert not any(r["accepted"] for r in refused)  # versions only increase
    finally:
        for h in handles:
            ray.kill(h)


def _same_answers(got, want):
    for g, w in zip(got, want):
        assert np.allclose([s for s, _ in g], [s for s, _ in w], atol=1e-4)
        # identical ids, except that near-ties (< 1e-4 apart) may swap
        assert [i for _, i in g] == [i for _, i in w] or {i for _, i in g} ^ {i for _, i in w} <= {g[-1][1], w[-1][1]}


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_killed_shard_restores_from_its_index_snapshot_and_replays_only_the_rest(topics, ray_local, local_encoder,
                                                                                tmp_path, index):  # fmt: skip
    from actors.core.retrieval import ShardIndex, shard_of
    from actors.encoder import item_text
    from cluster.encoders import EncoderOptions, ShardedSearch, start_encoder_shards

    # hnsw: past index_min_items, so the shards build the layer in the background and snapshot it
    # (at ~60 items per shard a search with ef_search 64 visits every item: the answers are exact)
    settings = topics.model_copy(update={"pipeline": topics.pipeline.model_copy(update={
        "index_snapshot_dir": tmp_path / "snapshots", "index_snapshot_interval_s": 0.5,
        "index": index, "index_min_items": 20})})  # fmt: skip
    items = _catalogue(120)
    _produce(settings, items)
    handles = start_encoder_shards(settings, settings.bootstrap_servers, EncoderOptions(shards=2, num_cpus=0.25),
                                   namespace_prefix=f"t{uuid.uuid4().hex[:6]}-")  # fmt: skip
    search = ShardedSearch(handles)
    try:
        search.wait_for_items(len(items))
        assert not any(s["restored_from_snapshot"] for s in search.stats())  # nothing to restore at first
        deadline = time.monotonic() + 60
        while True:  # a snapshot of shard 0 that covers the whole topic (and holds the built layer)
            stats = search.stats()[0]
            snap = stats["last_snapshot"]
            if snap and sum(snap["positions"].values()) == len(items) and snap["layer"] == (index == "hnsw"):
                break
            assert time.monotonic() < deadline, "shard 0 wrote no complete index snapshot"
            time.sleep(0.2)
        queries = local_encoder.encode(QUERIES)
        mine = [i for i in items if shard_of(i.item_id, 2) == 0]
        kept = mine[5].item_id
        kept_vector = search.vectors_of([kept])[kept]

        os.kill(ray_local.get(handles[0].pid.remote()), signal.SIGKILL)
        # while shard 0 is down or restarting: an update and a delete of its items, a new item, a delete of shard 1's
        changed = items[0].__class__(item_id=mine[0].item_id, title="Starship captains explore alien galaxies")
        added = items[0].__class__(item_id="brand-new", title="A heist thriller on a night train")
        gone = [mine[1].item_id, next(i.item_id for i in items if shard_of(i.item_id, 2) == 1)]
        _produce(settings, [changed, added], gone)
        final = {i.item_id: i for i in items} | {changed.item_id: changed, added.item_id: added}
        for item_id in gone:
            del final[item_id]

        deadline = time.monotonic() + 180
        while True:
            try:
                stats = search.stats()
                if stats[0]["restored_from_snapshot"] and sum(s["items"] for s in stats) == len(final) and \
                        search.search(local_encoder.encode([item_text(changed.title)]), 1)[0][0][1] == changed.item_id:
                    break
            except Exception:  # the actor is restarting
                pass
            assert time.monotonic() < deadline, "the killed shard did not come back from its snapshot"
            time.sleep(0.5)
        restored = stats[0]
        print(f"shard 0 restored {restored['restore']['items']} items, replayed {restored['replayed']} records")
        assert restored["approximate"] == (index == "hnsw")  # the layer came back with the snapshot
        assert restored["restore"]["items"] == len(mine)
        assert restored["replayed"] == 4  # the four records produced after the snapshot, not the whole topic
        assert restored["replayed"] < len(items) + 4
        assert np.array_equal(search.vectors_of([kept])[kept], kept_vector)  # the snapshot's exact vector

        # it answers like a flat index over the catalogue as it is now: before, plus the changes
        flat = ShardIndex(local_encoder.dim)
        flat.upsert(list(final), local_encoder.encode([item_text(i.title, i.text, i.categories)
                                                       for i in final.values()]))  # fmt: skip
        _same_answers(search.search(queries, 20), flat.search(queries, 20))
        present = {i for row in search.search(queries, 200) for _, i in row}
        assert not present & set(gone) and added.item_id in present
    finally:
        for h in handles:
            ray_local.kill(h, no_restart=True)
