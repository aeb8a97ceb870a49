"""The user-side pipeline on Ray: profile worker actors, their supervisor, and Prometheus metrics.

``start_pipeline`` creates W :class:`actors.profile_worker.ProfileWorker` actors
(named ``streamrec-profiles-<w>``). Ray restarts an actor whose process dies
(``max_restarts``); the restarted constructor recovers from the changelog and the
committed offsets. The :class:`Pipeline` supervisor additionally re-creates a
worker that is gone for good (killed without restart, restarts exhausted) and
exports consumer lag, freshness and counters as Prometheus metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any, Callable

from actors.core.clusters import TopicClusters, fit_topic_clusters
from actors.profile_worker import ProfileWorker, WorkerConfig
from actors.user_state import UserSideConfig
from cluster.settings import Settings

__all__ = ["Pipeline", "fit_clusters", "start_pipeline", "worker_configs", "worker_name"]

logger = logging.getLogger(__name__)


def fit_clusters(search: Any, n_clusters: int, sample: int = 50_000, seed: int = 0) -> TopicClusters | None:
    """Topic clusters (the profiles' coarse level) fitted on a sample of the shards' item vectors."""
    vectors = search.sample_vectors(sample, seed)
    if len(vectors) == 0:
        logger.warning("the catalogue is empty: every item goes to topic cluster 0 until the next rollout")
        return None
    return fit_topic_clusters(vectors, n_clusters, seed=seed)


def worker_name(prefix: str, worker: int) -> str:
    """The actor name of profile worker ``worker`` (the API looks workers up by name)."""
    return f"{prefix}streamrec-profiles-{worker}"


def worker_configs(settings: Settings, dim: int, model_version: int = 0) -> list[WorkerConfig]:
    p, t = settings.pipeline, settings.topics
    base = UserSideConfig()
    user = replace(base, profile=replace(base.profile, dim=dim, n_clusters=p.n_clusters), k=p.k,
                   diversity=p.diversity, candidates_per_query=p.candidates_per_query)  # fmt: skip
    return [
        WorkerConfig(
            worker=w, workers=p.workers, events_topic=t.name("events"), changelog_topic=t.name("changelog"),
            recs_topic=t.name("recs"), dead_letters_topic=t.name("dead_letters"), group_id=t.prefix + p.group_id,
            transactional_id=t.prefix + p.transactional_id, mode=p.mode, max_batch=p.max_batch,
            model_version=model_version, user=user,
        )  # fmt: skip
        for w in range(p.workers)
    ]


def start_pipeline(settings: Settings, bootstrap_servers: str, search: Any, clusters: TopicClusters | None, *,
                   dim: int, max_restarts: int = -1, namespace_prefix: str = "",
                   supervise_every_s: float | None = 2.0) -> Pipeline:  # fmt: skip
    """Create the profile workers (each recovers, then consumes) and their supervisor."""
    import ray

    remote_cls = ray.remote(num_cpus=settings.pipeline.worker_cpus, max_restarts=max_restarts,
                            max_task_retries=-1)(ProfileWorker)  # fmt: skip
    connection = settings.connection(bootstrap_servers)
    limits = settings.validation.limits()
    configs = worker_configs(settings, dim)

    names = [worker_name(namespace_prefix + settings.topics.prefix, w) for w in range(len(configs))]

    def make(w: int) -> Any:
        return remote_cls.options(name=names[w]).remote(configs[w], connection, search, clusters, limits)

    pipeline = Pipeline(make, len(configs), settings)
    pipeline.names = names
    if supervise_every_s:
        pipeline.start_supervisor(supervise_every_s)
    return pipeline


class Pipeline:
    """Handles of the profile workers, their supervision and metrics."""

    def __init__(self, make: Callable[[int], Any], workers: int, settings: Settings):
        import ray

        self._make = make
        self.settings = settings
        self.handles = [make(w) for w in range(workers)]
        ray.get([h.stats.remote() for h in self.handles])  # constructed: recovered and consuming
        self.recreated = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics: Any = None
        self.names: list[str] = []  # actor names of the workers (the API looks them up)

    # ------------------------------------------------------------ supervision

    def supervise_once(self, timeout_s: float = 30.0) -> list[dict[str, Any] | None]:
        """Ask every worker for its stats; re-create a worker that is gone for good."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        refs = [h.stats.remote() for h in self.handles]
        out: list[dict[str, Any] | None] = []
        for w, ref in enumerate(refs):
            try:
                out.append(ray.get(ref, timeout=timeout_s))
            except RayActorError as exc:
                if _gone_for_good(exc):
                    logger.warning("profile worker %d is gone (%s): re-creating it", w, type(exc).__name__)
                    self.handles[w] = self._make(w)
                    self.recreated += 1
                out.append(None)
            except GetTimeoutError:
                out.append(None)  # busy (a long batch or a restore): ask again next round
        if self.metrics is not None:
            self.metrics.update(out, self.recreated)
        return out

    def start_supervisor(self, every_s: float = 2.0) -> None:
        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    self.supervise_once()
                except Exception:  # the supervisor outlives any single failure
                    logger.exception("supervision round failed")

        self._thread = threading.Thread(target=loop, name="streamrec-supervisor", daemon=True)
        self._thread.start()

    def rollout(self, search: Any, version: int, timeout_s: float = 300.0) -> TopicClusters | None:
        """After the encoder shards serve ``version``: refit the topic clusters on the new
        vectors and switch every worker to it (profiles are rebuilt from their rings on
        next use); waits until every worker reports the version."""
        import ray

        clusters = fit_clusters(search, self.settings.pipeline.n_clusters)
        ray.get([h.rollout.remote(version, clusters) for h in self.handles], timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while not all(s["model_version"] >= version for s in self.stats(timeout_s)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"profile workers did not switch to model version {version} in {timeout_s} s")
            time.sleep(0.2)
        return clusters

    def serve_metrics(self, host: str, port: int) -> int:
        """Expose Prometheus metrics on ``host:port`` (0: a free port); returns the port."""
        from cluster.metrics import PipelineMetrics

        self.metrics = PipelineMetrics()
        return self.metrics.serve(host, port)

    # ------------------------------------------------------------ progress

    def stats(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        import ray

        return ray.get([h.stats.remote() for h in self.handles], timeout=timeout_s)

    def committed_offsets(self, bootstrap_servers: str) -> dict[int, int]:
        """Offsets committed by the workers' group, per events partition."""
        from streams.client import make_admin

        admin = make_admin(self.settings.connection(bootstrap_servers))
        try:
            group = self.settings.topics.prefix + self.settings.pipeline.group_id
            offsets = admin.list_group_offsets({group: None}).get(group, {})
        finally:
            admin.close()
        events = self.settings.topics.name("events")
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == events}

    def remaining(self, bootstrap_servers: str) -> dict[int, int]:
        """Events not yet committed by the workers, per events partition (0 everywhere: caught up)."""
        from kafka import TopicPartition

        from streams.client import make_consumer

        consumer = make_consumer(self.settings.connection(bootstrap_servers), group_id=None,
                                 isolation_level="read_uncommitted")  # fmt: skip
        try:
            topic = self.settings.topics.name("events")
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
        finally:
            consumer.close()
        done = self.committed_offsets(bootstrap_servers)
        return {p: max(0, end - done.get(p, 0)) for p, end in ends.items()}

    def wait_caught_up(self, bootstrap_servers: str, timeout_s: float = 300.0, poll_s: float = 0.5) -> float:
        """Block until the committed offsets reach the events topic's end; returns seconds waited."""
        start = time.monotonic()
        while True:
            left = self.remaining(bootstrap_servers)
            if not any(left.values()):
                return time.monotonic() - start
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"the pipeline is still behind after {timeout_s} s (events left per "
                                   f"partition: {left}); see the workers' stats and logs")  # fmt: skip
            time.sleep(poll_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        import ray

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        try:
            ray.get([h.stop.remote() for h in self.handles], timeout=timeout_s)
        except Exception as exc:  # a dead worker has nothing left to stop
            logger.warning("stopping profile workers: %s", exc)
        if self.metrics is not None:
            self.metrics.close()


def _gone_for_good(exc: Exception) -> bool:
    """A dead actor that Ray will not restart (killed without restart, or restarts exhausted)."""
    from ray.exceptions import ActorDiedError

    return isinstance(exc, ActorDiedError)
