"""The user-side pipeline on the real broker and local Ray: events in -> profiles, changelog and recs out.

The oracle is an in-process fold (actors.user_state.UserState) of the events as the
broker stored them, with the shards' own item vectors and the same topic clusters:
the pipeline's profiles (in the workers and in the changelog) must equal it byte for
byte, also after a profile worker is SIGKILLed mid-stream.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _settings(topics, mode: str):
    from cluster.settings import Settings

    return Settings(bootstrap_servers=topics.bootstrap_servers, topics=topics.topics,
                    pipeline={"mode": mode, "workers": 2, "worker_cpus": 0.25, "max_batch": 150, "n_clusters": 8,
                              "k": 5})  # fmt: skip


def _produce(settings, items=(), events=(), raw_events=(), pace_s: float = 0.0):
    from streams.client import make_producer
    from streams.codec import encode_event, encode_item

    producer = make_producer(settings.connection(settings.bootstrap_servers))
    try:
        for item in items:
            producer.send(settings.topics.name("items"), key=item.item_id.encode(), value=encode_item(item))
        for n, event in enumerate(events):
            producer.send(settings.topics.name("events"), key=event.user_id.encode(), value=encode_event(event))
            if pace_s and n % 50 == 49:
                producer.flush()
                time.sleep(pace_s)
        for key, value in raw_events:
            producer.send(settings.topics.name("events"), key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def _read(settings, role: str):
    from streams.changelog import read_partitions
    from streams.client import make_consumer

    consumer = make_consumer(settings.connection(settings.bootstrap_servers), group_id=None)
    try:
        topic = settings.topics.name(role)
        return list(read_partitions(consumer, topic, sorted(consumer.partitions_for_topic(topic))))
    finally:
        consumer.close()


def _start(settings, n_items: int):
    from cluster.encoders import EncoderOptions, ShardedSearch, shard_name, start_encoder_shards
    from cluster.pipeline import fit_clusters, start_pipeline

    prefix = f"t{uuid.uuid4().hex[:6]}-"
    shards = start_encoder_shards(settings, settings.bootstrap_servers, EncoderOptions(shards=2, num_cpus=0.25),
                                  namespace_prefix=prefix)  # fmt: skip
    search = ShardedSearch(shards, [shard_name(prefix, s) for s in range(2)])
    search.wait_for_items(n_items)
    clusters = fit_clusters(search, settings.pipeline.n_clusters)
    pipeline = start_pipeline(settings, settings.bootstrap_servers, search, clusters, dim=384, namespace_prefix=prefix,
                              supervise_every_s=1.0)  # fmt: skip
    return shards, search, clusters, pipeline


def _oracle(settings, search, clusters):
    """Fold the events exactly as stored in the topic, in one process."""
    from actors.core.retrieval import ShardIndex
    from actors.user_state import UserState
    from cluster.pipeline import worker_configs
    from streams.codec import decode_event
    from streams.records import Consumed

    raw = _read(settings, "events")
    records, invalid = [], 0
    for r in raw:
        try:
            records.append(Consumed(decode_event(r.value, now_ms=int(time.time() * 1000)), r.topic, r.partition,
                                    r.offset, r.timestamp, r.key))  # fmt: skip
        except Exception:
            invalid += 1
    item_ids = sorted({r.value.item_id for r in records})
    vectors = search.vectors_of(item_ids)
    index = ShardIndex(384)
    index.upsert(list(vectors), [vectors[i] for i in vectors])
    state = UserState(worker_configs(settings, 384)[0].user, index, clusters)
    state.apply(records)
    return {u: state.snapshot(u) for u in state.bank.user_ids}, invalid, len(records)


def _check(settings, search, clusters, pipeline, *, exactly_once: bool):
    import ray

    from actors.core.snapshot import from_bytes
    from streams.changelog import decode_changelog
    from streams.codec import decode_recommendations

    pipeline.wait_caught_up(settings.bootstrap_servers, timeout_s=300)
    want, invalid, valid = _oracle(settings, search, clusters)

    # 1. the live profiles and the changelog equal the in-process fold, byte for byte
    live = {}
    for snapshots in ray.get([h.snapshots.remote() for h in pipeline.handles]):
        live.update(snapshots)
    assert live == want
    changelog = {}
    for r in _read(settings, "changelog"):
        rec = decode_changelog(r.key, r.value, "test")
        changelog[rec.user_id] = (rec.source_offset, rec.profile)
    assert changelog == want

    # 2. every user got a refreshed list; versions never go back (strictly up in exactly-once mode)
    lists: dict[str, list] = {}
    for r in _read(settings, "recs"):
        recs = decode_recommendations(r.value)
        lists.setdefault(recs.user_id, []).append(recs)
    assert set(lists) == set(want)
    for user, seq in lists.items():
        versions = [x.profile_version for x in seq]
        assert versions == sorted(versions), user
        if exactly_once:
            assert len(set(versions)) == len(versions), f"duplicate output for {user}: {versions}"
        assert seq[-1].profile_version == from_bytes(want[user][1]).version  # the last list saw every event
        assert seq[-1].items and len(seq[-1].items) <= settings.pipeline.k
        assert all(i.reasons for i in seq[-1].items)

    # 3. every invalid event was dead-lettered exactly once
    dead = [r for r in _read(settings, "dead_letters") if r.topic == settings.topics.name("dead_letters")]
    assert len(dead) == invalid
    return valid


@pytest.mark.parametrize("mode", ["exactly_once", "at_least_once"])
def test_events_in_recs_out_and_a_killed_worker_loses_nothing(topics, ray_local, mode):
    import ray

    from streams.datasets import synthetic

    settings = _settings(topics, mode)
    data = synthetic(users=40, items=80, events=4000, seed=5)
    first, second = data.events[:1500], data.events[1500:]
    poison = [(b"u-bad", b"{not json"), (b"u-bad", b'{"event_id": "x", "user_id": "u", "item_id": "i", "kind": "teleport", "ts": 1}')]
    _produce(settings, data.items, first, poison)
    shards, search, clusters, pipeline = _start(settings, len(data.items))
    try:
        # keep producing while worker 0's process is SIGKILLed; Ray restarts it, it restores
        # from the changelog and resumes from the committed offsets
        producer = threading.Thread(target=_produce, args=(settings,), kwargs={"events": second, "pace_s": 0.05})
        producer.start()
        victim = pipeline.handles[0]
        owned = ray.get(victim.stats.remote())["partitions"]
        deadline = time.monotonic() + 120
        while not any(pipeline.committed_offsets(settings.bootstrap_servers).get(p, 0) for p in owned):
            assert time.monotonic() < deadline, "worker 0 committed nothing within 120 s"
            time.sleep(0.1)  # kill only after the victim made some state durable
        os.kill(ray.get(victim.pid.remote()), signal.SIGKILL)
        producer.join()
        valid = _check(settings, search, clusters, pipeline, exactly_once=(mode == "exactly_once"))
        assert valid == len(data.events)
        stats = pipeline.stats()
        assert stats[0]["restored_profiles"] > 0  # the restarted worker came back from the changelog
        assert all(s["error"] is None for s in stats)
    finally:
        pipeline.stop()
        for h in [*pipeline.handles, *shards]:
            ray.kill(h)


def test_supervisor_recreates_a_worker_killed_without_restart(topics, ray_local):
    import ray

    from streams.datasets import synthetic

    settings = _settings(topics, "exactly_once")
    data = synthetic(users=20, items=40, events=600, seed=7)
    _produce(settings, data.items, data.events[:300])
    shards, search, clusters, pipeline = _start(settings, len(data.items))
    try:
        pipeline.wait_caught_up(settings.bootstrap_servers, timeout_s=300)
        ray.kill(pipeline.handles[1], no_restart=True)
        deadline = time.monotonic() + 60
        while pipeline.recreated == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pipeline.recreated == 1
        _produce(settings, events=data.events[300:])
        _check(settings, search, clusters, pipeline, exactly_once=True)
    finally:
        pipeline.stop()
        for h in [*pipeline.handles, *shards]:
            ray.kill(h)


def test_model_rollout_reaches_profiles_and_lists_and_survives_a_restart(topics, ray_local, tmp_path):
    import ray

    from actors.encoder import default_model_path
    from cluster.registry import ModelRegistry
    from streams.changelog import decode_changelog
    from streams.codec import decode_recommendations
    from streams.datasets import synthetic

    settings = _settings(topics, "exactly_once")
    data = synthetic(users=20, items=50, events=900, seed=9)
    _produce(settings, data.items, data.events[:300])
    shards, search, clusters, pipeline = _start(settings, len(data.items))
    try:
        pipeline.wait_caught_up(settings.bootstrap_servers, timeout_s=300)
        v1 = ModelRegistry(tmp_path / "registry").publish(default_model_path())
        search.load_model(v1.version, str(v1.path), dtype="bf16", wait_s=300)
        pipeline.rollout(search, v1.version)
        _produce(settings, events=data.events[300:600])
        pipeline.wait_caught_up(settings.bootstrap_servers, timeout_s=300)
        touched = {e.user_id for e in data.events[300:600]}

        # a restarted worker follows the shards' model version (its constructor still says 0)
        os.kill(ray.get(pipeline.handles[0].pid.remote()), signal.SIGKILL)
        _produce(settings, events=data.events[600:])
        pipeline.wait_caught_up(settings.bootstrap_servers, timeout_s=300)
        assert all(s["model_version"] == 1 and s["error"] is None for s in pipeline.stats())

        latest = {}
        for r in _read(settings, "changelog"):
            latest[r.key.decode()] = decode_changelog(r.key, r.value, "test")
        assert all(latest[u].model_version == 1 for u in touched)
        last_lists = {}
        for r in _read(settings, "recs"):
            recs = decode_recommendations(r.value)
            last_lists[recs.user_id] = recs
        assert all(last_lists[u].model_version == 1 and last_lists[u].items for u in touched)
        versions = [s["model_version"] for s in search.stats()]
        assert versions == [1, 1]
    finally:
        pipeline.stop()
        for h in [*pipeline.handles, *shards]:
            ray.kill(h)


def test_cluster_evaluation_equals_the_in_process_pipeline_fold(topics, ray_local):
    from cluster.evaluate_pipeline import evaluate_pipeline
    from streams.datasets import synthetic

    settings = _settings(topics, "exactly_once")
    data = synthetic(users=80, items=300, events=2000, seed=12)
    local = evaluate_pipeline(settings, data, engine="pipeline", k=10, progress=lambda m: None)
    remote = evaluate_pipeline(settings, data, engine="cluster", k=10, bootstrap=settings.bootstrap_servers,
                               progress=lambda m: None)  # fmt: skip
    a, b = local["results"]["pipeline"], remote["results"]["pipeline"]
    assert a["users"] == b["users"] > 60
    same = sum(local["lists"][u] == remote["lists"][u] for u in local["lists"])
    # identical folds; only float summation order (co-visitation sums, batched encoding) may swap near-ties
    assert same >= 0.9 * len(local["lists"]), f"{same} of {len(local['lists'])} lists equal"
    for name in ("HR@10", "NDCG@10", "MRR@10"):
        assert abs(a[name] - b[name]) <= 1.0 / a["users"] + 1e-9, (name, a, b)
    assert a["HR@10"] > 3 * 10 / 300  # well above random on data with latent clusters
