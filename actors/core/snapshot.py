"""A versioned binary snapshot of one profile: ``to_bytes`` / ``from_bytes`` (no pickle).

Format version 1, little-endian, sections in this order:

* header ``_HEADER``: magic ``b"SRPF"``, format version (u8), flags (u8; bit 0: times
  are u32 deltas before ``last_ts``, else i64), dim (u16), M, S (u8), C (u16), R, P
  (u8), profile version, last_ts, session_start (i64), ring_next, ring_len (u8), the
  mask of slots in use (u32, bit k = slot k has mass > 0), string and L1 entry counts
  (u16);
* strings: u16 byte length + UTF-8, each distinct item id / scene name once;
* slots in use, in slot order: float16 directions (d each), masses (f32),
  concentrations (f32), last update times;
* scenes: name string index (u16, 0xFFFF = none) and LRU sequence (i64), S each;
* representatives of interests in use: M_used x P string indexes (u16) and weights (f32);
* L1: indexes (u16) and masses (f32) of the non-zero clusters;
* ring slots ``0 .. ring_len - 1`` in storage order (``ring_next`` says where the next
  event goes): item string index (u16), kind code (u8), ts, weight (f32), scene string
  index (u16).

The snapshot holds no stream offsets: whoever stores it records the offset of the last
applied event beside it and resumes after that offset.

Empty slots are all zeros in a profile, so they are not stored: the round trip is exact.
Size: see :func:`snapshot_size_bound`; at d=384 each stored vector costs 768 bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from actors.core.config import ProfileConfig, ProfileConfigError
from actors.core.errors import StreamrecError
from actors.core.profile import Profile, new_profile

__all__ = ["FORMAT_VERSION", "MAGIC", "SnapshotError", "UnsupportedSnapshotVersion", "to_bytes", "from_bytes",
           "snapshot_size_bound"]

MAGIC = b"SRPF"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sBBHBBHBBqqqBBIHH")
_NONE = 0xFFFF
_DELTA_TIMES = 1


class SnapshotError(StreamrecError):
    """Bytes that are not a readable profile snapshot (wrong magic, truncated, corrupt)."""


class UnsupportedSnapshotVersion(SnapshotError):
    """A snapshot written in a format version this code cannot read."""


def to_bytes(profile: Profile) -> bytes:
    """Serialise ``profile`` (format version 1). Deterministic: equal profiles, equal bytes."""
    p = profile
    M, P = p.rep_ids.shape
    K, d = p.vec.shape
    S, R, C = p.scene_names.shape[0], p.ring_item.shape[0], p.coarse.shape[0]
    last, ring_next, ring_len = int(p.meta[1]), int(p.meta[3]), int(p.meta[4])
    used = np.nonzero(p.mass > 0)[0]
    used_i = used[used < M]
    strings: dict[str, int] = {}

    def sid(s) -> int:
        return _NONE if s is None else strings.setdefault(s, len(strings))

    reps = np.array([sid(s) for s in p.rep_ids[used_i].ravel().tolist()], dtype="<u2")
    scenes = np.array([sid(s) for s in p.scene_names.tolist()], dtype="<u2")
    ring = np.array([(sid(i), sid(s)) for i, s in zip(p.ring_item[:ring_len].tolist(),
                                                      p.ring_scene[:ring_len].tolist())], dtype="<u2")
    ring = ring.reshape(ring_len, 2)
    times = np.concatenate([p.touched[used], p.ring_ts[:ring_len]])
    deltas = last - times
    flags = _DELTA_TIMES if deltas.size == 0 or (deltas.min() >= 0 and deltas.max() < 2**32) else 0
    nz = np.nonzero(p.coarse)[0]
    encoded = [s.encode("utf-8") for s in strings]
    if any(len(e) > 0xFFFF for e in encoded):
        raise SnapshotError("an item id or scene name is longer than 65535 UTF-8 bytes")
    mask = int(sum(1 << k for k in used.tolist()))
    parts = [
        _HEADER.pack(MAGIC, FORMAT_VERSION, flags, d, M, S, C, R, P, int(p.meta[0]), last, int(p.meta[2]),
                     ring_next, ring_len, mask, len(encoded), nz.size),
        b"".join(struct.pack("<H", len(e)) + e for e in encoded),
        p.vec[used].astype("<f2").tobytes(),
        p.mass[used].astype("<f4").tobytes(),
        p.conc[used].astype("<f4").tobytes(),
        _times(p.touched[used], last, flags),
        scenes.tobytes(),
        p.scene_seq.astype("<i8").tobytes(),
        reps.tobytes(),
        p.rep_w[used_i].astype("<f4").tobytes(),
        nz.astype("<u2").tobytes(),
        p.coarse[nz].astype("<f4").tobytes(),
        np.ascontiguousarray(ring[:, 0]).tobytes(),
        p.ring_kind[:ring_len].tobytes(),
        _times(p.ring_ts[:ring_len], last, flags),
        p.ring_w[:ring_len].astype("<f4").tobytes(),
        np.ascontiguousarray(ring[:, 1]).tobytes(),
    ]
    return b"".join(parts)


def _times(t: np.ndarray, last: int, flags: int) -> bytes:
    return (last - t).astype("<u4").tobytes() if flags & _DELTA_TIMES else t.astype("<i8").tobytes()


class _Reader:
    def __init__(self, b: bytes, offset: int) -> None:
        self.b, self.o = b, offset

    def take(self, dtype: str, n: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * n
        if self.o + size > len(self.b):
            raise SnapshotError(f"profile snapshot is truncated ({len(self.b)} bytes)")
        out = np.frombuffer(self.b, dtype=dtype, count=n, offset=self.o).copy()
        self.o += size
        return out


def from_bytes(b: bytes) -> Profile:
    """Read a snapshot written by :func:`to_bytes` (any supported format version)."""
    b = bytes(b)
    if len(b) < 5 or b[:4] != MAGIC:
        raise SnapshotError("not a streamrec profile snapshot (bad magic bytes)")
    if b[4] != FORMAT_VERSION:
        raise UnsupportedSnapshotVersion(
            f"profile snapshot format version {b[4]} is not supported (this streamrec reads version "
            f"{FORMAT_VERSION}); upgrade streamrec, or rebuild the profile by replaying its events")
    if len(b) < _HEADER.size:
        raise SnapshotError(f"profile snapshot is truncated ({len(b)} bytes)")
    (_, _, flags, d, M, S, C, R, P, version, last, session_start, ring_next, ring_len, mask, n_str,
     n_nz) = _HEADER.unpack_from(b)
    K = M + S + 2
    if mask >> K or ring_len > R or ring_next >= max(R, 1) or K > 32:
        raise SnapshotError("profile snapshot header is inconsistent")
    try:
        p = new_profile(ProfileConfig(dim=d, max_interests=M, max_scenes=S, n_clusters=C, ring_size=R,
                                      max_representatives=P))
    except ProfileConfigError as exc:
        raise SnapshotError(f"profile snapshot header is inconsistent: {exc}") from None
    r = _Reader(b, _HEADER.size)
    strings = []
    for _ in range(n_str):
        n = int(r.take("<u2", 1)[0])
        try:
            strings.append(r.take("u1", n).tobytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise SnapshotError(f"profile snapshot has an invalid string: {exc}") from None

    def lookup(idx: np.ndarray) -> list:
        if any(i != _NONE and i >= len(strings) for i in idx.tolist()):
            raise SnapshotError("profile snapshot refers to a missing string")
        return [None if i == _NONE else strings[i] for i in idx.tolist()]

    used = np.array([k for k in range(K) if mask >> k & 1], dtype=np.int64)
    used_i = used[used < M]
    p.meta[:] = (version, last, session_start, ring_next, ring_len)
    p.vec[used] = r.take("<f2", used.size * d).reshape(used.size, d)
    p.mass[used] = r.take("<f4", used.size)
    p.conc[used] = r.take("<f4", used.size)
    p.touched[used] = _read_times(r, used.size, last, flags)
    p.scene_names[:] = lookup(r.take("<u2", S))
    p.scene_seq[:] = r.take("<i8", S)
    p.rep_ids[used_i] = np.array(lookup(r.take("<u2", used_i.size * P)), dtype=object).reshape(-1, P)
    p.rep_w[used_i] = r.take("<f4", used_i.size * P).reshape(-1, P)
    nz = r.take("<u2", n_nz).astype(np.int64)
    if nz.size and nz.max() >= C:
        raise SnapshotError("profile snapshot has a cluster id out of range")
    p.coarse[nz] = r.take("<f4", n_nz)
    p.ring_item[:ring_len] = lookup(r.take("<u2", ring_len))
    p.ring_kind[:ring_len] = r.take("u1", ring_len)
    p.ring_ts[:ring_len] = _read_times(r, ring_len, last, flags)
    p.ring_w[:ring_len] = r.take("<f4", ring_len)
    p.ring_scene[:ring_len] = lookup(r.take("<u2", ring_len))
    if r.o != len(b):
        raise SnapshotError(f"profile snapshot has {len(b) - r.o} unexpected trailing bytes")
    return p


def _read_times(r: _Reader, n: int, last: int, flags: int) -> np.ndarray:
    if flags & _DELTA_TIMES:
        return last - r.take("<u4", n).astype(np.int64)
    return r.take("<i8", n)


def snapshot_size_bound(cfg: ProfileConfig, *, max_id_bytes: int = 64, vectors: int | None = None) -> int:
    """Most bytes ``to_bytes`` can write under ``cfg`` when ids have at most ``max_id_bytes``.

    ``vectors`` caps the slots in use (default: all M + S + 2); each costs ``2·dim + 16``
    bytes, so vectors dominate: at d=384, M=8, S=2 the 12 slots alone take 9,408 bytes.
    """
    M, S, R, P = cfg.max_interests, cfg.max_scenes, cfg.ring_size, cfg.max_representatives
    used = cfg.n_slots if vectors is None else min(vectors, cfg.n_slots)
    n_strings = M * P + S + 2 * R
    return (_HEADER.size + n_strings * (2 + max_id_bytes) + used * (2 * cfg.dim + 4 + 4 + 8)
            + S * (2 + 8) + M * P * (2 + 4) + cfg.n_clusters * (2 + 4) + R * (2 + 1 + 8 + 4 + 2))
