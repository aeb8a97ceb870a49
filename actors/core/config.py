"""Hyper-parameters of the hierarchical interest profile, and the event weights they define.

:class:`ProfileConfig` is frozen and hashable: the profile code caches the arrays it
derives from one (slot layout, half-lives, the kind-weight table). Times are in
milliseconds, like ``Event.ts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from actors.core.errors import StreamrecError

__all__ = [
    "KINDS",
    "KIND_CODES",
    "ProfileConfig",
    "ProfileConfigError",
    "InvalidEventError",
    "kind_codes",
    "event_weights",
    "slot_half_lives",
]

# The event kinds of ``streams.records.EventKind``, in a fixed order: a kind's code
# is its index here, and the snapshot format stores codes, so only append.
KINDS: tuple[str, ...] = ("view", "click", "cart", "purchase", "rate", "dislike", "skip")
KIND_CODES: dict[str, int] = {k: i for i, k in enumerate(KINDS)}
_RATE = KIND_CODES["rate"]

_MINUTE_MS = 60_000
_DAY_MS = 24 * 60 * _MINUTE_MS


class ProfileConfigError(StreamrecError, ValueError):
    """A profile hyper-parameter is out of range, or a profile was built under other dimensions."""


class InvalidEventError(StreamrecError, ValueError):
    """An event cannot be applied (unknown kind, rating without a value, bad cluster id or vector)."""


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """Hyper-parameters of one user's hierarchical interest profile.

    Layers: L1 is time-decayed mass over ``n_clusters`` coarse topic clusters; L2 holds up
    to ``max_interests`` fine interest directions; L3 holds up to ``max_scenes`` per-scene
    session vectors, the sums of scenes evicted during the session (so the session vector
    is exact) and the negative vector. The long-term vector is the mass-weighted mean of
    the L2 interests (derived, not stored twice).
    """

    dim: int = 384
    """Embedding dimension d of item vectors."""
    max_interests: int = 8
    """M: most L2 interests a profile holds at once."""
    n_clusters: int = 64
    """C: number of coarse (L1) topic clusters; an item's cluster id is in ``[0, C)``."""
    max_scenes: int = 2
    """Most per-scene session vectors kept (least recently used scene evicted)."""
    ring_size: int = 32
    """R: recent (item, kind, ts, weight, scene) entries kept; ``rebuild`` replays them."""
    max_representatives: int = 3
    """Representative item ids kept per interest (the heaviest, with decay, so recent)."""

    spawn_threshold: float = 0.5
    """An event whose cosine to every interest is below this starts a new interest."""
    merge_threshold: float = 0.85
    """Two interests whose directions reach this cosine are merged into one."""

    # Signed weight of each event kind: positive kinds pull the profile towards the
    # item, negative kinds (and ratings below neutral) shrink and push it away.
    view_weight: float = 0.2
    click_weight: float = 0.5
    cart_weight: float = 1.0
    purchase_weight: float = 2.0
    dislike_weight: float = -1.0
    skip_weight: float = -0.3
    rate_neutral: float = 3.0
    """A rating of ``rate_neutral`` weighs 0; weight = (value - neutral) / scale, clipped."""
    rate_scale: float = 2.0
    rate_clip: float = 2.0
    """Rating weights are clipped to ``[-rate_clip, rate_clip]``."""

    long_half_life_ms: int = 30 * _DAY_MS
    """Half-life of interest masses, representative weights and L1 cluster mass."""
    short_half_life_ms: int = 30 * _MINUTE_MS
    """Half-life of the session and per-scene vectors' mass."""
    negative_half_life_ms: int = 7 * _DAY_MS
    """Half-life of the negative (dislike/skip) vector's mass."""
    session_gap_ms: int = 30 * _MINUTE_MS
    """An event more than this after the previous one starts a new session."""
    negative_shrink: float = 0.5
    """A negative event of weight -w multiplies the matching interest's mass by shrink**w."""
    prune_mass: float = 0.01
    """A component (interest, session, scene, negative) whose mass decays below this is dropped."""
    session_share: float = 0.3
    """Share of the query weight given to the session vector while the session is live."""

    def __post_init__(self) -> None:
        _check(self.dim >= 1 and self.dim <= 65535, "dim must be in [1, 65535]")
        _check(self.max_interests >= 1, "max_interests must be >= 1")
        _check(self.n_slots <= 32, "max_interests + max_scenes + 2 must be <= 32 (snapshot slot mask)")
        _check(1 <= self.n_clusters <= 65535, "n_clusters must be in [1, 65535]")
        _check(self.max_scenes >= 1, "max_scenes must be >= 1")
        _check(1 <= self.ring_size <= 255, "ring_size must be in [1, 255]")
        _check(1 <= self.max_representatives <= 255, "max_representatives must be in [1, 255]")
        _check(-1.0 <= self.spawn_threshold <= self.merge_threshold <= 1.0,
               "need -1 <= spawn_threshold <= merge_threshold <= 1")
        _check(0 < self.view_weight < self.click_weight < self.cart_weight < self.purchase_weight,
               "need 0 < view_weight < click_weight < cart_weight < purchase_weight")
        _check(self.dislike_weight < 0 and self.skip_weight < 0, "dislike_weight and skip_weight must be < 0")
        _check(self.rate_scale > 0 and self.rate_clip > 0, "rate_scale and rate_clip must be > 0")
        _check(min(self.long_half_life_ms, self.short_half_life_ms, self.negative_half_life_ms) > 0,
               "half-lives must be > 0 ms")
        _check(self.session_gap_ms >= 0, "session_gap_ms must be >= 0")
        _check(0.0 <= self.negative_shrink < 1.0, "negative_shrink must be in [0, 1)")
        _check(self.prune_mass > 0, "prune_mass must be > 0")
        _check(0.0 <= self.session_share < 1.0, "session_share must be in [0, 1)")

    # ---- the slot layout: interests [0, M), session rest M (scenes evicted this session),
    # ---- scenes [M+1, M+1+S), negative last
    @property
    def n_slots(self) -> int:
        """K = M + 1 + S + 1 vector slots per profile."""
        return self.max_interests + self.max_scenes + 2

    @property
    def session_slot(self) -> int:
        """The slot holding the sums of scenes evicted (LRU) during the current session."""
        return self.max_interests

    @property
    def negative_slot(self) -> int:
        return self.max_interests + 1 + self.max_scenes


@lru_cache(maxsize=64)
def slot_half_lives(cfg: ProfileConfig) -> np.ndarray:
    """(K,) float64 half-life in ms of each slot's mass (read-only)."""
    hl = np.full(cfg.n_slots, float(cfg.short_half_life_ms))
    hl[: cfg.max_interests] = cfg.long_half_life_ms
    hl[cfg.negative_slot] = cfg.negative_half_life_ms
    hl.flags.writeable = False
    return hl


@lru_cache(maxsize=64)
def _kind_weight_table(cfg: ProfileConfig) -> np.ndarray:
    """(len(KINDS),) float64 weight per kind code; the ``rate`` entry is unused."""
    table = np.array([cfg.view_weight, cfg.click_weight, cfg.cart_weight, cfg.purchase_weight,
                      0.0, cfg.dislike_weight, cfg.skip_weight])
    table.flags.writeable = False
    return table


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ProfileConfigError(message)


def kind_codes(kinds) -> np.ndarray:
    """(B,) uint8 codes of event kinds given as strings or as codes already."""
    if isinstance(kinds, np.ndarray) and kinds.dtype.kind in "iu":
        codes = kinds.astype(np.uint8)
        if codes.size and int(kinds.max()) >= len(KINDS):
            raise InvalidEventError(f"kind code {int(kinds.max())} is not one of 0..{len(KINDS) - 1}")
        return codes
    try:
        return np.fromiter((KIND_CODES[k] for k in kinds), dtype=np.uint8)
    except KeyError as exc:
        raise InvalidEventError(f"unknown event kind {exc.args[0]!r}; expected one of {KINDS}") from None


def event_weights(codes: np.ndarray, values: np.ndarray, cfg: ProfileConfig) -> np.ndarray:
    """(B,) float32 signed weight of each event: a kind's weight, or the rating's.

    ``values`` is float64 with NaN for "no value"; a ``rate`` event needs one.
    """
    w = _kind_weight_table(cfg)[codes]  # (B,) float64
    is_rate = codes == _RATE
    if is_rate.any():
        v = values[is_rate]
        if np.isnan(v).any():
            raise InvalidEventError("a 'rate' event needs a numeric value (the rating)")
        w = w.copy()
        w[is_rate] = np.clip((v - cfg.rate_neutral) / cfg.rate_scale, -cfg.rate_clip, cfg.rate_clip)
    return w.astype(np.float32)
