"""Topic layout and administration. Topics are always created explicitly, never auto-created.

| role          | key      | cleanup  | what                                               |
|---------------|----------|----------|----------------------------------------------------|
| events        | user_id  | delete   | user interactions (streams.records.Event)          |
| items         | item_id  | compact  | catalogue upserts and deletes (ItemUpsert)         |
| recs          | user_id  | compact  | refreshed top-K lists (Recommendations)            |
| changelog     | user_id  | compact  | profile snapshots, co-partitioned with events      |
| dead_letters  | original | delete   | invalid records with context headers               |
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TopicSpec", "default_topic_specs", "ensure_topics", "describe_topics", "partition_for_key"]

logger = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36

_COMPACT = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": "3600000"}
_ROLES: dict[str, tuple[str, dict[str, str]]] = {
    "events": ("user_id", {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)}),
    "items": ("item_id", _COMPACT),
    "recs": ("user_id", _COMPACT),
    "changelog": ("user_id", _COMPACT),
    "dead_letters": ("original key", {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000)}),
}


@dataclass(frozen=True, slots=True)
class TopicSpec:
    role: str
    name: str
    partitions: int
    replication_factor: int
    key: str
    configs: dict[str, str] = field(default_factory=dict, hash=False)


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and kafka-python: murmur2) gives ``key``;
    where a user's events, and so its profile and its lists, live."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def default_topic_specs(
    *, prefix: str, names: dict[str, str], partitions: dict[str, int], replication_factor: int
) -> list[TopicSpec]:
    return [
        TopicSpec(
            role=role,
            name=prefix + names[role],
            partitions=partitions[role],
            replication_factor=replication_factor,
            key=key,
            configs=dict(configs),
        )
        for role, (key, configs) in _ROLES.items()
    ]


def ensure_topics(admin: Any, specs: list[TopicSpec], timeout_ms: int = 30_000) -> dict[str, str]:
    """Create the topics that do not exist yet; returns name -> "created" | "exists".

    An existing topic with fewer partitions than asked for is reported, not altered.
    """
    request = {
        s.name: {"num_partitions": s.partitions, "replication_factor": s.replication_factor, "configs": s.configs}
        for s in specs
    }
    response = admin.create_topics(request, timeout_ms=timeout_ms, raise_errors=False)
    result: dict[str, str] = {}
    created = []
    for topic in response["topics"]:
        code = topic["error_code"]
        if code == 0:
            result[topic["name"]] = "created"
            created.append(topic["name"])
        elif code == _TOPIC_ALREADY_EXISTS:
            result[topic["name"]] = "exists"
        else:
            from kafka.errors import for_code

            raise for_code(code)(f"creating topic {topic['name']}: {topic.get('error_message')}")
    admin.wait_for_topics(list(request), timeout_ms=timeout_ms)
    existing = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(request))}
    for spec in specs:
        if existing.get(spec.name, spec.partitions) < spec.partitions:
            logger.warning(
                "topic %s exists with %d partitions, fewer than the %d configured; it was left as it is",
                spec.name, existing[spec.name], spec.partitions,
            )  # fmt: skip
    return result


def describe_topics(admin: Any, specs: list[TopicSpec]) -> list[dict[str, Any]]:
    """Partitions, leaders and non-default configs of each topic (``exists=False`` if missing)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    by_name = {t["name"]: t for t in admin.describe_topics([s.name for s in specs]) if t.get("error_code", 0) == 0}
    present = [s.name for s in specs if s.name in by_name]
    configs: dict[str, dict[str, str]] = {}
    if present:
        resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in present]
        described = admin.describe_configs(resources)  # {"topic": {name: {key: {value, ...}}}}; non-defaults only
        for name, entries in next(iter(described.values()), {}).items():
            configs[name] = {key: _value(entry) for key, entry in entries.items()}
    out = []
    for spec in specs:
        topic = by_name.get(spec.name)
        out.append(
            {
                "role": spec.role,
                "name": spec.name,
                "exists": topic is not None,
                "partitions": len(topic["partitions"]) if topic else 0,
                "replication_factor": len(topic["partitions"][0]["replica_nodes"]) if topic and topic["partitions"] else 0,
                "key": spec.key,
                "configs": configs.get(spec.name, {}),
            }
        )
    return out


def _value(entry: Any) -> str:
    return str(entry.get("value")) if isinstance(entry, dict) else str(entry)
