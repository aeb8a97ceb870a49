"""Shared fixtures. Integration fixtures start one real Kafka broker and one local Ray per session."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from cluster.settings import Settings


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory):
    """The session's local broker (started by the same launcher as `streamrec kafka start`),
    or None when STREAMREC_TEST_BOOTSTRAP_SERVERS names an existing cluster.

    A broker that cannot start fails the tests that need it (never skipped).
    """
    if os.environ.get("STREAMREC_TEST_BOOTSTRAP_SERVERS"):
        yield None
        return
    from streams.broker import LocalBroker

    defaults = Settings().broker
    broker = LocalBroker(
        tmp_path_factory.mktemp("kafka"), defaults.resolved_cache_dir(), kafka_version=defaults.kafka_version
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker) -> str:
    if local_broker is None:
        return os.environ["STREAMREC_TEST_BOOTSTRAP_SERVERS"]
    return local_broker.status().bootstrap_servers


@pytest.fixture
def settings(kafka_bootstrap) -> Settings:
    """Settings pointing at the test broker, with a fresh topic namespace per test."""
    return Settings(bootstrap_servers=kafka_bootstrap, topics={"prefix": f"t{uuid.uuid4().hex[:10]}-"})


@pytest.fixture
def topics(settings) -> Settings:
    """Like ``settings``, with every topic created."""
    from streams.client import make_admin
    from streams.topics import ensure_topics

    admin = make_admin(settings.connection(settings.bootstrap_servers))
    try:
        ensure_topics(admin, settings.topics.specs())
    finally:
        admin.close()
    return settings


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the session, sized for a 2-core machine."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
