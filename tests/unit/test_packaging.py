"""The four import packages come from the installed distribution, with their data files;
the core never imports the runtime."""

import ast
import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["actors", "actors.core", "streams", "cluster", "deploy", "deploy.kafka"])
def test_packages_import_from_the_installed_distribution(name, tmp_path):
    # From a foreign working directory, so only the installation can provide the package.
    code = f"import {name}; print({name}.__name__)"
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name
    assert metadata.version("streamrec")


def test_package_data_is_installed():
    schemas = [p.name for p in resources.files("streams").joinpath("schemas").iterdir()]
    assert {"event.v1.schema.json", "item.v1.schema.json", "recommendations.v1.schema.json"} <= set(schemas)
    assert resources.files("deploy").joinpath("kafka/pom.xml").is_file()
    assert resources.files("deploy").joinpath("kafka/log4j2.properties").is_file()
    assert resources.files("deploy").joinpath("streamrec.example.toml").is_file()


def test_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("streamrec") == "cluster.cli:main"


FORBIDDEN_IN_CORE = {"ray", "kafka", "streams", "cluster", "deploy", "fastapi", "starlette", "requests"}


def test_core_never_imports_the_runtime():
    offenders = []
    for path in (ROOT / "actors" / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_IN_CORE]
    assert offenders == []


def test_streams_never_imports_ray_or_cluster():
    offenders = []
    for path in (ROOT / "streams").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                offenders += [f"{path.name}: {m}" for m in mods if m.split(".")[0] in {"ray", "cluster", "deploy"}]
    assert offenders == []
