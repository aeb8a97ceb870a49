"""The user-side state of a profile worker, without Kafka or Ray: folds, idempotence, restore, refresh."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from actors.core.clusters import fit_topic_clusters
from actors.core.ranking import rank_candidates
from actors.core.retrieval import ShardIndex
from actors.user_state import UserSideConfig, UserState
from streams.changelog import CorruptChangelog, decode_changelog, encode_changelog
from streams.records import Consumed, Event

D = 16


def _catalogue(n=60, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, D)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = ShardIndex(D)
    index.upsert([f"i{j}" for j in range(n)], v)
    return index, v


def _cfg(**kw):
    base = UserSideConfig()
    return replace(base, profile=replace(base.profile, dim=D, n_clusters=4), **kw)


def _events(n=300, users=7, items=60, seed=1, unknown=()):
    rng = np.random.default_rng(seed)
    kinds = ["view", "click", "cart", "purchase", "rate", "dislike", "skip"]
    out = []
    offsets: dict[int, int] = {}
    for t in range(n):
        u = int(rng.integers(users))
        item = f"i{int(rng.integers(items))}" if t not in unknown else f"new{t}"
        kind = kinds[int(rng.integers(len(kinds)))]
        p = u % 2
        off = offsets[p] = offsets.get(p, -1) + 1
        ev = Event(f"e{t}", f"u{u}", item, kind, 1_000_000 + 1000 * t, value=float(rng.integers(1, 6)) if kind == "rate" else None)
        out.append(Consumed(ev, "events", p, off, ev.ts))
    return out


def _state(index, clusters=None, **kw):
    return UserState(_cfg(**kw), index, clusters)


def _snapshots(state):
    return {u: state.snapshot(u) for u in state.user_ids()}


def test_batching_does_not_change_the_fold():
    index, v = _catalogue()
    clusters = fit_topic_clusters(v, 4)
    records = _events()
    one = _state(index, clusters)
    one.apply(records)
    many = _state(index, clusters)
    for i in range(0, len(records), 13):
        many.apply(records[i:i + 13])
    assert _snapshots(one) == _snapshots(many)
    assert len(one.bank) == 7 and all(one.profile_of(u).version > 0 for u in one.bank.user_ids)


def test_replayed_events_are_not_applied_twice():
    index, _ = _catalogue()
    records = _events()
    state = _state(index)
    state.apply(records[:200])
    before = _snapshots(state)
    assert state.apply(records[150:200]) == {}  # a replay after a crash: nothing new
    assert _snapshots(state) == before
    state.apply(records[150:])  # overlapping batch: only the new tail applies
    fresh = _state(index)
    fresh.apply(records)
    assert _snapshots(state) == _snapshots(fresh)


def test_restore_from_snapshots_then_continue_equals_one_run():
    index, _ = _catalogue()
    records = _events()
    whole = _state(index)
    whole.apply(records)
    first = _state(index)
    first.apply(records[:120])
    restored = _state(index)
    for user, (offset, blob) in _snapshots(first).items():
        restored.restore(user, offset, blob)
    # at-least-once: offsets committed up to 100 while profiles reached 120. Recovery rebuilds
    # the collaborative signals up to the committed offset and resumes there; the profiles skip the overlap.
    restored.fold_collaborative([r.value for r in records[:100]])
    assert len(restored) == len(first) and _snapshots(restored) == _snapshots(first)  # lazily decoded
    restored.apply(records[100:])
    assert _snapshots(restored) == _snapshots(whole)
    assert restored.covisit.neighbours == whole.covisit.neighbours


def test_unknown_items_only_feed_collaborative_signals():
    index, _ = _catalogue()
    records = _events(n=40, unknown={3, 9})
    state = _state(index)
    touched = state.apply(records)
    assert state.without_vector == 2
    assert records[3].value.user_id in state.applied
    assert set(touched) == {r.value.user_id for r in records}


def test_refresh_filters_seen_and_deleted_and_explains():
    index, _ = _catalogue()
    records = _events()
    state = _state(index, k=5)
    state.apply(records)
    index.delete(["i0", "i1", "i2"])
    state.forget_vectors()
    for r in state.refresh(state.bank.user_ids):
        seen = {e.value.item_id for e in records if e.value.user_id == r.user_id}
        ids = [i.item_id for i in r.items]
        assert len(ids) == 5 and len(set(ids)) == 5
        assert not set(ids) & seen
        assert not set(ids) & {"i0", "i1", "i2"}
        assert all(i.reasons for i in r.items)
        assert r.profile_version == state.profile_of(r.user_id).version


def test_cold_user_gets_popular_items():
    index, _ = _catalogue()
    state = _state(index, k=3)
    state.fold_collaborative([Event(f"x{t}", f"v{t}", "i7", "click", 1) for t in range(5)])
    state.apply([Consumed(Event("e", "newbie", "unknown-item", "click", 5), "events", 0, 0, 5)])
    r = state.refresh(["newbie"])[0]
    assert r.items[0].item_id == "i7" and r.items[0].reasons == ("popular now",)


def test_rank_candidates_falls_back_to_popularity_and_diversifies():
    v = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]
    nan = np.full(4, np.nan)
    ranked = rank_candidates(v, {"profile": nan, "popularity": np.array([1.0, 3.0, 2.0, 0.0])},
                             {"profile": 1.0, "popularity": 0.0}, 2)
    assert [r.index for r in ranked] == [1, 2]
    rel = {"profile": np.array([1.0, 0.99, 0.5, 0.1])}
    assert [r.index for r in rank_candidates(v, rel, {"profile": 1.0}, 2)] == [0, 1]
    assert [r.index for r in rank_candidates(v, rel, {"profile": 1.0}, 2, diversity=0.5)] == [0, 2]


def test_changelog_records_round_trip_and_refuse_foreign_bytes():
    rec = decode_changelog(b"u1", encode_changelog(3, 41, b"SRPF..."), "t[3]@0")
    assert (rec.user_id, rec.source_partition, rec.source_offset, rec.profile) == ("u1", 3, 41, b"SRPF...")
    with pytest.raises(CorruptChangelog, match=r"t\[3\]@7"):
        decode_changelog(b"u1", b'{"json": 1}', "t[3]@7")


def test_refreshing_an_unknown_user_creates_no_state():
    index, _ = _catalogue()
    state = _state(index, k=3)
    state.apply(_events(n=50))
    before = len(state)
    r = state.refresh(["stranger"])[0]
    assert len(r.items) == 3 and len(state) == before and "stranger" not in state.seen


def test_score_items_ranks_a_callers_candidates_like_the_refresh():
    index, _ = _catalogue()
    # one signal: standardising over another candidate set keeps its order (several
    # signals are standardised per set, so their sum may order a different set differently)
    state = _state(index, k=5, weights={"profile": 1.0})
    records = _events()
    state.apply(records)
    user = records[-1].value.user_id
    top = [i.item_id for i in state.refresh([user])[0].items]
    ranked = state.score_items(user, [*reversed(top), "unknown-item"])
    assert [i for i, _, _ in ranked[:5]] == top
    assert ranked[-1] == ("unknown-item", None, ())
    assert all(s is not None and r for _, s, r in ranked[:5])


def test_a_new_model_rebuilds_profiles_from_their_rings_also_after_a_restore():
    from actors.core.profile import rebuild, ring_entries
    from actors.core.snapshot import to_bytes

    index, _ = _catalogue()
    state = _state(index)
    records = _events()
    state.apply(records)
    old = {u: state.profile_of(u) for u in state.user_ids()}
    snaps = {u: state.snapshot(u) for u in state.user_ids()}
    new_index, new_vectors = _catalogue(seed=9)  # the same items under another encoder
    lookup = {f"i{j}": (new_vectors[j], 0) for j in range(len(new_vectors))}
    want = {u: to_bytes(rebuild(ring_entries(p), lookup, state.cfg.profile, version=p.version)) for u, p in old.items()}

    state.items = new_index
    state.set_model(1, None)
    assert {u: to_bytes(state.profile_of(u)) for u in want} == want  # versions kept, vectors replaced
    restored = UserState(_cfg(), new_index, None, model_version=1)
    for u, (offset, blob) in snaps.items():
        restored.restore(u, offset, blob, model_version=0)  # written under the old model
    assert {u: to_bytes(restored.profile_of(u)) for u in want} == want
    current = UserState(_cfg(), index, None, model_version=0)
    for u, (offset, blob) in snaps.items():
        current.restore(u, offset, blob, model_version=0)
    assert {u: current.snapshot(u)[1] for u in want} == {u: s[1] for u, s in snaps.items()}


def test_changelog_format_1_still_reads_with_model_version_0():
    import struct

    v1 = struct.pack("<4sBiq", b"SRCL", 1, 2, 17) + b"SRPF"
    rec = decode_changelog(b"u", v1, "t[2]@0")
    assert (rec.source_partition, rec.source_offset, rec.profile, rec.model_version) == (2, 17, b"SRPF", 0)
    assert decode_changelog(b"u", encode_changelog(2, 17, b"SRPF", 5)).model_version == 5
