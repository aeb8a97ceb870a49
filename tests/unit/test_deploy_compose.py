"""docker-compose, Prometheus and Grafana files agree with the code: ports, settings, metric names."""

import json
import re
import shlex
from pathlib import Path

import yaml

from cluster import cli
from cluster.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROOT = DEPLOY.parent


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_every_published_port_is_bound_to_localhost():
    ports = [p for svc in _compose()["services"].values() for p in svc.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports), ports


def test_the_streamrec_service_is_a_valid_command_with_valid_settings(monkeypatch):
    svc = _compose()["services"]["streamrec"]
    argv = shlex.split(svc["command"])
    args = cli.build_parser().parse_args(argv[1:])
    assert argv[0] == "streamrec" and args.command == "serve"
    for name, value in svc["environment"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STREAMREC_API__API_KEY", "from-the-env-file")
    settings = load_settings(None, cli._overrides(args))
    assert settings.bootstrap_servers == "kafka:9092" and settings.api.host == "0.0.0.0"
    assert settings.pipeline.metrics_port == 9100 and settings.pipeline.ray_address == "ray-head:6379"
    image = _compose()["services"]["kafka"]["image"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", image)


def test_prometheus_scrapes_the_ports_the_services_listen_on():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in config["scrape_configs"]}
    assert targets == {"streamrec-pipeline": "streamrec:9100", "streamrec-api": "streamrec:8000"}
    api = next(j for j in config["scrape_configs"] if j["job_name"] == "streamrec-api")
    assert api["authorization"]["type"] == "Bearer"  # the API's /metrics needs its key


def test_the_dashboard_queries_only_metrics_the_code_exports():
    dashboard = json.loads((DEPLOY / "grafana" / "streamrec.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for e in exprs for m in re.findall(r"streamrec_[a-z_]+", e)}
    code = (ROOT / "cluster" / "metrics.py").read_text() + (ROOT / "deploy" / "serve_app.py").read_text()
    exported = set(re.findall(r'"(streamrec_[a-z_]+)"', code))
    exported |= {f"streamrec_worker_{n}" for n in re.findall(r'"(events|recs|dead_letters|recoveries)"', code)}
    for metric in used:
        base = re.sub(r"_(bucket|total|count|sum)$", "", metric)
        assert metric in exported or base in exported, metric
    assert len(used) >= 6
