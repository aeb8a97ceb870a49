"""`streamrec demo`: the main job end to end on an embedded default (local Kafka broker + local Ray).

1. start a fresh local broker (or use ``bootstrap_servers``) and create the topics;
2. produce the catalogue (MovieLens 100k, or synthetic data) to ``items``;
3. start the stack on a local Ray: encoder shards index the catalogue, topic
   clusters are fitted, profile workers start consuming ``events``;
4. replay the events into Kafka while showing events/s, lag, freshness and recs;
5. show one user's interest hierarchy and the top-K list the pipeline published
   to ``recs`` (with reasons), time one new event -> refreshed list, rank the user
   live through the HTTP API (with the curl line that does it), and time one new
   item -> searchable;
6. stop the workers, shards, Ray and the broker cleanly.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable

from cluster.settings import Settings

__all__ = ["run_demo"]


def _say(message: str) -> None:
    print(message, flush=True)


def run_demo(settings: Settings, *, dataset, synthetic: bool, limit: int | None, keep_broker: bool, ray_part: bool,
             run: Callable[[list[str], Settings], None], broker_factory, load: Callable[[], Any]) -> int:  # fmt: skip
    started_here = False
    if not settings.bootstrap_servers:
        # A broker the demo starts itself is fresh (reset); a running one is used as it is.
        state, started_here = broker_factory(settings).start(reset=True, progress=lambda m: print(m, file=sys.stderr))
        _say(f"Kafka at {state.bootstrap_servers}")
        bootstrap = state.bootstrap_servers
    else:
        bootstrap = settings.bootstrap_servers
    try:
        run(["topics", "create"], settings)
        data = load()
        events = data.events[:limit] if limit is not None else data.events
        _say(f"\n{data.name}: {len(data.items):,} items, {len(events):,} events")
        _produce(settings, bootstrap, items=data.items)
        _say(f"produced {len(data.items):,} items to {settings.topics.name('items')}")
        if not ray_part:
            _produce(settings, bootstrap, events=events)
            run(["consume", "events", "--max", "5"], settings)
            return 0
        _pipeline_part(settings, bootstrap, data, events)
    finally:
        if started_here and not keep_broker:
            broker_factory(settings).stop()
            _say("local broker stopped (use --keep-broker to leave it running)")
    return 0


def _produce(settings: Settings, bootstrap: str, *, items=(), events=()) -> None:
    from streams.client import make_producer
    from streams.replay import replay

    producer = make_producer(settings.connection(bootstrap))
    try:
        replay(producer, items=items, events=events, items_topic=settings.topics.name("items"),
               events_topic=settings.topics.name("events"))  # fmt: skip
    finally:
        producer.close()


def _pipeline_part(settings: Settings, bootstrap: str, data, events) -> None:
    from cluster.runner import Progress, start_stack

    stack = start_stack(_with_free_api_port(settings), bootstrap, progress=_say, api=True)
    try:
        _say(f"\nreplaying {len(events):,} events into {settings.topics.name('events')} "
             "(as fast as the producer goes; freshness includes the backlog)")  # fmt: skip
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                _produce(settings, bootstrap, events=events)
            except BaseException as exc:  # surfaced below, never swallowed
                errors.append(exc)

        producer = threading.Thread(target=produce, name="demo-producer", daemon=True)
        producer.start()
        progress = Progress()
        started = time.monotonic()
        while producer.is_alive() or _behind(stack):
            time.sleep(2.0)
            _say("  " + progress.line(stack.pipeline.stats()))
            if errors:
                raise errors[0]
        stats = stack.pipeline.stats()
        total = sum(s["events"] for s in stats)
        _say(f"applied {total:,} events in {time.monotonic() - started:.1f} s; "
             f"{sum(s['recs'] for s in stats):,} refreshed lists published to {settings.topics.name('recs')}")  # fmt: skip
        titles = {i.item_id: i.title or i.item_id for i in data.items}
        user = _most_active(events)
        _show_user(stack, user, titles)
        _fresh_event(stack, user, events, titles)
        _ask_api(stack, user, titles)
        _fresh_item(settings, bootstrap, stack.search, stack.shards, titles)
    finally:
        stack.stop()
        _say("pipeline, encoder shards and Ray stopped")


def _with_free_api_port(settings: Settings) -> Settings:
    """The configured API port, or a free one when something else listens there."""
    import socket

    with socket.socket() as s:
        try:
            s.bind((settings.api.host, settings.api.port))
            return settings
        except OSError:
            s.bind((settings.api.host, 0))
            port = s.getsockname()[1]
    return settings.model_copy(update={"api": settings.api.model_copy(update={"port": port})})


def _ask_api(stack, user: str, titles: dict[str, str]) -> None:
    """Rank the user live through the HTTP API and print the curl line that does the same."""
    import json
    import urllib.request

    url = f"{stack.api_url}/v1/users/{user}/recommendations?k=3"
    key = stack.settings.api.api_key
    header = " -H 'X-API-Key: $STREAMREC_API__API_KEY'" if key else ""
    request = urllib.request.Request(url, headers={"X-API-Key": key.get_secret_value()} if key else {})
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                body = json.loads(r.read())
            break
        except OSError:
            if time.monotonic() > deadline:
                _say(f"\nthe ranking API did not answer at {url}")
                return
            time.sleep(0.5)
    _say(f"\nranking API (live profile, not the last published list):\n  curl -s{header} '{url}'")
    for item in body["items"]:
        _say(f"   {titles.get(item['item_id'], item['item_id'])}  [{'; '.join(item['reasons'])}]")


def _behind(stack) -> bool:
    return any(stack.pipeline.remaining(stack.bootstrap_servers).values())


def _most_active(events) -> str:
    counts: dict[str, int] = {}
    for e in events:
        counts[e.user_id] = counts.get(e.user_id, 0) + 1
    return max(counts, key=lambda u: (counts[u], u))


def _show_user(stack, user: str, titles: dict[str, str]) -> None:
    import ray

    found = [x for x in ray.get([h.explain.remote(user) for h in stack.pipeline.handles]) if x is not None]
    if not found:
        _say(f"\nuser {user} has no profile")
        return
    profile = found[0]
    _say(f"\nuser {user}: interest hierarchy (profile version {profile['version']})")
    coarse = ", ".join(f"cluster {c['cluster']} {100 * c['share']:.0f}%" for c in profile["coarse"])
    _say(f"  L1 topic clusters: {coarse}")
    for n, interest in enumerate(profile["interests"], 1):
        like = "; ".join(titles.get(i, i) for i in interest["items"])
        _say(f"  L2 interest {n}: {100 * interest['share']:.0f}% of long-term mass, like {like}")
    session = profile["session"]
    _say(f"  L3 session {'live' if session['live'] else 'closed'} (session vs long-term "
         f"{100 * profile['session_vs_long_term']:.0f}%), negative feedback strength "
         f"{profile['negative']['strength']:.2f}")  # fmt: skip
    recs = _latest_recs(stack, user)
    if recs is None:
        _say("  no list published yet")
        return
    _say(f"  top-{len(recs.items)} published to {stack.settings.topics.name('recs')} "
         f"(profile version {recs.profile_version}, model version {recs.model_version}):")  # fmt: skip
    for n, item in enumerate(recs.items, 1):
        _say(f"   {n:2}. {titles.get(item.item_id, item.item_id)}  [{'; '.join(item.reasons)}]")


def _latest_recs(stack, user: str, after: int | None = None, timeout_s: float = 0.0):
    """The last committed Recommendations of ``user`` (read_committed), optionally newer than ``after``."""
    from kafka import TopicPartition

    from streams.client import make_consumer
    from streams.codec import decode_recommendations
    from streams.topics import partition_for_key

    topic = stack.settings.topics.name("recs")
    consumer = make_consumer(stack.settings.connection(stack.bootstrap_servers), group_id=None)
    try:
        n = len(consumer.partitions_for_topic(topic))
        tp = TopicPartition(topic, partition_for_key(user.encode(), n))
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        latest = None
        deadline = time.monotonic() + timeout_s
        while True:
            end = consumer.end_offsets([tp])[tp]
            while consumer.position(tp) < end:
                for r in consumer.poll(timeout_ms=200).get(tp, []):
                    if r.key == user.encode():
                        latest = decode_recommendations(r.value)
            if after is None or (latest is not None and latest.profile_version > after) or \
                    time.monotonic() > deadline:  # fmt: skip
                return latest
            time.sleep(0.01)
    finally:
        consumer.close()


def _fresh_event(stack, user: str, events, titles: dict[str, str]) -> None:
    """One new event for ``user`` through Kafka, timed until its refreshed list is committed."""
    from streams.client import make_producer
    from streams.codec import encode_event
    from streams.records import Event

    before = _latest_recs(stack, user)
    seen = {e.item_id for e in events if e.user_id == user}
    item = next((i for i in (before.items if before else ()) if i.item_id not in seen), None)
    if before is None or item is None:
        return
    last_ts = max(e.ts for e in events if e.user_id == user)
    event = Event(f"demo-{time.time_ns()}", user, item.item_id, "purchase", last_ts + 60_000)
    producer = make_producer(stack.settings.connection(stack.bootstrap_servers))
    try:
        sent = time.monotonic()
        producer.send(stack.settings.topics.name("events"), key=user.encode(), value=encode_event(event))
        producer.flush()
    finally:
        producer.close()
    after = _latest_recs(stack, user, after=before.profile_version, timeout_s=30)
    if after is None or after.profile_version <= before.profile_version:
        _say(f"\nno refreshed list for user {user} within 30 s")
        return
    _say(f"\nuser {user} purchased {titles.get(item.item_id, item.item_id)!r}: refreshed list committed to "
         f"{stack.settings.topics.name('recs')} and read back {1000 * (time.monotonic() - sent):.0f} ms later; "
         f"new top-3: {'; '.join(titles.get(i.item_id, i.item_id) for i in after.items[:3])}")  # fmt: skip


def _fresh_item(settings: Settings, bootstrap: str, search, shards, titles: dict[str, str]) -> None:
    """Text search over the shards, then a new item upserted through Kafka, timed until searchable."""
    import ray

    from streams.client import make_producer
    from streams.codec import encode_item
    from streams.records import ItemUpsert

    text = "a space adventure with aliens and starships"
    query = ray.get(shards[0].encode_query.remote([text]))
    hits = search.search(query, 3)[0]
    _say(f"\ntext search over the shards for {text!r}: " + "; ".join(f"{titles.get(i, i)} ({s:.2f})" for s, i in hits))
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
            _say(f"new item {item.item_id} ({item.title!r}) upserted to Kafka was searchable after "
                 f"{time.monotonic() - sent:.2f} s")  # fmt: skip
            return
        time.sleep(0.05)
    _say(f"new item {item.item_id} was not searchable within 60 s")
