"""The installed `streamrec` command against the real broker, as a user would run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STREAMREC = shutil.which("streamrec", path=str(Path(sys.executable).parent)) or "streamrec"


def _run(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([STREAMREC, *args], env=env, capture_output=True, text=True, timeout=240)
    if check and result.returncode != 0:
        raise AssertionError(f"streamrec {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(extra)
    return env


def test_topics_produce_consume(settings):
    env = _env(STREAMREC_BOOTSTRAP_SERVERS=settings.bootstrap_servers, STREAMREC_TOPICS__PREFIX=settings.topics.prefix)
    created = _run("topics", "create", env=env).stdout
    assert f"{settings.topics.prefix}events: created" in created
    assert f"{settings.topics.prefix}events: exists" in _run("topics", "create", env=env).stdout
    described = _run("topics", "describe", env=env).stdout
    assert "8 partitions" in described and "cleanup.policy=compact" in described

    produced = _run("produce", "--synthetic", "--users", "20", "--items", "40", "--events", "300", env=env)
    assert "produced 40 items and 300 events" in produced.stdout
    assert "events" in produced.stderr  # the progress bars go to stderr

    consumed = _run("consume", "events", "--max", "5", "--timeout", "20", env=env).stdout.splitlines()
    assert len(consumed) == 5
    assert all(line.startswith(f"{settings.topics.prefix}events[") and '"event_id"' in line for line in consumed)


def test_status_of_the_local_broker(local_broker):
    if local_broker is None:
        pytest.skip("tests run against an existing cluster: no local broker to inspect")
    env = _env(STREAMREC_BROKER__STATE_DIR=str(local_broker.state_dir))
    status = _run("kafka", "status", env=env).stdout.strip()
    assert status == local_broker.status().bootstrap_servers and status.startswith("localhost:")
    again = _run("kafka", "start", env=env).stdout
    assert "already running" in again and status in again


def test_existing_cluster_starts_nothing(settings, tmp_path):
    env = _env(STREAMREC_BOOTSTRAP_SERVERS=settings.bootstrap_servers, STREAMREC_BROKER__STATE_DIR=str(tmp_path))
    out = _run("kafka", "start", env=env).stdout
    assert "existing cluster" in out and not (tmp_path / "broker.json").exists()


def test_no_broker_is_a_clear_error(tmp_path):
    env = _env(STREAMREC_BROKER__STATE_DIR=str(tmp_path))
    result = _run("topics", "create", env=env, check=False)
    assert result.returncode == 2
    assert "streamrec kafka start" in result.stderr and "STREAMREC_BOOTSTRAP_SERVERS" in result.stderr
    assert "Traceback" not in result.stderr
