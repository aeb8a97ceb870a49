"""`python -m cluster.gpu_check`: one prepared check of the encoder on the accelerator this machine has.

Prints one JSON object: the device (and the card's name on CUDA), items/s of the
text encoder at each precision the device offers (fp32, and fp16/bf16 on a GPU,
bf16 on a CPU), each precision's parity with fp32 (the smallest cosine between an
item's fp32 and reduced-precision vectors), and the same through an encoder-shard
actor's code path (``EncoderShard.encode_query``) on a local Ray with the GPU
given to the actor (``num_gpus=1``) when there is one. It runs on a CPU-only
machine too, so it is tested here; run it on a GPU machine to record real numbers.
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
              actor: bool = True) -> dict[str, Any]:  # fmt: skip
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
    return report


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
    args = parser.parse_args()
    print(json.dumps(gpu_check(args.items, args.batch_size, args.rounds, args.device, not args.no_actor)))


if __name__ == "__main__":
    main()
