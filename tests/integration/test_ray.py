"""A Ray actor (fractional CPU) runs the shared consumer loop against the real broker."""

from __future__ import annotations

import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


class _CountingConsumer:
    """A plain class; ray.remote is applied by the test, as cluster/ factories do."""

    def __init__(self, settings):
        from streams.client import make_consumer, make_producer
        from streams.codec import decode_event
        from streams.consumer import DeadLetters, StreamLoop

        conn = settings.connection(settings.bootstrap_servers)
        self.seen: list[str] = []
        consumer = make_consumer(conn, settings.topics.name("events"), group_id=f"ray-{uuid.uuid4().hex[:8]}")
        dlq = DeadLetters(make_producer(conn), settings.topics.name("dead_letters"))
        self.loop = StreamLoop(consumer, lambda v, k, now: decode_event(v, now_ms=now),
                               lambda batch: self.seen.extend(c.value.event_id for c in batch), dlq)  # fmt: skip

    def run(self, max_events: int) -> list[str]:
        self.loop.run(max_events=max_events, timeout=60)
        return self.seen


def test_ray_actor_consumes_events(topics, ray_local):
    from streams.client import make_producer
    from streams.datasets import synthetic
    from streams.replay import replay

    data = synthetic(users=10, items=16, events=200, seed=3)
    producer = make_producer(topics.connection(topics.bootstrap_servers))
    replay(producer, items=data.items, events=data.events,
           items_topic=topics.topics.name("items"), events_topic=topics.topics.name("events"))  # fmt: skip
    producer.close()

    actor = ray_local.remote(num_cpus=0.25)(_CountingConsumer).remote(topics)
    seen = ray_local.get(actor.run.remote(200), timeout=180)
    assert sorted(seen) == sorted(e.event_id for e in data.events)


def test_gpu_check_script_runs_on_this_machine(ray_local):
    from cluster.gpu_check import gpu_check

    report = gpu_check(items=64, batch_size=32, rounds=1, train=True, train_samples=400)
    assert report["device"] in ("cpu", "cuda")
    assert report["precisions"]["fp32"]["items_per_s"] > 0
    low = "fp16" if report["device"] == "cuda" else "bf16"
    assert 0.9 < report["precisions"][low]["min_cosine_vs_fp32"] <= 1.0 + 1e-5
    assert report["actor"]["items_per_s"] > 0
    for layers in (0, 1):
        run = report["train"][f"train_layers_{layers}"]
        assert run["samples_per_s"] > 0 and run["samples"] > 300 and run["workers"] >= 1
