"""A versioned model registry on a shared filesystem path: monotonic versions, atomic writes, recorded hashes.

Layout under ``root``::

    v000001/manifest.json   {"version": 1, "sha256": ..., "created_ms": ..., "metadata": {...}, "files": [...]}
    v000001/model/          a Hugging Face encoder directory (config, weights, tokenizer)
    v000002/...

``publish`` copies a model directory into a temporary directory inside ``root``,
hashes it, writes the manifest and renames the directory to the next version in one
``rename`` (atomic on POSIX), under an exclusive lock so concurrent publishers never
share a number. Readers only ever see complete versions; versions only increase.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError

__all__ = ["ModelRegistry", "ModelVersion", "RegistryError"]

_DIR = re.compile(r"^v(\d{6,})$")


class RegistryError(ConfigError):
    """A registry version is missing or does not match its recorded hash."""


@dataclass(frozen=True)
class ModelVersion:
    version: int
    path: Path  # the model directory (load it with actors.encoder.load_text_encoder)
    sha256: str
    created_ms: int
    metadata: dict[str, Any] = field(default_factory=dict)


class ModelRegistry:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def versions(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = (_DIR.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> ModelVersion | None:
        versions = self.versions()
        return self.get(versions[-1]) if versions else None

    def get(self, version: int, *, verify: bool = False) -> ModelVersion:
        base = self.root / f"v{version:06d}"
        manifest = base / "manifest.json"
        if not manifest.is_file():
            raise RegistryError(f"model version {version} is not in the registry at {self.root} "
                                f"(versions: {self.versions() or 'none'})")  # fmt: skip
        meta = json.loads(manifest.read_text())
        mv = ModelVersion(version, base / "model", meta["sha256"], meta["created_ms"], meta.get("metadata", {}))
        if verify and _tree_hash(mv.path) != mv.sha256:
            raise RegistryError(f"model version {version} at {base} does not match its recorded sha256: "
                                "the files changed after publishing; publish it again")  # fmt: skip
        return mv

    def publish(self, source: Path | str, metadata: dict[str, Any] | None = None) -> ModelVersion:
        """Copy the model directory ``source`` in as the next version (atomically)."""
        source = Path(source)
        if not (source / "config.json").is_file():
            raise RegistryError(f"{source} is not a Hugging Face model directory (no config.json)")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        try:
            shutil.copytree(source, tmp / "model")
            digest = _tree_hash(tmp / "model")
            with open(self.root / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                version = (self.versions() or [0])[-1] + 1
                manifest = {"version": version, "sha256": digest, "created_ms": int(time.time() * 1000),
                            "metadata": metadata or {}, "source": str(source)}  # fmt: skip
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
                os.rename(tmp, self.root / f"v{version:06d}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(version)


def _tree_hash(root: Path) -> str:
    """sha256 over the relative paths and contents of every file under ``root``, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
