"""Contrastive next-item fine-tuning of the item encoder: towers, samples and losses (torch only).

The **item tower** maps an item to a unit vector: text features from the
transformer encoder (mean-pooled; frozen, or with its last layers trainable),
a learned ``d x d`` projection (initialised to the identity, so an untrained
tower *is* the frozen encoder) and an optional learned residual per item id
(initialised to zero), which lets items without text, and items whose text says
little, learn from interactions alone.

The **user tower** has no parameters of its own: it is the recency-weighted mean
of the user's last ``context`` item vectors — the same kind of pooled item
vectors the streaming profiles are built from, so what training optimises is
what the pipeline serves.

The **objective** is next-item retrieval: for each position t of a user's
time-ordered positive events, the pooled items before t must score item t
above every other item (softmax over the whole catalogue with temperature
``temperature``; the context items themselves are not counted as negatives).
A graph-alignment term pulls items that are co-visited (a few steps apart in
some user's sequence) towards each other with an in-batch InfoNCE, aligning the
interaction graph with the language-model space.

Nothing here reads the clock, Kafka or Ray: the Ray Train loop body in
``actors/trainer.py`` drives these pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["FineTuneConfig", "Samples", "ItemTower", "TextFeatures", "make_samples", "covisit_pairs", "user_vectors",
           "next_item_loss", "align_loss", "recall_scores"]  # fmt: skip


@dataclass(frozen=True)
class FineTuneConfig:
    epochs: int = 4
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    temperature: float = 0.05
    context: int = 20  # recent items pooled into the user vector
    context_decay: float = 0.8  # weight of the j-th most recent context item: decay ** j
    residual: bool = True  # a learned residual vector per item id
    align_weight: float = 0.1  # weight of the co-visitation alignment term
    align_window: int = 3  # items at most this many steps apart are co-visited pairs
    train_layers: int = 0  # transformer layers trained (from the top); 0: frozen text features
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.context < 1:
            raise ValueError("epochs, batch_size and context must be >= 1")
        if not 0 < self.context_decay <= 1:
            raise ValueError("context_decay must be in (0, 1]")
        if self.temperature <= 0 or self.lr <= 0:
            raise ValueError("temperature and lr must be > 0")
        if self.train_layers < 0 or self.align_window < 1 or self.align_weight < 0:
            raise ValueError("train_layers >= 0, align_window >= 1 and align_weight >= 0 are required")


@dataclass(frozen=True)
class Samples:
    """Training examples: ``context`` (S, L) item codes, most recent last, -1 padded on the left;
    ``target`` (S,) the next item."""

    context: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.target)


def make_samples(users: np.ndarray, items: np.ndarray, context: int, min_context: int = 1) -> Samples:
    """Next-item samples from parallel (E,) arrays in time order (positive events only).

    Every event with at least ``min_context`` earlier events of the same user becomes
    one sample whose context is up to ``context`` of those earlier items.
    """
    users, items = np.asarray(users), np.asarray(items, dtype=np.int64)
    order = np.lexsort((np.arange(len(users)), users))  # by user, then time
    u, it = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    pos = np.arange(len(u)) - np.repeat(starts, np.diff(np.r_[starts, len(u)]))  # position in own sequence
    rows = np.flatnonzero(pos >= min_context)
    ctx = np.full((len(rows), context), -1, dtype=np.int64)
    for j in range(1, context + 1):  # column context - j holds the j-th most recent earlier item
        ok = pos[rows] >= j
        ctx[ok, context - j] = it[rows[ok] - j]
    return Samples(ctx, it[rows])


def covisit_pairs(users: np.ndarray, items: np.ndarray, window: int) -> np.ndarray:
    """(P, 2) item pairs at most ``window`` steps apart in some user's time-ordered sequence."""
    users, items = np.asarray(users), np.asarray(items, dtype=np.int64)
    order = np.lexsort((np.arange(len(users)), users))
    u, it = users[order], items[order]
    pairs = []
    for d in range(1, window + 1):
        same = (u[d:] == u[:-d]) & (it[d:] != it[:-d])
        pairs.append(np.stack([it[:-d][same], it[d:][same]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


class TextFeatures(nn.Module):
    """Item code -> pooled unit text vector through an encoder whose top layers train.

    ``encoder(input_ids, attention_mask) -> (B, d)`` is a text encoder; ``layers`` its
    transformer blocks in order; only the last ``train_layers`` of them get gradients (the
    parameter-efficient option: the embeddings and lower blocks stay frozen). The item
    texts are tokenised once: ``input_ids`` and ``attention_mask`` (N, T).
    """

    def __init__(self, encoder: nn.Module, layers: nn.ModuleList, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, train_layers: int):  # fmt: skip
        super().__init__()
        if not 0 < train_layers <= len(layers):
            raise ValueError(f"train_layers must be in 1..{len(layers)}, got {train_layers}")
        self.encoder = encoder
        for p in encoder.parameters():
            p.requires_grad_(False)
        for layer in list(layers)[-train_layers:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        self.register_buffer("input_ids", input_ids)
        self.register_buffer("attention_mask", attention_mask)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        mask = self.attention_mask[codes]  # (B, T)
        width = int(mask.sum(dim=1).max().item()) if len(codes) else 1
        return self.encoder(self.input_ids[codes, :width], mask[:, :width])  # (B, d)


class ItemTower(nn.Module):
    """Item code -> unit vector: normalise(projection(features) + residual[item]).

    ``features`` is an (N, d) tensor of frozen text features (a buffer), or a module
    whose ``forward(codes)`` returns (B, d) features with gradients (an encoder whose
    last layers train).
    """

    def __init__(self, features: torch.Tensor | nn.Module, n_items: int, dim: int, residual: bool = True):
        super().__init__()
        if isinstance(features, nn.Module):
            self.encoder = features
        else:
            self.encoder = None
            self.register_buffer("features", features.float())
        self.projection = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.projection.weight.copy_(torch.eye(dim))
        self.residual = nn.Embedding(n_items, dim) if residual else None
        if self.residual is not None:
            nn.init.zeros_(self.residual.weight)
        self.n_items = n_items

    @property
    def frozen_text(self) -> bool:
        return self.encoder is None

    def forward(self, codes: torch.Tensor | None = None) -> torch.Tensor:
        """Unit vectors (B, d) of ``codes`` (B,), or of every item (N, d) when ``codes`` is None."""
        if codes is None:
            codes = torch.arange(self.n_items, device=self.projection.weight.device)
        x = self.features[codes] if self.encoder is None else self.encoder(codes)  # (B, d)
        x = self.projection(x)
        if self.residual is not None:
            x = x + self.residual(codes)
        return nn.functional.normalize(x, dim=-1)


def user_vectors(item_vectors: torch.Tensor, context: torch.Tensor, decay: float) -> torch.Tensor:
    """Unit user vectors (S, d): the recency-weighted mean of the context items' vectors.

    ``item_vectors`` (N, d) indexed by the codes in ``context`` (S, L), -1 = padding.
    """
    length = context.shape[1]
    weights = decay ** torch.arange(length - 1, -1, -1, device=context.device, dtype=item_vectors.dtype)  # (L,)
    valid = (context >= 0).to(item_vectors.dtype)  # (S, L)
    pooled = ((valid * weights)[..., None] * item_vectors[context.clamp(min=0)]).sum(dim=1)  # (S, d)
    return nn.functional.normalize(pooled, dim=-1)


def next_item_loss(tower: ItemTower, context: torch.Tensor, target: torch.Tensor, cfg: FineTuneConfig
                   ) -> torch.Tensor:  # fmt: skip
    """Softmax cross-entropy of the next item over the catalogue (context items masked).

    With frozen text features the whole catalogue is scored; with a trainable encoder
    only the batch's own items are (in-batch negatives), which keeps a step affordable.
    """
    if tower.frozen_text:
        vectors = tower()  # (N, d)
        users = user_vectors(vectors, context, cfg.context_decay)  # (S, d)
        logits = users @ vectors.T / cfg.temperature  # (S, N)
        labels = target
        mask_codes = context
    else:
        codes, inverse = torch.unique(torch.cat([target, context[context >= 0]]), return_inverse=True)
        vectors = tower(codes)  # (U, d)
        local = torch.full_like(context, -1)
        local[context >= 0] = inverse[len(target):]
        users = user_vectors(vectors, local, cfg.context_decay)
        logits = users @ vectors.T / cfg.temperature  # (S, U)
        labels = inverse[: len(target)]
        mask_codes = local
    masked = torch.zeros_like(logits, dtype=torch.bool)
    rows = torch.arange(len(target), device=logits.device)[:, None].expand_as(mask_codes)
    valid = mask_codes >= 0
    masked[rows[valid], mask_codes[valid]] = True
    masked[torch.arange(len(target)), labels] = False  # a repeated item stays a valid target
    logits = logits.masked_fill(masked, float("-inf"))
    return nn.functional.cross_entropy(logits, labels)


def align_loss(tower: ItemTower, pairs: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch InfoNCE over co-visited pairs (P, 2): each item's partner is its positive."""
    a, b = tower(pairs[:, 0]), tower(pairs[:, 1])  # (P, d)
    logits = a @ b.T / temperature  # (P, P)
    labels = torch.arange(len(pairs), device=logits.device)
    return 0.5 * (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels))


def recall_scores(item_vectors: np.ndarray, context: np.ndarray, decay: float) -> np.ndarray:
    """Scores (S, N) of every item for users given by their ``context`` rows (numpy; evaluation)."""
    with torch.no_grad():
        vectors = torch.from_numpy(np.asarray(item_vectors, dtype=np.float32))
        users = user_vectors(vectors, torch.from_numpy(np.asarray(context, dtype=np.int64)), decay)
        return (users @ vectors.T).numpy()
