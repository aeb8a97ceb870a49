"""`streamrec chaos`: faults injected into a running pipeline under load, then verified.

Each case runs in a fresh topic namespace with its own encoder shards and profile
workers on the local Ray (Ray itself is shared by the cases):

1. a synthetic catalogue is produced and the stack started;
2. **calibration**: the first ``calibrate_fraction`` of the events is produced in a
   burst; the time until the workers have committed all of it gives the sustainable
   rate (a conservative estimate: it includes the produce time);
3. the rest is produced at ``load_fraction`` (<= 50 %) of that rate, with a few
   invalid records mixed in (the ``injected`` count), while the case's fault is
   injected once the given fraction of all events has been sent;
4. after the producer is done and the workers caught up, :func:`streams.verify.verify`
   compares the topics and the live profiles with an in-process oracle fold of the
   stored events (the same fold the integration tests use).

``recovery_s`` is the longest time from a fault until the pipeline works again: the
killed or wiped worker answers (constructed, i.e. restored from the changelog), or
after a broker restart, everything produced until the broker was back is committed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from cluster.errors import ConfigError
from cluster.settings import Settings

__all__ = ["CASES", "Case", "run_chaos", "run_case"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    name: str
    fault: str  # sigkill | ray_kill | wipe | poison_restarts | broker_restart
    at: float  # fraction of the run's events sent when the fault is injected
    recovery_goal_s: float = 30.0


CASES = {c.name: c for c in (
    Case("kill_worker_20", "sigkill", 0.2),
    Case("kill_worker_50", "sigkill", 0.5),
    Case("kill_worker_80", "sigkill", 0.8),
    Case("ray_kill_no_restart", "ray_kill", 0.5),
    Case("poison_pill_restarts", "poison_restarts", 0.3),
    Case("state_wiped", "wipe", 0.5),
    Case("broker_restart", "broker_restart", 0.5, recovery_goal_s=60.0),
)}  # fmt: skip

_INVALID_AT = (0.1, 0.45, 0.9)  # where every case mixes an invalid record into the stream
_POISON = b'{"event_id": "poison", "user_id": "u0", "item_id": "i0", "kind": "teleport", "ts": 1700000000000}'


def run_chaos(settings: Settings, bootstrap: str, cases: list[str], *, events: int = 20_000,
              load_fraction: float = 0.5, broker: Any = None,
              progress: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Run ``cases`` one after the other; ``broker`` (a LocalBroker) enables ``broker_restart``."""
    from cluster.runner import init_ray

    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ConfigError(f"unknown chaos cases {unknown}; known: {', '.join(CASES)}")
    started_ray = init_ray(settings)
    results = []
    try:
        for name in cases:
            case = CASES[name]
            if case.fault == "broker_restart" and broker is None:
                progress(f"{name}: skipped (needs the local broker; an external cluster is never restarted)")
                continue
            progress(f"{name}: {events:,} events, {settings.pipeline.mode}...")
            try:
                result = run_case(settings, bootstrap, case, events=events, load_fraction=load_fraction,
                                  broker=broker, progress=progress)  # fmt: skip
            except Exception as exc:  # a case that cannot finish fails; the others still run
                logger.exception("chaos case %s", name)
                result = {"name": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            progress(f"{name}: {'ok' if result['ok'] else 'FAILED'} {result}")
            results.append(result)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return {"mode": settings.pipeline.mode, "events": events, "cases": results}


def run_case(settings: Settings, bootstrap: str, case: Case, *, events: int = 20_000, load_fraction: float = 0.5,
             calibrate_fraction: float = 0.15, broker: Any = None, seed: int = 0,
             progress: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    import ray

    from cluster.bench_pipeline import _fresh_namespace, produce_catalogue
    from cluster.runner import start_stack
    from streams.datasets import synthetic
    from streams.verify import read_outputs, verify

    settings = _fresh_namespace(settings, bootstrap, "chaos")
    data = synthetic(users=max(50, events // 40), items=200, events=events, seed=seed)
    produce_catalogue(settings, bootstrap, data.items)
    stack = start_stack(settings, bootstrap, progress=lambda m: logger.info("%s", m))
    pipeline = stack.pipeline
    try:
        n_cal = int(events * calibrate_fraction)
        started = time.monotonic()
        _Producer(settings, bootstrap, data.events[:n_cal], 0.0, {}).run()
        pipeline.wait_caught_up(bootstrap, timeout_s=300, poll_s=0.1)
        rate = n_cal / (time.monotonic() - started)
        paced = rate * load_fraction
        progress(f"{case.name}: calibrated {rate:,.0f} events/s; the rest at {paced:,.0f}/s, the fault at "
                 f"{case.at:.0%} of the run")  # fmt: skip
        invalid = {max(n_cal, int(events * f)): _invalid(i) for i, f in enumerate(_INVALID_AT)}
        producer = _Producer(settings, bootstrap, data.events[n_cal:], paced, invalid, first=n_cal)
        if case.fault == "poison_restarts":
            producer.poison = max(n_cal, int(events * case.at)) + 1  # never on another invalid record's position
            invalid[producer.poison] = (b"u0", _POISON)
        thread = threading.Thread(target=producer.run, name="chaos-producer", daemon=True)
        thread.start()
        while producer.sent < events * case.at and thread.is_alive():
            time.sleep(0.02)
        fault_at = producer.sent
        recovery = _inject(case, stack, bootstrap, broker, producer)
        thread.join()
        if producer.error is not None:
            raise RuntimeError(f"{case.name}: producing failed: {producer.error!r}")
        pipeline.wait_caught_up(bootstrap, timeout_s=300)
        stats = _settled_stats(pipeline)
        live: dict[str, tuple[int, bytes]] = {}
        for snapshots in ray.get([h.snapshots.remote() for h in pipeline.handles], timeout=120):
            live.update(snapshots)
        roles = ("events", "changelog", "recs", "dead_letters")
        out = read_outputs(settings.connection(bootstrap), {r: settings.topics.name(r) for r in roles},
                           limits=settings.validation.limits())  # fmt: skip
        counts = verify([e.event_id for e in data.events], out, _oracle(settings, stack, out.events),
                        injected=len(invalid), live=live)  # fmt: skip
    finally:
        stack.stop()
        for h in [*pipeline.handles, *stack.shards]:
            ray.kill(h)
    errors = [s["error"] for s in stats if s["error"]]
    exactly_once = settings.pipeline.mode == "exactly_once"
    ok = (counts["lost"] == 0 and counts["duplicate_effects"] == 0 and counts["dlq"] == counts["injected"]
          and (counts["duplicate_outputs"] == 0 and counts["missing_outputs"] == 0 or not exactly_once)
          and recovery <= case.recovery_goal_s and not errors)  # fmt: skip
    return {"name": case.name, **counts, "recovery_s": round(recovery, 2), "ok": ok, "mode": settings.pipeline.mode,
            "events": events, "fault_at_event": fault_at, "calibrated_events_per_s": round(rate),
            "load_events_per_s": round(paced), "restored_profiles": sum(s["restored_profiles"] for s in stats),
            "recreated": pipeline.recreated, "worker_errors": errors}  # fmt: skip


class _Producer:
    """Sends the events (paced at ``rate``/s; 0: a burst) and, at given positions, invalid records."""

    def __init__(self, settings: Settings, bootstrap: str, events, rate: float, invalid: dict, first: int = 0):
        self.settings, self.bootstrap, self.events, self.rate = settings, bootstrap, events, rate
        self.invalid, self.first = invalid, first
        self.sent = first  # events of the whole run sent so far
        self.invalid_offsets: dict[int, tuple[int, int]] = {}  # position -> (partition, offset) once acknowledged
        self.error: BaseException | None = None
        self.poison = -1  # position of the poison pill, if any

    def run(self) -> None:
        from streams.client import make_producer
        from streams.codec import encode_event

        topic = self.settings.topics.name("events")
        producer = make_producer(self.settings.connection(self.bootstrap), linger_ms=1 if self.rate else 5)
        start = time.perf_counter()
        try:
            for n, e in enumerate(self.events):
                if self.first + n in self.invalid:
                    key, value = self.invalid[self.first + n]
                    meta = producer.send(topic, key=key, value=value).get(timeout=120)
                    self.invalid_offsets[self.first + n] = (meta.partition, meta.offset)
                if self.rate:
                    delay = start + n / self.rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                producer.send(topic, key=e.user_id.encode(), value=encode_event(e))
                self.sent = self.first + n + 1
            producer.flush()
        except BaseException as exc:
            self.error = exc
        finally:
            producer.close()


def _invalid(i: int) -> tuple[bytes, bytes]:
    return (f"u-bad-{i}".encode(), [b"{not json", b'{"event_id": "x", "user_id": "u"}', b"\xff\xfe"][i % 3])


def _inject(case: Case, stack: Any, bootstrap: str, broker: Any, producer: _Producer) -> float:
    """Inject the case's fault; returns seconds until the pipeline works again."""
    import ray

    pipeline = stack.pipeline
    if case.fault == "sigkill":
        return _sigkill(pipeline, 0)
    if case.fault == "poison_restarts":
        _wait(lambda: producer.poison in producer.invalid_offsets, 120, "poison pill sent")
        partition, offset = producer.invalid_offsets[producer.poison]
        _wait(lambda: pipeline.committed_offsets(bootstrap).get(partition, 0) > offset, 120, "poison committed")
        victim = partition % stack.settings.pipeline.workers
        return max(_sigkill(pipeline, victim) for _ in range(3))
    started = time.monotonic()
    if case.fault == "ray_kill":
        ray.kill(pipeline.handles[0], no_restart=True)
        _wait(lambda: pipeline.recreated > 0, 120, "worker re-created")
        ray.get(pipeline.handles[0].stats.remote(), timeout=120)
    elif case.fault == "wipe":  # drop the worker's in-memory state; it is rebuilt from the changelog
        ray.get(pipeline.handles[0].stop.remote(), timeout=60)
        ray.get(pipeline.handles[0].start.remote(), timeout=120)
    elif case.fault == "broker_restart":
        _restart_broker(broker)
        ends: dict[int, int] = {}
        _wait(lambda: bool(ends.update(_end_offsets(stack.settings, bootstrap)) or ends), 120, "broker answers")
        _wait(lambda: all(pipeline.committed_offsets(bootstrap).get(p, 0) >= o for p, o in ends.items()), 300,
              "pipeline caught up after the broker restart")  # fmt: skip
    else:
        raise ValueError(case.fault)
    return time.monotonic() - started


def _sigkill(pipeline: Any, w: int) -> float:
    """SIGKILL worker ``w``'s process; seconds until Ray's restarted actor answers."""
    import ray

    handle = pipeline.handles[w]
    pid = ray.get(handle.pid.remote(), timeout=60)
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: ray.get(handle.pid.remote(), timeout=120) != pid, 180, f"worker {w} restarted")
    return time.monotonic() - started


def _restart_broker(broker: Any) -> None:
    """A clean stop and start of the local broker on the same ports and data."""
    from streams.broker import LocalBroker

    state = broker.status()
    broker.stop()
    again = LocalBroker(broker.state_dir, broker.cache_dir, kafka_version=broker.kafka_version,
                        kafka_home=broker.kafka_home, host=state.host, port=state.port,
                        controller_port=state.controller_port, heap=broker.heap,
                        start_timeout_s=broker.start_timeout_s)  # fmt: skip
    again.start()


def _end_offsets(settings: Settings, bootstrap: str) -> dict[int, int]:
    from kafka import TopicPartition

    from streams.client import make_consumer

    consumer = make_consumer(settings.connection(bootstrap), group_id=None, isolation_level="read_uncommitted")
    try:
        topic = settings.topics.name("events")
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def _settled_stats(pipeline: Any, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Worker stats once every worker is running without an error (or the last seen after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = pipeline.stats(timeout_s=60)
        if all(s["running"] and s["error"] is None for s in stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until true; errors count as "not yet" (a broker coming back answers
    with retriable errors such as CoordinatorLoadInProgress for a while)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            if condition():
                return
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"chaos: {what}: not within {timeout_s:.0f} s (last error: {last!r})")
        time.sleep(0.05)


def _oracle(settings: Settings, stack: Any, events: list) -> dict[str, tuple[int, bytes]]:
    """Fold the stored valid events in one process, with the shards' vectors and the stack's clusters."""
    from actors.core.retrieval import ShardIndex
    from actors.user_state import UserState
    from cluster.pipeline import worker_configs

    dim = int(stack.search.sample_vectors(1).shape[1])
    vectors = stack.search.vectors_of(sorted({r.value.item_id for r in events}))
    index = ShardIndex(dim)
    index.upsert(list(vectors), [vectors[i] for i in vectors])
    state = UserState(worker_configs(settings, dim)[0].user, index, stack.clusters)
    state.apply(events)
    return {u: state.snapshot(u) for u in state.user_ids()}
