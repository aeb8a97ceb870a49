"""JSON codecs with strict boundary validation for the wire contracts.

Validation order for every record: size cap on the raw bytes (before parsing),
UTF-8 and JSON syntax (orjson: rejects NaN/Infinity literals, invalid UTF-8 and
lone surrogates), a JSON object at the top level, no unknown and no missing
fields, strict types (``true`` is not a number, ``"5"`` is not an int), finite
numbers, bounded strings and maps, normalised ids, and a timestamp skew bound.
Every failure raises :class:`~streams.errors.InvalidRecord` with a short reason;
the consumer loop turns it into a dead-letter record.

Time is passed in (``now_ms``), never read here.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Any

import orjson

from streams.errors import InvalidRecord
from streams.records import (
    EVENT_KINDS,
    Event,
    ItemUpsert,
    RecItem,
    Recommendations,
    Scalar,
)

__all__ = [
    "Limits",
    "normalize_id",
    "decode_event",
    "encode_event",
    "decode_item",
    "encode_item",
    "decode_recommendations",
    "encode_recommendations",
]

_INT64_MAX = 2**63 - 1
# Unicode categories never allowed in ids: controls, format characters
# (zero-width space/joiner, BOM, bidi overrides), surrogates, private use, unassigned.
_BAD_ID_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied at the boundary. Defaults are documented in deploy/streamrec.example.toml."""

    max_event_bytes: int = 16 * 1024
    max_item_bytes: int = 256 * 1024
    max_recs_bytes: int = 1024 * 1024
    max_id_chars: int = 256
    max_text_chars: int = 64 * 1024
    max_title_chars: int = 1024
    max_categories: int = 64
    max_map_entries: int = 32
    max_string_value_chars: int = 1024
    max_future_skew_ms: int = 3_600_000
    min_ts_ms: int = 0


DEFAULT_LIMITS = Limits()


def normalize_id(value: Any, field: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Return the canonical string form of an id or raise :class:`InvalidRecord`.

    Integers in [0, 2**63) become their decimal string, strings are stripped of
    surrounding whitespace and NFC-normalised; control, zero-width/format,
    surrogate, private-use and unassigned characters are refused.
    """
    if isinstance(value, bool):
        raise InvalidRecord("must be a string or a non-negative integer, not a boolean", field)
    if isinstance(value, int):
        if not 0 <= value <= _INT64_MAX:
            raise InvalidRecord("integer id out of range [0, 2**63)", field)
        return str(value)
    if not isinstance(value, str):
        raise InvalidRecord(f"must be a string or a non-negative integer, got {_json_type(value)}", field)
    text = unicodedata.normalize("NFC", value.strip())
    if not text:
        raise InvalidRecord("must not be empty", field)
    if len(text) > limits.max_id_chars:
        raise InvalidRecord(f"longer than {limits.max_id_chars} characters", field)
    for ch in text:
        if unicodedata.category(ch) in _BAD_ID_CATEGORIES:
            raise InvalidRecord(f"contains a disallowed character U+{ord(ch):04X}", field)
    return text


# ---------------------------------------------------------------- events


def decode_event(raw: bytes | None, *, now_ms: int, limits: Limits = DEFAULT_LIMITS) -> Event:
    obj = _load(raw, limits.max_event_bytes)
    _check_fields(obj, _EVENT_REQUIRED, _EVENT_OPTIONAL)
    kind = obj["kind"]
    if not isinstance(kind, str) or kind not in EVENT_KINDS:
        raise InvalidRecord(f"must be one of {sorted(EVENT_KINDS)}", "kind")
    value = obj.get("value")
    if value is not None:
        value = _finite(value, "value")
    elif kind == "rate":
        raise InvalidRecord("is required for kind 'rate'", "value")
    return Event(
        event_id=normalize_id(obj["event_id"], "event_id", limits),
        user_id=normalize_id(obj["user_id"], "user_id", limits),
        item_id=normalize_id(obj["item_id"], "item_id", limits),
        kind=kind,
        ts=_timestamp(obj["ts"], "ts", now_ms, limits),
        scene=normalize_id(obj["scene"], "scene", limits) if obj.get("scene") is not None else "default",
        value=value,
        context=_flat_map(obj.get("context"), "context", limits),
    )


def encode_event(event: Event) -> bytes:
    return orjson.dumps(event)


_EVENT_REQUIRED = frozenset({"event_id", "user_id", "item_id", "kind", "ts"})
_EVENT_OPTIONAL = frozenset({"scene", "value", "context"})


# ---------------------------------------------------------------- items


def decode_item(
    raw: bytes | None,
    *,
    now_ms: int,
    key: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ItemUpsert:
    """Decode an item upsert. A null value with a key is a compaction tombstone: a delete."""
    if raw is None and key is not None:
        return ItemUpsert(item_id=normalize_id(_utf8(key, "key"), "item_id", limits), deleted=True)
    obj = _load(raw, limits.max_item_bytes)
    _check_fields(obj, _ITEM_REQUIRED, _ITEM_OPTIONAL)
    categories = obj.get("categories")
    if categories is None:
        categories = []
    if not isinstance(categories, list):
        raise InvalidRecord(f"must be an array of strings, got {_json_type(categories)}", "categories")
    if len(categories) > limits.max_categories:
        raise InvalidRecord(f"more than {limits.max_categories} entries", "categories")
    deleted = obj.get("deleted", False)
    if not isinstance(deleted, bool):
        raise InvalidRecord(f"must be a boolean, got {_json_type(deleted)}", "deleted")
    ts = obj.get("ts")
    item_id = normalize_id(obj["item_id"], "item_id", limits)
    if key is not None and normalize_id(_utf8(key, "key"), "key", limits) != item_id:
        raise InvalidRecord("record key differs from item_id (the items topic is keyed by item_id)", "key")
    return ItemUpsert(
        item_id=item_id,
        title=_text(obj.get("title"), "title", limits.max_title_chars),
        text=_text(obj.get("text"), "text", limits.max_text_chars),
        categories=tuple(normalize_id(c, "categories", limits) for c in categories),
        attributes=_flat_map(obj.get("attributes"), "attributes", limits),
        deleted=deleted,
        ts=None if ts is None else _timestamp(ts, "ts", now_ms, limits),
    )


def encode_item(item: ItemUpsert) -> bytes:
    return orjson.dumps(item)


_ITEM_REQUIRED = frozenset({"item_id"})
_ITEM_OPTIONAL = frozenset({"title", "text", "categories", "attributes", "deleted", "ts"})


# ---------------------------------------------------------------- recommendations


def decode_recommendations(raw: bytes | None, *, limits: Limits = DEFAULT_LIMITS) -> Recommendations:
    obj = _load(raw, limits.max_recs_bytes)
    _check_fields(obj, _RECS_REQUIRED, _RECS_OPTIONAL)
    items = obj["items"]
    if not isinstance(items, list):
        raise InvalidRecord(f"must be an array, got {_json_type(items)}", "items")
    parsed = []
    for entry in items:
        if not isinstance(entry, dict):
            raise InvalidRecord(f"entries must be objects, got {_json_type(entry)}", "items")
        _check_fields(entry, frozenset({"item_id", "score"}), frozenset({"reasons"}), prefix="items.")
        reasons = entry.get("reasons")
        if reasons is None:
            reasons = []
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise InvalidRecord("must be an array of strings", "items.reasons")
        parsed.append(
            RecItem(
                item_id=normalize_id(entry["item_id"], "items.item_id", limits),
                score=_finite(entry["score"], "items.score"),
                reasons=tuple(reasons),
            )
        )
    return Recommendations(
        user_id=normalize_id(obj["user_id"], "user_id", limits),
        items=tuple(parsed),
        model_version=_int(obj["model_version"], "model_version"),
        profile_version=_int(obj["profile_version"], "profile_version"),
        generated_at=_int(obj["generated_at"], "generated_at"),
        source_partition=_optional_int(obj.get("source_partition"), "source_partition"),
        source_offset=_optional_int(obj.get("source_offset"), "source_offset"),
        source_ts=_optional_int(obj.get("source_ts"), "source_ts"),
    )


def encode_recommendations(recs: Recommendations) -> bytes:
    return orjson.dumps(recs)


_RECS_REQUIRED = frozenset({"user_id", "items", "model_version", "profile_version", "generated_at"})
_RECS_OPTIONAL = frozenset({"source_partition", "source_offset", "source_ts"})


# ---------------------------------------------------------------- helpers


def _load(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise InvalidRecord("record value is null")
    if len(raw) > max_bytes:
        raise InvalidRecord(f"record is {len(raw)} bytes, over the {max_bytes}-byte limit")
    if not raw:
        raise InvalidRecord("record value is empty")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidRecord(f"top level must be a JSON object, got {_json_type(obj)}")
    return obj


def _check_fields(obj: dict, required: frozenset, optional: frozenset, prefix: str = "") -> None:
    missing = required - obj.keys()
    if missing:
        raise InvalidRecord("missing required field", prefix + sorted(missing)[0])
    extra = obj.keys() - required - optional
    if extra:
        raise InvalidRecord("unknown field", prefix + sorted(extra)[0])
    for name in required:
        if obj[name] is None:
            raise InvalidRecord("must not be null", prefix + name)


def _utf8(raw: bytes, field: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRecord("not valid UTF-8", field) from None


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRecord(f"must be an integer, got {_json_type(value)}", field)
    if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise InvalidRecord("integer out of 64-bit range", field)
    return value


def _optional_int(value: Any, field: str) -> int | None:
    return None if value is None else _int(value, field)


def _finite(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRecord(f"must be a number, got {_json_type(value)}", field)
    try:
        result = float(value)
    except OverflowError:
        raise InvalidRecord("number out of range", field) from None
    if not math.isfinite(result):
        raise InvalidRecord("must be a finite number", field)
    return result


def _timestamp(value: Any, field: str, now_ms: int, limits: Limits) -> int:
    ts = _int(value, field)
    if ts < limits.min_ts_ms:
        raise InvalidRecord(f"timestamp {ts} ms is before the minimum {limits.min_ts_ms}", field)
    if ts > now_ms + limits.max_future_skew_ms:
        raise InvalidRecord(
            f"timestamp {ts} ms is more than {limits.max_future_skew_ms} ms in the future "
            "(timestamps are milliseconds since the Unix epoch)",
            field,
        )
    return ts


def _text(value: Any, field: str, max_chars: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRecord(f"must be a string, got {_json_type(value)}", field)
    text = unicodedata.normalize("NFC", value)
    # Bound both forms: NFC can lengthen a string (U+0958 becomes two characters).
    if max(len(value), len(text)) > max_chars:
        raise InvalidRecord(f"longer than {max_chars} characters", field)
    return text


def _flat_map(value: Any, field: str, limits: Limits) -> dict[str, Scalar]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRecord(f"must be an object, got {_json_type(value)}", field)
    if len(value) > limits.max_map_entries:
        raise InvalidRecord(f"more than {limits.max_map_entries} entries", field)
    out: dict[str, Scalar] = {}
    for key, item in value.items():
        name = normalize_id(key, f"{field} key", limits)
        if name in out:
            raise InvalidRecord(f"duplicate key {name!r} after normalisation", field)
        if isinstance(item, bool):
            out[name] = item
        elif isinstance(item, (int, float)):
            if isinstance(item, int):
                _int(item, f"{field}.{name}")
            # The parser reads integer literals beyond 64 bits as floats: bound those too.
            elif not -_INT64_MAX - 1 <= _finite(item, f"{field}.{name}") <= _INT64_MAX:
                raise InvalidRecord("number out of 64-bit range", f"{field}.{name}")
            out[name] = item
        elif isinstance(item, str):
            if len(item) > limits.max_string_value_chars:
                raise InvalidRecord(f"longer than {limits.max_string_value_chars} characters", f"{field}.{name}")
            out[name] = item
        else:
            raise InvalidRecord(f"values must be scalars, got {_json_type(item)}", f"{field}.{name}")
    return out


_JSON_TYPES: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)

