"""The hierarchical interest profile: decay, interests, negatives, ring, snapshots, rebuild, batching."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from actors.core.config import InvalidEventError, ProfileConfig, ProfileConfigError, event_weights, kind_codes
from actors.core.errors import StreamrecError
from actors.core.profile import ProfileBank, apply, apply_batch, new_profile, rebuild, ring_entries
from actors.core.profile_query import explain, long_term_vector, negative_vector, query_vectors, session_vector
from actors.core.snapshot import (
    SnapshotError,
    UnsupportedSnapshotVersion,
    from_bytes,
    snapshot_size_bound,
    to_bytes,
)

T0 = 1_700_000_000_000
MIN = 60_000
DAY = 24 * 60 * MIN
CFG = ProfileConfig(dim=8, max_interests=3, n_clusters=4, ring_size=6)
KINDS = ["view", "click", "cart", "purchase", "rate", "dislike", "skip"]


def e(i: int, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i] = 1
    return v


def mix(a: np.ndarray, b: np.ndarray, cos: float) -> np.ndarray:
    """A unit vector at cosine ``cos`` from unit ``a``, towards ``b`` (orthogonal to a)."""
    return (cos * a + np.sqrt(1 - cos * cos) * b).astype(np.float32)


def interests(p, cfg=CFG):
    return sorted(float(m) for m in p.mass[: cfg.max_interests] if m > 0)


def random_stream(n, n_users, cfg, seed):
    """Seeded events with merges, negatives, ratings, late arrivals, scene churn and session gaps."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((6, cfg.dim)).astype(np.float32)
    t = T0
    out = []
    for k in range(n):
        t += int(rng.choice([1, 5 * MIN, 40 * MIN, 2 * DAY], p=[0.5, 0.3, 0.15, 0.05]))
        kind = KINDS[int(rng.choice(7, p=[0.4, 0.2, 0.05, 0.05, 0.1, 0.1, 0.1]))]
        topic = int(rng.integers(6))
        vec = topics[topic] + 0.5 * rng.standard_normal(cfg.dim).astype(np.float32)
        late = int(rng.integers(0, 3 * 60 * MIN)) if rng.random() < 0.1 else 0
        out.append(dict(user=int(rng.integers(n_users)), vec=vec, cluster=topic % cfg.n_clusters,
                        item=f"i{int(rng.integers(40))}", kind=kind,
                        value=float(rng.integers(1, 6)) if kind == "rate" else None,
                        ts=t - late, scene=str(rng.choice(["home", "search", "cart", "détail"]))))
    return out


def fold(events, cfg, n_users):
    profiles = [new_profile(cfg) for _ in range(n_users)]
    for ev in events:
        apply(profiles[ev["user"]], ev["vec"], ev["cluster"], ev["item"], ev["kind"], ev["value"], ev["ts"],
              ev["scene"], cfg)
    return profiles


def assert_canonical(p, cfg):
    """Slots out of use are all zeros; no more than M interests."""
    free = ~(p.mass > 0)
    assert not p.vec[free].any() and not p.conc[free].any() and not p.touched[free].any()
    M = cfg.max_interests
    assert p.n_interests <= M
    assert all(i is None for i in p.rep_ids[free[:M]].ravel()) and not p.rep_w[free[:M]].any()


# ---------------------------------------------------------------- config and weights
def test_config_is_validated():
    with pytest.raises(ProfileConfigError):
        ProfileConfig(spawn_threshold=0.9, merge_threshold=0.5)
    with pytest.raises(ProfileConfigError):
        ProfileConfig(view_weight=0.6)  # views must weigh less than clicks
    with pytest.raises(ProfileConfigError):
        ProfileConfig(max_interests=40)
    assert issubclass(ProfileConfigError, StreamrecError)


def test_event_weights_order_kinds_and_map_ratings():
    cfg = ProfileConfig()
    w = event_weights(kind_codes(KINDS), np.array([np.nan] * 4 + [5.0, np.nan, np.nan]), cfg)
    assert w[0] < w[1] < w[2] < w[3] and w[5] < 0 and w[6] < 0
    assert w[4] == pytest.approx(1.0)
    rates = event_weights(kind_codes(["rate"] * 3), np.array([1.0, 3.0, 4.0]), cfg)
    assert rates.tolist() == [-1.0, 0.0, 0.5]
    with pytest.raises(InvalidEventError, match="rating"):
        event_weights(kind_codes(["rate"]), np.array([np.nan]), cfg)
    with pytest.raises(InvalidEventError, match="unknown event kind"):
        kind_codes(["like"])


# ---------------------------------------------------------------- decay
def test_masses_halve_after_exactly_one_half_life():
    cfg = ProfileConfig(dim=8, max_interests=3, n_clusters=4, session_gap_ms=10**12)
    p = apply(new_profile(cfg), e(0), 1, "a", "purchase", None, T0, "home", cfg)
    hl = cfg.long_half_life_ms
    apply(p, e(1), 2, "b", "purchase", None, T0 + hl, "home", cfg)  # orthogonal: a second interest
    assert interests(p, cfg) == [1.0, 2.0]
    assert p.coarse[1] == 1.0 and p.coarse[2] == 2.0
    assert p.rep_w[int(np.nonzero(p.mass[:3] == 1.0)[0][0]), 0] == 1.0      # representatives decay too
    # session scale: both events in one scene, a long half-life apart (gap disabled)
    assert p.mass[cfg.session_slot + 1] == np.float32(2.0 * 0.5 ** (hl / cfg.short_half_life_ms) + 2.0)
    # reading decays too, without changing the state
    _, w = query_vectors(p, T0 + 2 * hl, cfg)
    assert explain(p, T0 + 2 * hl, cfg)["long_term"]["strength"] == 1.5
    assert p.last_ts == T0 + hl and w.sum() == pytest.approx(1.0)


def test_late_events_enter_decayed_so_order_does_not_matter():
    cfg, hl = CFG, CFG.long_half_life_ms
    a = apply(new_profile(cfg), e(0), 0, "a", "click", None, T0, "home", cfg)
    apply(a, e(0), 0, "b", "cart", None, T0 + hl, "home", cfg)
    b = apply(new_profile(cfg), e(0), 0, "b", "cart", None, T0 + hl, "home", cfg)
    apply(b, e(0), 0, "a", "click", None, T0, "home", cfg)
    assert interests(a) == interests(b) == [1.25]
    assert a.last_ts == b.last_ts == T0 + hl


# ---------------------------------------------------------------- interests
def test_components_that_decay_below_prune_mass_are_dropped():
    cfg = CFG
    p = apply(new_profile(cfg), e(0), 0, "a", "click", None, T0, "home", cfg)   # 0.5
    apply(p, e(1), 1, "b", "dislike", None, T0, "home", cfg)                      # negative mass 1
    later = T0 + 7 * cfg.long_half_life_ms                                       # 0.5 / 128 < prune_mass
    apply(p, e(2), 2, "c", "view", None, later, "home", cfg)
    assert interests(p) == [pytest.approx(0.2)] and p.n_interests == 1
    assert negative_vector(p, later, cfg)[1] == 0.0 and "a" not in p.rep_ids.ravel().tolist()
    assert_canonical(p, cfg)


def test_similar_items_join_an_interest_and_novel_ones_spawn():
    p = new_profile(CFG)
    apply(p, e(0), 0, "a", "click", None, T0, "home", CFG)
    apply(p, mix(e(0), e(1), 0.9), 0, "b", "click", None, T0, "home", CFG)
    assert p.n_interests == 1
    apply(p, e(2), 1, "c", "click", None, T0, "home", CFG)
    assert p.n_interests == 2 and interests(p) == [0.5, 1.0]
    slot = int(p.mass[:3].argmax())
    assert p.rep_ids[slot].tolist()[:2] == ["a", "b"]
    assert float(p.conc[slot]) == pytest.approx(np.linalg.norm(e(0) + mix(e(0), e(1), 0.9)) / 2, abs=1e-3)


def test_at_capacity_the_two_closest_interests_merge_to_make_room():
    cfg = ProfileConfig(dim=8, max_interests=2, n_clusters=4, spawn_threshold=0.5, merge_threshold=0.9)
    p = new_profile(cfg)
    apply(p, e(0), 0, "a", "click", None, T0, "home", cfg)
    apply(p, mix(e(0), e(1), 0.4), 0, "b", "cart", None, T0, "home", cfg)   # cos 0.4: spawns
    assert p.n_interests == 2
    apply(p, e(2), 1, "c", "purchase", None, T0, "home", cfg)                # orthogonal to both
    assert p.n_interests == 2 and interests(p, cfg) == [1.5, 2.0]          # 0.5 + 1.0 merged
    merged = int(np.argmin(np.abs(p.mass[:2] - 1.5)))
    assert set(p.rep_ids[merged].tolist()) == {"a", "b", None}
    assert_canonical(p, cfg)


def test_at_capacity_an_event_joins_its_nearest_when_interests_are_far_apart():
    cfg = ProfileConfig(dim=8, max_interests=2, n_clusters=4, spawn_threshold=0.5, merge_threshold=0.9)
    p = new_profile(cfg)
    apply(p, e(0), 0, "a", "click", None, T0, "home", cfg)
    apply(p, e(1), 0, "b", "click", None, T0, "home", cfg)                   # orthogonal pair
    apply(p, mix(e(0), e(2), 0.3), 1, "c", "click", None, T0, "home", cfg)    # nearer e0 than e0 is to e1
    assert interests(p, cfg) == [0.5, 1.0]


def test_an_interest_that_drifts_onto_another_merges_with_it():
    cfg = ProfileConfig(dim=8, max_interests=3, n_clusters=4, spawn_threshold=0.3, merge_threshold=0.6)
    a, b = e(0), mix(e(0), e(1), 0.25)
    p = new_profile(cfg)
    apply(p, a, 0, "a", "click", None, T0, "home", cfg)
    apply(p, b, 0, "b", "click", None, T0, "home", cfg)
    assert p.n_interests == 2
    between = (a + b) / np.linalg.norm(a + b) * 0.999 + a * 0.001          # just nearer to a
    for k in range(30):
        apply(p, between, 0, f"x{k}", "purchase", None, T0, "home", cfg)
        if p.n_interests == 1:
            break
    assert p.n_interests == 1
    assert interests(p, cfg) == [pytest.approx(1.0 + 2.0 * (k + 1))]


def test_never_more_than_max_interests_and_free_slots_stay_zero():
    cfg = ProfileConfig(dim=16, max_interests=4, n_clusters=4, ring_size=8)
    for p in fold(random_stream(400, 3, cfg, seed=1), cfg, 3):
        assert 1 <= p.n_interests <= cfg.max_interests
        assert_canonical(p, cfg)


# ---------------------------------------------------------------- negative feedback
def test_a_dislike_shrinks_the_matching_interest_at_once():
    cfg = CFG
    p = new_profile(cfg)
    apply(p, e(0), 1, "a", "cart", None, T0, "home", cfg)
    apply(p, e(3), 2, "z", "cart", None, T0, "home", cfg)
    apply(p, mix(e(0), e(1), 0.8), 1, "a", "dislike", None, T0, "home", cfg)
    assert interests(p) == [0.5, 1.0]
    assert p.coarse[1] == 0.5 and p.coarse[2] == 1.0
    shrunk = int(np.argmin(np.where(p.mass[:3] > 0, p.mass[:3], 9)))
    assert "a" not in p.rep_ids[shrunk].tolist()
    vec, mass = negative_vector(p, T0, cfg)
    assert mass == 1.0 and vec @ mix(e(0), e(1), 0.8) == pytest.approx(1.0, abs=1e-3)
    apply(p, e(0), 1, "b", "skip", None, T0, "home", cfg)
    apply(p, e(0), 1, "c", "rate", 1.0, T0, "home", cfg)                    # rating 1: weight -1
    assert min(interests(p)) == pytest.approx(0.5 * 0.5**0.3 * 0.5)
    assert explain(p, T0, cfg)["negative"]["recent_items"] == ["c", "b", "a"]


def test_a_dislike_far_from_every_interest_only_feeds_the_negative_vector():
    p = apply(new_profile(CFG), e(0), 0, "a", "click", None, T0, "home", CFG)
    apply(p, e(5), 0, "q", "dislike", None, T0, "home", CFG)
    assert interests(p) == [0.5] and negative_vector(p, T0, CFG)[1] == 1.0


# ---------------------------------------------------------------- ring, sessions, queries
def test_the_ring_keeps_the_last_r_events_in_order():
    p = new_profile(CFG)
    for k in range(20):
        apply(p, e(k % 8), k % 4, f"i{k}", KINDS[k % 7], 4.0 if k % 7 == 4 else None, T0 + k, "s", CFG)
    ring = ring_entries(p)
    assert len(ring) == CFG.ring_size and p.version == 20
    assert [r.item_id for r in ring] == [f"i{k}" for k in range(14, 20)]
    assert [r.kind for r in ring] == [KINDS[k % 7] for k in range(14, 20)]
    assert [r.ts for r in ring] == [T0 + k for k in range(14, 20)]


def test_sessions_scenes_and_the_query_set():
    cfg = ProfileConfig(dim=8, max_interests=3, n_clusters=4, max_scenes=2)
    p = new_profile(cfg)
    for k, scene in enumerate(["home", "search", "home", "cart"]):
        apply(p, e(k % 2), 0, f"i{k}", "click", None, T0 + k * MIN, scene, cfg)
    assert sorted(n for n in p.scene_names.tolist() if n) == ["cart", "home"]  # "search" was evicted (LRU)
    v, m = session_vector(p, T0 + 4 * MIN, cfg)
    assert m > 0 and v @ (e(0) + e(1)) / np.sqrt(2) == pytest.approx(1.0, abs=1e-3)  # evicted scene kept
    vecs, w = query_vectors(p, T0 + 4 * MIN, cfg)
    assert vecs.shape == (3, 8) and w[-1] == pytest.approx(cfg.session_share) and w.sum() == pytest.approx(1)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-6)
    later = T0 + 3 * MIN + cfg.session_gap_ms + 1
    assert query_vectors(p, later, cfg)[0].shape == (2, 8)                   # session over
    apply(p, e(2), 0, "j", "view", None, later, "home", cfg)
    assert p.session_start == later and explain(p, later, cfg)["session"]["scenes"] == [
        {"scene": "home", "strength": pytest.approx(0.2)}]
    assert query_vectors(new_profile(cfg), T0, cfg)[0].shape == (0, 8)


def test_explain_is_plain_json():
    p = fold(random_stream(60, 1, CFG, seed=2), CFG, 1)[0]
    out = explain(p, p.last_ts, CFG)
    assert json.loads(json.dumps(out)) == out
    assert out["version"] == 60 and len(out["interests"]) == p.n_interests
    assert all(0 < len(i["items"]) <= CFG.max_representatives for i in out["interests"])
    assert out["coarse"] and sum(c["share"] for c in out["coarse"]) <= 1 + 1e-6
    lt, total = long_term_vector(p, CFG)
    assert total == pytest.approx(out["long_term"]["strength"]) and np.linalg.norm(lt) <= 1 + 1e-3


# ---------------------------------------------------------------- determinism, batching, rebuild
def test_replay_is_deterministic_to_the_byte():
    events = random_stream(200, 4, CFG, seed=3)
    first = [to_bytes(p) for p in fold(events, CFG, 4)]
    assert first == [to_bytes(p) for p in fold(events, CFG, 4)]


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_batched_updates_equal_one_by_one(chunk):
    cfg = ProfileConfig(dim=16, max_interests=4, n_clusters=4, ring_size=8)
    events = random_stream(600, 7, cfg, seed=4)
    expected = [to_bytes(p) for p in fold(events, cfg, 7)]
    bank = ProfileBank(cfg, capacity=2)                                     # grows while rows are added
    rows = bank.rows([f"u{ev['user']}" for ev in events])
    for lo in range(0, len(events), 128):
        part = events[lo:lo + 128]
        apply_batch(bank, rows[lo:lo + 128], np.stack([ev["vec"] for ev in part]), [ev["cluster"] for ev in part],
                    [ev["item"] for ev in part], [ev["kind"] for ev in part], [ev["value"] for ev in part],
                    [ev["ts"] for ev in part], [ev["scene"] for ev in part], cfg, chunk=chunk)
    assert [to_bytes(bank.get(int(r))) for r in bank.rows([f"u{u}" for u in range(7)])] == expected


def _fold_batched(events, cfg, n_users, *, batch=128, chunk=4096):
    bank = ProfileBank(cfg, capacity=2)
    rows = bank.rows([f"u{ev['user']}" for ev in events])
    for lo in range(0, len(events), batch):
        part = events[lo:lo + batch]
        apply_batch(bank, rows[lo:lo + batch], np.stack([ev["vec"] for ev in part]), [ev["cluster"] for ev in part],
                    [ev["item"] for ev in part], [ev["kind"] for ev in part], [ev["value"] for ev in part],
                    [ev["ts"] for ev in part], [ev["scene"] for ev in part], cfg, chunk=chunk)
    return [bank.get(int(r)) for r in bank.rows([f"u{u}" for u in range(n_users)])]


def test_batched_updates_equal_one_by_one_across_vector_blocks(monkeypatch):
    """The d-sized work runs in blocks of rows; tiny blocks split every step many ways."""
    import actors.core._step as step_module

    monkeypatch.setattr(step_module, "_BLOCK", 3)
    cfg = ProfileConfig(dim=16, max_interests=4, n_clusters=4, ring_size=8)
    events = random_stream(600, 7, cfg, seed=10)
    expected = [to_bytes(p) for p in fold(events, cfg, 7)]
    assert [to_bytes(p) for p in _fold_batched(events, cfg, 7, batch=300)] == expected


def test_batched_updates_equal_one_by_one_at_d384_single_threaded():
    """At d=384 the float16 conversions go through torch (in one call when single-threaded)."""
    torch = pytest.importorskip("torch")
    cfg = ProfileConfig(dim=384, max_interests=4, n_clusters=4, ring_size=8)
    events = random_stream(300, 5, cfg, seed=11)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = [to_bytes(p) for p in fold(events, cfg, 5)]
        assert [to_bytes(p) for p in _fold_batched(events, cfg, 5)] == expected
    finally:
        torch.set_num_threads(threads)


def test_very_late_events_whose_session_weight_underflows():
    """An event days older than its profile adds nothing to the session (its weight decays
    to 0 in float32) but still feeds its interest."""
    cfg = ProfileConfig(dim=8, max_interests=3, n_clusters=4, ring_size=6)
    events = [dict(ev, ts=ev["ts"] - (20 * DAY if k % 3 == 2 else 0))
              for k, ev in enumerate(random_stream(300, 3, cfg, seed=12))]
    profiles = fold(events, cfg, 3)
    assert [to_bytes(p) for p in _fold_batched(events, cfg, 3, batch=64)] == [to_bytes(p) for p in profiles]
    for p in profiles:
        assert_canonical(p, cfg)


def test_bank_stores_ids_as_codes_and_gives_strings_back():
    cfg = CFG
    p = fold(random_stream(80, 1, cfg, seed=13), cfg, 1)[0]
    bank = ProfileBank(cfg)
    row = int(bank.rows(["u"])[0])
    bank.put(row, p)
    assert bank.rep_ids.dtype == bank.ring_item.dtype == np.int32
    back = bank.get(row)
    assert back == p and to_bytes(back) == to_bytes(p)
    assert all(isinstance(i, str) for i in back.ring_item.tolist())
    before = to_bytes(bank.get(row))
    with pytest.raises(InvalidEventError, match="not None"):
        apply_batch(bank, [row], e(0)[None], [0], [None], ["click"], [None], [T0], ["home"], cfg)
    with pytest.raises(InvalidEventError, match="not None"):
        apply_batch(bank, [row], e(0)[None], [0], ["a"], ["click"], [None], [T0], [None], cfg)
    assert to_bytes(bank.get(row)) == before


def test_apply_writes_back_to_a_profile_with_strided_vectors():
    cfg = CFG
    events = random_stream(40, 1, cfg, seed=14)
    expected = fold(events, cfg, 1)[0]
    p = new_profile(cfg)
    p.vec = np.asfortranarray(p.vec)                                     # not C-contiguous
    for ev in events:
        apply(p, ev["vec"], ev["cluster"], ev["item"], ev["kind"], ev["value"], ev["ts"], ev["scene"], cfg)
    assert p == expected


def _lookup(events, scale=None):
    rng = np.random.default_rng(9)
    rot = np.linalg.qr(rng.standard_normal((8, 8)))[0].astype(np.float32) if scale else np.eye(8, dtype=np.float32)
    return {ev["item"]: (rot @ ev["vec"], ev["cluster"]) for ev in events}


@pytest.mark.parametrize("new_model", [False, True])
def test_rebuild_from_the_ring_equals_folding_its_events(new_model):
    events = [ev for ev in random_stream(300, 1, CFG, seed=5)]
    # one vector per item id, so a lookup can serve them
    table = {ev["item"]: ev for ev in events}
    events = [dict(ev, vec=table[ev["item"]]["vec"], cluster=table[ev["item"]]["cluster"]) for ev in events]
    p = fold(events, CFG, 1)[0]
    lookup = _lookup(events, scale=new_model)
    tail = [dict(ev, vec=lookup[ev["item"]][0]) for ev in events[-CFG.ring_size:]]
    oracle = fold(tail, CFG, 1)[0]
    rebuilt = rebuild(ring_entries(p), lookup, CFG)
    assert rebuilt == oracle and to_bytes(rebuilt) == to_bytes(oracle)
    assert rebuild(ring_entries(p), lookup, CFG, version=p.version + 1).version == p.version + 1
    assert rebuild(ring_entries(p), lambda item: None, CFG) == new_profile(CFG)      # every item gone


# ---------------------------------------------------------------- snapshots
def test_snapshot_round_trip_is_exact_and_restoring_changes_nothing():
    cfg = ProfileConfig(dim=16, max_interests=4, n_clusters=4, ring_size=8)
    events = random_stream(300, 2, cfg, seed=6)
    for p in fold(events, cfg, 2) + [new_profile(cfg)]:
        b = to_bytes(p)
        q = from_bytes(b)
        assert q == p and to_bytes(q) == b and q is not p
    # snapshot half-way, restore, continue: same bytes as never stopping
    half = fold(events[:150], cfg, 2)
    restored = [from_bytes(to_bytes(p)) for p in half]
    for ev in events[150:]:
        for ps in (half, restored):
            apply(ps[ev["user"]], ev["vec"], ev["cluster"], ev["item"], ev["kind"], ev["value"], ev["ts"],
                  ev["scene"], cfg)
    assert [to_bytes(p) for p in half] == [to_bytes(p) for p in restored]
    bank = ProfileBank(cfg)
    bank.put(int(bank.rows(["u"])[0]), restored[0])
    assert bank.get(0) == restored[0]


def test_snapshot_errors_are_clear():
    b = bytearray(to_bytes(fold(random_stream(20, 1, CFG, seed=7), CFG, 1)[0]))
    bad = bytearray(b)
    bad[4] = 99
    with pytest.raises(UnsupportedSnapshotVersion, match="format version 99"):
        from_bytes(bytes(bad))
    assert issubclass(UnsupportedSnapshotVersion, StreamrecError)
    with pytest.raises(SnapshotError, match="magic"):
        from_bytes(b"PK\x03\x04" + bytes(b[4:]))
    with pytest.raises(SnapshotError, match="truncated"):
        from_bytes(bytes(b[:-3]))
    with pytest.raises(SnapshotError, match="trailing"):
        from_bytes(bytes(b) + b"\0")


def test_snapshot_size_at_d384():
    cfg = ProfileConfig()                                                  # d=384, M=8, S=2, R=32, C=64
    p = new_profile(cfg)
    sizes = []
    for k in range(32):                                                    # 3 interests, 1 scene, full ring
        apply(p, e(k % 3, 384), k % 3, f"item{k % 12:04d}", "click", None, T0 + k * MIN, "home", cfg)
        sizes.append(len(to_bytes(p)))
    assert p.n_interests == 3 and len(to_bytes(p)) <= 4096
    apply(p, e(3, 384), 3, "item0003", "click", None, T0 + 32 * MIN, "home", cfg)  # a 4th interest
    # one more slot: f16 vector, mass, concentration, u32 time delta; P representatives; one L1 cluster
    assert len(to_bytes(p)) - sizes[-1] == (2 * 384 + 12) + 3 * (2 + 4) + (2 + 4)
    full = fold([dict(ev, vec=np.resize(ev["vec"], 384)) for ev in random_stream(400, 1, ProfileConfig(dim=8),
                                                                                  seed=8)], cfg, 1)[0]
    assert len(to_bytes(full)) <= snapshot_size_bound(cfg, max_id_bytes=8)
    assert snapshot_size_bound(cfg, max_id_bytes=8, vectors=5) < snapshot_size_bound(cfg, max_id_bytes=8)


# ---------------------------------------------------------------- contracts
def test_inputs_and_configs_are_checked():
    p = new_profile(CFG)
    with pytest.raises(InvalidEventError):
        apply(p, np.zeros(8), 0, "a", "click", None, T0, "home", CFG)
    with pytest.raises(InvalidEventError):
        apply(p, e(0), 99, "a", "click", None, T0, "home", CFG)
    with pytest.raises(ProfileConfigError, match="rebuild"):
        apply(p, e(0, 16), 0, "a", "click", None, T0, "home", ProfileConfig(dim=16, max_interests=3, n_clusters=4))
    assert p.version == 0


def test_bench_reports_rate_and_size():
    from actors.core.bench import bench_profile_updates

    out = bench_profile_updates(n_events=3000, n_users=50, dim=32, seed=0, single_events=50, sample_profiles=20)
    assert out["events_per_s"] > 0 and out["single_events_per_s"] > 0
    assert 0 < out["bytes_per_profile"] <= out["bytes_per_profile_max"] <= out["bytes_bound"]


OWN = ["config.py", "profile.py", "profile_query.py", "_step.py", "_half.py", "snapshot.py"]


@pytest.mark.parametrize("name", OWN)
def test_profile_core_reads_no_clock_and_never_pickles(name):
    tree = ast.parse((Path(__file__).resolve().parents[2] / "actors" / "core" / name).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"time", "datetime", "pickle", "marshal", "shelve"}
