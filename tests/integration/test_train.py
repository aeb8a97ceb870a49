"""Fine-tuning on Ray Train with the real broker and local Ray: a scheduled run trains on two
workers, passes the gate, is published and rolled out; a run killed midway leaves the
registry and serving on the previous version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from tests.integration.test_pipeline import _produce, _read, _start

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _data():
    from streams.datasets import synthetic

    data = synthetic(users=60, items=80, events=1500, seed=5)
    # Titles that say nothing: only the interactions tell items apart, so fine-tuning must win.
    items = [replace(item, title=f"Item {n}", text="", categories=()) for n, item in enumerate(data.items)]
    return items, list(data.events)


def _settings(topics, tmp_path, **train):
    from cluster.settings import Settings

    return Settings(bootstrap_servers=topics.bootstrap_servers, topics=topics.topics,
                    pipeline={"workers": 1, "worker_cpus": 0.2, "max_batch": 500, "n_clusters": 4, "k": 5},
                    models={"registry": str(tmp_path / "registry")},
                    train={"workers": 2, "cpus_per_worker": 0.25, "epochs": 3, "batch_size": 128,
                           "storage": str(tmp_path / "train"), **train})  # fmt: skip


def _stop(pipeline, shards):
    import ray

    pipeline.stop()
    for h in list(pipeline.handles) + list(shards):
        ray.kill(h)


def test_a_scheduled_run_trains_on_two_workers_publishes_and_rolls_out(topics, ray_local, tmp_path):
    import ray

    from actors.encoder import item_text, load_text_encoder
    from cluster.registry import ModelRegistry
    from cluster.scheduler import TrainScheduler
    from streams.codec import decode_recommendations

    settings = _settings(topics, tmp_path)
    items, events = _data()
    _produce(settings, items, events)
    shards, search, clusters, pipeline = _start(settings, len(items))
    try:
        pipeline.wait_caught_up(settings.bootstrap_servers, timeout_s=300)
        stack = SimpleNamespace(search=search, pipeline=pipeline)
        result = TrainScheduler(settings, settings.bootstrap_servers, stack, progress=print).run_once()
        assert result is not None, "the run failed (see the log)"
        assert result["workers"] == 2 and result["samples"] > 1000
        assert result["promoted"] and result["version"] == 1, result
        assert result["ndcg10_after"] > result["ndcg10_before"]
        version = ModelRegistry(tmp_path / "registry").get(1, verify=True)
        assert version.metadata["ndcg10_after"] == result["ndcg10_after"]

        # rolled out: every shard and worker serves version 1, with the fine-tuned vectors
        assert search.model_version() == 1
        assert all(s["model_version"] == 1 for s in pipeline.stats())
        model = load_text_encoder(version.path)
        probe = items[:5]
        want = model.encode([item_text(i.title, i.text, i.categories) for i in probe],
                            item_ids=[i.item_id for i in probe])  # fmt: skip
        got = search.vectors_of([i.item_id for i in probe])
        assert np.allclose(np.stack([got[i.item_id] for i in probe]), want, atol=1e-4)

        # new events are ranked by the new version
        later = [replace(e, event_id=f"after-{n}", ts=e.ts + 10**9) for n, e in enumerate(events[-20:])]
        _produce(settings, events=later)
        pipeline.wait_caught_up(settings.bootstrap_servers, timeout_s=300)
        versions = [decode_recommendations(r.value).model_version for r in _read(settings, "recs")]
        assert versions.count(1) >= 1 and set(versions) <= {0, 1}
        assert ray.get(pipeline.handles[0].stats.remote())["error"] is None
    finally:
        _stop(pipeline, shards)


def test_a_training_run_killed_midway_leaves_serving_on_the_previous_version(topics, ray_local, tmp_path):
    from actors.encoder import default_model_path
    from cluster.registry import ModelRegistry

    settings = _settings(topics, tmp_path)
    items, events = _data()
    _produce(settings, items, events)
    registry = ModelRegistry(tmp_path / "registry")
    previous = registry.publish(default_model_path(), {"note": "served before the run"})
    shards, search, clusters, pipeline = _start(settings, len(items))
    try:
        search.load_model(previous.version, str(previous.path), wait_s=600)
        pipeline.rollout(search, previous.version)
        before = search.search(np.eye(384, dtype=np.float32)[:2], 5)

        env = dict(os.environ, STREAMREC_TRAIN__STORAGE=str(tmp_path / "train"), STREAMREC_TRAIN__EPOCHS="100000",
                   STREAMREC_TRAIN__CPUS_PER_WORKER="0.25", STREAMREC_TRAIN__BATCH_SIZE="32")  # fmt: skip
        cmd = [sys.executable, "-c", "import sys; from cluster.cli import main; sys.exit(main())",
               "--bootstrap-servers", topics.bootstrap_servers, "--topic-prefix", topics.topics.prefix, "train",
               "--registry", str(tmp_path / "registry"), "--train-workers", "2"]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
        seen = []
        try:
            deadline = time.monotonic() + 300
            for line in proc.stderr:
                seen.append(line)
                if line.startswith("training on") or time.monotonic() > deadline:
                    break
            assert any(line.startswith("training on") for line in seen), "".join(seen)
            time.sleep(15)  # Ray Train workers are up and stepping through the (endless) epochs
            assert proc.poll() is None, "".join(seen)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

        # nothing new in the registry, no partial version visible, serving unchanged
        assert registry.versions() == [previous.version]
        assert registry.latest().version == previous.version
        registry.get(previous.version, verify=True)
        assert sorted(p.name for p in registry.root.iterdir() if not p.name.startswith(".")) == ["v000001"]
        assert search.model_version() == previous.version
        assert all(s["model_version"] == previous.version for s in pipeline.stats())
        assert search.search(np.eye(384, dtype=np.float32)[:2], 5) == before
    finally:
        _stop(pipeline, shards)
