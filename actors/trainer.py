"""The body of one fine-tuning worker: data-parallel steps over its share of the samples.

``train_worker`` is what each Ray Train worker runs (``cluster.train`` wires it
into a ``TorchTrainer``), and what a test or a single-process run calls directly
with ``world = 1``. Ranks see disjoint, equally long slices of one seeded
permutation per epoch; after every backward pass the gradients are averaged over
the process group (gloo on CPUs, NCCL on GPUs) when one is initialised, so every
rank holds the same weights after every step.

Data arrives as plain arrays (:class:`TrainData`) built from decoded events;
nothing here reads Kafka or the clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from actors.core.finetune import FineTuneConfig, ItemTower, Samples, TextFeatures, align_loss, next_item_loss

__all__ = ["TrainData", "train_worker", "tower_state", "build_tower", "text_features"]


@dataclass(frozen=True)
class TrainData:
    features: np.ndarray  # (N, d) float32 frozen text features of the catalogue, in code order
    samples: Samples  # next-item samples over item codes
    pairs: np.ndarray  # (P, 2) co-visited item code pairs
    texts: tuple[str, ...] = ()  # item texts in code order (needed when encoder layers train)

    @property
    def n_items(self) -> int:
        return len(self.features)


def build_tower(data: TrainData, cfg: FineTuneConfig, encoder: torch.nn.Module | None = None) -> ItemTower:
    """A fresh tower: frozen features, or ``encoder`` (codes -> features) whose top layers train."""
    features = encoder if encoder is not None else torch.from_numpy(np.asarray(data.features, dtype=np.float32))
    return ItemTower(features, data.n_items, data.features.shape[1], residual=cfg.residual)


def text_features(encoder, texts: Sequence[str], train_layers: int, device: str = "cpu") -> TextFeatures:
    """A :class:`TextFeatures` over ``encoder`` (an ``actors.encoder.TextEncoder``) and the item texts."""
    tokens = encoder.tokenizer([t or " " for t in texts], padding=True, truncation=True,
                               max_length=encoder.max_length, return_tensors="pt")  # fmt: skip
    layers = encoder.backbone.encoder.layer  # BERT-family encoders (MiniLM, BERT, RoBERTa, ...)
    encoder.train()
    return TextFeatures(encoder, layers, tokens["input_ids"], tokens["attention_mask"], train_layers).to(device)


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    import torch.distributed as dist

    if world <= 1 or not dist.is_available() or not dist.is_initialized():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


def train_worker(
    data: TrainData, cfg: FineTuneConfig, *, rank: int = 0, world: int = 1, device: str = "cpu",
    encoder: torch.nn.Module | None = None, report: Callable[[dict], None] = lambda m: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> ItemTower:  # fmt: skip
    """Train one rank's replica for ``cfg.epochs`` epochs and return it (identical on every rank).

    ``report`` receives per-epoch metrics (loss, samples/s of this rank);
    ``should_stop`` is polled between steps (a cancelled run stops early).
    """
    torch.manual_seed(cfg.seed)
    tower = build_tower(data, cfg, encoder).to(device)
    params = [p for p in tower.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    context = torch.from_numpy(data.samples.context).to(device)
    target = torch.from_numpy(data.samples.target).to(device)
    pairs = torch.from_numpy(np.asarray(data.pairs, dtype=np.int64)).to(device)
    per_rank = len(target) // world
    steps = max(1, -(-per_rank // cfg.batch_size))
    rng = np.random.default_rng(cfg.seed + 7919 * rank)
    for epoch in range(cfg.epochs):
        perm = np.random.default_rng(cfg.seed + epoch).permutation(len(target))[rank * per_rank:(rank + 1) * per_rank]
        started, total, seen = time.perf_counter(), 0.0, 0
        tower.train()
        for step in range(steps):
            if should_stop():
                return tower
            idx = torch.from_numpy(perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]).to(device)
            loss = next_item_loss(tower, context[idx], target[idx], cfg) if len(idx) else tower.projection.weight.sum() * 0
            if cfg.align_weight > 0 and len(pairs) > 1:
                pick = torch.from_numpy(rng.choice(len(pairs), min(cfg.batch_size, len(pairs)), replace=False)).to(device)
                loss = loss + cfg.align_weight * align_loss(tower, pairs[pick], cfg.temperature)
            optimiser.zero_grad(set_to_none=False)
            loss.backward()
            _average_gradients(params, world)
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        elapsed = time.perf_counter() - started
        report({"epoch": epoch + 1, "loss": total / max(seen, 1), "samples_per_s": seen / max(elapsed, 1e-9),
                "rank": rank})  # fmt: skip
    tower.eval()
    return tower


def tower_state(tower: ItemTower) -> dict[str, np.ndarray]:
    """The learned head as arrays: ``projection`` (d, d) and ``residual`` (N, d) (zeros if none)."""
    with torch.no_grad():
        projection = tower.projection.weight.detach().cpu().numpy().astype(np.float32)
        if tower.residual is not None:
            residual = tower.residual.weight.detach().cpu().numpy().astype(np.float32)
        else:
            residual = np.zeros((tower.n_items, projection.shape[0]), dtype=np.float32)
    return {"projection": projection, "residual": residual}
