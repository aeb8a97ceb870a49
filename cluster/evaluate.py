"""`streamrec eval`: run the evaluation protocols of actors.core.evaluation on a dataset, in process.

Peers available today: ``pop`` (popularity) and ``covisit`` (window-weighted
item co-visitation, configuration chosen on the LOO validation split of
ml-100k). The fused ``streamrec`` model and the frozen-encoder ``text`` peer
join this harness with the core model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from actors.core.baselines import CoVisitation, Popularity
from actors.core.evaluation import Log, encode_log, evaluate_loo, evaluate_prequential
from cluster.errors import ConfigError
from streams.datasets import load_dataset

__all__ = ["MODELS", "PENDING_MODELS", "run_eval"]

MODELS: dict[str, Callable[[], Any]] = {"pop": Popularity, "covisit": CoVisitation}
PENDING_MODELS = {"streamrec", "text"}


def _log_of(dataset) -> Log:
    events = dataset.events
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
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        pending = [m for m in unknown if m in PENDING_MODELS]
        if pending:
            raise ConfigError(f"model(s) {pending} are not available yet: they arrive with the core model; "
                              f"available: {sorted(MODELS)}")  # fmt: skip
        raise ConfigError(f"unknown model(s) {unknown}; available: {sorted(MODELS)}")
    dataset = load_dataset(dataset_path)
    log = _log_of(dataset)
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name in models:
        progress(f"{protocol}: {name} on {dataset.name} ({len(log.users):,} events, {log.n_items:,} items)")
        start = time.perf_counter()
        model = MODELS[name]()
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
