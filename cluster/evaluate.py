"""`streamrec eval`: run the evaluation protocols of actors.core.evaluation on a dataset, in process.

Peers: ``pop`` (popularity), ``covisit`` (window-weighted item co-visitation,
configuration chosen on the LOO validation split of ml-100k) and ``text`` (a
recency-weighted profile over frozen MiniLM item embeddings; embeddings are
cached under the user cache directory).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from actors.core.baselines import CoVisitation, Popularity, TextProfile
from actors.encoder import DEFAULT_MODEL, item_text, load_text_encoder, text_fingerprint
from actors.core.recommender import FusedRecommender
from actors.core.evaluation import Log, encode_log, evaluate_loo, evaluate_prequential
from cluster.errors import ConfigError
from cluster.settings import user_cache_dir
from streams.datasets import load_dataset

__all__ = ["run_eval", "item_text_vectors", "cached_text_vectors", "format_table"]

PENDING_MODELS: set[str] = set()


def item_text_vectors(dataset, *, model: str = DEFAULT_MODEL, cache_dir: Path | None = None,
                      progress: Callable[[str], None] = lambda msg: None) -> np.ndarray:  # fmt: skip
    """MiniLM (or ``model``) embeddings (N, d) of the dataset's items in catalogue order, cached on disk."""
    texts = [item_text(i.title, i.text, i.categories) for i in dataset.items]
    return cached_text_vectors(texts, model=model, cache_dir=cache_dir, progress=progress)


def cached_text_vectors(texts: list[str], *, model: str = DEFAULT_MODEL, cache_dir: Path | None = None,
                        progress: Callable[[str], None] = lambda msg: None) -> np.ndarray:  # fmt: skip
    """The pooled text vectors (N, d) of ``texts`` under ``model`` (no learned head), cached on disk."""
    cache = (cache_dir or user_cache_dir() / "embeddings") / f"{text_fingerprint(model, texts)}.npy"
    if cache.exists():
        return np.load(cache)
    import torch
    from rich.progress import Progress

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    encoder = load_text_encoder(model)
    with Progress(console=stderr_console(), transient=True) as bar:
        task = bar.add_task(f"encoding {len(texts):,} item texts", total=len(texts))
        vectors = encoder.encode_text(texts, progress=lambda n: bar.advance(task, n))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(cache)
    return vectors


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _models(dataset) -> dict[str, Callable[[], Any]]:
    return {
        "pop": Popularity,
        "covisit": CoVisitation,
        "text": lambda: TextProfile(item_text_vectors(dataset)),
        "streamrec": lambda: FusedRecommender(item_text_vectors(dataset)),
    }


_NEGATIVE_KINDS = frozenset({"dislike", "skip"})


def _log_of(dataset) -> Log:
    # Negative feedback is neither a training positive nor a target to predict.
    events = [e for e in dataset.events if e.kind not in _NEGATIVE_KINDS]
    log, _, _ = encode_log(
        (e.user_id for e in events),
        (e.item_id for e in events),
        (e.ts for e in events),
        (1.0 for _ in events),
        [item.item_id for item in dataset.items],
    )
    return log


def run_eval(
    dataset_path: Path, *, protocol: str, k: int, models: list[str], phase: str = "test",
    progress: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:  # fmt: skip
    available = {"pop", "covisit", "text", "streamrec"}
    unknown = [m for m in models if m not in available]
    if unknown:
        pending = [m for m in unknown if m in PENDING_MODELS]
        if pending:
            raise ConfigError(f"model(s) {pending} are not available yet: they arrive with the core model; "
                              f"available: {sorted(available)}")  # fmt: skip
        raise ConfigError(f"unknown model(s) {unknown}; available: {sorted(available)}")
    try:
        dataset = load_dataset(dataset_path)
    except ValueError as exc:
        raise ConfigError(f"cannot read dataset {dataset_path}: {exc}") from None
    factories = _models(dataset)
    log = _log_of(dataset)
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name in models:
        progress(f"{protocol}: {name} on {dataset.name} ({len(log.users):,} events, {log.n_items:,} items)")
        start = time.perf_counter()
        model = factories[name]()
        if protocol == "loo":
            results[name] = evaluate_loo(model, log, k=k, phase=phase)
        elif protocol == "prequential":
            results[name] = evaluate_prequential(model, log, k=k)
        else:
            raise ConfigError(f"protocol must be 'loo' or 'prequential', got {protocol!r}")
        timings[name] = round(time.perf_counter() - start, 2)
    return {
        "dataset": dataset.name,
        "protocol": protocol,
        "phase": phase if protocol == "loo" else None,
        "k": k,
        "events": int(len(log.users)),
        "users": int(log.n_users),
        "items": int(log.n_items),
        "results": results,
        "seconds": timings,
    }


def format_table(report: dict[str, Any]) -> str:
    k = report["k"]
    cols = [f"HR@{k}", f"NDCG@{k}"] + ([f"MRR@{k}", "coverage"] if report["protocol"] == "loo" else [])
    lines = [f"{report['dataset']} — {report['protocol']} (k={k}, {report['users']} users, {report['items']} items)",
             f"{'model':<12}" + "".join(f"{c:>12}" for c in cols)]  # fmt: skip
    for name, metrics in report["results"].items():
        lines.append(f"{name:<12}" + "".join(f"{float(np.asarray(metrics[c])):>12.4f}" for c in cols))
    return "\n".join(lines)


def plot_prequential(reports: list[dict[str, Any]], path: Path) -> Path:
    """A PNG of prequential HR@k over the stream, one panel per dataset, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(6 * len(reports), 4), squeeze=False)
    for ax, report in zip(axes[0], reports):
        k = report["k"]
        for name, metrics in report["results"].items():
            series = metrics[f"HR@{k}_over_stream"]
            x = [(i + 0.5) / len(series) * 100 for i in range(len(series))]
            ax.plot(x, series, marker="o", label=f"{name} ({metrics[f'HR@{k}']:.3f})")
        ax.set_title(f"{report['dataset']}: prequential HR@{k}")
        ax.set_xlabel("position in the event stream (%)")
        ax.set_ylabel(f"HR@{k} in each tenth of the stream")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
