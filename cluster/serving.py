"""Starting the ranking API (deploy/serve_app.py) on Ray Serve next to a running pipeline."""

from __future__ import annotations

from typing import Any

from cluster.errors import ConfigError
from cluster.settings import Settings

__all__ = ["start_api", "stop_api"]

_LOCAL = {"127.0.0.1", "localhost", "::1"}


def start_api(settings: Settings, worker_names: list[str], shard_names: list[str], connection: Any) -> str:
    """Deploy the API over the named profile workers and encoder shards; returns its base URL."""
    import ray
    from ray import serve

    from deploy.serve_app import ApiConfig, RankingAPI

    api = settings.api
    key = api.api_key.get_secret_value() if api.api_key else None
    if api.host not in _LOCAL and not key:
        raise ConfigError(f"the ranking API would listen on {api.host} without an API key: set "
                          "STREAMREC_API__API_KEY (or [api] api_key), or bind to 127.0.0.1")  # fmt: skip
    cfg = ApiConfig(worker_names=tuple(worker_names), shard_names=tuple(shard_names),
                    events_partitions=settings.topics.events_partitions,
                    namespace=ray.get_runtime_context().namespace, api_key=key,
                    request_timeout_s=api.request_timeout_s, connection=connection,
                    events_topic=settings.topics.name("events"), limits=settings.validation.limits())  # fmt: skip
    serve.start(http_options={"host": api.host, "port": api.port})
    deployment: Any = serve.deployment(
        name="streamrec-api", num_replicas=api.replicas, ray_actor_options={"num_cpus": api.replica_cpus},
    )(RankingAPI)  # fmt: skip
    serve.run(deployment.bind(cfg), name=f"{settings.topics.prefix}streamrec", route_prefix="/", blocking=False)
    return f"http://{api.host}:{api.port}"


def stop_api() -> None:
    from ray import serve

    serve.shutdown()
