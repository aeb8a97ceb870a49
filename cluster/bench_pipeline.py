"""`streamrec bench pipeline` and `streamrec bench restore`: the user side, measured side by side.

pipeline
    A fresh topic namespace on the configured (or a local) broker, a synthetic
    catalogue and event backlog. (1) A bare kafka-python consumer reads the backlog
    (poll only): the ceiling. (2) The pipeline (encoder shards + profile workers on
    a local Ray) consumes the same backlog from the start: sustained events/s until
    every offset is committed. (3) Freshness: new events stamped with their send time
    are produced at ``load_fraction`` of the measured pipeline rate while a
    ``read_committed`` consumer reads ``recs``; each list's latency is its receipt time
    minus the send time of the event that triggered it (the user's latest in the batch).

restore
    Profiles folded from synthetic events are written to a changelog topic; the
    workers' restore path (read the changelog, keep the latest snapshot per user) is
    timed. Snapshots are decoded lazily, on a user's next event or read; decoding
    every restored profile is timed separately (``decoded_profiles_per_s``).
"""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from typing import Any, Callable

import numpy as np

from cluster.settings import Settings

__all__ = ["bench_pipeline", "bench_restore", "plot_freshness", "produce_catalogue"]


def _fresh_namespace(settings: Settings, bootstrap: str, label: str = "bench") -> Settings:
    """``settings`` with a fresh topic prefix (``<label>-<random>-``), its topics created."""
    from streams.client import make_admin
    from streams.topics import ensure_topics

    prefix = f"{label}-{uuid.uuid4().hex[:8]}-"
    settings = settings.model_copy(update={"topics": settings.topics.model_copy(update={"prefix": prefix})})
    admin = make_admin(settings.connection(bootstrap))
    try:
        ensure_topics(admin, settings.topics.specs())
    finally:
        admin.close()
    return settings


def produce_catalogue(settings: Settings, bootstrap: str, items) -> None:
    """Produce item upserts to the items topic and wait for every acknowledgement."""
    from streams.client import make_producer
    from streams.replay import replay

    producer = make_producer(settings.connection(bootstrap))
    try:
        replay(producer, items=items, events=(), items_topic=settings.topics.name("items"),
               events_topic=settings.topics.name("events"))  # fmt: skip
    finally:
        producer.close()


def _send_events(settings: Settings, bootstrap: str, events, *, rate: float = 0.0, stamp: bool = False) -> float:
    """Produce ``events`` (optionally at ``rate``/s, with ts = send time); returns seconds taken."""
    from dataclasses import replace

    from streams.client import make_producer
    from streams.codec import encode_event

    producer = make_producer(settings.connection(bootstrap), linger_ms=1 if rate else 5)
    topic = settings.topics.name("events")
    start = time.perf_counter()
    try:
        for n, e in enumerate(events):
            if rate:
                delay = start + n / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if stamp:
                e = replace(e, ts=int(time.time() * 1000))
            producer.send(topic, key=e.user_id.encode(), value=encode_event(e))
        producer.flush()
    finally:
        producer.close()
    return time.perf_counter() - start


def _bare_consumer_rate(settings: Settings, bootstrap: str, expected: int) -> float:
    from streams.changelog import read_partitions
    from streams.client import make_reader

    consumer = make_reader(settings.connection(bootstrap))
    try:
        topic = settings.topics.name("events")
        start = time.perf_counter()
        n = sum(1 for _ in read_partitions(consumer, topic, sorted(consumer.partitions_for_topic(topic))))
        elapsed = time.perf_counter() - start
    finally:
        consumer.close()
    if n != expected:
        raise RuntimeError(f"the bare consumer read {n} events, expected {expected}")
    return n / elapsed


def bench_pipeline(settings: Settings, bootstrap: str, *, users: int = 5000, items: int = 1000,
                   events: int = 60_000, fresh_events: int = 3000, load_fraction: float = 0.5,
                   progress: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    from streams.datasets import synthetic

    settings = _fresh_namespace(settings, bootstrap)
    data = synthetic(users=users, items=items, events=events + fresh_events, seed=1)
    produce_catalogue(settings, bootstrap, data.items)
    backlog, fresh = data.events[:events], data.events[events:]
    progress(f"producing a backlog of {len(backlog):,} events ({users:,} users, {items:,} items)...")
    _send_events(settings, bootstrap, backlog)
    bare = _bare_consumer_rate(settings, bootstrap, len(backlog))
    progress(f"bare consumer: {bare:,.0f} events/s")

    from cluster.runner import start_stack

    stack = start_stack(settings, bootstrap, progress=progress)
    try:
        start = time.perf_counter()
        stack.pipeline.wait_caught_up(bootstrap, timeout_s=3600, poll_s=0.2)
        rate = len(backlog) / (time.perf_counter() - start)
        progress(f"pipeline: {rate:,.0f} events/s; freshness at {load_fraction:.0%} of it "
                 f"({rate * load_fraction:,.0f} events/s, {len(fresh):,} events)...")  # fmt: skip
        before = stack.pipeline.stats()
        latencies = _freshness(settings, bootstrap, stack, fresh, rate * load_fraction)
        after = stack.pipeline.stats()
    finally:
        stack.stop()
    batches = sum(a["batches"] - b["batches"] for a, b in zip(after, before)) or 1
    phase_ms = {k: 1000 * sum(a["seconds"][k] - b["seconds"][k] for a, b in zip(after, before)) / batches
                for k in after[0]["seconds"]}  # fmt: skip
    return {
        "pipeline_events_per_s": rate,
        "bare_consumer_events_per_s": bare,
        "ratio": rate / bare,
        "freshness_ms_p50": float(np.percentile(latencies, 50)),
        "freshness_ms_p99": float(np.percentile(latencies, 99)),
        "load_fraction": load_fraction,
        "freshness_lists": len(latencies),
        "events": len(backlog),
        "users": users,
        "items": items,
        "workers": settings.pipeline.workers,
        "shards": settings.pipeline.encoder_shards,
        "mode": settings.pipeline.mode,
        "freshness_batches": batches,
        "batch_ms": {k: round(v, 1) for k, v in phase_ms.items()},  # per batch, during the freshness phase
        "latencies_ms": latencies,
    }


def _freshness(settings: Settings, bootstrap: str, stack, events, rate: float) -> list[float]:
    from kafka import TopicPartition

    from streams.client import make_consumer
    from streams.codec import decode_recommendations

    consumer = make_consumer(settings.connection(bootstrap), group_id=None)
    topic = settings.topics.name("recs")
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)  # resolve the end now, before the new events go out
    sender = threading.Thread(target=_send_events, args=(settings, bootstrap, events),
                              kwargs={"rate": rate, "stamp": True}, daemon=True)  # fmt: skip
    sender.start()
    latencies: list[float] = []
    try:
        idle_since = time.monotonic()
        while sender.is_alive() or time.monotonic() - idle_since < 5.0:
            polled = consumer.poll(timeout_ms=100)
            now = time.time() * 1000
            for records in polled.values():
                for r in records:
                    recs = decode_recommendations(r.value)
                    if recs.source_ts is not None:
                        latencies.append(now - recs.source_ts)
                idle_since = time.monotonic()
            if not sender.is_alive() and not any(stack.pipeline.remaining(bootstrap).values()) and not polled:
                break
    finally:
        consumer.close()
    if not latencies:
        raise RuntimeError("no recommendations were published for the timed events")
    return latencies


def bench_restore(settings: Settings, bootstrap: str, *, users: int = 20_000, events_per_user: int = 20,
                  dim: int = 384, progress: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    from actors.core.retrieval import ShardIndex
    from actors.profile_worker import restore_profiles
    from actors.user_state import UserState
    from cluster.pipeline import worker_configs
    from streams.changelog import encode_changelog
    from streams.client import make_producer, make_reader
    from streams.records import Consumed, Event

    settings = _fresh_namespace(settings, bootstrap)
    cfg = worker_configs(settings, dim)[0].user
    rng = np.random.default_rng(0)
    n_items = 2000
    vectors = rng.normal(size=(n_items, dim)).astype(np.float32)
    index = ShardIndex(dim)
    index.upsert([f"i{j}" for j in range(n_items)], vectors)
    state = UserState(cfg, index, None)
    progress(f"folding {users * events_per_user:,} events into {users:,} profiles...")
    n = users * events_per_user
    us, it = rng.integers(users, size=n), rng.zipf(1.3, size=n) % n_items
    kinds = np.array(["view", "click", "cart", "purchase"])[rng.integers(4, size=n)]
    records = [Consumed(Event(f"e{t}", f"user-{u}", f"i{i}", str(k), 1_700_000_000_000 + 1000 * t), "events",
                        0, t, 0) for t, (u, i, k) in enumerate(zip(us.tolist(), it.tolist(), kinds.tolist()))]  # fmt: skip
    for lo in range(0, n, 50_000):
        state.apply(records[lo:lo + 50_000])
    topic = settings.topics.name("changelog")
    partitions = settings.topics.events_partitions
    producer = make_producer(settings.connection(bootstrap))
    sizes = []
    try:
        for u in state.bank.user_ids:
            offset, blob = state.snapshot(u)
            value = encode_changelog(0, offset, blob)
            sizes.append(len(value))
            producer.send(topic, key=u.encode(), value=value, partition=zlib.crc32(u.encode()) % partitions)
        producer.flush()
    finally:
        producer.close()
    progress(f"wrote {len(sizes):,} snapshots to {topic}; restoring...")
    consumer = make_reader(settings.connection(bootstrap))
    try:
        fresh = UserState(cfg, index, None)
        start = time.perf_counter()
        restored = restore_profiles(consumer, topic, list(range(partitions)), fresh)
        elapsed = time.perf_counter() - start
    finally:
        consumer.close()
    if restored != len(sizes):
        raise RuntimeError(f"restored {restored} of {len(sizes)} profiles")
    start = time.perf_counter()
    for u in fresh.user_ids():  # decode every snapshot, as the users' next events would
        fresh.profile_of(u)
    decode = time.perf_counter() - start
    return {
        "profiles_per_s": restored / elapsed,
        "decoded_profiles_per_s": restored / decode,
        "bytes_per_profile": float(np.mean(sizes)),
        "bytes_per_profile_max": int(max(sizes)),
        "profiles": restored,
        "interests_mean": float(np.mean([state.profile_of(u).n_interests for u in state.bank.user_ids[:2000]])),
    }


def plot_freshness(latencies_ms: list[float], path) -> Any:
    """A histogram (PNG) of event -> recs-committed latencies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(latencies_ms, bins=60, color="#3b6ea5")
    for q, style in ((50, "--"), (99, ":")):
        v = float(np.percentile(latencies_ms, q))
        ax.axvline(v, color="black", linestyle=style, label=f"p{q} {v:,.0f} ms")
    ax.set_xlabel("event produced -> refreshed list committed (ms)")
    ax.set_ylabel("lists")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
