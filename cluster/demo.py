"""`streamrec demo`: the main job on an embedded default (local Kafka broker + local Ray).

Today: start a fresh local broker, create the topics, replay a dataset, show the
events topic, then start the encoder shards on a local Ray, let them index the
items topic, and show text and item-to-item search over the shards.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np

from cluster.settings import Settings

__all__ = ["run_demo"]


def run_demo(settings: Settings, *, dataset, synthetic: bool, limit: int | None, keep_broker: bool, ray_part: bool,
             shards: int, run: Callable[[list[str], Settings], None], broker_factory) -> int:  # fmt: skip
    started_here = False
    if not settings.bootstrap_servers:
        # A broker the demo starts itself is fresh (reset); a running one is used as it is.
        state, started_here = broker_factory(settings).start(reset=True, progress=lambda m: print(m, file=sys.stderr))
        print(f"Kafka at {state.bootstrap_servers}")
        bootstrap = state.bootstrap_servers
    else:
        bootstrap = settings.bootstrap_servers
    try:
        run(["topics", "create"], settings)
        if synthetic or not dataset.exists():
            if not synthetic:
                print(f"{dataset} not found: replaying synthetic data instead (see README for MovieLens)")
            source = ["--synthetic"]
        else:
            source = ["--dataset", str(dataset)]
        run(["produce", *source, *(["--limit", str(limit)] if limit is not None else [])], settings)
        run(["consume", "events", "--max", "5"], settings)
        if ray_part:
            _search_on_ray(settings, bootstrap, shards)
    finally:
        if started_here and not keep_broker:
            broker_factory(settings).stop()
            print("local broker stopped (use --keep-broker to leave it running)")
    return 0


def _search_on_ray(settings: Settings, bootstrap: str, shards: int) -> None:
    import ray

    from cluster.encoders import EncoderOptions, ShardedSearch, start_encoder_shards

    topic = settings.topics.name("items")
    print(f"\nstarting local Ray and {shards} encoder shards (MiniLM + FAISS) on the {topic} topic...")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        start = time.monotonic()
        handles = start_encoder_shards(settings, bootstrap, EncoderOptions(shards=shards, num_cpus=0.5))
        search = ShardedSearch(handles)
        total = _catalogue_size(settings, bootstrap, topic)
        stats = search.wait_for_items(total, timeout_s=900)
        print(f"indexed {sum(s['items'] for s in stats):,} items across {shards} shards "
              f"({', '.join(str(s['items']) for s in stats)}) in {time.monotonic() - start:.1f} s")  # fmt: skip
        query_text = "a space adventure with aliens and starships"
        query = ray.get(handles[0].encode_query.remote([query_text]))
        print(f"\ntext search: {query_text!r}")
        for score, item_id in search.search(query, 5)[0]:
            print(f"  {score:.3f}  {item_id}  {_title(handles, item_id)}")
        _fresh_item(settings, bootstrap, search, query)
    finally:
        ray.shutdown()


def _catalogue_size(settings: Settings, bootstrap: str, topic: str) -> int:
    """Distinct live item ids in the compacted items topic (read once, for the progress target)."""
    from streams.client import assign_from_beginning, make_consumer
    from streams.codec import decode_item

    consumer = make_consumer(settings.connection(bootstrap), group_id=None)
    live: dict[str, bool] = {}
    try:
        tps = assign_from_beginning(consumer, topic)
        end = consumer.end_offsets(tps)
        now_ms = int(time.time() * 1000)
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    try:  # count what the shards will hold: valid records, by normalised id
                        item = decode_item(r.value, key=r.key, now_ms=now_ms, limits=settings.validation.limits())
                    except Exception:
                        continue
                    live[item.item_id] = not item.deleted
    finally:
        consumer.close()
    return sum(live.values())


def _title(handles, item_id: str) -> str:
    import ray

    from actors.core.retrieval import shard_of

    meta = ray.get(handles[shard_of(item_id, len(handles))].item.remote(item_id))
    return meta.title if meta is not None else ""


def _fresh_item(settings: Settings, bootstrap: str, search, query: np.ndarray) -> None:
    """Upsert a new item through Kafka and time how long until search returns it."""
    from streams.client import make_producer
    from streams.codec import encode_item
    from streams.records import ItemUpsert

    item = ItemUpsert(item_id=f"demo-{int(time.time())}", title="Starfleet: a space adventure with aliens and starships",
                      categories=("Sci-Fi",))  # fmt: skip
    producer = make_producer(settings.connection(bootstrap))
    try:
        sent = time.monotonic()
        producer.send(settings.topics.name("items"), key=item.item_id.encode(), value=encode_item(item))
        producer.flush()
    finally:
        producer.close()
    while time.monotonic() - sent < 60:
        if any(i == item.item_id for _, i in search.search(query, 5)[0]):
            print(f"\nnew item {item.item_id} ({item.title!r}) upserted to Kafka was searchable after "
                  f"{time.monotonic() - sent:.2f} s")  # fmt: skip
            return
        time.sleep(0.05)
    print(f"\nnew item {item.item_id} was not searchable within 60 s")
