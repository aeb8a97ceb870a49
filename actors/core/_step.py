"""The profile transition, vectorised: one event for each of B *distinct* profile rows.

Both the one-profile path (``apply``) and the micro-batched path (``apply_batch``) run
this same code, so they agree to the bit. ``cols`` is any object with the profile
columns (see ``actors.core.profile.FIELDS``) stacked along a leading row axis, the
string columns as int32 codes (0: none) and ``vec`` C-contiguous; they are updated in
place.

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

How it runs (the arithmetic above is fixed to the bit; only its grouping is chosen for
speed): the bookkeeping runs vectorised over all B rows, while everything of size d runs
in blocks of ``_BLOCK`` rows, so that the float32 copies stay in cache. Directions are
stored as float16 and widened when read, gathered with ``np.take`` from a flat (rows * K,
d) view; cosines are computed for the active interests only, as (row, slot) pairs; and
the vector updates of a step run as two batches (the positive events' interests, checked
against their runner-up on the way; then their scenes together with the negative events'
negative slot). Item ids and scene names arrive as int32 codes, so they are compared and
copied as integers.
"""

from __future__ import annotations

import numpy as np

from actors.core._half import to_f16, to_f32
from actors.core.config import ProfileConfig, slot_half_lives

__all__ = ["step"]

_F32 = np.float32
_BLOCK = 512  # rows (or (row, slot) pairs) per vector block: (512, d) float32 is 0.75 MiB at d=384
# meta columns
VERSION, LAST_TS, SESSION_START, RING_NEXT, RING_LEN = range(5)


class _Rows:
    """The gathered state of B rows (written back by :meth:`store`); the vectors and the
    ring are read and written in ``cols`` directly."""

    def __init__(self, cols, rows: np.ndarray, cfg: ProfileConfig) -> None:
        self.cols, self.rows, self.cfg = cols, rows, cfg

        def take(col: np.ndarray) -> np.ndarray:
            return col.take(rows, axis=0)            # about twice as fast as col[rows]

        self.meta = take(cols.meta)                  # (B, 5)
        self.mass = take(cols.mass)                  # (B, K)
        self.conc = take(cols.conc)                  # (B, K)
        self.touched = take(cols.touched)            # (B, K)
        self.coarse = take(cols.coarse)              # (B, C)
        self.rep_w = take(cols.rep_w)                # (B, M, P)
        self.rep_ids = take(cols.rep_ids)            # (B, M, P) string codes
        self.scene_names = take(cols.scene_names)    # (B, S) string codes
        self.scene_seq = take(cols.scene_seq)        # (B, S)
        self.live = self.mass > 0                    # (B, K) slots in use (decay may underflow mass)
        if not cols.vec.flags.c_contiguous:
            raise ValueError("the profile vectors must be C-contiguous")
        K, d = cols.vec.shape[1:]
        self.flat = cols.vec.reshape(-1, d)          # (rows * K, d) view: slot k of row r is r * K + k
        self.first = rows * K                        # (B,) flat index of each row's slot 0

    def store(self) -> None:
        c, r = self.cols, self.rows
        c.meta[r], c.mass[r], c.conc[r], c.touched[r] = self.meta, self.mass, self.conc, self.touched
        c.coarse[r], c.rep_w[r], c.scene_seq[r] = self.coarse, self.rep_w, self.scene_seq
        c.rep_ids[r], c.scene_names[r] = self.rep_ids, self.scene_names

    def vectors(self, idx, slots) -> np.ndarray:
        """(T, d) float32 copy of the stored directions of slot ``slots[t]`` of row ``idx[t]``."""
        return to_f32(self.flat.take(self.first[idx] + slots, axis=0))

    def clear(self, idx: np.ndarray, slots: np.ndarray) -> None:
        """Zero slot ``slots[t]`` of local row ``idx[t]``."""
        if idx.size == 0:
            return
        cfg = self.cfg
        self.mass[idx, slots] = 0
        self.live[idx, slots] = False
        self.conc[idx, slots] = 0
        self.touched[idx, slots] = 0
        self.flat[self.first[idx] + slots] = 0
        interest = slots < cfg.max_interests
        if interest.any():
            self.rep_ids[idx[interest], slots[interest]] = 0
            self.rep_w[idx[interest], slots[interest]] = 0
        scene = (slots > cfg.session_slot) & (slots < cfg.negative_slot)
        if scene.any():
            ss = slots[scene] - cfg.session_slot - 1
            self.scene_names[idx[scene], ss] = 0
            self.scene_seq[idx[scene], ss] = 0

    def prune(self) -> None:
        weak = self.live & (self.mass < _F32(self.cfg.prune_mass))
        if weak.any():
            self.clear(*np.nonzero(weak))

    def add(self, idx, slots, w, ts, x, runner=None) -> list:
        """Add weight ``w[t]`` of unit vector ``x[idx[t]]`` to slot ``slots[t]`` of row ``idx[t]``
        ((row, slot) pairs distinct); rows with w <= 0 are skipped. The vector work runs in
        blocks of ``_BLOCK`` rows, so that its (block, d) arrays stay in cache.

        With ``runner`` ((T,) slots, -1 for none), also finds the rows whose new direction
        reaches ``merge_threshold`` cosine with their runner slot's direction, and returns
        them as a list of blocks ``(idx, slot, runner, new direction, runner direction)``
        (directions (n, d), unrounded, as :meth:`merge` takes them)."""
        kept = w > 0
        if not kept.all():
            idx, slots, w, ts = idx[kept], slots[kept], w[kept], ts[kept]
            runner = None if runner is None else runner[kept]
        m = self.mass[idx, slots]                                        # (T,)
        mc = m * self.conc[idx, slots]
        norm = np.empty(idx.size, _F32)
        close = []
        for lo in range(0, idx.size, _BLOCK):
            part = slice(lo, lo + _BLOCK)
            bi, bs = idx[part], slots[part]
            at = self.first[bi] + bs                                     # flat slot index
            free = m[part] == 0                                          # free slots hold zeros:
            if free.any():                                               # read one of them for all
                at[free] = at[free.argmax()]                             # (cached after the first)
            s = to_f32(self.flat.take(at, axis=0))                       # (b, d)
            s *= mc[part, None]
            xw = x.take(bi, axis=0)
            xw *= w[part, None]
            s += xw                                                      # weighted sum
            norm[part] = self._direction(bi, bs, s)
            if runner is not None:
                rk = runner[part]
                has = rk >= 0
                vk = self.vectors(bi, np.where(has, rk, bs))
                hit = has & (np.einsum("td,td->t", s, vk) >= _F32(self.cfg.merge_threshold))
                if hit.any():
                    close.append((bi[hit], bs[hit], rk[hit], s[hit], vk[hit]))
        new_m = m + w
        self.mass[idx, slots] = new_m
        self.live[idx, slots] = True
        self.conc[idx, slots] = norm / new_m
        self.touched[idx, slots] = np.maximum(self.touched[idx, slots], ts)
        return close

    def merge(self, idx, a, b, va, vb) -> None:
        """Merge slot ``b[t]`` (direction ``vb[t]``) into slot ``a[t]`` (``va[t]``); free ``b``."""
        if idx.size == 0:
            return
        ma, mb = self.mass[idx, a], self.mass[idx, b]
        va *= (ma * self.conc[idx, a])[:, None]
        va += (mb * self.conc[idx, b])[:, None] * vb
        norm = self._direction(idx, a, va)
        new_m = ma + mb
        self.mass[idx, a] = new_m
        self.live[idx, a] = True
        self.conc[idx, a] = norm / new_m
        self.touched[idx, a] = np.maximum(self.touched[idx, a], self.touched[idx, b])
        if a.max() < self.cfg.max_interests:                             # interests, not scenes
            for t, ia, ib in zip(idx.tolist(), a.tolist(), b.tolist()):
                self._pool_representatives(t, ia, ib)
        self.clear(idx, b)

    def _direction(self, idx, slots, s) -> np.ndarray:
        """Store direction s/|s| (s: (T, d) sums, overwritten with the unrounded direction);
        returns |s|."""
        norm = np.sqrt(np.einsum("td,td->t", s, s))                      # (T,)
        s /= np.where(norm > 0, norm, 1)[:, None]
        self.flat[self.first[idx] + slots] = to_f16(s)
        return norm

    def _pool_representatives(self, t: int, a: int, b: int) -> None:
        ids = self.rep_ids
        pool: dict[int, np.float32] = {}
        for j in (a, b):
            for item, w in zip(ids[t, j].tolist(), self.rep_w[t, j]):
                if item:
                    pool[item] = pool.get(item, _F32(0)) + w
        best = sorted(pool.items(), key=lambda kv: -kv[1])[: self.cfg.max_representatives]
        ids[t, a] = 0
        self.rep_w[t, a] = 0
        for p, (item, w) in enumerate(best):
            ids[t, a, p] = item
            self.rep_w[t, a, p] = w


def _cosines(st: _Rows, x: np.ndarray, active: np.ndarray) -> np.ndarray:
    """(B, M) float32 cosine of each event to each of its row's active interest directions
    (-inf for the other slots). Computed in blocks of ``_BLOCK`` (row, slot) pairs, so that
    the widened directions stay in cache; only active slots are read."""
    b, m = np.nonzero(active)                                            # (A,) pairs, by row
    cos = np.full(active.shape, -np.inf, _F32)
    for lo in range(0, b.size, _BLOCK):
        bb, mm = b[lo:lo + _BLOCK], m[lo:lo + _BLOCK]
        g = st.vectors(bb, mm)                                           # (a, d)
        cos[bb, mm] = np.einsum("ad,ad->a", g, x.take(bb, axis=0))
    return cos


def step(cols, rows, x, cluster, item, kind, w, ts, scene, cfg: ProfileConfig) -> None:
    """Apply event t to row ``rows[t]`` for every t (rows distinct). Shapes: (B,), x (B, d) unit
    vectors; ``item`` and ``scene`` are int32 codes of the columns' string table (0: none)."""
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
    decay = np.exp2(-(now - last).astype(np.float64)[:, None] / hl).astype(_F32)  # (B, K)
    st.mass *= decay
    st.coarse *= decay[:, :1]
    st.rep_w *= decay[:, :1, None]
    hl3 = hl[[0, ses, neg_slot]]                                         # long, short, negative
    w_eff = (w[:, None] * np.exp2(-(now - ts).astype(np.float64)[:, None] / hl3)).astype(_F32)  # (B, 3)

    # 2. session gap: clear the session and scene slots in use
    new_session = ~fresh & (ts - last > cfg.session_gap_ms)
    meta[:, SESSION_START] = np.where(fresh | new_session, ts, meta[:, SESSION_START])
    if new_session.any():
        sess = np.zeros_like(st.mass, dtype=bool)                        # (B, K)
        sess[:, ses:ses + S + 1] = new_session[:, None]
        sess[:, ses + 1:ses + S + 1] &= (st.scene_names != 0) | st.live[:, ses + 1:ses + S + 1]
        sess[:, ses] &= st.live[:, ses]
        st.clear(*np.nonzero(sess))
    # 3. prune
    st.prune()

    # 4. nearest interest
    active = st.mass[:, :M] > 0
    cos = _cosines(st, x, active)                                        # (B, M)
    nearest = cos.argmax(1)
    best = cos[ar, nearest]
    matched = best >= _F32(cfg.spawn_threshold)
    cos[ar, nearest] = -np.inf
    runner_up = cos.argmax(1)                                            # second nearest (or -inf)
    has_runner_up = cos[ar, runner_up] > -np.inf

    # 5. negative events (their vector update joins the positive events' in 6.)
    ineg = np.nonzero(w < 0)[0]
    if ineg.size:
        shrink = (cfg.negative_shrink ** -w[ineg].astype(np.float64)).astype(_F32)
        hit = matched[ineg]
        im, jm = ineg[hit], nearest[ineg[hit]]
        st.mass[im, jm] *= shrink[hit]
        st.rep_w[im, jm] *= shrink[hit][:, None]
        drop = st.rep_ids[im, jm] == item[im][:, None]                  # (T, P)
        if drop.any():
            di, dp = np.nonzero(drop)
            st.rep_ids[im[di], jm[di], dp] = 0
            st.rep_w[im[di], jm[di], dp] = 0
        st.coarse[ineg, cluster[ineg]] *= shrink

    # 6. positive events: choose their interest and scene slots, then update every slot fed
    ip = np.nonzero(w > 0)[0]
    target, spawned = _interest_slots(st, ip, active[ip], nearest[ip], best[ip], matched[ip])
    scenes = _scene_slots(st, ip, scene[ip])
    wl = w_eff[ip, 0]
    st.coarse[ip, cluster[ip]] += wl
    _add_representatives(st, ip, target, item[ip], wl)
    # an interest that drifts onto the event's runner-up (second nearest) interest absorbs it
    runner = np.where(~spawned & has_runner_up[ip], runner_up[ip], -1)
    close = st.add(ip, target, wl, ts[ip], x, runner)
    other = np.concatenate([ip, ineg])                                   # scene slots, negative slot
    st.add(other, np.concatenate([scenes, np.full(ineg.size, neg_slot)]),
           np.concatenate([w_eff[ip, 1], -w_eff[ineg, 2]]), ts[other], x)
    if close:
        i2, tj, kj, vt, vk = (np.concatenate(c) for c in zip(*close))
        first = (tj < kj)[:, None]                                       # the event's interest is slot a
        st.merge(i2, np.minimum(tj, kj), np.maximum(tj, kj), np.where(first, vt, vk), np.where(first, vk, vt))
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


def _interest_slots(st: _Rows, ip, active, nearest, best, matched) -> tuple[np.ndarray, np.ndarray]:
    """(P,) interest slot each positive event feeds, and whether it starts a new interest
    there; at capacity, merges the two closest interests first when that makes room."""
    M = st.cfg.max_interests
    room = active.sum(1) < M
    spawned = ~matched & room
    target = np.where(spawned, (~active).argmax(1), nearest)            # (P,)
    full = ~matched & ~room
    if M >= 2 and full.any():
        upper = np.triu(np.ones((M, M), dtype=bool), 1)                 # the pairs (a < b)
        merges = []
        q_all = np.nonzero(full)[0]
        for lo in range(0, q_all.size, max(1, _BLOCK // M)):
            q = q_all[lo:lo + max(1, _BLOCK // M)]
            g = st.vectors(np.repeat(ip[q], M), np.tile(np.arange(M), q.size)).reshape(q.size, M, -1)  # (Q, M, d)
            pair = np.einsum("qmd,qnd->qmn", g, g)                      # (Q, M, M)
            pair[:, ~upper] = -np.inf
            flat = pair.reshape(q.size, -1).argmax(1)
            closer = pair.reshape(q.size, -1)[np.arange(q.size), flat] >= best[q]
            if closer.any():
                k = np.nonzero(closer)[0]
                a, b = flat[k] // M, flat[k] % M
                merges.append((q[k], a, b, g[k, a], g[k, b]))
        if merges:
            q, a, b, va, vb = (np.concatenate(c) for c in zip(*merges))
            st.merge(ip[q], a, b, va, vb)
            target[q] = b
            spawned[q] = True
    return target, spawned


def _scene_slots(st: _Rows, ip, scenes) -> np.ndarray:
    """(P,) slot of each event's scene; a new scene takes a free slot or the least
    recently used one, whose sums move to the session slot."""
    cfg = st.cfg
    first = cfg.session_slot + 1
    names = st.scene_names[ip]                                           # (P, S)
    hit = names == scenes[:, None]
    has = hit.any(1)
    empty = names == 0
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
        st.scene_names[ip[new], idx[new]] = scenes[new]
    st.scene_seq[ip, idx] = st.meta[ip, VERSION] + 1
    return slots


def _add_representatives(st: _Rows, ip, target, items, wl) -> None:
    keep = wl > 0
    ip, target, items, wl = ip[keep], target[keep], items[keep], wl[keep]
    ids = st.rep_ids[ip, target]                                         # (T, P)
    ws = st.rep_w[ip, target]                                            # (T, P)
    hit = ids == items[:, None]
    has = hit.any(1)
    pos = np.where(has, hit.argmax(1), ws.argmin(1))
    cur = ws[np.arange(ip.size), pos]
    new_w = np.where(has, cur + wl, wl)
    write = np.nonzero(has | (wl > cur))[0]
    st.rep_ids[ip[write], target[write], pos[write]] = items[write]
    st.rep_w[ip[write], target[write], pos[write]] = new_w[write]
