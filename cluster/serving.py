"""Starting the ranking API (deploy/serve_app.py) on Ray Serve next to a running pipeline."""

from __future__ import annotations

from typing import Any, Callable

from cluster.errors import ConfigError
from cluster.settings import Settings

__all__ = ["api_config", "start_api", "stop_api"]

_LOCAL = {"127.0.0.1", "localhost", "::1"}


def api_config(settings: Settings, namespace: str, worker_names: list[str] | None = None,
               shard_names: list[str] | None = None, connection: Any = None) -> Any:  # fmt: skip
    """The API's config; actor names default to those ``streamrec run`` gives its actors."""
    from cluster.encoders import shard_name
    from cluster.pipeline import worker_name
    from deploy.serve_app import ApiConfig

    api, prefix = settings.api, settings.topics.prefix
    key = api.api_key.get_secret_value() if api.api_key else None
    if api.host not in _LOCAL and not key:
        raise ConfigError(f"the ranking API would listen on {api.host} without an API key: set "
                          "STREAMREC_API__API_KEY (or [api] api_key), or bind to 127.0.0.1")  # fmt: skip
    if connection is None and settings.bootstrap_servers:
        connection = settings.connection(settings.bootstrap_servers)
    return ApiConfig(
        worker_names=tuple(worker_names or [worker_name(prefix, w) for w in range(settings.pipeline.workers)]),
        shard_names=tuple(shard_names or [shard_name(prefix, s) for s in range(settings.pipeline.encoder_shards)]),
        events_partitions=settings.topics.events_partitions, namespace=namespace, api_key=key,
        request_timeout_s=api.request_timeout_s, connection=connection, events_topic=settings.topics.name("events"),
        limits=settings.validation.limits(), max_inflight=api.max_inflight,
    )  # fmt: skip


def start_api(settings: Settings, worker_names: list[str], shard_names: list[str], connection: Any,
              model_version: int = 0) -> Callable[..., None]:  # fmt: skip
    """Deploy the API over the named profile workers and encoder shards. Returns ``reconfigure(**changes)``,
    which updates the replicas' user_config live (max_inflight, request_timeout_s, model_version)."""
    import ray
    from ray import serve

    from deploy.serve_app import api_deployment

    api = settings.api
    cfg = api_config(settings, ray.get_runtime_context().namespace, worker_names, shard_names, connection)
    serve.start(http_options={"host": api.host, "port": api.port})
    deployment: Any = api_deployment(num_replicas=api.replicas, ray_actor_options={"num_cpus": api.replica_cpus},
                                     max_ongoing_requests=api.max_ongoing_requests,
                                     max_queued_requests=api.max_queued_requests)  # fmt: skip
    user_config = {"max_inflight": api.max_inflight, "request_timeout_s": api.request_timeout_s,
                   "model_version": model_version}  # fmt: skip
    name = f"{settings.topics.prefix}streamrec"

    def reconfigure(**changes: Any) -> None:
        if "model_version" in changes:  # versions only increase, also for replicas started later
            changes["model_version"] = max(int(changes["model_version"]), user_config["model_version"])
        user_config.update(changes)  # the same code and args: Serve only calls reconfigure on the replicas
        serve.run(deployment.options(user_config=dict(user_config)).bind(cfg), name=name, route_prefix="/",
                  blocking=False)  # fmt: skip

    reconfigure()
    return reconfigure


def api_url(settings: Settings) -> str:
    return f"http://{settings.api.host}:{settings.api.port}"


def stop_api() -> None:
    from ray import serve

    serve.shutdown()
