"""`streamrec bench encode|search|freshness-items`: side-by-side measurements in one run.

Each benchmark prints a ratio of two things measured in the same process on
the same machine, so the ratio is meaningful even on a busy or small machine;
absolute numbers are for this machine only.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from actors.core.ann import IndexConfig
from cluster.settings import Settings

__all__ = ["bench_encode", "bench_search", "bench_freshness_items", "search_vectors"]


def _titles(n: int, seed: int = 0) -> list[str]:
    from streams.datasets import synthetic

    items = synthetic(users=2, items=max(n, 8), events=1, seed=seed).items
    return [i.title for i in items][:n]


def _ray_init() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)


def bench_encode(items: int = 2048, batch_size: int = 64, threads: int = 1, rounds: int = 3) -> dict[str, Any]:
    """An encoder actor vs the bare model: same texts, batch size, device and thread count."""
    import ray
    import torch

    from actors.encoder import load_text_encoder
    from actors.encoder_shard import EncoderShard, ShardConfig

    texts = _titles(items)
    torch.set_num_threads(threads)
    bare = load_text_encoder()
    _ray_init()
    cfg = ShardConfig(shard=0, shards=1, items_topic="-", dead_letters_topic="-", batch_size=batch_size,
                      torch_threads=threads, autostart=False)  # fmt: skip
    actor = ray.remote(num_cpus=threads)(EncoderShard).remote(cfg, None)
    bare.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    ray.get(actor.encode_query.remote(texts[:batch_size]))  # warm-up (model loaded)
    bare_times, actor_times = [], []
    for _ in range(rounds):  # interleaved, so load changes hit both sides alike
        t0 = time.perf_counter()
        bare.encode(texts, batch_size=batch_size)
        bare_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ray.get(actor.encode_query.remote(texts))
        actor_times.append(time.perf_counter() - t0)
    ray.kill(actor)
    bare_s, actor_s = float(np.median(bare_times)), float(np.median(actor_times))
    return {
        "actor_items_per_s": items / actor_s,
        "bare_items_per_s": items / bare_s,
        "ratio": bare_s / actor_s,
        "items": items,
        "batch_size": batch_size,
        "threads": threads,
        "rounds": rounds,
    }


def search_vectors(items: int, queries: int, dim: int = 384, seed: int = 0,
                   data: str = "clustered") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Unit item vectors (items, dim) and query vectors (queries, dim) for the search benchmark.

    ``uniform``: independent random directions. They have no neighbourhood structure (every
    item is about equally far from a query), the worst case for approximate indexes.
    ``clustered``: low intrinsic dimension, as text embeddings have: a 64-d latent Gaussian
    mixture (sqrt(items) components) mapped linearly to ``dim``, plus an offset shared by all
    vectors and isotropic noise (mean cosine of two random vectors ~0.15, of a query and its
    10th neighbour ~0.6 at 100k items); queries are drawn the same way.
    """
    rng = np.random.default_rng(seed)
    if data == "uniform":
        x = rng.standard_normal((items + queries, dim))
    elif data == "clustered":
        latent = 64
        centres = rng.standard_normal((max(8, int(np.sqrt(items))), latent))
        lift = rng.standard_normal((dim, latent)) / np.sqrt(dim)
        offset = 5.0 * _unit(rng.standard_normal((1, dim)))
        z = centres[rng.integers(0, len(centres), items + queries)] + rng.standard_normal((items + queries, latent))
        x = z @ lift.T + offset + 0.2 * rng.standard_normal((items + queries, dim))
    else:
        raise ValueError(f"data must be clustered or uniform, not {data!r}")
    x = _unit(x)
    return x[:items], x[items:]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def bench_search(items: int = 100_000, shards: int = 2, queries: int = 512, batch: int = 64, k: int = 10,
                 dim: int = 384, seed: int = 0, rounds: int = 3, index: IndexConfig | None = None,
                 data: str = "clustered") -> dict[str, Any]:  # fmt: skip
    """Batched scatter-gather over S shard actors (``index``: flat, hnsw or ivf) vs one exact Flat index
    in this process, same items and queries; ``recall_at_10`` of the shards' answers against it."""
    import faiss
    import ray

    from actors.core.retrieval import ShardIndex
    from actors.encoder_shard import EncoderShard, ShardConfig
    from cluster.encoders import ShardedSearch

    index = index or IndexConfig()
    vectors, q = search_vectors(items, queries, dim, seed, data)
    ids = [f"i{i}" for i in range(items)]

    faiss.omp_set_num_threads(1)
    single = ShardIndex(dim)
    single.upsert(ids, vectors)

    _ray_init()
    remote = ray.remote(num_cpus=min(1.0, 2.0 / shards))(EncoderShard)
    handles = [remote.remote(ShardConfig(shard=s, shards=shards, items_topic="-", dead_letters_topic="-",
                                         autostart=False, index=index), None) for s in range(shards)]  # fmt: skip
    ray.get([h.stats.remote() for h in handles])  # constructed
    t0 = time.perf_counter()
    ray.get([h.upsert_vectors.remote(ids, vectors) for h in handles])  # each shard keeps, and indexes, its own
    build_s = time.perf_counter() - t0
    approximate = all(s["approximate"] for s in ray.get([h.stats.remote() for h in handles]))
    search = ShardedSearch(handles)
    search.search(q[:batch], k)  # warm-up
    single_times, sharded_times = [], []
    for _ in range(rounds):  # interleaved, so load changes hit both sides alike
        t0 = time.perf_counter()
        want = [hit for b in range(0, queries, batch) for hit in single.search(q[b : b + batch], k)]
        single_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = [hit for b in range(0, queries, batch) for hit in search.search(q[b : b + batch], k)]
        sharded_times.append(time.perf_counter() - t0)
    single_s, sharded_s = float(np.median(single_times)), float(np.median(sharded_times))
    for h in handles:
        ray.kill(h)
    recall = np.mean([len({i for _, i in g} & {i for _, i in w}) / k for g, w in zip(got, want)])
    params = {"hnsw": {"hnsw_m": index.hnsw_m, "hnsw_ef_search": index.hnsw_ef_search},
              "ivf": {"ivf_nlist": index.ivf_nlist, "ivf_nprobe": index.ivf_nprobe}}.get(index.kind, {})  # fmt: skip
    return {
        "sharded_qps": queries / sharded_s,
        "single_qps": queries / single_s,
        "ratio": single_s / sharded_s,
        "recall_at_10": float(recall),
        "items": items,
        "shards": shards,
        "batch": batch,
        "index": index.kind,
        "approximate": approximate,  # false: the shards were below min_items and searched exactly
        **params,
        "data": data,
        "index_build_s": build_s,
    }


def bench_freshness_items(settings: Settings, bootstrap: str, upserts: int = 50, catalogue: int = 300,
                          shards: int = 2, progress: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Time from an item upsert produced to Kafka until the sharded search returns it (steady state)."""
    import ray

    from actors.encoder import item_text, load_text_encoder
    from cluster.bench_pipeline import _fresh_namespace
    from cluster.encoders import EncoderOptions, ShardedSearch, start_encoder_shards
    from streams.client import make_admin, make_producer
    from streams.codec import encode_item
    from streams.datasets import synthetic
    from streams.records import ItemUpsert

    settings = _fresh_namespace(settings, bootstrap)
    producer = make_producer(settings.connection(bootstrap), linger_ms=0)
    topic = settings.topics.name("items")
    for item in synthetic(users=2, items=catalogue, events=1, seed=3).items:
        producer.send(topic, key=item.item_id.encode(), value=encode_item(item))
    producer.flush()

    handles: list = []
    try:
        _ray_init()
        handles = start_encoder_shards(settings, bootstrap, EncoderOptions(shards=shards, num_cpus=0.5),
                                       namespace_prefix=settings.topics.prefix)  # fmt: skip
        search = ShardedSearch(handles)
        search.wait_for_items(catalogue, timeout_s=600)
        progress(f"catalogue of {catalogue} items indexed by {shards} shards; timing {upserts} upserts")
        encoder = load_text_encoder()
        latencies = []
        for n in range(upserts):
            item = ItemUpsert(item_id=f"fresh-{n}", title=f"Fresh arrival number {n}: {_titles(1, seed=n)[0]}")
            query = encoder.encode([item_text(item.title)])
            sent = time.perf_counter()
            producer.send(topic, key=item.item_id.encode(), value=encode_item(item))
            producer.flush()
            while True:
                hits = search.search(query, 1)[0]
                if hits and hits[0][1] == item.item_id:
                    break
                if time.perf_counter() - sent > 60:
                    raise TimeoutError(f"upsert {item.item_id} not searchable after 60 s")
                time.sleep(0.005)
            latencies.append((time.perf_counter() - sent) * 1000)
    finally:
        producer.close()
        for h in handles:
            ray.kill(h)
        admin = make_admin(settings.connection(bootstrap))
        try:
            admin.delete_topics([spec.name for spec in settings.topics.specs()])
        finally:
            admin.close()
    lat = np.array(latencies)
    return {
        "upsert_to_searchable_ms_p50": float(np.percentile(lat, 50)),
        "upsert_to_searchable_ms_p99": float(np.percentile(lat, 99)),
        "upsert_to_searchable_ms_max": float(lat.max()),
        "upserts": upserts,
        "shards": shards,
    }
