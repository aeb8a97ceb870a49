"""The README's main job, run as the CLI runs it, against the test broker and the session's Ray."""

from __future__ import annotations

import re
import uuid

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_demo_runs_end_to_end_and_publishes_lists(kafka_bootstrap, ray_local, capsys):
    from cluster.cli import main

    code = main(["--bootstrap-servers", kafka_bootstrap, "--topic-prefix", f"t{uuid.uuid4().hex[:8]}-", "demo",
                 "--synthetic", "--users", "60", "--items", "120", "--events", "2500", "--workers", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    applied = re.search(r"applied ([\d,]+) events in", out)
    assert applied and int(applied.group(1).replace(",", "")) == 2500, out
    assert re.search(r"user \S+: interest hierarchy", out) and "L2 interest 1:" in out, out
    listed = re.findall(r"^\s+\d+\. .+\[(.+)\]$", out, flags=re.M)
    assert len(listed) >= 5 and all(reason for reason in listed), out
    assert re.search(r"refreshed list committed to \S+ and read back \d+ ms later", out), out
    assert re.search(r"curl -s .+/v1/users/\S+/recommendations\?k=3", out), out
    assert "searchable after" in out and "pipeline, encoder shards and Ray stopped" in out, out


def test_serve_command_runs_and_stops_cleanly(topics, ray_local, capsys, monkeypatch):
    import socket

    from cluster.cli import main

    # the fine-tuning scheduler runs inside run/serve when enabled (not due within this short run)
    monkeypatch.setenv("STREAMREC_TRAIN__SCHEDULE", "true")
    monkeypatch.setenv("STREAMREC_TRAIN__EVERY_MINUTES", "600")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["--bootstrap-servers", topics.bootstrap_servers, "--topic-prefix", topics.topics.prefix, "serve",
                 "--duration", "3", "--status-every", "1", "--port", str(port), "--workers", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"ranking API at http://127.0.0.1:{port}" in out, out
    assert re.search(r"events/s .+ \| applied 0 \| lag 0", out), out
    assert "fine-tuning scheduled every 600 min" in out, out
    assert out.rstrip().endswith("stopped cleanly"), out
