"""Compiled per-row loops of the kNN backends (numba). [ours]

Why numba: the exact search is a matrix product followed by per-row work — the top ``p`` of
each product row, then exact float64 distances of a few pairs. torch has no fused per-row
selection (``torch.topk`` costs about as much as the product itself at d = 64), and numpy's
float64 distances of gathered rows make several passes over a row-count × d temporary. Here each
row is one sequential loop, rows run in parallel (``prange``), and no n × n temporary exists.

Determinism: every row's arithmetic is sequential and fixed by the inputs alone, so the results
do not depend on the number of threads, the block size or the machine's BLAS.

All distances reported anywhere in ``rra.knn`` come from :func:`sqdist_pairs` (through
``Points.sqdist``), computed as ``Σ_t (z_jt − z_it)²`` in float64 from the stored values, where
``z = x`` (euclidean) or ``z = x / ‖x‖`` (cosine, the division in float64).

The first call of each kernel compiles it (a few seconds); compiled code is cached next to this
file (``__pycache__``) and reused by later processes.
"""

from __future__ import annotations

import numba as nb
import numpy as np

# Below this group size the selection scans the row directly (the grouping gains nothing).
MIN_GROUP = 4


def group_size(n: int, p: int) -> int:
    """Columns per group for :func:`top_candidates`: ≈ √(1.5 n / p), so that the bisection over
    the n / g group maxima and the scan of the ≈ p kept groups (p · g values) cost about the
    same. [ours]"""
    g = int(round((1.5 * n / max(1, p)) ** 0.5))
    return g if g >= MIN_GROUP and n // g >= p else 1


@nb.njit(cache=True)
def _key(v):
    """float32 → int64, strictly increasing (the IEEE bits, negatives mirrored)."""
    bits = np.int64(np.array(v, dtype=np.float32).view(np.int32)[()])
    return bits if bits >= 0 else -(bits & 0x7FFFFFFF) - 1


@nb.njit(cache=True)
def _unkey(key):
    bits = key if key >= 0 else (-(key + 1)) | -0x80000000
    return np.array(np.int32(bits)).view(np.float32)[()]


@nb.njit(cache=True)
def _count_at_least(a, t):
    c = 0
    for i in range(a.size):  # (this form vectorises; ``for v in a`` does not)
        if a[i] >= t:
            c += 1
    return c


@nb.njit(cache=True)
def _pth_largest_bound(a, p):
    """A value ``t`` with ``#{a ≥ t} ≥ p``, tight: either ``#{a ≥ t} = p`` or ``t`` is the p-th
    largest value of ``a``. Bisection on the order-preserving integer keys of float32 (about 32
    vectorised counting passes, no data-dependent branches per element)."""
    lo = _key(a.min())  # #{a ≥ unkey(lo)} ≥ p
    hi = _key(a.max()) + 1  # #{a ≥ unkey(hi)} < p
    while hi - lo > 1:
        mid = (lo + hi) // 2
        c = _count_at_least(a, _unkey(mid))
        if c == p:
            return _unkey(mid)
        if c > p:
            lo = mid
        else:
            hi = mid
    return _unkey(lo)


@nb.njit(cache=True)
def _pth_largest_small(a, p):
    """The p-th largest value of a short ``a`` (insertion sort, descending; reorders ``a``)."""
    for s in range(1, a.size):
        v = a[s]
        b = s - 1
        while b >= 0 and a[b] < v:
            a[b + 1] = a[b]
            b -= 1
        a[b + 1] = v
    return a[p - 1]


@nb.njit(parallel=True, cache=True)
def centred_keys(x, norms, mean, keys, sq):
    """Row ``j`` of ``keys`` (n × (d + 1)): ``c_j = fl(z_j − μ)`` in the dtype of ``keys`` (the
    difference in float64), then ``fl(−‖c_j‖² / 2)``; ``sq[j] = ‖c_j‖²`` in float64 (summed in
    order)."""
    n, d = x.shape
    for j in nb.prange(n):
        nj = norms[j] if norms.size else 1.0
        acc = 0.0
        for t in range(d):
            z = np.float64(x[j, t]) / nj if norms.size else np.float64(x[j, t])
            c = keys.dtype.type(z - mean[t])
            keys[j, t] = c
            acc += np.float64(c) * np.float64(c)
        sq[j] = acc
        keys[j, d] = -0.5 * acc


@nb.njit(cache=True)
def _strided_groups(w, p, group):
    """``(ng, full)``: ``ng`` strided groups for ``w`` values in groups of about ``group`` (one
    value per group when there would be fewer than p groups); ``full`` complete slices of ng."""
    ng = (w + group - 1) // group
    if ng < p:
        ng = w
    return ng, w // ng


@nb.njit(cache=True)
def _group_maxima(row, ng, full):
    """Maximum of each strided group ``g, g + ng, g + 2 ng, …`` of ``row``: an elementwise max
    of contiguous slices (vectorised), then the last, shorter slice."""
    gm = row[:ng].copy()
    for t in range(1, full):
        np.maximum(gm, row[t * ng:(t + 1) * ng], gm)
    for g in range(row.size - full * ng):
        if row[full * ng + g] > gm[g]:
            gm[g] = row[full * ng + g]
    return gm


@nb.njit(parallel=True, cache=True)
def top_candidates(o, p, group, out_val, out_idx, out_thr):
    """Per row ``r`` of ``o`` (m × n float32): ``p`` largest values and their columns.

    Writes ``out_val[r]`` / ``out_idx[r]`` (any order) and ``out_thr[r]`` = a value that no
    column left out exceeds and no kept column falls below (ties at it may go either way — the
    certificate of ``rra.knn.exact`` covers them).

    The row is split into strided groups (group ``g`` = columns ``g, g + ng, g + 2 ng, …``;
    ``group = 1``: one column each). ``τ`` bounds the p-th largest group maximum from below
    (``#{groups with max ≥ τ} ≥ p``); only those groups are scanned, for elements ``≥ τ``. A
    skipped element is ``< τ`` and at least ``p`` collected elements are ``≥ τ``, so the p
    largest collected are the p largest of the row. The group maxima are an elementwise max of
    contiguous slices and the scan is branch-free, so most of the row costs one vector compare.
    """
    m, n = o.shape
    ng, full = _strided_groups(n, p, group)
    for r in nb.prange(m):
        row = o[r]
        gm = _group_maxima(row, ng, full)
        tau = _pth_largest_bound(gm, p)
        cap = 1
        for g in range(ng):
            if gm[g] >= tau:
                cap += full + 1
        vals = np.empty(cap, np.float32)
        cols = np.empty(cap, np.int64)
        c = 0
        for g in range(ng):
            if gm[g] >= tau:
                for j in range(g, n, ng):  # branch-free: write always, advance if ≥ τ
                    v = row[j]
                    vals[c] = v
                    cols[c] = j
                    c += v >= tau
        thr = _pth_largest_small(vals[:c].copy(), p) if c <= 64 else _pth_largest_bound(vals[:c], p)
        kept = 0
        for t in range(c):  # the values above the threshold, then ties at it
            if vals[t] > thr:
                out_val[r, kept] = vals[t]
                out_idx[r, kept] = cols[t]
                kept += 1
        for t in range(c):
            if kept == p:
                break
            if vals[t] == thr:
                out_val[r, kept] = vals[t]
                out_idx[r, kept] = cols[t]
                kept += 1
        for t in range(kept, p):  # impossible (at least p values ≥ τ); flagged for the caller
            out_idx[r, t] = -1
        out_thr[r] = thr


@nb.njit(cache=True)
def _sqdist(x, norms, i, j):
    """``‖z_i − z_j‖²`` in float64: feature ``t`` goes to partial sum ``t mod 4`` (in order),
    then ``(s0 + s1) + (s2 + s3)`` — a fixed order (four chains hide the add latency)."""
    d = x.shape[1]
    d4 = d - d % 4
    xi = x[i]
    xj = x[j]
    s0 = s1 = s2 = s3 = 0.0
    if norms.size == 0:
        for t in range(0, d4, 4):
            e0 = np.float64(xj[t]) - np.float64(xi[t])
            e1 = np.float64(xj[t + 1]) - np.float64(xi[t + 1])
            e2 = np.float64(xj[t + 2]) - np.float64(xi[t + 2])
            e3 = np.float64(xj[t + 3]) - np.float64(xi[t + 3])
            s0 += e0 * e0
            s1 += e1 * e1
            s2 += e2 * e2
            s3 += e3 * e3
        for t in range(d4, d):
            e0 = np.float64(xj[t]) - np.float64(xi[t])
            s0 += e0 * e0
    else:
        ni = norms[i]
        nj = norms[j]
        for t in range(0, d4, 4):
            e0 = np.float64(xj[t]) / nj - np.float64(xi[t]) / ni
            e1 = np.float64(xj[t + 1]) / nj - np.float64(xi[t + 1]) / ni
            e2 = np.float64(xj[t + 2]) / nj - np.float64(xi[t + 2]) / ni
            e3 = np.float64(xj[t + 3]) / nj - np.float64(xi[t + 3]) / ni
            s0 += e0 * e0
            s1 += e1 * e1
            s2 += e2 * e2
            s3 += e3 * e3
        for t in range(d4, d):
            e0 = np.float64(xj[t]) / nj - np.float64(xi[t]) / ni
            s0 += e0 * e0
    return (s0 + s1) + (s2 + s3)


@nb.njit(parallel=True, cache=True)
def sqdist_pairs(x, norms, rows, cols, out):
    """``out[r, c] = ‖z_cols[r, c] − z_rows[r]‖²`` (float64). ``norms``: empty for euclidean,
    ``‖x_i‖`` for cosine."""
    m, c = cols.shape
    for r in nb.prange(m):
        for q in range(c):
            out[r, q] = _sqdist(x, norms, rows[r], cols[r, q])


@nb.njit(cache=True)
def _before(ea, ja, eb, jb):
    return ea < eb or (ea == eb and ja < jb)


@nb.njit(cache=True)
def _sort_pairs(es, js):
    """Sort ``(es, js)`` in place by (distance, index): insertion sort for the usual few
    pairs, bottom-up merge sort otherwise."""
    c = es.size
    if c <= 48:
        for a in range(1, c):
            e = es[a]
            j = js[a]
            b = a - 1
            while b >= 0 and _before(e, j, es[b], js[b]):
                es[b + 1] = es[b]
                js[b + 1] = js[b]
                b -= 1
            es[b + 1] = e
            js[b + 1] = j
        return
    te = np.empty_like(es)
    tj = np.empty_like(js)
    width = 1
    while width < c:
        for lo in range(0, c, 2 * width):
            mid = min(lo + width, c)
            hi = min(lo + 2 * width, c)
            a, b, t = lo, mid, lo
            while a < mid and b < hi:
                if _before(es[b], js[b], es[a], js[a]):
                    te[t] = es[b]
                    tj[t] = js[b]
                    b += 1
                else:
                    te[t] = es[a]
                    tj[t] = js[a]
                    a += 1
                t += 1
            while a < mid:
                te[t] = es[a]
                tj[t] = js[a]
                a += 1
                t += 1
            while b < hi:
                te[t] = es[b]
                tj[t] = js[b]
                b += 1
                t += 1
        es[:] = te
        js[:] = tj
        width *= 2


@nb.njit(parallel=True, cache=True)
def refine(cand_val, cand_idx, thr, queries, k, complete, sq, nc, gamma, radius, x, norms,
           out_idx, out_sqd, ok, n_exact):
    """Exact top k of each row's candidates, and its certificate (see ``rra.knn.exact``).

    Per row (query ``i``): ``ẽ_j = ‖c_i‖² − 2 o_ij`` estimates the squared distance within
    ``w_j = γ (‖c_i‖ + ‖c_j‖)²``. With ``U_k`` the k-th smallest ``ẽ_j + w_j``, only candidates
    with ``ẽ_j − w_j ≤ U_k`` can be among the k nearest; their exact distances are computed and
    the first k by (distance, index) kept, ``E_i`` the k-th. ``ok[r]``: every non-candidate is
    provably farther than ``E_i`` (``complete``: the candidates are all other rows).
    """
    m, p = cand_idx.shape
    upper = np.empty((m, p))
    lower = np.empty((m, p))
    es_all = np.empty((m, p))
    js_all = np.empty((m, p), np.int64)
    for r in nb.prange(m):
        i = queries[r]
        up = upper[r]
        for t in range(p):
            est = sq[i] - 2.0 * np.float64(cand_val[r, t])
            w = gamma * (nc[i] + nc[cand_idx[r, t]]) ** 2
            up[t] = est + w
            lower[r, t] = est - w
            js_all[r, t] = 0
        _sort_pairs(up, js_all[r])  # (values only: the indices are all 0 here)
        u_k = up[k - 1]
        es = es_all[r]
        js = js_all[r]
        cnt = 0
        for t in range(p):
            if lower[r, t] <= u_k:
                js[cnt] = cand_idx[r, t]
                es[cnt] = _sqdist(x, norms, i, js[cnt])
                cnt += 1
        n_exact[r] = cnt
        _sort_pairs(es[:cnt], js[:cnt])
        out_idx[r, :] = js[:k]
        out_sqd[r, :] = es[:k]
        floor = sq[i] - 2.0 * np.float64(thr[r]) - gamma * (nc[i] + radius) ** 2
        ok[r] = complete or es[k - 1] < floor


@nb.njit(parallel=True, cache=True)
def recheck(o_rows, queries, k, bound, sq, nc, gamma, x, norms, out_idx, out_sqd, n_exact):
    """Rows whose certificate failed: every ``j`` whose lower bound ``‖c_i‖² − 2 o_ij −
    γ (‖c_i‖ + ‖c_j‖)²`` is ``≤ bound[r]`` (the k-th exact distance among the candidates) gets
    its exact distance; the first k by (distance, index) are kept. ``n_exact[r]`` = the number of
    such contenders (fewer than k is impossible while the error bound holds; it is reported as
    −1 for the caller to raise)."""
    m, n = o_rows.shape
    for r in nb.prange(m):
        i = queries[r]
        contender = np.empty(n, np.bool_)
        for j in range(n):
            contender[j] = (sq[i] - 2.0 * np.float64(o_rows[r, j])
                            - gamma * (nc[i] + nc[j]) ** 2 <= bound[r])
        cnt = contender.sum()
        js = np.empty(cnt, np.int64)
        es = np.empty(cnt)
        c = 0
        for j in range(n):
            if contender[j]:
                js[c] = j
                es[c] = _sqdist(x, norms, i, j)
                c += 1
        if cnt < k:
            n_exact[r] = -1
        else:
            n_exact[r] = cnt
            _sort_pairs(es, js)
            out_idx[r, :] = js[:k]
            out_sqd[r, :] = es[:k]


# --------------------------------------------------------------------------- symmetric search
# The Gram matrix is symmetric: a block G = C_I C_Jᵀ (columns J from I on) serves rows I
# (values G_ij − h_j) and, transposed, rows J (values G_ij − h_i), h = fl(‖c‖²/2): every
# product once. Each row keeps a min-heap of its p largest values seen so far; its root bounds
# every value the row has dropped. [ours]


@nb.njit(cache=True)
def _sift_down(hv, hi, p):
    """Restore the min-heap ``hv[:p]`` (with ``hi`` alongside) after its root changed."""
    s = 0
    while True:
        child = 2 * s + 1
        if child >= p:
            return
        if child + 1 < p and hv[child + 1] < hv[child]:
            child += 1
        if hv[child] < hv[s]:
            hv[child], hv[s] = hv[s], hv[child]
            hi[child], hi[s] = hi[s], hi[child]
            s = child
        else:
            return


@nb.njit(cache=True)
def _heap_push(hv, hi, count, p, v, j):
    """Offer (v, j) to the heap holding ``count`` items (at most p); returns the new count.
    A value is kept while the heap is not full or when it exceeds the root (ties stay out)."""
    if count < p:
        s = count
        hv[s] = v
        hi[s] = j
        while s > 0:  # sift up
            parent = (s - 1) // 2
            if hv[s] < hv[parent]:
                hv[s], hv[parent] = hv[parent], hv[s]
                hi[s], hi[parent] = hi[parent], hi[s]
                s = parent
            else:
                break
        return count + 1
    if v > hv[0]:
        hv[0] = v
        hi[0] = j
        _sift_down(hv, hi, p)
    return count


@nb.njit(parallel=True, cache=True)
def absorb_rows(g, i0, j0, h, p, group, hv, hi, hc):
    """Stream rows ``i0 + r`` take the block's columns: values ``g[r, t] − h[j0 + t]``.

    As in :func:`top_candidates`, strided group maxima bound what a scan can find: a row whose
    heap is not yet full scans the groups whose maximum reaches ``τ`` (the p-th largest group
    maximum, a floor for this tile's p largest values); a full heap scans only the groups whose
    maximum exceeds its root."""
    bi, bj = g.shape
    ng, full = _strided_groups(bj, p, group)
    for r in nb.prange(bi):
        row = i0 + r
        vals = np.empty(bj, np.float32)
        for t in range(bj):
            vals[t] = g[r, t] - h[j0 + t]
        gm = _group_maxima(vals, ng, full)
        count = hc[row]
        lim = -np.inf
        if count < p and ng >= p:
            lim = _pth_largest_bound(gm, p)
        thr = hv[row, 0] if count == p else -np.inf
        for q in range(ng):
            if gm[q] >= lim and gm[q] > thr:
                for t in range(q, bj, ng):
                    v = vals[t]
                    if v >= lim and v > thr:
                        count = _heap_push(hv[row], hi[row], count, p, v, j0 + t)
                        if count == p:
                            thr = hv[row, 0]
        hc[row] = count
