"""The Kubernetes manifests and the image recipe agree with the code they deploy."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from cluster import cli
from cluster.settings import CONFIG_ENV, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _docs(name: str) -> dict:
    return {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kuberay" / name).read_text())}


def _ray_pin() -> str:
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    return re.search(r'"ray\[[^\]]*\]==([\d.]+)"', pyproject).group(1)


def test_the_config_map_is_a_valid_streamrec_config(tmp_path):
    config = _docs("streamrec-config.yaml")
    toml = tmp_path / "streamrec.toml"
    toml.write_text(config["ConfigMap"]["data"]["streamrec.toml"])
    settings = load_settings(toml)  # unknown keys or bad values raise
    assert settings.api.host == "0.0.0.0" and settings.pipeline.ray_address == "auto"
    assert settings.kafka.security_protocol == "SASL_SSL" and settings.kafka.sasl_password is None  # from the Secret
    secret = config["Secret"]["stringData"]
    assert set(secret) == {"STREAMREC_KAFKA__SASL_PASSWORD", "STREAMREC_API__API_KEY"}


@pytest.mark.parametrize("env", ["STREAMREC_KAFKA__SASL_PASSWORD", "STREAMREC_API__API_KEY"])
def test_secret_names_are_settings_the_code_reads(monkeypatch, env):
    monkeypatch.setenv(env, "s3cret")
    settings = load_settings(None)
    value = settings.kafka.sasl_password if "KAFKA" in env else settings.api.api_key
    assert value.get_secret_value() == "s3cret"


def test_every_ray_pod_runs_the_pinned_ray_with_the_config_and_secrets():
    cluster = _docs("raycluster.yaml")["RayCluster"]["spec"]
    assert cluster["rayVersion"] == _ray_pin()
    groups = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for group in groups:
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        assert {"name": CONFIG_ENV, "value": "/etc/streamrec/streamrec.toml"} in container["env"]
        assert container["envFrom"] == [{"secretRef": {"name": "streamrec-secrets"}}]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/etc/streamrec", "/shared"} <= mounts
    gpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"rayproject/ray:{_ray_pin()}-" in dockerfile


def test_the_job_api_is_admitted_only_to_the_operator_and_the_submitter():
    docs = _docs("raycluster.yaml")
    rules = docs["NetworkPolicy"]["spec"]["ingress"]
    dashboard = [r for r in rules if {"port": 8265, "protocol": "TCP"} in r.get("ports", [])]
    assert len(dashboard) == 1
    sources = dashboard[0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-operator"}}} in sources
    job = _docs("pipeline-rayjob.yaml")["RayJob"]["spec"]
    label = job["submitterPodTemplate"]["metadata"]["labels"]
    assert {"podSelector": {"matchLabels": label}} in sources
    assert all(8265 not in [p.get("port") for p in r.get("ports", [])] for r in rules if r is not dashboard[0])
    assert docs["Service"]["spec"]["selector"]["ray.io/cluster"] == docs["RayCluster"]["metadata"]["name"]


def test_the_job_entrypoint_is_a_valid_streamrec_command():
    job = _docs("pipeline-rayjob.yaml")["RayJob"]["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[0] == "streamrec"
    args = cli.build_parser().parse_args(argv[1:])
    assert args.command == "serve" and str(args.config) == "/etc/streamrec/streamrec.toml"
    assert job["clusterSelector"] == {"ray.io/cluster": "streamrec"}


def test_the_ray_up_cluster_installs_streamrec_and_keeps_the_dashboard_local():
    config = yaml.safe_load((DEPLOY.parent / "cluster" / "ray-cluster.yaml").read_text())
    assert config["file_mounts"] == {"/opt/streamrec": "."}
    assert any("pip install" in c and "/opt/streamrec" in c for c in config["setup_commands"])
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--head" in head
    assert all("--address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"] if "start" in c)
