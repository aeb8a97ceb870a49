"""The JSON Schemas in ``streams/schemas/`` describe exactly what the codecs accept.

Each schema must be a valid draft 2020-12 document whose example decodes, and a
shared table of records must get the same accept/reject answer from the schema
validator and from the codec. The table keeps to rules JSON Schema can express;
the rest (id normalisation and character classes, the now-relative timestamp
bound, integer literals written as 1.0) are in the descriptions and are listed
in ``BEYOND_SCHEMA`` to show the schema alone does not catch them.
"""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
from jsonschema import Draft202012Validator

from streams import codec
from streams.codec import (
    Limits,
    decode_event,
    decode_item,
    decode_recommendations,
    encode_event,
    encode_item,
    encode_recommendations,
)
from streams.errors import InvalidRecord
from streams.records import EVENT_KINDS, Event, ItemUpsert, RecItem, Recommendations

NOW = 1_732_800_000_000  # after the examples' timestamps
INT64_MAX = 2**63 - 1
LIMITS = Limits()
SCHEMA_FILES = {
    "event": "event.v1.schema.json",
    "item": "item.v1.schema.json",
    "recs": "recommendations.v1.schema.json",
}
DECODE = {
    "event": lambda raw: decode_event(raw, now_ms=NOW),
    "item": lambda raw: decode_item(raw, now_ms=NOW),
    "recs": lambda raw: decode_recommendations(raw),
}
FIELDS = {
    "event": (codec._EVENT_REQUIRED, codec._EVENT_OPTIONAL),
    "item": (codec._ITEM_REQUIRED, codec._ITEM_OPTIONAL),
    "recs": (codec._RECS_REQUIRED, codec._RECS_OPTIONAL),
}


def load_schema(kind: str) -> dict:
    return json.loads((files("streams") / "schemas" / SCHEMA_FILES[kind]).read_text(encoding="utf-8"))


SCHEMAS = {kind: load_schema(kind) for kind in SCHEMA_FILES}
VALIDATORS = {kind: Draft202012Validator(schema) for kind, schema in SCHEMAS.items()}


def codec_accepts(kind: str, raw: bytes) -> bool:
    try:
        DECODE[kind](raw)
    except InvalidRecord as error:
        assert error.reason.strip()
        return False
    return True


def schema_accepts(kind: str, raw: bytes) -> bool:
    return VALIDATORS[kind].is_valid(json.loads(raw))


def walk(schema):
    """Every subschema, depth first."""
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from walk(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from walk(value)


# ---------------------------------------------------------------- the documents


def test_the_package_ships_exactly_these_schemas():
    shipped = {p.name for p in (files("streams") / "schemas").iterdir() if p.name.endswith(".schema.json")}
    assert shipped == set(SCHEMA_FILES.values())


@pytest.mark.parametrize("kind", SCHEMA_FILES)
def test_schema_is_valid_draft_2020_12(kind):
    schema = SCHEMAS[kind]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://streamrec.dev/schemas/{SCHEMA_FILES[kind]}"
    assert schema["title"] and schema["description"]


@pytest.mark.parametrize("kind", SCHEMA_FILES)
def test_fields_match_the_codec(kind):
    schema = SCHEMAS[kind]
    required, optional = FIELDS[kind]
    assert set(schema["required"]) == required
    assert set(schema["properties"]) == required | optional
    assert schema["additionalProperties"] is False
    for sub in walk(schema):
        if sub.get("type") == "object":  # not the properties of the if/then condition
            assert sub["additionalProperties"] is False, "objects are closed"
            for name, prop in sub["properties"].items():
                assert prop.get("description"), f"{kind}: property {name} has no description"
    for name, sub in schema["$defs"].items():
        assert sub.get("description"), f"{kind}: $defs/{name} has no description"


def test_limits_in_the_schemas_match_the_codec_defaults():
    event, item, recs = SCHEMAS["event"], SCHEMAS["item"], SCHEMAS["recs"]
    assert set(event["properties"]["kind"]["enum"]) == EVENT_KINDS
    for schema in (event, item, recs):
        string_id = schema["$defs"]["id"]["anyOf"][0]
        assert string_id["maxLength"] == LIMITS.max_id_chars
        assert str(LIMITS.max_id_chars) in schema["$defs"]["id"]["description"]
    for schema in (event, item):
        flat = schema["$defs"]["scalarMap"]
        assert flat["maxProperties"] == LIMITS.max_map_entries
        assert flat["propertyNames"]["maxLength"] == LIMITS.max_id_chars
        assert schema["$defs"]["scalar"]["anyOf"][0]["maxLength"] == LIMITS.max_string_value_chars
    assert item["properties"]["title"]["maxLength"] == LIMITS.max_title_chars
    assert item["properties"]["text"]["maxLength"] == LIMITS.max_text_chars
    assert item["properties"]["categories"]["maxItems"] == LIMITS.max_categories
    assert str(LIMITS.max_event_bytes) in event["description"]
    assert str(LIMITS.max_item_bytes) in item["description"]
    assert str(LIMITS.max_recs_bytes) in recs["description"]
    assert str(LIMITS.max_future_skew_ms) in event["properties"]["ts"]["description"]


@pytest.mark.parametrize("kind", SCHEMA_FILES)
def test_unexpressible_rules_are_described(kind):
    id_rules = SCHEMAS[kind]["$defs"]["id"]["description"]
    for phrase in ("stripped", "NFC", "Cf", "U+200B", "U+FEFF", "surrogate", "2**63"):
        assert phrase in id_rules


@pytest.mark.parametrize("kind", SCHEMA_FILES)
def test_example_validates_and_decodes(kind):
    (example,) = SCHEMAS[kind]["examples"]
    VALIDATORS[kind].validate(example)
    raw = json.dumps(example).encode()
    decoded = DECODE[kind](raw)
    encoded = {"event": encode_event, "item": encode_item, "recs": encode_recommendations}[kind](decoded)
    VALIDATORS[kind].validate(json.loads(encoded))
    assert DECODE[kind](encoded) == decoded


@pytest.mark.parametrize(
    "kind, record",
    [
        ("event", Event("e", "u", "i", "click", NOW)),
        ("event", Event("e", "u", "i", "rate", 0, "s", 1.0, {"a": 1, "b": "x", "c": True, "d": 0.5})),
        ("item", ItemUpsert("i")),
        ("item", ItemUpsert("i", "t", "x", ("c",), {"p": 1.5}, True, NOW)),
        ("recs", Recommendations("u", (), 1, 2, NOW)),
        ("recs", Recommendations("u", (RecItem("i", 0.5, ("r",)), RecItem("j", -1.0)), 1, 2, NOW, 0, 9, NOW)),
    ],
)
def test_encoded_records_validate(kind, record):
    encode = {"event": encode_event, "item": encode_item, "recs": encode_recommendations}[kind]
    VALIDATORS[kind].validate(json.loads(encode(record)))


# ---------------------------------------------------------------- the shared table

EV = {"event_id": "e-1", "user_id": "u-1", "item_id": "i-1", "kind": "view", "ts": NOW - 1000}
IT = {"item_id": "sku-1"}
RE = {"user_id": "u-1", "items": [{"item_id": "i-1", "score": 0.5}], "model_version": 1,
      "profile_version": 2, "generated_at": NOW}
DROP = object()


def with_(base: dict, **changes) -> dict:
    out = dict(base)
    for name, value in changes.items():
        if value is DROP:
            out.pop(name)
        else:
            out[name] = value
    return out


def entry(**changes) -> dict:
    return with_(RE, items=[with_(RE["items"][0], **changes)])


VALID = [
    ("event", EV),
    ("event", with_(EV, scene="home", value=12.5, context={"device": "ios", "pos": 3, "ab": True, "r": 0.1})),
    ("event", with_(EV, event_id=0, user_id=42, item_id=INT64_MAX)),
    ("event", with_(EV, scene=None, value=None, context=None)),
    ("event", with_(EV, kind="rate", value=4)),
    ("event", with_(EV, kind="dislike", ts=0)),
    ("event", with_(EV, user_id="x" * 256, item_id="ユーザー", scene=7)),
    ("event", with_(EV, value=10**30)),
    ("event", with_(EV, context={f"k{i}": i for i in range(32)})),
    ("event", with_(EV, context={"s": "x" * 1024, "lo": -(2**63), "hi": INT64_MAX, "f": -1.5e18})),
    ("item", IT),
    ("item", with_(IT, item_id=7, title="T", text="x" * 65536, categories=["a", 3], attributes={"p": 9.5},
                   deleted=True, ts=NOW)),
    ("item", with_(IT, title=None, text=None, categories=None, attributes=None, ts=None)),
    ("item", with_(IT, title="x" * 1024, categories=[f"c{i}" for i in range(64)])),
    ("recs", RE),
    ("recs", with_(RE, items=[], model_version=-1, source_partition=None, source_offset=None, source_ts=None)),
    ("recs", with_(RE, source_partition=3, source_offset=INT64_MAX, source_ts=0, generated_at=-(2**63))),
    ("recs", entry(reasons=None, score=3)),
    ("recs", entry(reasons=["a", "b"], item_id=0)),
]

INVALID = [
    # not an object
    ("event", []),
    ("item", "sku-1"),
    ("recs", 42),
    ("event", None),
    # missing, unknown and null fields
    *[("event", with_(EV, **{name: DROP})) for name in sorted(codec._EVENT_REQUIRED)],
    *[("event", with_(EV, **{name: None})) for name in sorted(codec._EVENT_REQUIRED)],
    ("event", with_(EV, extra=1)),
    ("item", {}),
    ("item", with_(IT, item_id=None)),
    ("item", with_(IT, price=1)),
    *[("recs", with_(RE, **{name: DROP})) for name in sorted(codec._RECS_REQUIRED)],
    ("recs", with_(RE, user_id=None)),
    ("recs", with_(RE, extra=None)),
    ("recs", entry(rank=1)),
    ("recs", with_(RE, items=[{"item_id": "i"}])),
    ("recs", with_(RE, items=[{"score": 1.0}])),
    # kind and value
    ("event", with_(EV, kind="like")),
    ("event", with_(EV, kind="View")),
    ("event", with_(EV, kind=1)),
    ("event", with_(EV, kind="rate")),
    ("event", with_(EV, kind="rate", value=None)),
    ("event", with_(EV, kind="rate", value="5")),
    ("event", with_(EV, value=True)),
    ("event", with_(EV, value=[1])),
    # timestamps and integers
    ("event", with_(EV, ts=-1)),
    ("event", with_(EV, ts=str(NOW))),
    ("event", with_(EV, ts=True)),
    ("event", with_(EV, ts=2**63)),
    ("event", with_(EV, ts=10**30)),
    ("item", with_(IT, ts=-5)),
    ("item", with_(IT, ts="0")),
    ("recs", with_(RE, model_version="1")),
    ("recs", with_(RE, profile_version=False)),
    ("recs", with_(RE, generated_at=2**63)),
    ("recs", with_(RE, source_offset=-(2**63) - 1)),
    ("recs", with_(RE, source_ts=1.5)),
    # ids
    *[("event", with_(EV, user_id=bad)) for bad in (-1, True, 1.5, "", "   ", [], {}, 2**63, 10**25, "x" * 257)],
    ("event", with_(EV, scene="")),
    ("item", with_(IT, item_id=" \t ")),
    ("item", with_(IT, categories=["ok", ""])),
    ("item", with_(IT, categories=[-3])),
    ("item", with_(IT, categories=[None])),
    ("item", with_(IT, item_id=2**63)),
    ("recs", entry(item_id=False)),
    ("recs", entry(item_id=2**64)),
    ("recs", with_(RE, user_id=3.5)),
    ("recs", with_(RE, user_id="\n")),
    # maps
    ("event", with_(EV, context=[])),
    ("event", with_(EV, context="device=ios")),
    ("event", with_(EV, context={"k": None})),
    ("event", with_(EV, context={"k": [1]})),
    ("event", with_(EV, context={"k": {"a": 1}})),
    ("event", with_(EV, context={f"k{i}": i for i in range(33)})),
    ("event", with_(EV, context={"s": "x" * 1025})),
    ("event", with_(EV, context={"": 1})),
    ("event", with_(EV, context={"  ": 1})),
    ("event", with_(EV, context={"n": 2**63})),
    ("event", with_(EV, context={"n": 10**30})),
    ("item", with_(IT, attributes={"n": 1e19})),
    ("item", with_(IT, attributes={"n": -1e300})),
    ("item", with_(IT, attributes=["a"])),
    ("item", with_(IT, attributes={f"a{i}": "v" for i in range(33)})),
    ("item", with_(IT, attributes={" ": 1})),
    # item fields
    ("item", with_(IT, deleted=None)),
    ("item", with_(IT, deleted="true")),
    ("item", with_(IT, deleted=1)),
    ("item", with_(IT, title=5)),
    ("item", with_(IT, title="x" * 1025)),
    ("item", with_(IT, text=["x"])),
    ("item", with_(IT, text="x" * 65537)),
    ("item", with_(IT, categories="shoes")),
    ("item", with_(IT, categories=False)),
    ("item", with_(IT, categories={})),
    ("item", with_(IT, categories=[f"c{i}" for i in range(65)])),
    # recommendation entries
    ("recs", with_(RE, items={})),
    ("recs", with_(RE, items=["i-1"])),
    ("recs", entry(score=True)),
    ("recs", entry(score="0.5")),
    ("recs", entry(reasons="because")),
    ("recs", entry(reasons=0)),
    ("recs", entry(reasons=[1])),
    ("recs", entry(reasons=[None])),
]


def _ids(table):
    return [f"{kind}-{i}" for i, (kind, _) in enumerate(table)]


@pytest.mark.parametrize("kind, record", VALID, ids=_ids(VALID))
def test_valid_records_pass_both(kind, record):
    raw = json.dumps(record).encode()
    assert schema_accepts(kind, raw), list(VALIDATORS[kind].iter_errors(json.loads(raw)))
    assert codec_accepts(kind, raw)


@pytest.mark.parametrize("kind, record", INVALID, ids=_ids(INVALID))
def test_invalid_records_fail_both(kind, record):
    raw = json.dumps(record).encode()
    assert not schema_accepts(kind, raw)
    assert not codec_accepts(kind, raw)


BEYOND_SCHEMA = [
    ("event", with_(EV, user_id="u\u200b1")),  # a format character
    ("event", with_(EV, user_id="\ufeffu1")),  # a byte order mark
    ("event", with_(EV, item_id="i\u202e")),  # a bidi override
    ("event", with_(EV, context={"\ue000": 1})),  # a private-use key
    ("event", with_(EV, ts=NOW + LIMITS.max_future_skew_ms + 1)),  # relative to the consumer's clock
    ("event", with_(EV, ts=float(NOW))),  # an integral number that is not an integer literal
    ("recs", with_(RE, model_version=1.0)),
    ("item", with_(IT, title="\u0958" * 1024)),  # 2048 characters after NFC
]


@pytest.mark.parametrize("kind, record", BEYOND_SCHEMA, ids=_ids(BEYOND_SCHEMA))
def test_described_rules_the_schema_cannot_check(kind, record):
    raw = json.dumps(record).encode()
    assert schema_accepts(kind, raw)
    assert not codec_accepts(kind, raw)
