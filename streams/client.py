"""Kafka client construction: one connection description, three client kinds.

Secrets live in :class:`KafkaConnection` only as long as a client is built; its
``repr`` redacts them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from streams.errors import TopicMissing

__all__ = ["KafkaConnection", "assign_from_beginning", "make_admin", "make_consumer", "make_producer", "make_reader"]


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    bootstrap_servers: str
    client_id: str = "streamrec"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True
    request_timeout_ms: int = 30_000

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by kafka-python's producer, consumer and admin client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism or "PLAIN",
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.security_protocol.endswith("SSL"):
            kwargs.update(
                ssl_cafile=self.ssl_cafile,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                ssl_password=self.ssl_password,
                ssl_check_hostname=self.ssl_check_hostname,
            )
        return kwargs


def make_admin(conn: KafkaConnection, **overrides: Any):
    from kafka import KafkaAdminClient

    return KafkaAdminClient(**conn.client_kwargs(), request_timeout_ms=conn.request_timeout_ms, **overrides)


def make_producer(conn: KafkaConnection, **overrides: Any):
    """A producer tuned for throughput with durability: acks=all, idempotence on, small linger."""
    from kafka import KafkaProducer

    options: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "compression_type": None,
        "request_timeout_ms": conn.request_timeout_ms,
        "allow_auto_create_topics": False,  # topics are created explicitly, with their configs
    }
    options.update(overrides)
    return KafkaProducer(**conn.client_kwargs(), **options)


def make_consumer(conn: KafkaConnection, *topics: str, **overrides: Any):
    """A consumer with manual offsets only (never auto-commit) that reads committed data."""
    from kafka import KafkaConsumer

    options: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "request_timeout_ms": max(conn.request_timeout_ms, 40_000),
        "allow_auto_create_topics": False,
    }
    options.update(overrides)
    return KafkaConsumer(*topics, **conn.client_kwargs(), **options)


def make_reader(conn: KafkaConnection, **overrides: Any):
    """A group-less consumer for reading whole partitions in bulk (restores, rebuilds, benchmarks)."""
    options: dict[str, Any] = {"max_poll_records": 5000, "fetch_max_bytes": 64 << 20,
                               "max_partition_fetch_bytes": 16 << 20}  # fmt: skip
    options.update(overrides)
    return make_consumer(conn, group_id=None, **options)


def assign_from_beginning(consumer: Any, topic: str, wait_s: float = 0.0) -> list:
    """Assign every partition of ``topic`` to a group-less consumer and seek to the start.

    Waits up to ``wait_s`` for the topic's metadata; raises :class:`TopicMissing` after.
    """
    from kafka import TopicPartition

    deadline = time.monotonic() + wait_s
    partitions = consumer.partitions_for_topic(topic)
    while not partitions and time.monotonic() < deadline:
        time.sleep(0.5)
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise TopicMissing(f"topic {topic!r} does not exist: create it with `streamrec topics create`")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return tps
