"""Leave-one-out evaluation of the streaming pipeline's model: in one process, or through Kafka and Ray.

``engine="pipeline"`` folds the training events into the same user-side state the
profile workers hold (``actors.user_state.UserState``, one per worker, users split
by their events partition exactly as the workers split them; every worker also
learns co-visitation and popularity from the others' events) with the same text
encoder, and asks each for its users' top-k. ``engine="cluster"`` produces the
catalogue and the training events to Kafka, runs encoder shards and profile workers
on Ray, waits until every offset is committed and asks the live workers for the
same lists. Both score the held-out last event of every user with at least three
events (HR@k, NDCG@k, MRR@k over the published list: seen items are never listed).

The in-process ``streamrec`` model of ``streamrec eval`` is richer (collaborative
item factors, co-visitation over all users); these two engines evaluate what the
pipeline actually serves, and must agree with each other.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from cluster.settings import Settings

__all__ = ["split_last", "list_metrics", "evaluate_pipeline"]


def split_last(events, min_events: int = 3):
    """(training events in time order, {user: held-out item}) for users with >= ``min_events``."""
    ordered = sorted(enumerate(events), key=lambda t: (t[1].ts, t[0]))
    last: dict[str, int] = {}
    counts: dict[str, int] = {}
    for pos, (_, e) in enumerate(ordered):
        last[e.user_id] = pos
        counts[e.user_id] = counts.get(e.user_id, 0) + 1
    held = {pos for u, pos in last.items() if counts[u] >= min_events}
    targets = {ordered[pos][1].user_id: ordered[pos][1].item_id for pos in held}
    train = [e for pos, (_, e) in enumerate(ordered) if pos not in held]
    return train, targets


def list_metrics(lists: dict[str, list[str]], targets: dict[str, str], k: int) -> dict[str, float]:
    hr, ndcg, mrr = [], [], []
    for user, target in targets.items():
        ranked = lists.get(user, [])[:k]
        pos = ranked.index(target) if target in ranked else None
        hr.append(0.0 if pos is None else 1.0)
        ndcg.append(0.0 if pos is None else 1.0 / np.log2(pos + 2.0))
        mrr.append(0.0 if pos is None else 1.0 / (pos + 1.0))
    n = max(len(targets), 1)
    return {f"HR@{k}": sum(hr) / n, f"NDCG@{k}": sum(ndcg) / n, f"MRR@{k}": sum(mrr) / n, "users": len(targets)}


def _worker_of(settings: Settings, user: str) -> int:
    from streams.topics import partition_for_key

    return partition_for_key(user.encode("utf-8"), settings.topics.events_partitions) % settings.pipeline.workers


def evaluate_pipeline(settings: Settings, data, *, engine: str, k: int = 10, bootstrap: str | None = None,
                      progress: Callable[[str], None] = print, model: str | None = None) -> dict[str, Any]:  # fmt: skip
    """``model``: the encoder (a path or name) whose item vectors are served; default: the settings'."""
    if model is not None:
        settings = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update={"encoder_model": model})})
    train, targets = split_last(data.events)
    progress(f"{engine}: {len(train):,} training events, {len(targets):,} held-out users, "
             f"{settings.pipeline.workers} workers")  # fmt: skip
    started = time.monotonic()
    if engine == "pipeline":
        lists = _local_lists(settings, data, train, list(targets), k)
    elif engine == "cluster":
        if bootstrap is None:
            raise ValueError("the cluster engine needs a Kafka bootstrap address")
        lists = _cluster_lists(settings, bootstrap, data, train, list(targets), k, progress)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    return {"engine": engine, "k": k, "events": len(data.events), "seconds": time.monotonic() - started,
            "results": {"pipeline": list_metrics(lists, targets, k)}, "lists": lists}  # fmt: skip


def _local_lists(settings: Settings, data, train, users: list[str], k: int) -> dict[str, list[str]]:
    from actors.core.clusters import fit_topic_clusters
    from actors.core.retrieval import ShardIndex
    from actors.encoder import item_text, load_text_encoder
    from actors.user_state import UserState
    from cluster.pipeline import worker_configs
    from streams.records import Consumed

    p = settings.pipeline
    encoder = load_text_encoder(p.encoder_model, dtype=p.encoder_dtype)
    live = [i for i in data.items if not i.deleted]
    index = ShardIndex(encoder.dim)
    ids = [i.item_id for i in live]
    index.upsert(ids, encoder.encode([item_text(i.title, i.text, i.categories) for i in live], item_ids=ids))
    clusters = fit_topic_clusters(index.vectors(), p.n_clusters)
    cfg = worker_configs(settings, encoder.dim)[0].user
    states = [UserState(cfg, index, clusters) for _ in range(p.workers)]
    offsets: dict[int, int] = {}
    per_worker: list[list] = [[] for _ in states]
    for e in train:
        w = _worker_of(settings, e.user_id)
        offsets[w] = offsets.get(w, -1) + 1
        per_worker[w].append(Consumed(e, "events", w, offsets[w], e.ts))
    for w, (state, records) in enumerate(zip(states, per_worker)):
        # a worker follows the other workers' partitions for its collaborative signals
        state.fold_collaborative([e for e in train if _worker_of(settings, e.user_id) != w], own=False)
        for lo in range(0, len(records), p.max_batch):
            state.apply(records[lo:lo + p.max_batch])
    lists = {}
    for w, state in enumerate(states):
        mine = [u for u in users if _worker_of(settings, u) == w]
        for r in state.refresh(mine, k):
            lists[r.user_id] = [i.item_id for i in r.items]
    return lists


def _cluster_lists(settings: Settings, bootstrap: str, data, train, users: list[str], k: int,
                   progress: Callable[[str], None]) -> dict[str, list[str]]:  # fmt: skip
    import ray

    from cluster.bench_pipeline import _fresh_namespace, _send_events, produce_catalogue
    from cluster.runner import start_stack

    settings = _fresh_namespace(settings, bootstrap)
    produce_catalogue(settings, bootstrap, data.items)
    _send_events(settings, bootstrap, train)
    stack = start_stack(settings, bootstrap, progress=progress)
    try:
        stack.pipeline.wait_caught_up(bootstrap, timeout_s=3600)
        lists = {}
        for w, handle in enumerate(stack.pipeline.handles):
            mine = [u for u in users if _worker_of(settings, u) == w]
            for user, items in ray.get(handle.recommend_many.remote(mine, k)).items():
                lists[user] = items
        return lists
    finally:
        stack.stop()
