"""Unit tests of the wire codecs: round trips and every class of bad input.

Every rejection must be an :class:`InvalidRecord` with a non-empty ``reason``
and the expected ``field`` (``None`` for record-level failures); no other
exception may escape a decoder, whatever the bytes.
"""

from __future__ import annotations

import json
import math
import unicodedata
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import codec
from streams.codec import (
    Limits,
    decode_event,
    decode_item,
    decode_recommendations,
    encode_event,
    encode_item,
    encode_recommendations,
    normalize_id,
)
from streams.errors import InvalidRecord
from streams.records import EVENT_KINDS, Event, ItemUpsert, RecItem, Recommendations

NOW = 1_732_700_000_000  # ms; time is passed in, never read
SKEW = Limits().max_future_skew_ms
INT64_MAX = 2**63 - 1
DROP = object()  # an override value that removes the field

BASE_EVENT = {"event_id": "e-1", "user_id": "u-1", "item_id": "i-1", "kind": "view", "ts": NOW - 1000}
BASE_ITEM = {"item_id": "sku-1", "title": "Shoe", "categories": ["shoes"], "attributes": {"brand": "A"}}
BASE_RECS = {
    "user_id": "u-1",
    "items": [{"item_id": "i-1", "score": 0.9, "reasons": ["because"]}],
    "model_version": 3,
    "profile_version": 10,
    "generated_at": NOW,
}


def dumps(obj) -> bytes:
    """Serialise with the standard library: it writes huge ints, NaN literals and surrogate escapes."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def record(base: dict, **overrides) -> dict:
    out = dict(base)
    for name, value in overrides.items():
        if value is DROP:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def ev(**overrides) -> bytes:
    return dumps(record(BASE_EVENT, **overrides))


def it(**overrides) -> bytes:
    return dumps(record(BASE_ITEM, **overrides))


def recs(**overrides) -> bytes:
    return dumps(record(BASE_RECS, **overrides))


def recs_entry(**overrides) -> bytes:
    return recs(items=[record(BASE_RECS["items"][0], **overrides)])


def dec_event(raw, limits=Limits()):
    return decode_event(raw, now_ms=NOW, limits=limits)


def dec_item(raw, limits=Limits()):
    return decode_item(raw, now_ms=NOW, limits=limits)


def dec_recs(raw, limits=Limits()):
    return decode_recommendations(raw, limits=limits)


DECODERS = {"event": (dec_event, BASE_EVENT), "item": (dec_item, BASE_ITEM), "recs": (dec_recs, BASE_RECS)}


def rejects(decode, raw, field=None, **kwargs) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as info:
        decode(raw, **kwargs)
    assert info.value.reason.strip(), "every rejection needs a human-readable reason"
    assert info.value.field == field
    return info.value


# ---------------------------------------------------------------- round trips


def test_event_round_trip_full_and_minimal():
    full = Event(
        event_id="e-9", user_id="ユーザー", item_id="sku-😀", kind="rate", ts=NOW, scene="search",
        value=4.5, context={"device": "ios", "pos": 3, "ratio": 0.25, "logged_in": True},
    )
    minimal = Event(event_id="e", user_id="u", item_id="i", kind="click", ts=0)
    for event in (full, minimal):
        assert dec_event(encode_event(event)) == event


def test_item_round_trip():
    item = ItemUpsert(
        item_id="sku-1", title="Café crème", text="long text " * 50, categories=("shoes", "running"),
        attributes={"price": 129.9, "in_stock": True, "sizes": 11, "brand": "Alpenlauf"}, deleted=False, ts=NOW,
    )
    for value in (item, ItemUpsert(item_id="x"), ItemUpsert(item_id="x", deleted=True)):
        assert dec_item(encode_item(value)) == value


def test_recommendations_round_trip():
    value = Recommendations(
        user_id="u-1",
        items=(RecItem("i-1", 0.9, ("similar to i-7",)), RecItem("i-2", -1.5), RecItem("i-3", 0.0, ("a", "b"))),
        model_version=7, profile_version=1284, generated_at=NOW, source_partition=5, source_offset=902211,
        source_ts=NOW - 183,
    )
    for r in (value, Recommendations(user_id="u", items=(), model_version=0, profile_version=0, generated_at=0)):
        assert dec_recs(encode_recommendations(r)) == r


def test_defaults_for_omitted_and_null_optional_fields():
    assert dec_event(ev(scene=None, value=None, context=None)) == dec_event(ev())
    event = dec_event(ev())
    assert (event.scene, event.value, event.context) == ("default", None, {})
    item = dec_item(dumps({"item_id": "x", "title": None, "text": None, "categories": None,
                           "attributes": None, "ts": None}))
    assert item == ItemUpsert(item_id="x")
    r = dec_recs(recs(items=[{"item_id": "i", "score": 1, "reasons": None}], source_partition=None))
    assert r.items[0].reasons == () and r.source_partition is None


# ---------------------------------------------------------------- record-level failures


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"\xff\xfe\xfd",  # not UTF-8
        b'{"event_id": "\xff"}',  # invalid UTF-8 inside a string
        b'"\xc0\xaf"',  # overlong encoding
        b'"\xed\xa0\x80"',  # an encoded surrogate
        b"\xef\xbb\xbf{}",  # UTF-8 byte order mark
        b"[]",
        b"[{}]",
        b'"a string"',
        b"42",
        b"-1.5",
        b"true",
        b"null",
        b"{",
        b'{"user_id": "u"} trailing',
        b"{'single': 'quotes'}",
        b"NaN",
        b"Infinity",
        b"1e999",
    ],
)
def test_record_level_rejections(name, raw):
    rejects(DECODERS[name][0], raw)


@pytest.mark.parametrize("name", DECODERS)
def test_every_truncation_is_rejected(name):
    decode, base = DECODERS[name]
    raw = dumps(base)
    decode(raw)  # the whole record is fine
    for cut in range(len(raw)):
        rejects(decode, raw[:cut])


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1" + b"0" * 400])
def test_non_finite_numbers_are_rejected_by_the_parser(literal):
    rejects(dec_event, ev(kind="rate", value=0).replace(b'"value": 0', b'"value": ' + literal))
    rejects(dec_event, ev(context={"x": 0}).replace(b'"x": 0', b'"x": ' + literal))
    rejects(dec_recs, recs_entry(score=0).replace(b'"score": 0', b'"score": ' + literal))


# ---------------------------------------------------------------- fields


@pytest.mark.parametrize("name", DECODERS)
def test_missing_extra_and_null_required_fields(name):
    decode, base = DECODERS[name]
    required = {"event": codec._EVENT_REQUIRED, "item": codec._ITEM_REQUIRED, "recs": codec._RECS_REQUIRED}[name]
    for field in required:
        error = rejects(decode, dumps(record(base, **{field: DROP})), field)
        assert "missing" in error.reason
        rejects(decode, dumps(record(base, **{field: None})), field)
    error = rejects(decode, dumps(record(base, surprise=1)), "surprise")
    assert "unknown" in error.reason


def test_rec_item_entry_fields():
    rejects(dec_recs, recs_entry(score=DROP), "items.score")
    rejects(dec_recs, recs_entry(item_id=None), "items.item_id")
    rejects(dec_recs, recs_entry(rank=1), "items.rank")
    for entry in (1, "i-1", None, ["i-1", 0.5]):
        rejects(dec_recs, recs(items=[entry]), "items")
    for items in ({}, "i-1", 3, True):
        rejects(dec_recs, recs(items=items), "items")
    assert dec_recs(recs(items=[])).items == ()


# ---------------------------------------------------------------- types and numbers


@pytest.mark.parametrize(
    "decode, raw, field",
    [
        (dec_event, ev(kind="rate", value=True), "value"),
        (dec_event, ev(value="4.5"), "value"),
        (dec_event, ev(value=[1]), "value"),
        (dec_event, ev(ts=True), "ts"),
        (dec_event, ev(ts=str(NOW)), "ts"),
        (dec_event, ev(ts=float(NOW)), "ts"),  # an integer must be written as one
        (dec_event, ev(ts=1.7327e12), "ts"),
        (dec_item, it(ts="0"), "ts"),
        (dec_item, it(deleted="false"), "deleted"),
        (dec_item, it(deleted=0), "deleted"),
        (dec_item, it(deleted=None), "deleted"),
        (dec_item, it(title=5), "title"),
        (dec_item, it(text=["a"]), "text"),
        (dec_recs, recs_entry(score=False), "items.score"),
        (dec_recs, recs_entry(score="0.9"), "items.score"),
        (dec_recs, recs(model_version="7"), "model_version"),
        (dec_recs, recs(model_version=7.0), "model_version"),
        (dec_recs, recs(profile_version=True), "profile_version"),
        (dec_recs, recs(generated_at=[NOW]), "generated_at"),
        (dec_recs, recs(source_offset="1"), "source_offset"),
    ],
)
def test_wrong_types(decode, raw, field):
    rejects(decode, raw, field)


@pytest.mark.parametrize(
    "decode, raw, field",
    [
        (dec_event, ev(ts=2**63), "ts"),
        (dec_event, ev(ts=2**64), "ts"),  # the parser reads it as a float
        (dec_event, ev(ts=10**40), "ts"),
        (dec_event, ev(event_id=2**63), "event_id"),
        (dec_event, ev(event_id=10**30), "event_id"),
        (dec_event, ev(context={"n": 2**63}), "context.n"),
        (dec_event, ev(context={"n": -(2**64)}), "context.n"),  # read as a float
        (dec_event, ev(context={"n": 10**30}), "context.n"),
        (dec_item, it(attributes={"n": 1e19}), "attributes.n"),
        (dec_item, it(attributes={"n": -1e300}), "attributes.n"),
        (dec_recs, recs(model_version=2**63), "model_version"),
        (dec_recs, recs(generated_at=-(2**63) - 1), "generated_at"),
        (dec_recs, recs(source_offset=10**30), "source_offset"),
    ],
)
def test_integers_beyond_64_bit(decode, raw, field):
    rejects(decode, raw, field)


def test_64_bit_boundaries_are_accepted():
    assert dec_event(ev(context={"hi": INT64_MAX, "lo": -(2**63)})).context == {"hi": INT64_MAX, "lo": -(2**63)}
    assert dec_recs(recs(model_version=INT64_MAX, generated_at=-(2**63))).model_version == INT64_MAX
    assert dec_event(ev(context={"f": -(2.0**63), "g": 2.0**62})).context == {"f": -(2.0**63), "g": 2.0**62}
    assert dec_event(ev(value=10**30)).value == 1e30  # an unbounded number, not an integer field


@pytest.mark.parametrize(
    "raw_id, expected",
    [(42, "42"), (0, "0"), (INT64_MAX, str(INT64_MAX)), ("  u-7\t\n", "u-7"), ("\u3000u-7\u00a0", "u-7")],
)
def test_ids_accept_non_negative_integers_and_strip_whitespace(raw_id, expected):
    assert dec_event(ev(user_id=raw_id)).user_id == expected


@pytest.mark.parametrize("raw_id", [-1, 1.5, 42.0, True, False, [], {}, {"id": 1}, "", "   ", "x" * 257])
def test_ids_reject_other_values(raw_id):
    rejects(dec_event, ev(item_id=raw_id), "item_id")


def test_id_length_counts_after_stripping():
    assert dec_event(ev(user_id=" " + "x" * 256 + " ")).user_id == "x" * 256


# ---------------------------------------------------------------- kind and value


@pytest.mark.parametrize("kind", ["VIEW", "like", "", " view", 1, True, ["view"], {"kind": "view"}])
def test_kind_outside_the_set(kind):
    error = rejects(dec_event, ev(kind=kind), "kind")
    assert "view" in error.reason  # names the accepted kinds


@pytest.mark.parametrize("kind", sorted(EVENT_KINDS - {"rate"}))
def test_every_other_kind_needs_no_value(kind):
    assert dec_event(ev(kind=kind)).kind == kind


def test_rate_needs_a_numeric_value():
    rejects(dec_event, ev(kind="rate"), "value")
    rejects(dec_event, ev(kind="rate", value=None), "value")
    rejects(dec_event, ev(kind="rate", value="5"), "value")
    assert dec_event(ev(kind="rate", value=4)).value == 4.0
    assert isinstance(dec_event(ev(kind="rate", value=4)).value, float)


# ---------------------------------------------------------------- timestamps


@pytest.mark.parametrize("decode, make", [(dec_event, ev), (dec_item, it)])
def test_timestamp_bounds(decode, make):
    assert decode(make(ts=0)).ts == 0
    assert decode(make(ts=NOW + SKEW)).ts == NOW + SKEW
    rejects(decode, make(ts=-1), "ts")
    rejects(decode, make(ts=-NOW), "ts")
    error = rejects(decode, make(ts=NOW + SKEW + 1), "ts")
    assert "future" in error.reason
    rejects(decode, make(ts=NOW * 1000), "ts")  # microseconds by mistake


@pytest.mark.parametrize("decode, make", [(dec_event, ev), (dec_item, it)])
def test_timestamp_bounds_come_from_limits(decode, make):
    strict = Limits(max_future_skew_ms=0, min_ts_ms=NOW - 10_000)
    assert decode(make(ts=NOW), limits=strict).ts == NOW
    rejects(decode, make(ts=NOW + 1), "ts", limits=strict)
    rejects(decode, make(ts=NOW - 10_001), "ts", limits=strict)
    assert decode(make(ts=NOW + 86_400_000), limits=Limits(max_future_skew_ms=86_400_000)).ts == NOW + 86_400_000


# ---------------------------------------------------------------- size and nesting


@pytest.mark.parametrize(
    "decode, raw, cap, limits",
    [
        (dec_event, ev(), 200, Limits(max_event_bytes=200)),
        (dec_item, it(), 200, Limits(max_item_bytes=200)),
        (dec_recs, recs(), 300, Limits(max_recs_bytes=300)),
    ],
)
def test_size_cap_is_inclusive(decode, raw, cap, limits):
    padded = raw + b" " * (cap - len(raw))  # trailing whitespace is valid JSON
    decode(padded, limits=limits)
    error = rejects(decode, padded + b" ", limits=limits)
    assert str(cap) in error.reason


def test_default_size_caps():
    rejects(dec_event, ev(context={"pad": "x" * 1000}) + b" " * 16 * 1024)
    rejects(dec_item, it(text="x" * 60_000) + b" " * 256 * 1024)


def test_size_cap_is_checked_before_parsing(monkeypatch):
    def no_parsing(_raw):
        raise AssertionError("parsed an oversize record")

    monkeypatch.setattr(codec, "orjson", SimpleNamespace(loads=no_parsing, JSONDecodeError=orjson.JSONDecodeError))
    for decode in (dec_event, dec_item, dec_recs):
        error = rejects(decode, b"[" * (2 * 1024 * 1024))
        assert "limit" in error.reason


@pytest.mark.parametrize("opener, closer", [(b"[", b"]"), (b'{"a":', b"}")])
def test_deep_nesting_is_invalid_not_a_crash(opener, closer):
    depth = 100_000
    nested = opener * depth + b"0" + closer * depth
    raw = ev(context={"deep": 0}).replace(b'"deep": 0', b'"deep": ' + nested)
    rejects(dec_event, raw)  # over the default size cap
    rejects(dec_event, raw, limits=Limits(max_event_bytes=len(raw)))  # over the parser's depth limit
    rejects(dec_event, nested, limits=Limits(max_event_bytes=len(nested)))
    rejects(dec_recs, nested)


def test_moderate_nesting_parses_and_fails_as_a_non_scalar():
    nested = [[[["x"]]]]
    for _ in range(100):
        nested = [nested]
    rejects(dec_event, ev(context={"deep": nested}), "context.deep")


# ---------------------------------------------------------------- unicode ids


@pytest.mark.parametrize(
    "raw_id",
    [
        "user\u200b1",  # zero-width space
        "\u200d",  # zero-width joiner only
        "\ufeffuser1",  # byte order mark (not stripped: not whitespace)
        "user1\ufeff",
        "evil\u202egpj.exe",  # right-to-left override
        "a\u2066b\u2069",  # bidi isolates
        "a\x00b",  # NUL
        "tab\x07bell",
        "a\x85b",  # next line, a C1 control inside the id
        "\ue000",  # private use
        "\U000f0000",  # supplementary private use
        "\u0378",  # unassigned
    ],
)
def test_ids_refuse_invisible_and_control_characters(raw_id):
    error = rejects(dec_event, ev(user_id=raw_id), "user_id")
    assert "U+" in error.reason


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udfff", b"a\\ud83db", b"\\ude00\\ud83d"])
def test_lone_surrogate_escapes_are_refused(escape):
    raw = ev(user_id="PLACEHOLDER").replace(b"PLACEHOLDER", escape)
    rejects(dec_event, raw)


def test_surrogate_pair_escape_is_one_character():
    raw = ev(user_id="PLACEHOLDER").replace(b"PLACEHOLDER", b"\\ud83d\\ude00")
    assert dec_event(raw).user_id == "\U0001f600"


def test_nfc_and_nfd_spell_the_same_id():
    nfc, nfd = "Caf\u00e9-\uac00", "Cafe\u0301-\u1100\u1161"
    assert nfc != nfd and unicodedata.normalize("NFC", nfd) == nfc
    assert dec_event(ev(user_id=nfd)).user_id == dec_event(ev(user_id=nfc)).user_id == nfc
    assert dec_item(it(item_id=nfd, categories=[nfd], attributes={nfd: 1})) == dec_item(
        it(item_id=nfc, categories=[nfc], attributes={nfc: 1})
    )
    assert dec_event(ev(user_id=" " + nfd + " ")).user_id == nfc


@pytest.mark.parametrize("raw_id", ["ユーザー", "مستخدم-٣", "Ωμέγα", "\U0001f600", "a b"])
def test_printable_unicode_ids_are_fine(raw_id):
    assert dec_event(ev(user_id=raw_id)).user_id == raw_id


@pytest.mark.parametrize(
    "decode, raw, field",
    [
        (dec_event, ev(event_id="a\u200b"), "event_id"),
        (dec_event, ev(scene="\u202e"), "scene"),
        (dec_event, ev(scene=""), "scene"),
        (dec_event, ev(context={"a\u200b": 1}), "context key"),
        (dec_event, ev(context={" ": 1}), "context key"),
        (dec_item, it(item_id="\ufeff"), "item_id"),
        (dec_item, it(categories=["ok", "bad\x00"]), "categories"),
        (dec_item, it(attributes={"\ue000": 1}), "attributes key"),
        (dec_recs, recs(user_id="u\u200b"), "user_id"),
        (dec_recs, recs_entry(item_id="i\u202e"), "items.item_id"),
    ],
)
def test_id_rules_apply_to_every_id_field(decode, raw, field):
    rejects(decode, raw, field)


# ---------------------------------------------------------------- maps


@pytest.mark.parametrize("decode, make, field", [(dec_event, ev, "context"), (dec_item, it, "attributes")])
def test_flat_map_limits_and_values(decode, make, field):
    def get(raw):
        return getattr(decode(raw), field)

    full = {f"k{i}": i for i in range(32)}
    assert get(make(**{field: full})) == full
    rejects(decode, make(**{field: {**full, "k32": 0}}), field)
    assert get(make(**{field: {"s": "x" * 1024}})) == {"s": "x" * 1024}
    rejects(decode, make(**{field: {"s": "x" * 1025}}), f"{field}.s")
    for value in ([], [1], {}, {"a": 1}, None):
        rejects(decode, make(**{field: {"k": value}}), f"{field}.k")
    for value in ([], ["k", 1], "k=1", 3, True):
        rejects(decode, make(**{field: value}), field)
    assert get(make(**{field: {" k ": 1.5, "b": False}})) == {"k": 1.5, "b": False}


# ---------------------------------------------------------------- items


def test_item_tombstone_is_a_delete():
    assert decode_item(None, now_ms=NOW, key=b"sku-1") == ItemUpsert(item_id="sku-1", deleted=True)
    assert decode_item(None, now_ms=NOW, key=b" Cafe\xcc\x81 ").item_id == "Caf\u00e9"
    assert decode_item(None, now_ms=NOW, key=b"42").item_id == "42"
    assert dec_item(it(deleted=True)).deleted is True
    rejects(dec_item, None)  # null value without a key
    rejects(lambda raw: decode_item(raw, now_ms=NOW, key=b"\xff\xfe"), None, "key")
    rejects(lambda raw: decode_item(raw, now_ms=NOW, key=b""), None, "item_id")
    rejects(lambda raw: decode_item(raw, now_ms=NOW, key=b"sku\xe2\x80\x8b"), None, "item_id")


@pytest.mark.parametrize("categories", ["shoes", {"a": 1}, False, 0, "", {}, 1.5])
def test_categories_must_be_an_array(categories):
    rejects(dec_item, it(categories=categories), "categories")


def test_categories_entries_and_count():
    assert dec_item(it(categories=[" shoes ", 7])).categories == ("shoes", "7")
    assert len(dec_item(it(categories=[f"c{i}" for i in range(64)])).categories) == 64
    rejects(dec_item, it(categories=[f"c{i}" for i in range(65)]), "categories")
    for entry in (None, [], {}, -1, True, ""):
        rejects(dec_item, it(categories=["ok", entry]), "categories")


@pytest.mark.parametrize("field, cap", [("title", 1024), ("text", 64 * 1024)])
def test_text_fields_are_bounded_and_normalised(field, cap):
    assert getattr(dec_item(it(**{field: "x" * cap})), field) == "x" * cap
    rejects(dec_item, it(**{field: "x" * (cap + 1)}), field)
    assert getattr(dec_item(it(**{field: "Cafe\u0301"})), field) == "Caf\u00e9"


def test_title_bound_holds_after_normalisation():
    expanding = "\u0958" * 1024  # NFC turns each into two characters
    assert len(unicodedata.normalize("NFC", expanding)) == 2048
    rejects(dec_item, it(title=expanding), "title")


# ---------------------------------------------------------------- recommendations


@pytest.mark.parametrize("reasons", ["because", 0, False, "", {}, {"a": "b"}, ["ok", 1], [None], [["nested"]]])
def test_reasons_must_be_an_array_of_strings(reasons):
    rejects(dec_recs, recs_entry(reasons=reasons), "items.reasons")


def test_recommendations_optional_source_fields():
    full = dec_recs(recs(source_partition=0, source_offset=0, source_ts=NOW))
    assert (full.source_partition, full.source_offset, full.source_ts) == (0, 0, NOW)
    assert dec_recs(recs(model_version=-1)).model_version == -1  # no range beyond 64-bit here


# ---------------------------------------------------------------- properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)  # NaN and Infinity become literals orjson refuses
    | st.text(st.characters(exclude_categories=()), max_size=20)  # lone surrogates become "\udXXX" escapes
    | st.sampled_from(sorted(EVENT_KINDS) + ["", " ", "\u200b", "0", NOW])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)
FIELD_NAMES = sorted(
    codec._EVENT_REQUIRED | codec._EVENT_OPTIONAL | codec._ITEM_REQUIRED | codec._ITEM_OPTIONAL
    | codec._RECS_REQUIRED | codec._RECS_OPTIONAL | {"extra"}
)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def to_bytes(value) -> bytes:
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode("ascii")


@st.composite
def mutated_records(draw):
    """A valid record with some fields replaced by arbitrary JSON values or removed."""
    name = draw(st.sampled_from(sorted(DECODERS)))
    obj = dict(DECODERS[name][1])
    for field in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=3, unique=True)):
        if draw(st.booleans()):
            obj[field] = draw(json_values)
        else:
            obj.pop(field, None)
    return name, to_bytes(obj)


def check_decoded(record) -> None:
    """An accepted record satisfies the contract and survives a re-encode."""
    if isinstance(record, Event):
        ids = [record.event_id, record.user_id, record.item_id, record.scene, *record.context]
        assert record.kind in EVENT_KINDS and 0 <= record.ts <= NOW + SKEW
        assert record.value is None or math.isfinite(record.value)
        assert record.kind != "rate" or record.value is not None
        assert all(type(v) in (str, int, float, bool) for v in record.context.values())
        assert dec_event(encode_event(record)) == record
    elif isinstance(record, ItemUpsert):
        ids = [record.item_id, *record.categories, *record.attributes]
        assert dec_item(encode_item(record)) == record
    else:
        assert isinstance(record, Recommendations)
        ids = [record.user_id, *(entry.item_id for entry in record.items)]
        assert all(math.isfinite(entry.score) for entry in record.items)
        assert dec_recs(encode_recommendations(record)) == record
    assert all(normalize_id(i, "id") == i for i in ids)


def decode_or_invalid(name: str, raw: bytes) -> None:
    try:
        result = DECODERS[name][0](raw)
    except InvalidRecord as error:
        assert error.reason.strip()
    else:
        check_decoded(result)


@PROPERTY_SETTINGS
@given(name=st.sampled_from(sorted(DECODERS)), raw=st.binary(max_size=256))
def test_arbitrary_bytes_decode_or_raise_invalid_record(name, raw):
    decode_or_invalid(name, raw)


@PROPERTY_SETTINGS
@given(name=st.sampled_from(sorted(DECODERS)), value=json_values)
def test_arbitrary_json_decodes_or_raises_invalid_record(name, value):
    decode_or_invalid(name, to_bytes(value))


@PROPERTY_SETTINGS
@given(mutated_records())
def test_mutated_records_decode_or_raise_invalid_record(case):
    decode_or_invalid(*case)


@PROPERTY_SETTINGS
@given(key=st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=20).map(str.encode)))
def test_arbitrary_tombstone_keys(key):
    try:
        item = decode_item(None, now_ms=NOW, key=key)
    except InvalidRecord as error:
        assert error.reason.strip()
    else:
        assert item.deleted and normalize_id(item.item_id, "item_id") == item.item_id


canonical_ids = st.text(
    st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp")), min_size=1, max_size=12
).map(lambda s: unicodedata.normalize("NFC", s).strip()).filter(lambda s: s and normalize_id(s, "id") == s)
scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=INT64_MAX)
    | st.floats(min_value=-(2.0**63), max_value=2.0**63, exclude_max=True)
    | st.text(max_size=30)
)
events = st.builds(
    Event,
    event_id=canonical_ids,
    user_id=canonical_ids,
    item_id=canonical_ids,
    kind=st.sampled_from(sorted(EVENT_KINDS)),
    ts=st.integers(min_value=0, max_value=NOW + SKEW),
    scene=canonical_ids,
    value=st.floats(allow_nan=False, allow_infinity=False),
    context=st.dictionaries(canonical_ids, scalars, max_size=32),
)


@PROPERTY_SETTINGS
@given(events)
def test_valid_events_round_trip(event):
    assert dec_event(encode_event(event)) == event


def test_map_keys_equal_after_normalisation_are_refused():
    from streams.codec import decode_event as _de

    raw = b'{"event_id":"e","user_id":"u","item_id":"i","kind":"view","ts":1,"context":{" k":1,"k":2}}'
    with pytest.raises(InvalidRecord, match="duplicate key"):
        _de(raw, now_ms=10**13)


def test_item_key_must_match_item_id():
    from streams.codec import decode_item as _di

    raw = b'{"item_id":"a","title":"t"}'
    assert _di(raw, now_ms=10**13, key=b"a").item_id == "a"
    with pytest.raises(InvalidRecord) as info:
        _di(raw, now_ms=10**13, key=b"b")
    assert info.value.field == "key"
