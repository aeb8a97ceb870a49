"""Dataset loaders and the synthetic generator, on small files written to tmp_path."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from streams.datasets import FORMATS, Dataset, load_dataset, synthetic
from streams.records import EVENT_KINDS, Event, ItemUpsert


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _check_invariants(ds: Dataset) -> None:
    assert all(isinstance(e, Event) for e in ds.events)
    assert all(isinstance(i, ItemUpsert) for i in ds.items)
    for e in ds.events:
        assert e.kind in EVENT_KINDS
        assert type(e.ts) is int
        assert e.user_id and e.item_id and e.event_id
        if e.kind == "rate":
            assert isinstance(e.value, float)
    assert len({e.event_id for e in ds.events}) == len(ds.events)
    assert [e.ts for e in ds.events] == sorted(e.ts for e in ds.events)
    item_ids = [i.item_id for i in ds.items]
    assert item_ids == sorted(set(item_ids))
    assert {e.item_id for e in ds.events} <= set(item_ids)


# ---------------------------------------------------------------- RecBole


def _recbole(root: Path, inter_rows: list[str], item_rows: list[str] | None = None) -> Path:
    # Columns deliberately out of the usual order: detection must go by header name.
    _write(root / "mini.inter", "timestamp:float\trating:float\titem_id:token\tuser_id:token\n" + "".join(inter_rows))
    items = item_rows if item_rows is not None else [
        "Animation Comedy\t1\t1995\tToy Story\n",
        "Action\t2\t\tGoldenEye\n",
        "\t3\t1996\tSome \"Quoted\" Film\n",
    ]
    _write(root / "mini.item", "class:token_seq\titem_id:token\trelease_year:token\tmovie_title:token_seq\n" + "".join(items))
    return root


def test_recbole_detects_columns_by_name(tmp_path):
    root = _recbole(tmp_path / "mini", ["881250949\t3\t1\t196\n", "881250000\t4.5\t3\t7\n"])
    ds = load_dataset(root)
    _check_invariants(ds)
    assert ds.name == "mini"
    assert ds.skipped == []
    first, second = ds.events
    assert first == Event(event_id="mini:3", user_id="7", item_id="3", kind="rate", ts=881250000000, value=4.5)
    assert second == Event(event_id="mini:2", user_id="196", item_id="1", kind="rate", ts=881250949000, value=3.0)
    items = {i.item_id: i for i in ds.items}
    assert items["1"].title == "Toy Story (1995)"
    assert items["1"].categories == ("Animation", "Comedy")
    assert items["1"].text == "Toy Story (1995). Genres: Animation, Comedy"
    assert items["2"].title == "GoldenEye" and items["2"].categories == ("Action",)
    assert items["3"].title == 'Some "Quoted" Film (1996)' and items["3"].categories == ()
    assert ds.n_users == 2


def test_recbole_records_unparseable_rows(tmp_path, caplog):
    rows = [
        "100\t3\t1\tu1\n",
        "101\tgood\t1\tu1\n",  # line 3: non-numeric rating
        "102\t3\t1\n",  # line 4: a column short
        "103\tnan\t2\tu2\n",  # line 5: not finite
        "104\t4\t2\tu2\n",
    ]
    with caplog.at_level(logging.WARNING, logger="streams.datasets"):
        ds = load_dataset(_recbole(tmp_path / "mini", rows), fmt="recbole")
    assert [e.event_id for e in ds.events] == ["mini:2", "mini:6"]
    assert [line for line, _ in ds.skipped] == [3, 4, 5]
    assert "rating 'good'" in ds.skipped[0][1] and ds.skipped[0][1].startswith("mini.inter:")
    assert "expected 4 columns, got 3" in ds.skipped[1][1]
    assert any("skipped 3" in r.getMessage() for r in caplog.records)


def test_recbole_event_time_order_is_stable(tmp_path):
    rows = ["20\t1\t1\te\n", "10\t2\t1\td\n", "20\t3\t2\tc\n", "10\t4\t2\tb\n", "20\t5\t3\ta\n"]
    ds = load_dataset(_recbole(tmp_path / "mini", rows))
    assert [e.user_id for e in ds.events] == ["d", "b", "e", "c", "a"]  # ties keep file order
    assert [e.ts for e in ds.events] == [10_000, 10_000, 20_000, 20_000, 20_000]


def test_recbole_missing_item_file_names_it(tmp_path):
    root = tmp_path / "mini"
    _write(root / "mini.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t3\t5\n")
    with pytest.raises(FileNotFoundError, match="mini.item"):
        load_dataset(root)


def test_recbole_missing_required_column(tmp_path):
    root = tmp_path / "mini"
    _write(root / "mini.inter", "user_id:token\titem_id:token\trating:float\n1\t1\t3\n")
    _write(root / "mini.item", "item_id:token\n1\n")
    with pytest.raises(ValueError, match="timestamp"):
        load_dataset(root)


# ---------------------------------------------------------------- MovieLens csv


_MOVIES = (
    "movieId,title,genres\n"
    '1,"American President, The (1995)",Comedy|Drama|Romance\n'
    "2,La cravate (1957),(no genres listed)\n"
    "3,Heat (1995),Action|Crime\n"
)
_RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n2,3,5.0,964981247\n"


def test_movielens_titles_genres_and_tags(tmp_path):
    root = tmp_path / "ml"
    _write(root / "movies.csv", _MOVIES)
    _write(root / "ratings.csv", _RATINGS)
    tags = ["1,1,Funny,1", "2,1,funny,2", "3,1,politics,3", "4,1,funny,4"] + [f"5,3,t{k},5" for k in range(12)]
    _write(root / "tags.csv", "userId,movieId,tag,timestamp\n" + "\n".join(tags) + "\n")
    ds = load_dataset(root)
    _check_invariants(ds)
    assert ds.name == "ml" and ds.skipped == []
    items = {i.item_id: i for i in ds.items}
    assert items["1"].title == "American President, The (1995)"
    assert items["1"].categories == ("Comedy", "Drama", "Romance")
    assert items["1"].text == "American President, The (1995). Genres: Comedy, Drama, Romance. Tags: Funny, politics"
    assert items["2"].categories == ()
    assert items["2"].text == "La cravate (1957)"
    assert items["3"].text.endswith("Tags: " + ", ".join(f"t{k}" for k in range(10)))
    assert [(e.user_id, e.item_id, e.ts, e.value) for e in ds.events] == [
        ("1", "2", 964981247000, 3.5),
        ("2", "3", 964981247000, 5.0),
        ("1", "1", 964982703000, 4.0),
    ]
    assert ds.events[0].event_id == "ml:3"
    assert ds.n_users == 2


def test_movielens_without_tags_and_with_bad_rows(tmp_path):
    root = tmp_path / "ml"
    _write(root / "movies.csv", _MOVIES + "4,Broken\n")
    _write(root / "ratings.csv", _RATINGS + "3,1,abc,964981247\n3,1,4.0\n")
    ds = load_dataset(root, fmt="movielens")
    assert "Tags" not in " ".join(i.text for i in ds.items)
    assert len(ds.events) == 3
    assert sorted(ds.skipped) == [
        (5, "movies.csv: expected 3 columns, got 2"),
        (5, "ratings.csv: rating 'abc' is not a finite number"),
        (6, "ratings.csv: expected 4 columns, got 3"),
    ]


def test_movielens_missing_movies_file(tmp_path):
    root = tmp_path / "ml"
    _write(root / "ratings.csv", _RATINGS)
    with pytest.raises(FileNotFoundError, match="movies.csv"):
        load_dataset(root)


# ---------------------------------------------------------------- generic


def test_generic_jsonl_with_mapping_seconds_and_items(tmp_path):
    lines = [
        {"uid": "u1", "iid": 10, "t": 1700000000, "action": "click"},
        {"uid": "u2", "iid": "11", "t": 1700000001.5, "action": "purchase", "price": 9.5, "where": "home"},
        {"uid": "u1", "iid": "12", "t": 1699999999, "action": "teleport"},  # unknown kind
        {"uid": "u3", "t": 1700000002, "action": "view"},  # no item
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\nnot json\n[1, 2]\n\n"
    path = _write(tmp_path / "log.jsonl", text)
    _write(tmp_path / "cat.csv", 'item_id,title,text,categories\n10,Ten,"About ten, really",a|b\n99,Unused,,\n')
    mapping = {"user_id": "uid", "item_id": "iid", "ts": "t", "kind": "action", "value": "price",
               "scene": "where", "ts_unit": "s", "items_path": "cat.csv"}
    ds = load_dataset(path, mapping=mapping)
    _check_invariants(ds)
    assert ds.name == "log"
    assert [(e.event_id, e.item_id, e.kind, e.ts, e.value, e.scene) for e in ds.events] == [
        ("log:1", "10", "click", 1_700_000_000_000, None, "default"),
        ("log:2", "11", "purchase", 1_700_000_001_500, 9.5, "home"),
    ]
    assert [line for line, _ in ds.skipped] == [3, 4, 5, 6]
    assert "teleport" in ds.skipped[0][1] and "item_id (column 'iid') is missing" in ds.skipped[1][1]
    assert "invalid JSON" in ds.skipped[2][1] and "expected a JSON object, got list" in ds.skipped[3][1]
    items = {i.item_id: i for i in ds.items}
    assert items["10"] == ItemUpsert(item_id="10", title="Ten", text="About ten, really", categories=("a", "b"))
    assert items["11"] == ItemUpsert(item_id="11")  # not in the catalogue: bare
    assert "99" in items


def test_generic_csv_default_kinds_and_ms(tmp_path):
    rated = _write(tmp_path / "rated.csv", "who,what,when,stars,id\na,x,1700000000123,4,e1\nb,y,1700000000001,,e2\n")
    ds = load_dataset(rated, mapping={"user_id": "who", "item_id": "what", "ts": "when", "value": "stars", "event_id": "id"})
    assert [(e.event_id, e.kind, e.ts, e.value) for e in ds.events] == [("e1", "rate", 1_700_000_000_123, 4.0)]
    assert ds.skipped == [(3, "rated.csv: kind 'rate' needs a value")]

    clicks = _write(tmp_path / "clicks.csv", "user_id,item_id,ts\na,x,5\nb,y,3\n")
    ds = load_dataset(clicks)
    _check_invariants(ds)
    assert [(e.user_id, e.kind, e.ts, e.value) for e in ds.events] == [("b", "click", 3, None), ("a", "click", 5, None)]
    assert [i.item_id for i in ds.items] == ["x", "y"] and all(i.title == "" for i in ds.items)


def test_generic_csv_missing_mapped_column(tmp_path):
    path = _write(tmp_path / "e.csv", "user_id,item_id,time\na,x,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['ts'\]"):
        load_dataset(path)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['action'\]"):  # explicitly mapped, so required
        load_dataset(path, mapping={"ts": "time", "kind": "action"})


@pytest.mark.parametrize(
    "mapping, message",
    [({"ts_unit": "us"}, "ts_unit"), ({"timestamp": "t"}, "unknown mapping key"), ({"items_path": "nope.csv"}, None)],
)
def test_generic_mapping_errors(tmp_path, mapping, message):
    path = _write(tmp_path / "e.csv", "user_id,item_id,ts\na,x,1\n")
    if message is None:
        with pytest.raises(FileNotFoundError, match="nope.csv"):
            load_dataset(path, mapping=mapping)
    else:
        with pytest.raises(ValueError, match=message):
            load_dataset(path, mapping=mapping)


# ---------------------------------------------------------------- dispatch and errors


def test_auto_detection(tmp_path):
    rb = _recbole(tmp_path / "rb", ["1\t3\t1\tu\n"])
    ml = tmp_path / "ml"
    _write(ml / "movies.csv", _MOVIES)
    _write(ml / "ratings.csv", _RATINGS)
    jl = _write(tmp_path / "e.jsonl", '{"user_id": "a", "item_id": "x", "ts": 1}\n')
    assert len(load_dataset(rb).events) == 1
    assert len(load_dataset(ml).items) == 3
    assert load_dataset(jl).events[0].kind == "click"


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: _write(p.with_suffix(".txt"), "x")])
def test_unknown_format_lists_supported(tmp_path, make):
    target = tmp_path / "data"
    made = make(target)
    with pytest.raises(ValueError, match="supported") as info:
        load_dataset(made or target)
    for fmt in FORMATS:
        assert fmt in str(info.value).lower()


def test_explicit_format_errors(tmp_path):
    path = _write(tmp_path / "e.csv", "user_id,item_id,ts\na,x,1\n")
    with pytest.raises(ValueError, match="unknown dataset format 'parquet'"):
        load_dataset(path, fmt="parquet")
    with pytest.raises(ValueError, match="directory"):
        load_dataset(path, fmt="recbole")
    with pytest.raises(ValueError, match="only to the generic"):
        load_dataset(tmp_path, fmt="movielens", mapping={"user_id": "u"})


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "events.jsonl"
    with pytest.raises(FileNotFoundError, match="nowhere") as info:
        load_dataset(missing)
    assert info.value.filename == str(missing)


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed():
    a = synthetic(users=30, items=80, events=600, seed=7)
    b = synthetic(users=30, items=80, events=600, seed=7)
    c = synthetic(users=30, items=80, events=600, seed=8)
    assert a == b
    assert a.events != c.events and a.truth != c.truth
    _check_invariants(a)
    _check_invariants(c)


def test_synthetic_shape_and_records():
    now = 1_800_000_000_000
    ds = synthetic(users=50, items=120, events=3000, seed=1, clusters=5, now_ms=now)
    assert len(ds.items) == 120 and len(ds.events) == 3000
    assert [e.event_id for e in ds.events] == [f"syn:{n}" for n in range(3000)]
    assert now - 31 * 86_400_000 <= ds.events[0].ts <= ds.events[-1].ts <= now
    assert ds.events[-1].ts - ds.events[0].ts > 25 * 86_400_000
    kinds = Counter(e.kind for e in ds.events)
    assert set(kinds) == EVENT_KINDS
    assert kinds.most_common(1)[0][0] == "view"
    assert all(e.value in (1.0, 2.0, 3.0, 4.0, 5.0) for e in ds.events if e.kind == "rate")
    assert all(e.value is None for e in ds.events if e.kind != "rate")
    prefs = ds.truth["user_clusters"]
    assert len(prefs) == 50 and all(1 <= len(p) <= 3 and set(p) <= set(range(5)) for p in prefs.values())
    for item in ds.items:
        cluster = ds.truth["item_clusters"][item.item_id]
        assert item.categories == (f"topic-{cluster}",)
        assert item.title.startswith(f"Item {item.item_id[1:]} about ")


def test_synthetic_cluster_signal():
    ds = synthetic(users=40, items=200, events=8000, seed=3)
    prefs, item_cluster = ds.truth["user_clusters"], ds.truth["item_clusters"]
    in_pref = [item_cluster[e.item_id] in prefs[e.user_id] for e in ds.events]
    assert sum(in_pref) / len(in_pref) > 0.8
    per_user = Counter(e.user_id for e in ds.events)
    hits = Counter(e.user_id for e, hit in zip(ds.events, in_pref) if hit)
    active = [u for u, n in per_user.items() if n >= 50]
    assert len(active) >= 20
    assert all(hits[u] / per_user[u] > 0.7 for u in active)
    negative = [hit for e, hit in zip(ds.events, in_pref) if e.kind in ("dislike", "skip")]
    assert sum(negative) / len(negative) < 0.4  # dislike/skip mostly outside the preferred clusters
    # Text separates clusters: items of one cluster share vocabulary, other clusters do not.
    words = {c: set() for c in set(item_cluster.values())}
    for item in ds.items:
        words[item_cluster[item.item_id]].update(item.title.split()[3:])
    assert all(not (words[a] & words[b]) for a in words for b in words if a < b)


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(ValueError):
        synthetic(users=5, items=3, events=10, seed=0, clusters=4)
    assert synthetic(users=1, items=20, events=0, seed=0, clusters=20).events == []
