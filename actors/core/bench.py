"""Micro-benchmark of profile updates on seeded synthetic data (``streamrec bench core``).

Users draw items mostly from a few favourite topic clusters; kinds follow a skewed mix
(views dominate; ratings, dislikes and skips appear). Timing covers ``apply_batch`` in
micro-batches only; generating the data is not timed.
"""

from __future__ import annotations

import time

import numpy as np

from actors.core._half import to_f32
from actors.core.config import KINDS, ProfileConfig
from actors.core.profile import ProfileBank, apply, apply_batch, new_profile
from actors.core.snapshot import snapshot_size_bound, to_bytes

__all__ = ["bench_profile_updates", "synthetic_events"]

_KIND_P = np.array([0.55, 0.22, 0.06, 0.03, 0.06, 0.04, 0.04])  # view click cart purchase rate dislike skip


def synthetic_events(n_events: int, n_users: int, cfg: ProfileConfig, seed: int, *, n_items: int = 20_000,
                     start_ms: int = 1_700_000_000_000, span_ms: int = 3 * 24 * 3600 * 1000) -> dict:
    """Seeded synthetic events: a dict of per-event arrays plus the item catalogue."""
    rng = np.random.default_rng(seed)
    d, C = cfg.dim, cfg.n_clusters
    centres = rng.standard_normal((C, d)).astype(np.float32)                 # (C, d)
    item_cluster = rng.integers(0, C, n_items)
    item_vecs = centres[item_cluster] + 0.6 * rng.standard_normal((n_items, d)).astype(np.float32)
    item_vecs /= np.linalg.norm(item_vecs, axis=1, keepdims=True)            # (I, d)
    by_cluster = [np.nonzero(item_cluster == c)[0] for c in range(C)]
    favourites = rng.integers(0, C, (n_users, 4))                            # (U, 4)
    users = rng.integers(0, n_users, n_events)
    own = rng.random(n_events) < 0.85
    clusters = np.where(own, favourites[users, rng.integers(0, 4, n_events)], rng.integers(0, C, n_events))
    items = np.array([by_cluster[c][rng.integers(len(by_cluster[c]))] if len(by_cluster[c]) else 0
                      for c in clusters.tolist()])
    kinds = rng.choice(len(KINDS), n_events, p=_KIND_P).astype(np.uint8)
    values = np.where(kinds == KINDS.index("rate"), rng.integers(1, 6, n_events), np.nan)
    ts = start_ms + np.sort(rng.integers(0, span_ms, n_events))
    scenes = np.array(["home", "search", "detail"], dtype=object)[rng.choice(3, n_events, p=[0.6, 0.3, 0.1])]
    return {"users": users, "item_index": items, "item_vecs": item_vecs, "item_cluster": item_cluster,
            "item_ids": np.array([f"item-{i}" for i in items], dtype=object), "kinds": kinds,
            "values": values, "ts": ts, "scenes": scenes}


def bench_profile_updates(n_events: int = 200_000, n_users: int = 10_000, dim: int = 384, seed: int = 0, *,
                          micro_batch: int = 4096, single_events: int = 2_000, sample_profiles: int = 1_000) -> dict:
    """Events/s of the micro-batched update path, and snapshot bytes per profile.

    ``events_per_s`` is wall-clock; ``events_per_cpu_s`` divides by this process's CPU
    time (the two differ when the machine is shared). Also reports the one-event-at-a-time
    rate (``single_events_per_s``), the mean number of interests, the largest snapshot
    seen and the format's worst-case bound for this config (ids <= 64 bytes).
    """
    cfg = ProfileConfig(dim=dim)
    ev = synthetic_events(n_events, n_users, cfg, seed)
    vecs, clusters = ev["item_vecs"][ev["item_index"]], ev["item_cluster"][ev["item_index"]]
    bank = ProfileBank(cfg, capacity=n_users)
    rows = bank.rows([f"user-{u}" for u in range(n_users)])[ev["users"]]
    apply_batch(bank, rows[:0], vecs[:0], clusters[:0], [], ev["kinds"][:0], [], ev["ts"][:0], [], cfg)
    _warm(cfg)

    t0, c0 = time.perf_counter(), time.process_time()
    for lo in range(0, n_events, micro_batch):
        s = slice(lo, lo + micro_batch)
        apply_batch(bank, rows[s], vecs[s], clusters[s], ev["item_ids"][s], ev["kinds"][s], ev["values"][s],
                    ev["ts"][s], ev["scenes"][s], cfg)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0

    n_single = min(single_events, n_events)
    profiles = [new_profile(cfg) for _ in range(min(n_users, 64))]
    t1 = time.perf_counter()
    for i in range(n_single):
        v = ev["values"][i]
        apply(profiles[ev["users"][i] % len(profiles)], vecs[i], int(clusters[i]), ev["item_ids"][i],
              KINDS[ev["kinds"][i]], None if np.isnan(v) else float(v), int(ev["ts"][i]), ev["scenes"][i], cfg)
    single = time.perf_counter() - t1

    sample = np.random.default_rng(seed).choice(n_users, min(sample_profiles, n_users), replace=False)
    profiles_sampled = [bank.get(int(r)) for r in sample]
    sizes = np.array([len(to_bytes(p)) for p in profiles_sampled])
    interests = np.array([p.n_interests for p in profiles_sampled])
    return {
        "events_per_s": n_events / elapsed,
        "events_per_cpu_s": n_events / cpu,
        "bytes_per_profile": float(sizes.mean()),
        "bytes_per_profile_max": int(sizes.max()),
        "bytes_bound": snapshot_size_bound(cfg),
        "interests_per_profile": float(interests.mean()),
        "single_events_per_s": n_single / single,
        "n_events": n_events,
        "n_users": n_users,
        "dim": dim,
        "micro_batch": micro_batch,
    }


def _warm(cfg: ProfileConfig) -> None:
    """Import the lazily loaded float16 backend (torch, seconds) outside the timed region."""
    to_f32(np.zeros(1 << 16, np.float16))
    apply(new_profile(cfg), np.ones(cfg.dim, np.float32), 0, "warm", "view", None, 0, "warm", cfg)
