"""The model registry: monotonic versions, atomic publication, recorded hashes."""

from __future__ import annotations

import json
import threading

import pytest

from cluster.registry import ModelRegistry, RegistryError


def _model(tmp_path, name="m", weights=b"w1"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"hidden_size": 4}))
    (d / "model.safetensors").write_bytes(weights)
    return d


def test_versions_increase_and_hashes_verify(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    assert reg.versions() == [] and reg.latest() is None
    v1 = reg.publish(_model(tmp_path, "a"), {"note": "first"})
    v2 = reg.publish(_model(tmp_path, "b", b"w2"))
    assert (v1.version, v2.version) == (1, 2) and reg.latest().version == 2
    assert v1.sha256 != v2.sha256 and reg.get(1, verify=True).metadata == {"note": "first"}
    assert (v1.path / "model.safetensors").read_bytes() == b"w1"
    (v1.path / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="does not match its recorded sha256"):
        reg.get(1, verify=True)
    with pytest.raises(RegistryError, match="not in the registry"):
        reg.get(7)


def test_concurrent_publishers_never_share_a_version_and_leave_no_partial_dirs(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    source = _model(tmp_path)
    threads = [threading.Thread(target=reg.publish, args=(source,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reg.versions() == [1, 2, 3, 4, 5, 6]
    assert not [p for p in (tmp_path / "reg").iterdir() if p.name.startswith(".tmp-")]


def test_publish_refuses_a_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="not a Hugging Face model directory"):
        ModelRegistry(tmp_path / "reg").publish(tmp_path / "empty")
