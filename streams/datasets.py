"""Offline datasets as streamrec records: RecBole atomic files, MovieLens csv, generic logs, synthetic.

A :class:`Dataset` holds :class:`ItemUpsert` records sorted by id (every event's
item included) and :class:`Event` records in event-time order (a stable sort).
Rows that cannot be parsed are listed in ``Dataset.skipped`` as ``(line, "file:
reason")`` and counted in one warning, never dropped silently.

Formats: ``recbole`` (a directory with ``<name>.inter`` and ``<name>.item``;
columns found by the name before ``:`` in the header), ``movielens`` (a directory
with ``ratings.csv``, ``movies.csv`` and optionally ``tags.csv``) and ``generic``
(one ``.jsonl``/``.csv`` event file; ``mapping`` maps our field names to its
columns, plus ``ts_unit`` ``"s"``/``"ms"`` (default ``"ms"``) and ``items_path``, a
catalogue with columns item_id, title, text, categories (``|``-separated)).
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streams.records import EVENT_KINDS, Event, ItemUpsert

__all__ = ["Dataset", "FORMATS", "load_dataset", "synthetic"]

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("recbole", "movielens", "generic")

_GENERIC_FIELDS = ("user_id", "item_id", "kind", "ts", "value", "event_id", "scene")
_GENERIC_OPTIONS = ("ts_unit", "items_path")
_MAX_TAGS = 10
_NO_GENRES = "(no genres listed)"
# RecBole item-file column names, in order of preference.
_RB_COLUMNS = (("movie_title", "title", "name"), ("release_year", "year"), ("class", "genre", "genres"))


@dataclass(frozen=True, slots=True)
class Dataset:
    """A catalogue and an event log. ``truth`` holds generator ground truth (synthetic only)."""

    name: str
    items: list[ItemUpsert]
    events: list[Event]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        """Distinct users with at least one event."""
        return len({e.user_id for e in self.events})


def load_dataset(path: str | Path, *, fmt: str = "auto", mapping: Mapping[str, str] | None = None) -> Dataset:
    """Load a dataset from disk; ``fmt`` is ``"auto"`` or one of :data:`FORMATS`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "dataset path not found", str(path))
    if fmt == "auto":
        fmt = _detect(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; supported: 'auto', " + ", ".join(map(repr, FORMATS)))
    if mapping is not None and fmt != "generic":
        raise ValueError(f"mapping applies only to the generic format, not {fmt!r}")
    if fmt != "generic" and not path.is_dir():
        raise ValueError(f"the {fmt} format reads a directory, got the file {path}")
    if fmt == "recbole":
        return _load_recbole(path)
    if fmt == "movielens":
        return _load_movielens(path)
    return _load_generic(path, dict(mapping or {}))


# ---------------------------------------------------------------- shared helpers


class _BadRow(ValueError):
    """A row that cannot become a record; the reason lands in ``Dataset.skipped``."""


def _detect(path: Path) -> str:
    if path.is_dir() and any(path.glob("*.inter")):
        return "recbole"
    if path.is_dir() and (path / "ratings.csv").is_file():
        return "movielens"
    if path.is_file() and path.suffix.lower() in (".jsonl", ".csv"):
        return "generic"
    raise ValueError(
        f"cannot detect the dataset format of {path}; supported: recbole (a directory with *.inter and *.item), "
        "movielens (a directory with ratings.csv, movies.csv [, tags.csv]), generic (a .jsonl or .csv event file)"
    )


def _lines(path: Path, *, tsv: bool) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, fields)`` for every non-blank row, header included."""
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "dataset file not found", str(path))
    with path.open(encoding="utf-8-sig", newline="") as fh:
        if tsv:  # RecBole files are not quoted (titles may hold quotes): split, do not csv-parse
            for line_no, line in enumerate(fh, 1):
                if line.strip():
                    yield line_no, line.rstrip("\r\n").split("\t")
            return
        reader, start = csv.reader(fh), 1
        for fields in reader:
            if any(f.strip() for f in fields):
                yield start, fields
            start = reader.line_num + 1


def _table(path: Path, required: Iterable[str], skipped: list, *, tsv: bool = False) -> tuple[list[str], Iterator]:
    """Header names and ``(line, {column: text})`` rows; rows of the wrong width go to ``skipped``."""
    rows = _lines(path, tsv=tsv)
    _, header = next(rows, (0, []))
    names = [h.split(":", 1)[0].strip() if tsv else h.strip() for h in header]
    if missing := [c for c in required if c not in names]:
        rows.close()
        raise ValueError(f"{path}: missing column(s) {missing}; found {names}")

    def records() -> Iterator[tuple[int, dict[str, str]]]:
        for line, fields in rows:
            if len(fields) == len(names):
                yield line, dict(zip(names, fields))
            else:
                skipped.append((line, f"{path.name}: expected {len(names)} columns, got {len(fields)}"))

    return names, records()


def _parse(rows: Iterable[tuple[int, Any]], file: Path, parse: Callable[[int, Any], Any], skipped: list) -> list:
    out = []
    for line, row in rows:
        try:
            out.append(parse(line, row))
        except _BadRow as exc:
            skipped.append((line, f"{file.name}: {exc}"))
    return out


def _ident(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _BadRow(f"{what} must be a string or an integer, got {value!r}")
    if not (text := str(value).strip()):
        raise _BadRow(f"{what} is empty")
    return text


def _number(value: Any, what: str) -> float:
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x):
        raise _BadRow(f"{what} {value!r} is not a finite number")
    return x


def _rating_parser(name: str, user: str, item: str, ts: str, rating: str | None) -> Callable[..., Event]:
    """Rows of a ratings table (seconds timestamps) -> ``rate`` events (``click`` without a rating column)."""

    def parse(line: int, row: Mapping[str, str]) -> Event:
        return Event(
            event_id=f"{name}:{line}",
            user_id=_ident(row[user], user),
            item_id=_ident(row[item], item),
            kind="rate" if rating else "click",
            ts=round(_number(row[ts], ts) * 1000),
            value=_number(row[rating], rating) if rating else None,
        )

    return parse


def _item(item_id: str, title: str, genres: tuple[str, ...], tags: Iterable[str] = ()) -> ItemUpsert:
    parts = [title, "Genres: " + ", ".join(genres) if genres else "", "Tags: " + ", ".join(tags) if tags else ""]
    return ItemUpsert(item_id=item_id, title=title, text=". ".join(p for p in parts if p), categories=genres)


def _finish(name: str, catalogue: Iterable[ItemUpsert], events: list[Event], skipped: list) -> Dataset:
    by_id = {item.item_id: item for item in catalogue}
    if bare := {e.item_id for e in events} - by_id.keys():
        logger.info("%s: %d event item(s) missing from the catalogue; added without text", name, len(bare))
        by_id.update({i: ItemUpsert(item_id=i) for i in bare})
    events.sort(key=lambda e: e.ts)  # list.sort is stable: ties keep file order
    if skipped:
        logger.warning("%s: skipped %d unparseable row(s); first: %s", name, len(skipped), skipped[0])
    logger.info("%s: loaded %d items and %d events", name, len(by_id), len(events))
    return Dataset(name=name, items=[by_id[k] for k in sorted(by_id)], events=events, skipped=skipped)


# ---------------------------------------------------------------- RecBole atomic files and MovieLens csv


def _load_recbole(path: Path) -> Dataset:
    if len(inters := sorted(path.glob("*.inter"))) != 1:
        raise ValueError(f"{path}: expected exactly one .inter file, found {[p.name for p in inters]}")
    inter = inters[0]
    name, skipped = inter.stem, []
    names, rows = _table(inter, ("user_id", "item_id", "timestamp"), skipped, tsv=True)
    rating = "rating" if "rating" in names else None
    events = _parse(rows, inter, _rating_parser(name, "user_id", "item_id", "timestamp", rating), skipped)

    item_file = inter.with_suffix(".item")
    names, rows = _table(item_file, ("item_id",), skipped, tsv=True)
    title_col, year_col, genre_col = (next((c for c in cs if c in names), None) for cs in _RB_COLUMNS)

    def parse_item(line: int, row: Mapping[str, str]) -> ItemUpsert:
        title = row[title_col].strip() if title_col else ""
        if year := row[year_col].strip() if year_col else "":
            title = f"{title} ({year})" if title else year
        return _item(_ident(row["item_id"], "item_id"), title, tuple(row[genre_col].split()) if genre_col else ())

    return _finish(name, _parse(rows, item_file, parse_item, skipped), events, skipped)


def _load_movielens(path: Path) -> Dataset:
    name, skipped = path.name, []
    ratings = path / "ratings.csv"
    _, rows = _table(ratings, ("userId", "movieId", "rating", "timestamp"), skipped)
    events = _parse(rows, ratings, _rating_parser(name, "userId", "movieId", "timestamp", "rating"), skipped)
    tags = _movielens_tags(path / "tags.csv", skipped)

    def parse_movie(line: int, row: Mapping[str, str]) -> ItemUpsert:
        item_id = _ident(row["movieId"], "movieId")
        genres = tuple(g for g in (g.strip() for g in row["genres"].split("|")) if g and g != _NO_GENRES)
        return _item(item_id, row["title"].strip(), genres, tags.get(item_id, ()))

    movies = path / "movies.csv"
    _, rows = _table(movies, ("movieId", "title", "genres"), skipped)
    return _finish(name, _parse(rows, movies, parse_movie, skipped), events, skipped)


def _movielens_tags(path: Path, skipped: list) -> dict[str, list[str]]:
    """Up to :data:`_MAX_TAGS` distinct (case-insensitive) tags per movie, most frequent first, ties first seen."""
    if not path.is_file():
        return {}

    def parse_tag(line: int, row: Mapping[str, str]) -> tuple[str, str]:
        if not (tag := " ".join(row["tag"].split())):
            raise _BadRow("tag is empty")
        return _ident(row["movieId"], "movieId"), tag

    counts: dict[str, Counter[str]] = {}
    spelling: dict[tuple[str, str], str] = {}
    for item_id, tag in _parse(_table(path, ("movieId", "tag"), skipped)[1], path, parse_tag, skipped):
        spelling.setdefault((item_id, tag.casefold()), tag)
        counts.setdefault(item_id, Counter())[tag.casefold()] += 1
    return {i: [spelling[i, k] for k, _ in c.most_common(_MAX_TAGS)] for i, c in counts.items()}


# ---------------------------------------------------------------- generic event logs


def _records(path: Path, required: Iterable[str], skipped: list) -> Iterator[tuple[int, Mapping[str, Any]]]:
    if path.suffix.lower() == ".csv":
        yield from _table(path, required, skipped)[1]
        return
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"the generic format reads .jsonl or .csv files, got {path}")
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "dataset file not found", str(path))
    with path.open(encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                if not isinstance(obj := json.loads(line), dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            except ValueError as exc:  # json.JSONDecodeError included
                skipped.append((line_no, f"{path.name}: invalid JSON line: {exc}"))
                continue
            yield line_no, obj


def _get(row: Mapping[str, Any], col: str) -> Any:
    value = row.get(col)
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _load_generic(path: Path, mapping: dict[str, str]) -> Dataset:
    if unknown := sorted(set(mapping) - set(_GENERIC_FIELDS) - set(_GENERIC_OPTIONS)):
        raise ValueError(f"unknown mapping key(s) {unknown}; allowed: {list(_GENERIC_FIELDS + _GENERIC_OPTIONS)}")
    if (ts_unit := mapping.pop("ts_unit", "ms")) not in ("s", "ms"):
        raise ValueError(f"mapping['ts_unit'] must be 's' or 'ms', got {ts_unit!r}")
    items_path = mapping.pop("items_path", None)
    cols = {f: mapping.get(f, f) for f in _GENERIC_FIELDS}
    scale, rate_default, name, skipped = (1000 if ts_unit == "s" else 1), "value" in mapping, path.stem, []

    def field_of(row: Mapping[str, Any], our: str) -> Any:
        if (value := _get(row, cols[our])) is None:
            raise _BadRow(f"{our} (column {cols[our]!r}) is missing")
        return value

    def parse_event(line: int, row: Mapping[str, Any]) -> Event:
        value = None if (raw := _get(row, cols["value"])) is None else _number(raw, "value")
        kind = _get(row, cols["kind"]) or ("rate" if rate_default or cols["value"] in row else "click")
        if not isinstance(kind, str) or kind not in EVENT_KINDS:
            raise _BadRow(f"kind {kind!r} is not one of {sorted(EVENT_KINDS)}")
        if kind == "rate" and value is None:
            raise _BadRow("kind 'rate' needs a value")
        event_id, scene = _get(row, cols["event_id"]), _get(row, cols["scene"])
        return Event(
            event_id=f"{name}:{line}" if event_id is None else _ident(event_id, "event_id"),
            user_id=_ident(field_of(row, "user_id"), "user_id"),
            item_id=_ident(field_of(row, "item_id"), "item_id"),
            kind=kind,
            ts=round(_number(field_of(row, "ts"), "ts") * scale),
            scene="default" if scene is None else _ident(scene, "scene"),
            value=value,
        )

    required = [cols[f] for f in _GENERIC_FIELDS if f in ("user_id", "item_id", "ts") or f in mapping]
    events = _parse(_records(path, required, skipped), path, parse_event, skipped)
    catalogue: list[ItemUpsert] = []
    if items_path is not None:
        items_file = path.parent / items_path  # an absolute items_path replaces the parent
        catalogue = _parse(_records(items_file, ("item_id",), skipped), items_file, _generic_item, skipped)
    return _finish(name, catalogue, events, skipped)


def _generic_item(line: int, row: Mapping[str, Any]) -> ItemUpsert:
    categories = _get(row, "categories") or ()
    if isinstance(categories, str):
        categories = categories.split("|")
    title, text = _get(row, "title") or "", _get(row, "text") or ""
    if not isinstance(categories, list | tuple) or not all(isinstance(s, str) for s in (title, text, *categories)):
        raise _BadRow("title and text must be strings, categories a '|'-separated string or a list of strings")
    return ItemUpsert(
        item_id=_ident(_get(row, "item_id"), "item_id"),
        title=title.strip(),
        text=text.strip(),
        categories=tuple(c.strip() for c in categories if c.strip()),
    )


# ---------------------------------------------------------------- synthetic


_KINDS = ("view", "click", "cart", "purchase", "rate", "dislike", "skip")
_KIND_P_PREFERRED = (0.52, 0.24, 0.07, 0.04, 0.11, 0.005, 0.015)
_KIND_P_OTHER = (0.40, 0.08, 0.005, 0.002, 0.04, 0.20, 0.273)
_RATING_P_PREFERRED = (0.02, 0.05, 0.18, 0.375, 0.375)
_RATING_P_OTHER = (0.30, 0.30, 0.25, 0.10, 0.05)
_P_PREFERRED_CLUSTER = 0.85
_SPAN_MS = 30 * 86_400_000
_TOPIC_WORDS = tuple(
    tuple(words.split())
    for words in (
        "football stadium league coach striker referee tournament penalty goalkeeper trophy",
        "recipe oven garlic pasta baking spices soup chef dessert kitchen",
        "galaxy rocket orbit planet telescope astronaut nebula comet satellite cosmos",
        "guitar melody concert album drummer chorus orchestra lyrics jazz piano",
        "stocks dividend inflation portfolio bonds investor budget mortgage savings banking",
        "garden tomato compost seeds roses pruning soil orchard greenhouse tulips",
        "beach passport hotel island flight backpack cruise sightseeing tourist luggage",
        "compiler database algorithm server debugging kernel software programming cache code",
        "vaccine doctor surgery hospital therapy nurse diagnosis medicine clinic symptoms",
        "empire castle medieval pharaoh revolution dynasty knight archaeology ancient siege",
        "fashion dress denim runway jacket sneakers designer fabric boutique jewelry",
        "tiger elephant safari wolves rainforest parrots whale savanna insects reptiles",
    )
)
_SYLLABLES = ("ka", "lo", "mi", "zu", "te", "ra", "vo", "ni", "shi", "po", "de", "gu", "fa", "ye", "bo", "xi")


def _cluster_words(cluster: int) -> tuple[str, ...]:
    """A per-cluster vocabulary: real topic words first, then made-up words (disjoint across clusters)."""
    if cluster < len(_TOPIC_WORDS):
        return _TOPIC_WORDS[cluster]
    gen = np.random.default_rng(cluster)  # independent of the dataset seed: a cluster keeps its words
    return tuple(f"{''.join(gen.choice(_SYLLABLES, size=3))}{cluster}" for _ in range(10))


def _draw(rng: np.random.Generator, in_pref: np.ndarray, p_pref: tuple, p_other: tuple) -> np.ndarray:
    """One category index per event from ``p_pref`` where ``in_pref`` else from ``p_other``."""
    n = len(p_pref)
    return np.where(in_pref, rng.choice(n, in_pref.size, p=p_pref), rng.choice(n, in_pref.size, p=p_other))


def synthetic(
    users: int, items: int, events: int, seed: int, clusters: int = 8, now_ms: int = 1_700_000_000_000
) -> Dataset:
    """A seeded dataset with latent interest clusters; ``truth`` holds ``user_clusters`` and ``item_clusters``.

    Each item belongs to one cluster (category ``topic-<c>``, title and text drawn
    from that cluster's vocabulary); each user prefers 1-3 clusters. An event picks
    one of its user's clusters with probability 0.85, else any cluster, then an
    item by Zipf popularity inside it; dislike and skip mostly fall outside the
    user's clusters. Timestamps rise over the 30 days ending at ``now_ms``.
    """
    if users < 1 or clusters < 1 or items < clusters or events < 0:
        raise ValueError(f"need users >= 1, items >= clusters >= 1, events >= 0; got {users}, {items}, {clusters}")
    rng = np.random.default_rng(seed)
    item_cluster = rng.permutation(np.arange(items) % clusters)  # every cluster holds items
    n_pref = rng.integers(1, min(3, clusters) + 1, size=users)
    prefs = [tuple(sorted(rng.choice(clusters, size=k, replace=False).tolist())) for k in n_pref]
    pref_table = np.array([p + (p[0],) * (3 - len(p)) for p in prefs])  # (U, 3), padded with a repeat

    activity = 1.0 / (rng.permutation(users) + 1.0) ** 0.6
    ev_user = rng.choice(users, size=events, p=activity / activity.sum())  # (E,)
    preferred = pref_table[ev_user, (rng.random(events) * n_pref[ev_user]).astype(int)]
    explore = rng.random(events) >= _P_PREFERRED_CLUSTER
    ev_cluster = np.where(explore, rng.integers(0, clusters, size=events), preferred)
    in_pref = (pref_table[ev_user] == ev_cluster[:, None]).any(axis=1)

    ev_item = np.zeros(events, dtype=np.int64)
    for c in range(clusters):
        members = rng.permutation(np.flatnonzero(item_cluster == c))  # most popular first
        cdf = np.cumsum(1.0 / np.arange(1, len(members) + 1) ** 1.1)
        mask = ev_cluster == c
        ranks = np.searchsorted(cdf / cdf[-1], rng.random(int(mask.sum())), side="right")
        ev_item[mask] = members[np.minimum(ranks, len(members) - 1)]

    kinds = _draw(rng, in_pref, _KIND_P_PREFERRED, _KIND_P_OTHER)
    ratings = 1 + _draw(rng, in_pref, _RATING_P_PREFERRED, _RATING_P_OTHER)
    ts = now_ms - _SPAN_MS + np.sort(rng.integers(0, _SPAN_MS + 1, size=events))

    catalogue = []
    for i, c in enumerate(item_cluster.tolist()):
        words = [_cluster_words(c)[w] for w in rng.choice(10, size=4, replace=False).tolist()]
        title = f"Item {i} about {words[0]} {words[1]}"
        text = f"{title}. Also covers {words[2]} and {words[3]}."
        catalogue.append(ItemUpsert(item_id=f"i{i}", title=title, text=text, categories=(f"topic-{c}",)))
    columns = zip(ev_user.tolist(), ev_item.tolist(), kinds.tolist(), ratings.tolist(), ts.tolist())
    records = [
        Event(f"syn:{n}", f"u{u}", f"i{i}", _KINDS[k], t, value=float(r) if _KINDS[k] == "rate" else None)
        for n, (u, i, k, r, t) in enumerate(columns)
    ]
    truth = {
        "user_clusters": {f"u{u}": p for u, p in enumerate(prefs)},
        "item_clusters": {f"i{i}": c for i, c in enumerate(item_cluster.tolist())},
    }
    catalogue.sort(key=lambda item: item.item_id)
    return Dataset(name=f"synthetic-{seed}", items=catalogue, events=records, truth=truth)
