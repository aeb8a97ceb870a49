"""Fine-tuning runs on Ray Train, the evaluation gate, publishing to the registry and rollout.

One run (:func:`train_once`):

1. **data** — a window of events and the catalogue (from a dataset, or read from
   the ``events`` and ``items`` topics by :func:`read_window`; records that do not
   decode, i.e. what the workers dead-letter, are never trained on). Negative
   kinds (dislike, skip) are not positives. Each user's last event is held out.
2. **train** — a ``TorchTrainer`` with ``num_workers`` workers (gloo on CPUs, NCCL on
   GPUs) runs :func:`actors.trainer.train_worker` on frozen text features of the
   base encoder; rank 0 reports the learned head (projection + residual per item)
   as the run's checkpoint.
3. **gate** — the candidate (base encoder + head) and the currently served model
   are both evaluated as the pipeline serves them (``cluster.evaluate_pipeline``,
   in process) on the held-out events; only a candidate whose NDCG@10 beats the
   current one by ``min_improvement`` is published.
4. **publish** — the model directory goes into the registry atomically (temp dir
   + rename, hashed): a run killed at any point before leaves no version behind,
   and nothing half-written is ever loaded.
5. **rollout** (when a pipeline runs) — encoder shards re-encode and swap, profile
   workers switch and rebuild profiles from their recent-item rings.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from actors.core.finetune import FineTuneConfig, covisit_pairs, make_samples
from cluster.errors import ConfigError
from cluster.settings import Settings, user_state_dir

__all__ = ["TrainResult", "Window", "finetune_config", "training_data", "fit_head", "export_model", "train_once",
           "read_window", "gate_and_publish", "current_model"]  # fmt: skip

logger = logging.getLogger(__name__)

_NEGATIVE = frozenset({"dislike", "skip"})


@dataclass(frozen=True)
class Window:
    """What one run learns from: events in time order and the live catalogue."""

    events: list  # streams.records.Event
    items: list  # streams.records.ItemUpsert (not deleted)


@dataclass(frozen=True)
class TrainResult:
    ndcg10_before: float
    ndcg10_after: float
    promoted: bool
    version: int | None
    train_s: float
    samples_per_s: float
    samples: int
    workers: int
    path: str | None = None
    total_s: float = 0.0  # from the start of the run (features, training, gate) to the published version

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def finetune_config(settings: Settings, **overrides: Any) -> FineTuneConfig:
    t = settings.train
    cfg = FineTuneConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, temperature=t.temperature,
                         context=t.context, align_weight=t.align_weight, residual=t.residual,
                         train_layers=t.train_layers, seed=t.seed)  # fmt: skip
    return replace(cfg, **overrides)


def training_data(window: Window, features: np.ndarray, cfg: FineTuneConfig):
    """(TrainData, item ids in code order) from a window whose items align with ``features`` rows."""
    from actors.trainer import TrainData

    code = {item.item_id: c for c, item in enumerate(window.items)}
    positives = [e for e in window.events if e.kind not in _NEGATIVE and e.item_id in code]
    users = {u: n for n, u in enumerate(dict.fromkeys(e.user_id for e in positives))}
    u = np.fromiter((users[e.user_id] for e in positives), dtype=np.int64, count=len(positives))
    i = np.fromiter((code[e.item_id] for e in positives), dtype=np.int64, count=len(positives))
    from actors.encoder import item_text

    texts = tuple(item_text(it.title, it.text, it.categories) for it in window.items) if cfg.train_layers else ()
    data = TrainData(np.asarray(features, dtype=np.float32), make_samples(u, i, cfg.context),
                     covisit_pairs(u, i, cfg.align_window), texts)  # fmt: skip
    return data, [item.item_id for item in window.items]


def _text_features(model: str, items: Sequence, progress: Callable[[str], None]) -> np.ndarray:
    from actors.encoder import item_text
    from cluster.evaluate import cached_text_vectors

    return cached_text_vectors([item_text(i.title, i.text, i.categories) for i in items], model=model,
                               progress=progress)  # fmt: skip


def _loop(config: dict[str, Any]) -> None:
    """The per-worker function of the TorchTrainer (runs inside a Ray Train worker)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from actors.trainer import text_features, tower_state, train_worker

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    data = ray.get(config["data"])
    cfg = FineTuneConfig(**config["cfg"])
    device = str(ray.train.torch.get_device())
    base = features = None
    if cfg.train_layers:
        from actors.encoder import load_text_encoder

        base = load_text_encoder(config["base"], device=device, dtype="fp32")
        features = text_features(base, data.texts, cfg.train_layers, device)
    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any]) -> None:
        last.update(metrics)
        ray.train.report(metrics)

    tower = train_worker(data, cfg, rank=rank, world=world, device=device, encoder=features, report=report)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            np.savez(Path(tmp) / "head.npz", **tower_state(tower))
            if base is not None:  # the fine-tuned encoder itself
                base.backbone.save_pretrained(Path(tmp) / "model")
                base.tokenizer.save_pretrained(Path(tmp) / "model")
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({**last, "done": 1}, checkpoint=checkpoint)


def fit_head(data, cfg: FineTuneConfig, *, workers: int, cpus_per_worker: float, use_gpu: bool, storage: Path,
             out: Path, base: str, threads: int = 1) -> dict[str, Any]:  # fmt: skip
    """Train on Ray Train with ``workers`` data-parallel workers; rank 0's result goes to ``out``:
    ``head.npz`` (projection, residual) and, when encoder layers trained, ``model/``. Returns
    rank 0's last metrics (loss, samples/s of the last epoch)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"data": ray.put(data), "cfg": asdict(cfg), "threads": threads, "base": base},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=f"finetune-{uuid.uuid4().hex[:8]}", storage_path=str(storage)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as directory:
        shutil.copytree(directory, out, dirs_exist_ok=True)
    return dict(result.metrics or {})


def _read_head(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "head.npz", allow_pickle=False) as arrays:
        return {k: arrays[k].copy() for k in ("projection", "residual")}


def _base_model_dir(model: str) -> Path:
    from actors.encoder import DEFAULT_MODEL, default_model_path

    path = default_model_path() if model == DEFAULT_MODEL else Path(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the base encoder {model!r} is not a local model directory; set "
                                "pipeline.encoder_model to one")  # fmt: skip
    return path


def export_model(base_model: str | Path, head: dict[str, np.ndarray], item_ids: Sequence[str], out: Path,
                 metadata: dict[str, Any]) -> Path:  # fmt: skip
    """A loadable model directory: the (base or fine-tuned) encoder's files plus the learned head."""
    from actors.encoder import HEAD_FILES, save_head

    shutil.copytree(_base_model_dir(str(base_model)), out, ignore=shutil.ignore_patterns(*HEAD_FILES))
    save_head(out, head["projection"], item_ids, head["residual"], metadata)
    return out


def _as_dataset(window: Window):
    from types import SimpleNamespace

    return SimpleNamespace(events=window.events, items=window.items)


def _served_ndcg(settings: Settings, window: Window, model: str, k: int = 10) -> float:
    from cluster.evaluate_pipeline import evaluate_pipeline

    report = evaluate_pipeline(settings, _as_dataset(window), engine="pipeline", k=k, model=model,
                               progress=lambda m: None)  # fmt: skip
    return float(report["results"]["pipeline"][f"NDCG@{k}"])


def current_model(settings: Settings) -> tuple[int, str]:
    """(version, path) of the newest registry version, or (0, the configured encoder)."""
    from cluster.registry import ModelRegistry

    latest = ModelRegistry(settings.models.resolved_registry()).latest()
    return (0, settings.pipeline.encoder_model) if latest is None else (latest.version, str(latest.path))


def train_once(settings: Settings, window: Window, *, progress: Callable[[str], None] = print,
               publish: bool = True, cfg: FineTuneConfig | None = None) -> TrainResult:  # fmt: skip
    """One fine-tuning run on ``window``: train, gate, publish (see the module doc)."""
    from cluster.evaluate_pipeline import split_last

    t = settings.train
    cfg = cfg or finetune_config(settings)
    base = settings.pipeline.encoder_model
    run_started = time.perf_counter()
    train_events, _ = split_last(window.events)
    features = _text_features(base, window.items, progress)
    data, item_ids = training_data(Window(train_events, window.items), features, cfg)
    if len(data.samples) == 0:
        raise ConfigError("the window holds no user with two or more positive events: nothing to learn from; "
                          "produce more events or raise [train] window_events")
    progress(f"training on {len(data.samples):,} next-item samples, {len(item_ids):,} items, {t.workers} Ray "
             f"Train workers ({'GPU' if t.use_gpu else 'CPU'})")  # fmt: skip
    storage = t.storage or user_state_dir() / "train"
    with tempfile.TemporaryDirectory(prefix="streamrec-train-") as tmp:
        started = time.perf_counter()
        metrics = fit_head(data, cfg, workers=t.workers, cpus_per_worker=t.cpus_per_worker, use_gpu=t.use_gpu,
                           storage=storage, out=Path(tmp) / "run", base=base, threads=t.threads)  # fmt: skip
        train_s = time.perf_counter() - started
        tuned = Path(tmp) / "run" / "model"
        candidate = export_model(tuned if tuned.is_dir() else base, _read_head(Path(tmp) / "run"), item_ids,
                                 Path(tmp) / "model", {"base": base, "samples": len(data.samples),
                                                       "config": asdict(cfg)})  # fmt: skip
        progress(f"trained in {train_s:.1f} s; evaluating the served model and the candidate")
        gate = gate_and_publish(settings, window, candidate, publish=publish, progress=progress,
                                metadata={"samples": len(data.samples), "train_s": round(train_s, 2)})  # fmt: skip
    per_worker = float(metrics.get("samples_per_s", 0.0))
    return TrainResult(gate["before"], gate["after"], gate["promoted"], gate["version"], round(train_s, 2),
                       round(per_worker * t.workers, 1), len(data.samples), t.workers, gate["path"],
                       round(time.perf_counter() - run_started, 2))  # fmt: skip


def gate_and_publish(settings: Settings, window: Window, candidate: Path, *, publish: bool = True,
                     metadata: dict[str, Any] | None = None,
                     progress: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Evaluate the served model and ``candidate`` on the window's held-out last events as the
    pipeline serves them; publish the candidate only if it wins by ``train.min_improvement``."""
    from cluster.registry import ModelRegistry

    served_version, served = current_model(settings)
    before = _served_ndcg(settings, window, served)
    after = _served_ndcg(settings, window, str(candidate))
    promoted = after > before * (1.0 + settings.train.min_improvement)
    version = path = None
    if promoted and publish:
        mv = ModelRegistry(settings.models.resolved_registry()).publish(
            candidate, {"ndcg10_before": before, "ndcg10_after": after, "previous": served_version, **(metadata or {})})
        version, path = mv.version, str(mv.path)
    progress(f"NDCG@10 served v{served_version} {before:.4f} -> candidate {after:.4f}: "
             + (f"published as version {version}" if version else
                "promoted (not published)" if promoted else "rejected by the gate"))  # fmt: skip
    return {"before": before, "after": after, "promoted": promoted, "version": version, "path": path,
            "served_version": served_version}  # fmt: skip


def read_window(settings: Settings, bootstrap: str, last_events: int, timeout_s: float = 300.0) -> Window:
    """The newest ``last_events`` events per partition of ``events`` and the live catalogue of
    ``items``, decoded as the workers decode them (undecodable records are skipped: they are
    the dead-lettered ones)."""
    from streams.changelog import read_partitions
    from streams.client import make_reader
    from streams.codec import decode_event, decode_item
    from streams.errors import InvalidRecord

    conn = settings.connection(bootstrap)
    limits = settings.validation.limits()
    now = int(time.time() * 1000)
    reader = make_reader(conn, isolation_level="read_committed")
    try:
        items: dict[str, Any] = {}
        topic = settings.topics.name("items")
        for r in read_partitions(reader, topic, sorted(reader.partitions_for_topic(topic) or []), timeout_s=timeout_s):
            try:
                item = decode_item(r.value, key=r.key, now_ms=now, limits=limits)
            except InvalidRecord:
                continue
            items[item.item_id] = item
        events = []
        topic = settings.topics.name("events")
        for r in read_partitions(reader, topic, sorted(reader.partitions_for_topic(topic) or []),
                                 timeout_s=timeout_s, last=last_events):  # fmt: skip
            try:
                events.append(decode_event(r.value, now_ms=now, limits=limits))
            except InvalidRecord:
                continue
    finally:
        reader.close()
    events.sort(key=lambda e: e.ts)
    return Window(events, [i for i in items.values() if not i.deleted])
