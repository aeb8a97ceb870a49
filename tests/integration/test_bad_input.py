"""Generated valid and invalid events through the real broker into the running pipeline.

A seeded generator draws one long stream mixing valid events with broken ones (fields
removed, wrong types, unknown kinds, extra fields, a rating without a value,
non-JSON bytes, invalid UTF-8, oversized records). The JSON Schema of events
decides which records are valid, independently of the codec (oversized and
non-UTF-8 records are invalid by the schema's size and encoding rules). Every
invalid record must be dead-lettered exactly once with its origin, every valid
one applied, and the consumer must keep going (it catches up to the end).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "streams" / "schemas" / "event.v1.schema.json").read_text())
TS = 1_700_000_000_000

def _valid_event(rng: random.Random) -> dict:
    e = {"event_id": "".join(rng.choices("abcdefghij0123456789-_", k=rng.randint(1, 12))),
         "user_id": f"u{rng.randrange(12)}", "item_id": f"i{rng.randrange(40)}",
         "kind": rng.choice(["view", "click", "cart", "purchase", "dislike", "skip", "rate"]),
         "ts": rng.randint(TS, TS + 10**9)}  # fmt: skip
    if e["kind"] == "rate" or rng.random() < 0.3:
        e["value"] = rng.choice([rng.randint(1, 5), round(rng.uniform(-5, 5), 3)])
    if rng.random() < 0.3:
        e["scene"] = rng.choice(["home", "search"])
    return e


def _broken(rng: random.Random) -> bytes:
    """A valid event damaged in one way, as raw bytes."""
    e = _valid_event(rng)
    how = rng.choice(["drop", "type", "kind", "extra", "rate", "garbage", "utf8", "huge"])
    if how == "drop":
        e.pop(rng.choice(["event_id", "user_id", "item_id", "kind", "ts"]))
    elif how == "type":
        e[rng.choice(["user_id", "ts", "kind"])] = rng.choice([None, [], {}, True])
    elif how == "kind":
        e["kind"] = rng.choice(["teleport", "CLICK", ""])
    elif how == "extra":
        e["unexpected"] = 1
    elif how == "rate":
        e["kind"] = "rate"
        e.pop("value", None)
    elif how == "garbage":
        return rng.choice([b"{not json", b"", b"[]", b"null", b'"text"'])
    elif how == "utf8":
        return json.dumps(e).encode()[:-1] + b"\xff}"
    elif how == "huge":
        e["context"] = {"blob": "x" * 20_000}
    return json.dumps(e).encode()


def _stream(seed: int, n: int = 250) -> list[bytes]:
    rng = random.Random(seed)
    return [json.dumps(_valid_event(rng)).encode() if rng.random() < 0.6 else _broken(rng) for _ in range(n)]


def _valid_by_schema(raw: bytes) -> bool:
    import jsonschema

    if len(raw) > 16 * 1024:
        return False
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    if isinstance(obj, dict) and obj.get("kind") == "rate" and obj.get("value") is None:
        return False  # "value is required for kind rate" (stated in the schema's description)
    return jsonschema.Draft202012Validator(SCHEMA).is_valid(obj)


@pytest.mark.parametrize("seed", [7])
def test_every_invalid_event_is_dead_lettered_and_every_valid_one_applied(topics, ray_local, seed):
    import ray

    from cluster.encoders import EncoderOptions, ShardedSearch, shard_name, start_encoder_shards
    from cluster.pipeline import fit_clusters, start_pipeline
    from cluster.settings import Settings
    from streams.client import make_producer
    from streams.codec import encode_item
    from streams.consumer import DLQ_HEADER_PREFIX
    from streams.records import ItemUpsert
    from tests.integration.test_pipeline import _read

    settings = Settings(bootstrap_servers=topics.bootstrap_servers, topics=topics.topics,
                        pipeline={"workers": 2, "worker_cpus": 0.25, "n_clusters": 4, "max_batch": 64})  # fmt: skip
    records = _stream(seed)
    valid = [r for r in records if _valid_by_schema(r)]
    assert 0 < len(valid) < len(records)  # the stream mixes both
    producer = make_producer(settings.connection(settings.bootstrap_servers))
    for i in range(40):
        item = ItemUpsert(f"i{i}", title=f"Item {i} about topic {i % 5}")
        producer.send(settings.topics.name("items"), key=item.item_id.encode(), value=encode_item(item))
    for n, raw in enumerate(records):
        producer.send(settings.topics.name("events"), key=f"k{n % 7}".encode(), value=raw)
    producer.flush()
    producer.close()

    prefix = topics.topics.prefix
    shards = start_encoder_shards(settings, settings.bootstrap_servers, EncoderOptions(shards=1, num_cpus=0.25),
                                  namespace_prefix=prefix)  # fmt: skip
    search = ShardedSearch(shards, [shard_name(prefix, 0)])
    search.wait_for_items(40)
    pipeline = start_pipeline(settings, settings.bootstrap_servers, search, fit_clusters(search, 4), dim=384)
    try:
        pipeline.wait_caught_up(settings.bootstrap_servers, timeout_s=300)  # never stalls on a bad record
        stats = pipeline.stats()
        assert all(s["error"] is None for s in stats)
        assert sum(s["events"] for s in stats) == len(valid)
        dead = _read(settings, "dead_letters")
        assert sorted(r.value or b"" for r in dead) == sorted(r for r in records if not _valid_by_schema(r))
        origins = [dict(r.headers) for r in dead]
        assert all(h[DLQ_HEADER_PREFIX + "origin.topic"] == settings.topics.name("events").encode() for h in origins)
        assert len({(h[DLQ_HEADER_PREFIX + "origin.partition"], h[DLQ_HEADER_PREFIX + "origin.offset"])
                    for h in origins}) == len(dead)  # each once
    finally:
        pipeline.stop()
        for h in [*pipeline.handles, *shards]:
            ray.kill(h)
