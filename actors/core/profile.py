"""The hierarchical interest profile of one user, and its pure state transitions.

Layers (all masses decay exponentially with the config's half-lives):

* L1 coarse: mass over ``n_clusters`` topic clusters, fed by the item's cluster id.
* L2 fine: up to ``max_interests`` interests, each a unit direction (float16 storage,
  float32 math), a mass, a concentration, a last-update time and up to
  ``max_representatives`` representative item ids (heaviest with decay, so recent).
* L3: per-scene session vectors (LRU over ``max_scenes``) plus the sums of scenes evicted
  during the session, which together give the session vector exactly
  (:func:`~actors.core.profile_query.session_vector`); the session start; the negative
  vector (dislikes, skips, low ratings). The long-term vector is the mass-weighted mean
  of the interests (:func:`~actors.core.profile_query.long_term_vector`).
* A ring of the last ``ring_size`` events (item, kind, ts, weight, scene): the input
  of :func:`rebuild` when the embedding model changes.

``apply`` and ``apply_batch`` mutate state in place (documented, for speed) and are
deterministic: the same events in the same order give the same bytes. Time is always
passed in. The transition itself is described in :mod:`actors.core._step`; reading a
profile (query vectors, explanations) lives in :mod:`actors.core.profile_query`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import compress, repeat
from typing import NamedTuple

import numpy as np

from actors.core._step import LAST_TS, RING_LEN, RING_NEXT, SESSION_START, VERSION, step
from actors.core.config import (
    KINDS,
    InvalidEventError,
    ProfileConfig,
    ProfileConfigError,
    event_weights,
    kind_codes,
)

__all__ = [
    "Profile",
    "ProfileBank",
    "RingEntry",
    "new_profile",
    "apply",
    "apply_batch",
    "rebuild",
    "ring_entries",
    "check_compatible",
]

_O = object


def _shapes(cfg: ProfileConfig) -> dict[str, tuple[tuple[int, ...], type]]:
    K, M, P, R = cfg.n_slots, cfg.max_interests, cfg.max_representatives, cfg.ring_size
    return {
        "meta": ((5,), np.int64),                  # version, last_ts, session_start, ring_next, ring_len
        "coarse": ((cfg.n_clusters,), np.float32),
        "vec": ((K, cfg.dim), np.float16),         # unit directions; zeros when the slot is empty
        "mass": ((K,), np.float32),                # > 0 exactly when the slot is in use
        "conc": ((K,), np.float32),                # |sum w x| / sum w
        "touched": ((K,), np.int64),               # last update ts
        "rep_ids": ((M, P), _O),                   # str or None
        "rep_w": ((M, P), np.float32),
        "scene_names": ((cfg.max_scenes,), _O),    # str or None
        "scene_seq": ((cfg.max_scenes,), np.int64),  # version at last use (LRU)
        "ring_item": ((R,), _O),
        "ring_kind": ((R,), np.uint8),
        "ring_ts": ((R,), np.int64),
        "ring_w": ((R,), np.float32),
        "ring_scene": ((R,), _O),
    }


FIELDS: tuple[str, ...] = tuple(_shapes(ProfileConfig()))


@lru_cache(maxsize=64)
def _checked_shapes(cfg: ProfileConfig) -> dict[str, tuple[int, ...]]:
    """Field shapes under ``cfg`` (cached: checked on every :func:`apply`; do not mutate)."""
    return {n: s for n, (s, _) in _shapes(cfg).items()}


@dataclass(eq=False, slots=True)
class Profile:
    """One user's state (``K = M + S + 2`` vector slots: interests ``[0, M)``, the session
    rest ``M``, scenes ``[M+1, M+1+S)``, the negative slot last).

    Mutated in place by :func:`apply`; compare with ``==`` (exact, every field), copy
    with :meth:`copy`, serialise with :mod:`actors.core.snapshot`.
    """

    meta: np.ndarray
    coarse: np.ndarray
    vec: np.ndarray
    mass: np.ndarray
    conc: np.ndarray
    touched: np.ndarray
    rep_ids: np.ndarray
    rep_w: np.ndarray
    scene_names: np.ndarray
    scene_seq: np.ndarray
    ring_item: np.ndarray
    ring_kind: np.ndarray
    ring_ts: np.ndarray
    ring_w: np.ndarray
    ring_scene: np.ndarray

    @property
    def version(self) -> int:
        """Events applied so far (0: empty profile)."""
        return int(self.meta[VERSION])

    @property
    def last_ts(self) -> int:
        """Latest event time applied (ms); meaningless while ``version == 0``."""
        return int(self.meta[LAST_TS])

    @property
    def session_start(self) -> int:
        return int(self.meta[SESSION_START])

    @property
    def n_interests(self) -> int:
        return int((self.mass[: self.rep_ids.shape[0]] > 0).sum())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Profile):
            return NotImplemented
        return all(
            a.dtype == b.dtype and a.shape == b.shape and bool(np.all(a == b))
            for a, b in ((getattr(self, n), getattr(other, n)) for n in FIELDS)
        )

    def copy(self) -> Profile:
        return Profile(**{n: getattr(self, n).copy() for n in FIELDS})


class RingEntry(NamedTuple):
    """One recent event as the ring keeps it (``weight`` is the signed event weight)."""

    item_id: str
    kind: str
    ts: int
    weight: float
    scene: str


def new_profile(cfg: ProfileConfig) -> Profile:
    """An empty profile shaped by ``cfg``."""
    return Profile(**{n: np.zeros(s, dtype=t) if t is not _O else np.full(s, None, dtype=_O)
                      for n, (s, t) in _shapes(cfg).items()})


_STRING_FIELDS = ("rep_ids", "scene_names", "ring_item", "ring_scene")


def _code_shapes(cfg: ProfileConfig) -> dict[str, tuple[tuple[int, ...], type]]:
    """:func:`_shapes` with the string columns held as int32 codes of a :class:`_Strings` table."""
    return {n: (s, np.int32 if n in _STRING_FIELDS else t) for n, (s, t) in _shapes(cfg).items()}


class _Strings:
    """An append-only table of the item ids and scene names a bank has seen: code 0 stands
    for None (an empty entry, so zeroed columns are empty), codes 1.. for strings in order
    of first use. The transition compares and copies codes instead of Python strings."""

    def __init__(self) -> None:
        self._codes: dict[str | None, int] = {None: 0}
        self.names: list[str | None] = [None]
        """The name of each code (read-only)."""

    def encode(self, values) -> np.ndarray:
        """(B,) int32 codes of ids or scene names given as strings (None is refused)."""
        values = values.tolist() if isinstance(values, np.ndarray) else list(values)
        codes = self.lookup(values)
        if 0 in codes:
            raise InvalidEventError("item ids and scenes must be strings, not None")
        return np.array(codes, dtype=np.int32)

    def encode_array(self, names: np.ndarray) -> np.ndarray:
        """int32 codes of an object array of strings and None (None -> 0), same shape."""
        return np.array(self.lookup(names.ravel().tolist()), dtype=np.int32).reshape(names.shape)

    def decode_array(self, codes: np.ndarray) -> np.ndarray:
        """The object array (strings and None) of int32 codes, same shape."""
        out = np.empty(codes.shape, dtype=_O)
        out.ravel()[:] = list(map(self.names.__getitem__, codes.ravel().tolist()))
        return out

    def lookup(self, values: list) -> list[int]:
        """Codes of names (None -> 0), adding the names not seen yet."""
        codes = list(map(self._codes.get, values))
        if None in codes:                                    # names not seen yet
            for name in dict.fromkeys(compress(values, map(operator.is_, codes, repeat(None)))):
                self._codes[name] = len(self.names)
                self.names.append(name)
            codes = list(map(self._codes.get, values))
        return codes


class ProfileBank:
    """Many users' profiles as stacked columns (row r = one user), for :func:`apply_batch`.

    Item ids and scene names are stored as int32 codes of the bank's string table, so the
    transition compares and copies integers, not Python objects; :meth:`get` and
    :meth:`put` convert to and from :class:`Profile`'s strings. The table keeps every id
    and scene the bank has seen (bounded by the catalogue).
    """

    def __init__(self, cfg: ProfileConfig, capacity: int = 1024) -> None:
        self.cfg = cfg
        self._rows: dict[str, int] = {}
        self._users: list[str] = []
        self._strings = _Strings()
        self._alloc(max(1, capacity))

    def _alloc(self, capacity: int) -> None:
        n = len(self._users)
        for name, (shape, dtype) in _code_shapes(self.cfg).items():
            # np.full, not np.zeros: touch the pages now rather than in the first updates
            col = np.full((capacity, *shape), 0, dtype=dtype)
            if n:
                col[:n] = getattr(self, name)[:n]
            setattr(self, name, col)
        self._capacity = capacity

    def __len__(self) -> int:
        return len(self._users)

    @property
    def user_ids(self) -> list[str]:
        return list(self._users)

    def rows(self, user_ids: Iterable[str], *, create: bool = True) -> np.ndarray:
        """(B,) int64 row of each user; unseen users get new empty rows (or KeyError)."""
        out = []
        for u in user_ids:
            r = self._rows.get(u)
            if r is None:
                if not create:
                    raise KeyError(u)
                if len(self._users) == self._capacity:
                    self._alloc(2 * self._capacity)
                r = self._rows[u] = len(self._users)
                self._users.append(u)
            out.append(r)
        return np.array(out, dtype=np.int64)

    def get(self, row: int) -> Profile:
        """A copy of row ``row`` as a :class:`Profile`."""
        self._check_row(row)
        return Profile(**{n: self._strings.decode_array(getattr(self, n)[row]) if n in _STRING_FIELDS
                          else getattr(self, n)[row].copy() for n in FIELDS})

    def put(self, row: int, profile: Profile) -> None:
        """Overwrite row ``row`` with ``profile`` (e.g. restored from a snapshot)."""
        self._check_row(row)
        check_compatible(profile, self.cfg)
        for n in FIELDS:
            value = getattr(profile, n)
            getattr(self, n)[row] = self._strings.encode_array(value) if n in _STRING_FIELDS else value

    def _check_row(self, row: int) -> None:
        if not 0 <= row < len(self._users):
            raise IndexError(f"row {row} is not in this bank of {len(self._users)} profiles")


class _OneRow:
    """A profile's columns with a leading row axis of 1, shaped like a one-row bank: views
    of the numeric fields (writes reach the profile) and codes of a local string table for
    the string fields, written back to the profile by :meth:`close`. The transition only
    writes the ring's strings, so those start as zeros and only written entries go back."""

    _RING = ("ring_item", "ring_scene")

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.strings = _Strings()
        for n in FIELDS:
            value = getattr(profile, n)
            if n in _STRING_FIELDS:
                value = np.zeros(value.shape, np.int32)
            setattr(self, n, value[None])
        self._copied = not profile.vec.flags.c_contiguous
        if self._copied:
            self.vec = np.ascontiguousarray(self.vec)             # the transition needs C order
        reps, scenes = profile.rep_ids.ravel().tolist(), profile.scene_names.tolist()
        codes = self.strings.lookup(reps + scenes)
        self.rep_ids.flat = codes[:len(reps)]
        self.scene_names.flat = codes[len(reps):]

    def close(self) -> None:
        p, names = self.profile, self.strings.names
        if self._copied:
            p.vec[...] = self.vec[0]
        p.rep_ids.flat = [names[c] for c in self.rep_ids.ravel().tolist()]
        p.scene_names.flat = [names[c] for c in self.scene_names.ravel().tolist()]
        for n in self._RING:
            codes = getattr(self, n)[0]
            written = codes.nonzero()[0]                          # events' ids are never None
            getattr(p, n)[written] = [names[c] for c in codes[written].tolist()]


def apply(profile: Profile, item_vec, item_cluster: int, item_id: str, kind: str, value: float | None,
          ts_ms: int, scene: str, cfg: ProfileConfig) -> Profile:
    """Apply one event to ``profile`` **in place** and return it. O(d·M)."""
    check_compatible(profile, cfg)
    vecs, norm, cl, codes, ts = _inputs(np.asarray(item_vec, dtype=np.float32)[None], [item_cluster], [kind],
                                        [ts_ms], cfg)
    w = event_weights(codes, np.array([np.nan if value is None else value], dtype=np.float64), cfg)
    one = _OneRow(profile)
    step(one, np.zeros(1, np.int64), vecs / norm[:, None], cl, one.strings.encode([item_id]), codes, w, ts,
         one.strings.encode([scene]), cfg)
    one.close()
    return profile


def apply_batch(bank: ProfileBank, rows, item_vecs, item_clusters, item_ids: Sequence[str], kinds,
                values, ts_ms, scenes: Sequence[str], cfg: ProfileConfig, *, chunk: int = 4096) -> None:
    """Apply B events to the bank's rows **in place**; row r's events apply in their order.

    Shapes: rows (B,) from :meth:`ProfileBank.rows`, item_vecs (B, d), item_clusters (B,),
    kinds (B,) strings or codes, values (B,) floats with None/NaN for "no value", ts_ms (B,).
    Events are grouped into rounds (a row's k-th event in round k) and each round runs
    vectorised in chunks of at most ``chunk`` rows (the work of size d runs in smaller
    blocks inside a chunk; larger chunks spread the per-step overhead over more events);
    the result equals applying them one by one.
    """
    if bank.cfg != cfg:
        raise ProfileConfigError("the bank was built with another ProfileConfig")
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(bank)):
        raise IndexError("a row is not in the bank; get rows from ProfileBank.rows()")
    vecs, norm, cl, codes, ts = _inputs(np.asarray(item_vecs, dtype=np.float32), item_clusters, kinds, ts_ms, cfg)
    w = event_weights(codes, np.asarray(values, dtype=np.float64).reshape(-1), cfg)
    _fold(bank, rows, vecs, norm, cl, bank._strings.encode(item_ids), codes, w, ts, bank._strings.encode(scenes),
          cfg, chunk)


def _fold(cols, rows, vecs, norm, cl, items, codes, w, ts, scenes, cfg, chunk: int) -> None:
    """Apply events in rounds (see :func:`apply_batch`); event t's vector is vecs[t] / norm[t]."""
    n = rows.size
    if n == 0:
        return
    if not all(a.shape[0] == n for a in (vecs, norm, cl, items, codes, w, ts, scenes)):
        raise InvalidEventError("all per-event inputs need the same length")
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.r_[True, sorted_rows[1:] != sorted_rows[:-1]]
    rank = np.arange(n) - np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    perm = order[np.argsort(rank, kind="stable")]                          # round-major
    bounds = np.r_[0, np.cumsum(np.bincount(rank))]
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        for c0 in range(lo, hi, chunk):
            e = perm[c0:min(hi, c0 + chunk)]
            x = vecs.take(e, axis=0)                                       # (b, d) copy, normalised here
            x /= norm[e][:, None]                                          # rather than all B at once
            step(cols, rows[e], x, cl[e], items[e], codes[e], w[e], ts[e], scenes[e], cfg)


def _inputs(vecs, clusters, kinds, ts, cfg):
    """Checked inputs: (vecs (B, d), their norms (B,), clusters, kind codes, times)."""
    if vecs.ndim != 2 or vecs.shape[1] != cfg.dim:
        raise InvalidEventError(f"item vectors must be (B, {cfg.dim}); got {vecs.shape}")
    norm = np.sqrt(np.einsum("bd,bd->b", vecs, vecs))                     # (B,)
    if not (np.isfinite(norm).all() and (norm > 0).all()):
        raise InvalidEventError("item vectors must be finite and non-zero")
    cl = np.asarray(clusters, dtype=np.int64).reshape(-1)
    if cl.size and (cl.min() < 0 or cl.max() >= cfg.n_clusters):
        raise InvalidEventError(f"item cluster ids must be in [0, {cfg.n_clusters})")
    return vecs, norm, cl, kind_codes(kinds), np.asarray(ts, np.int64).reshape(-1)


def check_compatible(profile: Profile, cfg: ProfileConfig) -> None:
    """Raise :class:`ProfileConfigError` when ``profile`` was shaped by another config."""
    want = _checked_shapes(cfg)
    for n in ("coarse", "vec", "rep_ids", "scene_names", "ring_item"):
        if getattr(profile, n).shape != want[n]:
            raise ProfileConfigError(
                f"profile {n} has shape {getattr(profile, n).shape} but the config needs {want[n]}: "
                "rebuild the profile from its ring under the new config")


# ---------------------------------------------------------------- ring and rebuild
def ring_entries(profile: Profile) -> list[RingEntry]:
    """The ring's events, oldest first (the order they were applied in)."""
    n, R = int(profile.meta[RING_LEN]), profile.ring_item.shape[0]
    start = (int(profile.meta[RING_NEXT]) - n) % R
    out = []
    for i in ((start + k) % R for k in range(n)):
        out.append(RingEntry(profile.ring_item[i], KINDS[profile.ring_kind[i]], int(profile.ring_ts[i]),
                             float(profile.ring_w[i]), profile.ring_scene[i]))
    return out


Lookup = Callable[[str], "tuple[np.ndarray, int] | None"] | Mapping[str, "tuple[np.ndarray, int]"]


def rebuild(entries: Iterable[RingEntry], lookup: Lookup, cfg: ProfileConfig, *,
            version: int | None = None) -> Profile:
    """A new profile folded from ring entries with (new) item vectors and clusters.

    ``lookup(item_id)`` (or ``lookup[item_id]``) gives ``(vector (d,), cluster)``;
    entries whose item it lacks (None / missing) are skipped. The entries' stored
    weights are reused, so the result equals applying the same events one by one.
    ``version`` overrides the resulting version (default: events applied), so that
    profile versions can keep increasing across a rebuild.
    """
    get = lookup.get if isinstance(lookup, Mapping) else lookup
    kept, vecs, clusters = [], [], []
    for e in entries:
        found = get(e.item_id)
        if found is not None:
            kept.append(e)
            vecs.append(np.asarray(found[0], dtype=np.float32))
            clusters.append(int(found[1]))
    profile = new_profile(cfg)
    if kept:
        x, norm, cl, codes, ts = _inputs(np.stack(vecs), clusters, [e.kind for e in kept],
                                         [e.ts for e in kept], cfg)
        w = np.array([e.weight for e in kept], dtype=np.float32)
        one = _OneRow(profile)
        _fold(one, np.zeros(len(kept), np.int64), x, norm, cl, one.strings.encode([e.item_id for e in kept]),
              codes, w, ts, one.strings.encode([e.scene for e in kept]), cfg, 1)
        one.close()
    if version is not None:
        profile.meta[VERSION] = version
    return profile
