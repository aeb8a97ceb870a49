"""Reading a profile: the multi-interest query set for retrieval, and explanations.

Pure functions of (profile, now_ms, cfg); masses are decayed to ``now_ms`` on the fly.
"""

from __future__ import annotations

import numpy as np

from actors.core._half import to_f32
from actors.core.config import ProfileConfig, slot_half_lives
from actors.core.profile import Profile, check_compatible, ring_entries

__all__ = ["query_vectors", "interest_items", "session_vector", "explain", "long_term_vector", "negative_vector"]


def _decayed_mass(profile: Profile, now_ms: int, cfg: ProfileConfig) -> np.ndarray:
    dt = max(0, now_ms - profile.last_ts) if profile.version else 0
    return profile.mass * np.exp2(-dt / slot_half_lives(cfg)).astype(np.float32)   # (K,)


def _unit(v: np.ndarray) -> np.ndarray:
    v = to_f32(v)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def query_vectors(profile: Profile, now_ms: int, cfg: ProfileConfig,
                  scene: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The multi-interest query set: (Q, d) unit vectors, (Q,) float32 weights summing to 1.

    Interests come first, heaviest first, weighted by their mass decayed to ``now_ms``;
    while the session is live, its vector (see :func:`session_vector`) is appended with
    weight ``session_share``. Q <= M + 1; an empty profile gives Q = 0.
    """
    check_compatible(profile, cfg)
    M, d = cfg.max_interests, cfg.dim
    mass = _decayed_mass(profile, now_ms, cfg)
    slots = [j for j in np.argsort(-mass[:M], kind="stable").tolist() if mass[j] > 0]
    vecs = [_unit(profile.vec[slots])] if slots else []
    w = mass[slots].astype(np.float64)
    w = w / w.sum() if w.size else w
    sv, sm = session_vector(profile, now_ms, cfg, scene)
    if sm > 0:
        share = cfg.session_share if w.size else 1.0
        w = np.append((1 - share) * w, share)
        vecs.append(sv[None])
    if not vecs:
        return np.zeros((0, d), np.float32), np.zeros(0, np.float32)
    return np.concatenate(vecs).astype(np.float32), w.astype(np.float32)


def interest_items(profile: Profile, now_ms: int, cfg: ProfileConfig) -> list[list[str]]:
    """Representative item ids of each interest, heaviest first, in :func:`query_vectors` order."""
    mass = _decayed_mass(profile, now_ms, cfg)
    out = []
    for j in np.argsort(-mass[: cfg.max_interests], kind="stable").tolist():
        if mass[j] > 0:
            reps = sorted(((float(w), i) for i, w in zip(profile.rep_ids[j].tolist(), profile.rep_w[j]) if i is not None),
                          key=lambda t: -t[0])  # fmt: skip
            out.append([i for _, i in reps])
    return out


def session_vector(profile: Profile, now_ms: int, cfg: ProfileConfig,
                   scene: str | None = None) -> tuple[np.ndarray, float]:
    """((d,) unit session direction, its mass decayed to ``now_ms``); mass 0 when no
    session is live (``now_ms - last_ts > session_gap_ms``).

    The session sums this session's scene slots and the sums of scenes it evicted.
    With ``scene``, that scene's own vector is returned when the scene is tracked.
    """
    check_compatible(profile, cfg)
    if not profile.version or now_ms - profile.last_ts > cfg.session_gap_ms:
        return np.zeros(cfg.dim, np.float32), 0.0
    first, end = cfg.session_slot, cfg.session_slot + 1 + cfg.max_scenes
    slots = np.arange(first, end)
    if scene is not None:
        own = [first + 1 + i for i, n in enumerate(profile.scene_names.tolist()) if n == scene]
        if own and profile.mass[own[0]] > 0:
            slots = np.array(own)
    mass = _decayed_mass(profile, now_ms, cfg)[slots]
    if not (mass > 0).any():
        return np.zeros(cfg.dim, np.float32), 0.0
    total = (profile.mass[slots] * profile.conc[slots])[:, None] * to_f32(profile.vec[slots])   # (n, d)
    v = total.sum(0)
    n = float(np.linalg.norm(v))
    return (v / n if n > 0 else v).astype(np.float32), float(mass.sum())


def long_term_vector(profile: Profile, cfg: ProfileConfig) -> tuple[np.ndarray, float]:
    """((d,) float32 mean of the interests weighted by mass, total interest mass at last_ts)."""
    M = cfg.max_interests
    m = profile.mass[:M].astype(np.float64)
    s = (m * profile.conc[:M])[:, None] * to_f32(profile.vec[:M])          # (M, d)
    total = float(m.sum())
    return (s.sum(0) / total).astype(np.float32) if total > 0 else np.zeros(cfg.dim, np.float32), total


def negative_vector(profile: Profile, now_ms: int, cfg: ProfileConfig) -> tuple[np.ndarray, float]:
    """((d,) unit direction of the negative feedback, its mass decayed to now_ms)."""
    m = float(_decayed_mass(profile, now_ms, cfg)[cfg.negative_slot])
    if m <= 0:
        return np.zeros(cfg.dim, np.float32), 0.0
    return _unit(profile.vec[cfg.negative_slot]), m


def explain(profile: Profile, now_ms: int, cfg: ProfileConfig, *, top_clusters: int = 5) -> dict:
    """A plain (JSON-ready) dict describing the profile as of ``now_ms``.

    ``coarse``: the heaviest L1 clusters with decayed mass and share; ``interests``: the
    L2 interests, heaviest first, with weight, share, concentration, last update and
    representative items; ``session`` / ``long_term`` / ``negative``: L3 strengths.
    """
    check_compatible(profile, cfg)
    M, ses = cfg.max_interests, cfg.session_slot
    mass = _decayed_mass(profile, now_ms, cfg)
    dt = max(0, now_ms - profile.last_ts) if profile.version else 0
    coarse = profile.coarse * np.float32(np.exp2(-dt / cfg.long_half_life_ms))
    total_c = float(coarse.sum())
    top = [j for j in np.argsort(-coarse, kind="stable")[:top_clusters].tolist() if coarse[j] > 0]
    total_i = float(mass[:M].sum())
    interests = []
    for j in np.argsort(-mass[:M], kind="stable").tolist():
        if mass[j] <= 0:
            continue
        reps = sorted(((float(w), i) for i, w in zip(profile.rep_ids[j].tolist(), profile.rep_w[j])
                       if i is not None), key=lambda t: -t[0])
        interests.append({"slot": j, "weight": float(mass[j]), "share": float(mass[j]) / total_i,
                          "concentration": float(profile.conc[j]), "last_ts": int(profile.touched[j]),
                          "items": [i for _, i in reps]})
    live = bool(profile.version) and now_ms - profile.last_ts <= cfg.session_gap_ms
    session = float(mass[ses:ses + 1 + cfg.max_scenes].sum()) if live else 0.0
    scenes = [{"scene": name, "strength": float(mass[ses + 1 + i])}
              for i, name in enumerate(profile.scene_names.tolist()) if name is not None]
    negatives = [e.item_id for e in ring_entries(profile) if e.weight < 0]
    return {
        "version": profile.version,
        "last_ts": profile.last_ts if profile.version else None,
        "coarse": [{"cluster": j, "mass": float(coarse[j]), "share": float(coarse[j]) / total_c} for j in top],
        "interests": interests,
        "session": {"live": live, "start_ts": profile.session_start if profile.version else None,
                    "strength": session, "scenes": scenes},
        "long_term": {"strength": total_i},
        "session_vs_long_term": session / (session + total_i) if session + total_i > 0 else 0.0,
        "negative": {"strength": float(mass[cfg.negative_slot]), "recent_items": negatives[::-1]},
    }
