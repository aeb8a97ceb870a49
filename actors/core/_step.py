"""The profile transition, vectorised: one event for each of B *distinct* profile rows.

Both the one-profile path (``apply``) and the micro-batched path (``apply_batch``) run
this same code, so they agree to the bit. ``cols`` is any object with the profile
columns (see ``actors.core.profile.FIELDS``) stacked along a leading row axis; they
are updated in place.

Per event, in order:

1. decay every mass (slots, L1 clusters, representatives) from the row's last event
   time to ``now = max(last, ts)``; an older (late) event enters with its weight decayed
   by ``now - ts`` instead, so masses do not depend on arrival order;
2. a gap longer than ``session_gap_ms`` clears the session and scene slots;
3. components whose mass fell below ``prune_mass`` are dropped (slots freed);
4. the nearest interest by cosine is found (stored directions are unit vectors);
5. negative events (weight < 0) multiply the matching interest's mass (cosine at least
   ``spawn_threshold``) and its cluster's mass by ``negative_shrink ** |w|``, drop the
   item from its representatives and feed the negative vector;
6. positive events join the nearest interest if its cosine reaches ``spawn_threshold``;
   else they spawn a new interest in a free slot; with no free slot, the two closest
   interests are merged to make room when they are closer to each other than the event
   is to its nearest interest, otherwise the event joins its nearest interest. They also
   feed their scene's vector, the L1 mass of the item's cluster and the interest's
   representative items. An interest whose updated direction reaches
   ``merge_threshold`` with the event's runner-up (second nearest) interest absorbs it
   (checking only the runner-up keeps the step at one O(M·d) pass);
7. the event is written to the ring; version, last time and session start advance.

Every vector slot keeps a unit direction (float16), a mass (float32) and a concentration
``|sum w x| / sum w`` (float32), so merging and updating combine exact weighted sums.
Cleared slots are all zeros, which keeps snapshots canonical.

The session vector is not accumulated separately: the scene slots hold this session's
per-scene sums, and the session slot holds the sums of scenes evicted (LRU) during the
session, so session = sum over the session slot and the scene slots, exactly, at the
cost of one vector update per event instead of two.
"""

from __future__ import annotations

import numpy as np

from actors.core._half import round_f16
from actors.core.config import ProfileConfig, slot_half_lives

__all__ = ["step"]

_F32 = np.float32
# meta columns
VERSION, LAST_TS, SESSION_START, RING_NEXT, RING_LEN = range(5)


class _Rows:
    """The gathered numeric state of B rows (written back by :meth:`store`); vectors and
    object columns are read and written in ``cols`` directly."""

    def __init__(self, cols, rows: np.ndarray, cfg: ProfileConfig) -> None:
        self.cols, self.rows, self.cfg = cols, rows, cfg
        self.meta = cols.meta[rows]                  # (B, 5)
        self.mass = cols.mass[rows]                  # (B, K)
        self.conc = cols.conc[rows]                  # (B, K)
        self.touched = cols.touched[rows]            # (B, K)
        self.coarse = cols.coarse[rows]              # (B, C)
        self.rep_w = cols.rep_w[rows]                # (B, M, P)
        self.scene_seq = cols.scene_seq[rows]        # (B, S)
        self.live = self.mass > 0                    # (B, K) slots in use (decay may underflow mass)
        self.G: np.ndarray | None = None             # (B, M, d) float32 interest directions

    def store(self) -> None:
        c, r = self.cols, self.rows
        c.meta[r], c.mass[r], c.conc[r], c.touched[r] = self.meta, self.mass, self.conc, self.touched
        c.coarse[r], c.rep_w[r], c.scene_seq[r] = self.coarse, self.rep_w, self.scene_seq

    def vectors(self, idx, slots) -> np.ndarray:
        """(T, d) float32 copy of the stored directions."""
        return self.cols.vec[self.rows[idx], slots]

    def clear(self, idx: np.ndarray, slots: np.ndarray) -> None:
        """Zero slot ``slots[t]`` of local row ``idx[t]``."""
        if idx.size == 0:
            return
        cfg, c, r = self.cfg, self.cols, self.rows[idx]
        self.mass[idx, slots] = 0
        self.live[idx, slots] = False
        self.conc[idx, slots] = 0
        self.touched[idx, slots] = 0
        c.vec[r, slots] = 0
        interest = slots < cfg.max_interests
        if interest.any():
            ii, ss = idx[interest], slots[interest]
            c.rep_ids[r[interest], ss] = None
            self.rep_w[ii, ss] = 0
            if self.G is not None:
                self.G[ii, ss] = 0
        scene = (slots > cfg.session_slot) & (slots < cfg.negative_slot)
        if scene.any():
            ss = slots[scene] - cfg.session_slot - 1
            c.scene_names[r[scene], ss] = None
            self.scene_seq[idx[scene], ss] = 0

    def prune(self) -> None:
        weak = self.live & (self.mass < _F32(self.cfg.prune_mass))
        if weak.any():
            self.clear(*np.nonzero(weak))

    def add(self, idx, slots, w, x, ts, old) -> None:
        """Add weight ``w[t]`` of unit vector ``x[t]`` to slot ``slots[t]`` of row ``idx[t]``,
        whose stored direction is ``old[t]`` (float32, consumed). Rows with w <= 0 are skipped."""
        keep = w > 0
        if not keep.all():
            idx, slots, w, x, ts, old = idx[keep], slots[keep], w[keep], x[keep], ts[keep], old[keep]
        if idx.size == 0:
            return
        m = self.mass[idx, slots]                                        # (T,)
        old *= (m * self.conc[idx, slots])[:, None]
        old += w[:, None] * x                                            # (T, d) weighted sum
        self._set(idx, slots, old, m + w)
        self.touched[idx, slots] = np.maximum(self.touched[idx, slots], ts)

    def merge(self, idx, a, b, va, vb) -> None:
        """Merge slot ``b[t]`` (direction ``vb[t]``) into slot ``a[t]`` (``va[t]``); free ``b``."""
        if idx.size == 0:
            return
        ma, mb = self.mass[idx, a], self.mass[idx, b]
        va *= (ma * self.conc[idx, a])[:, None]
        va += (mb * self.conc[idx, b])[:, None] * vb
        self._set(idx, a, va, ma + mb)
        self.touched[idx, a] = np.maximum(self.touched[idx, a], self.touched[idx, b])
        if a.max() < self.cfg.max_interests:                             # interests, not scenes
            for t, ia, ib in zip(idx.tolist(), a.tolist(), b.tolist()):
                self._pool_representatives(t, ia, ib)
        self.clear(idx, b)

    def _set(self, idx, slots, s, new_m) -> None:
        """Store direction s/|s| (s: (T, d) sums, overwritten), mass and concentration."""
        norm = np.sqrt(np.einsum("td,td->t", s, s))                      # (T,)
        s /= np.where(norm > 0, norm, 1)[:, None]
        self.cols.vec[self.rows[idx], slots] = round_f16(s.copy())     # stored rounded to float16
        self.mass[idx, slots] = new_m
        self.live[idx, slots] = True
        self.conc[idx, slots] = norm / new_m
        if self.G is not None:
            # the unrounded direction: G is scratch for this step, identical in every path
            interest = slots < self.cfg.max_interests
            if interest.all():
                self.G[idx, slots] = s
            elif interest.any():
                self.G[idx[interest], slots[interest]] = s[interest]

    def _pool_representatives(self, t: int, a: int, b: int) -> None:
        ids, r = self.cols.rep_ids, self.rows[t]
        pool: dict[str, np.float32] = {}
        for j in (a, b):
            for item, w in zip(ids[r, j].tolist(), self.rep_w[t, j]):
                if item is not None:
                    pool[item] = pool.get(item, _F32(0)) + w
        best = sorted(pool.items(), key=lambda kv: -kv[1])[: self.cfg.max_representatives]
        ids[r, a] = None
        self.rep_w[t, a] = 0
        for p, (item, w) in enumerate(best):
            ids[r, a, p] = item
            self.rep_w[t, a, p] = w


def step(cols, rows, x, cluster, item, kind, w, ts, scene, cfg: ProfileConfig) -> None:
    """Apply event t to row ``rows[t]`` for every t (rows distinct). Shapes: (B,), x (B, d)."""
    M, S = cfg.max_interests, cfg.max_scenes
    ses, neg_slot = cfg.session_slot, cfg.negative_slot
    st = _Rows(cols, rows, cfg)
    B = rows.size
    ar = np.arange(B)
    meta = st.meta
    fresh = meta[:, VERSION] == 0
    last = np.where(fresh, ts, meta[:, LAST_TS])
    now = np.maximum(last, ts)

    # 1. decay to `now`; late events enter decayed by (now - ts)
    hl = slot_half_lives(cfg)                                            # (K,)
    decay = np.exp2(-(now - last)[:, None] / hl).astype(_F32)            # (B, K)
    st.mass *= decay
    st.coarse *= decay[:, :1]
    st.rep_w *= decay[:, :1, None]
    hl3 = hl[[0, ses, neg_slot]]                                         # long, short, negative
    w_eff = (w[:, None] * np.exp2(-(now - ts)[:, None] / hl3)).astype(_F32)  # (B, 3)

    # 2. session gap: clear the session and scene slots in use
    new_session = ~fresh & (ts - last > cfg.session_gap_ms)
    meta[:, SESSION_START] = np.where(fresh | new_session, ts, meta[:, SESSION_START])
    if new_session.any():
        sess = np.zeros_like(st.mass, dtype=bool)                        # (B, K)
        sess[:, ses:ses + S + 1] = new_session[:, None]
        sess[:, ses + 1:ses + S + 1] &= np.not_equal(cols.scene_names[rows], None) | st.live[:, ses + 1:ses + S + 1]
        sess[:, ses] &= st.live[:, ses]
        st.clear(*np.nonzero(sess))
    # 3. prune
    st.prune()

    # 4. nearest interest
    st.G = cols.vec[rows, :M]                                            # (B, M, d)
    cos = np.einsum("bmd,bd->bm", st.G, x)                               # (B, M)
    active = st.mass[:, :M] > 0
    cos[~active] = -np.inf
    nearest = cos.argmax(1)
    best = cos[ar, nearest]
    matched = best >= _F32(cfg.spawn_threshold)
    cos[ar, nearest] = -np.inf
    runner_up = cos.argmax(1)                                            # second nearest (or -inf)
    has_runner_up = cos[ar, runner_up] > -np.inf

    # 5. negative events
    ineg = np.nonzero(w < 0)[0]
    if ineg.size:
        shrink = (cfg.negative_shrink ** -w[ineg].astype(np.float64)).astype(_F32)
        hit = matched[ineg]
        im, jm = ineg[hit], nearest[ineg[hit]]
        st.mass[im, jm] *= shrink[hit]
        st.rep_w[im, jm] *= shrink[hit][:, None]
        drop = cols.rep_ids[rows[im], jm] == item[im][:, None]            # (T, P)
        if drop.any():
            di, dp = np.nonzero(drop)
            cols.rep_ids[rows[im[di]], jm[di], dp] = None
            st.rep_w[im[di], jm[di], dp] = 0
        st.coarse[ineg, cluster[ineg]] *= shrink
        negs = np.full(ineg.size, neg_slot)
        st.add(ineg, negs, -w_eff[ineg, 2], x[ineg], ts[ineg], st.vectors(ineg, negs))

    # 6. positive events
    ipos = np.nonzero(w > 0)[0]
    if ipos.size:
        _positive(st, ipos, active[ipos], nearest[ipos], best[ipos], matched[ipos],
                  np.where(has_runner_up, runner_up, -1)[ipos], x, cluster, item, w_eff, ts, scene)
    st.prune()

    # 7. ring, counters
    c = cols
    nxt = meta[:, RING_NEXT]
    c.ring_item[rows, nxt], c.ring_kind[rows, nxt], c.ring_ts[rows, nxt] = item, kind, ts
    c.ring_w[rows, nxt], c.ring_scene[rows, nxt] = w, scene
    meta[:, RING_NEXT] = (nxt + 1) % cfg.ring_size
    meta[:, RING_LEN] = np.minimum(meta[:, RING_LEN] + 1, cfg.ring_size)
    meta[:, VERSION] += 1
    meta[:, LAST_TS] = now
    st.store()


def _positive(st: _Rows, ip, active, nearest, best, matched, runner_up, x, cluster, item, w_eff, ts,
              scene) -> None:
    cfg = st.cfg
    M = cfg.max_interests
    wl, ws = w_eff[ip, 0], w_eff[ip, 1]
    xp, tsp = x[ip], ts[ip]
    room = active.sum(1) < M
    spawned = ~matched & room
    target = np.where(spawned, (~active).argmax(1), nearest)            # (P,)
    full = ~matched & ~room
    if M >= 2 and full.any():
        q = np.nonzero(full)[0]
        g = st.G[ip[q]]                                                  # (Q, M, d)
        pair = np.einsum("qmd,qnd->qmn", g, g)                          # (Q, M, M)
        pair[:, np.tril(np.ones((M, M), dtype=bool))] = -np.inf
        flat = pair.reshape(q.size, -1).argmax(1)
        closer = pair.reshape(q.size, -1)[np.arange(q.size), flat] >= best[q]
        if closer.any():
            q, a, b = q[closer], flat[closer] // M, flat[closer] % M
            st.merge(ip[q], a, b, st.G[ip[q], a], st.G[ip[q], b])
            target[q] = b
            spawned[q] = True

    st.add(ip, target, wl, xp, tsp, st.G[ip, target])
    scenes = _scene_slots(st, ip, scene[ip])
    st.add(ip, scenes, ws, xp, tsp, st.vectors(ip, scenes))
    st.coarse[ip, cluster[ip]] += wl
    _add_representatives(st, ip, target, item[ip], wl)

    # an interest that drifted onto the event's runner-up interest absorbs it
    joined = ~spawned & (wl > 0) & (runner_up >= 0)
    if joined.any():
        ij, tj, kj = ip[joined], target[joined], runner_up[joined]
        close = np.einsum("jd,jd->j", st.G[ij, tj], st.G[ij, kj]) >= _F32(cfg.merge_threshold)
        if close.any():
            i2, a, b = ij[close], np.minimum(tj[close], kj[close]), np.maximum(tj[close], kj[close])
            st.merge(i2, a, b, st.G[i2, a], st.G[i2, b])


def _scene_slots(st: _Rows, ip, scenes) -> np.ndarray:
    """(P,) slot of each event's scene; a new scene takes a free slot or the least
    recently used one, whose sums move to the session slot."""
    cfg, c = st.cfg, st.cols
    first = cfg.session_slot + 1
    names = c.scene_names[st.rows[ip]]                                   # (P, S)
    hit = names == scenes[:, None]
    has = hit.any(1)
    empty = np.equal(names, None)
    lru = np.where(empty.any(1), empty.argmax(1), st.scene_seq[ip].argmin(1))
    idx = np.where(has, hit.argmax(1), lru)                              # (P,)
    slots = idx + first
    if not has.all():
        new = np.nonzero(~has)[0]
        evict = new[~empty[new].any(1) & st.live[ip[new], slots[new]]]
        if evict.size:
            rest = np.full(evict.size, cfg.session_slot)
            st.merge(ip[evict], rest, slots[evict], st.vectors(ip[evict], rest), st.vectors(ip[evict], slots[evict]))
        used = new[~empty[new, idx[new]]]
        st.clear(ip[used], slots[used])
        c.scene_names[st.rows[ip[new]], idx[new]] = scenes[new]
    st.scene_seq[ip, idx] = st.meta[ip, VERSION] + 1
    return slots


def _add_representatives(st: _Rows, ip, target, items, wl) -> None:
    keep = wl > 0
    ip, target, items, wl = ip[keep], target[keep], items[keep], wl[keep]
    r = st.rows[ip]
    ids = st.cols.rep_ids[r, target]                                     # (T, P)
    ws = st.rep_w[ip, target]                                            # (T, P)
    hit = ids == items[:, None]
    has = hit.any(1)
    pos = np.where(has, hit.argmax(1), ws.argmin(1))
    cur = ws[np.arange(ip.size), pos]
    new_w = np.where(has, cur + wl, wl)
    write = np.nonzero(has | (wl > cur))[0]
    st.cols.rep_ids[r[write], target[write], pos[write]] = items[write]
    st.rep_w[ip[write], target[write], pos[write]] = new_w[write]
