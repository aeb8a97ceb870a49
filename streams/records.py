"""The wire contracts: frozen, typed records decoded once at the boundary.

Kafka types stop at :mod:`streams`: a consumer hands the rest of streamrec a
:class:`Consumed` that carries the decoded record with its topic, partition and
offset beside it. JSON is the wire format (see :mod:`streams.codec`) and each
record type is documented by a versioned JSON Schema in ``streams/schemas/``.
Embedding vectors never travel in these records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar, get_args

__all__ = [
    "EventKind",
    "EVENT_KINDS",
    "Scalar",
    "Event",
    "ItemUpsert",
    "RecItem",
    "Recommendations",
    "Consumed",
]

EventKind = Literal["view", "click", "cart", "purchase", "rate", "dislike", "skip"]
EVENT_KINDS: frozenset[str] = frozenset(get_args(EventKind))

Scalar = str | int | float | bool

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Event:
    """One user interaction.

    ``ts`` is event time in milliseconds since the Unix epoch. ``value`` carries
    the rating for ``kind == "rate"`` (required there) and is free otherwise
    (dwell seconds, price, ...). ``context`` is a flat map of scalars.
    """

    event_id: str
    user_id: str
    item_id: str
    kind: EventKind
    ts: int
    scene: str = "default"
    value: float | None = None
    context: dict[str, Scalar] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class ItemUpsert:
    """Create, replace or delete (``deleted=True``) one catalogue item."""

    item_id: str
    title: str = ""
    text: str = ""
    categories: tuple[str, ...] = ()
    attributes: dict[str, Scalar] = field(default_factory=dict, hash=False)
    deleted: bool = False
    ts: int | None = None


@dataclass(frozen=True, slots=True)
class RecItem:
    """One recommended item with its fused score and human-readable reasons."""

    item_id: str
    score: float
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Recommendations:
    """A refreshed top-K list for one user, published to the ``recs`` topic.

    ``source_partition``/``source_offset``/``source_ts`` identify the event that
    triggered the refresh, so freshness (generated_at - source_ts) is measurable.
    """

    user_id: str
    items: tuple[RecItem, ...]
    model_version: int
    profile_version: int
    generated_at: int
    source_partition: int | None = None
    source_offset: int | None = None
    source_ts: int | None = None


@dataclass(frozen=True, slots=True)
class Consumed(Generic[T]):
    """A decoded record with where it came from."""

    value: T
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None = None
