"""Compiled per-row loops of the kNN backends (numba). [ours]

Why numba: the exact search is a matrix product followed by per-row work — the candidates of
each row (its largest products), then exact float64 distances of a few pairs. torch has no
fused per-row selection (``torch.topk`` costs about as much as the product itself at d = 64),
and numpy's float64 distances of gathered rows make several passes over a row-count × d
temporary. Here each row is one sequential loop, rows run in parallel (``prange``), and no
n × n temporary exists.

Determinism: the float32 products that pick candidates may round differently with the BLAS,
the block size or the vector width (the symmetric search's recomputed dot products use any
summation order), but the certificate of ``rra.knn.exact`` makes the graph independent of them;
the float64 distances that order it are computed in one fixed order.

All distances reported anywhere in ``rra.knn`` come from :func:`sqdist_pairs` (through
``Points.sqdist``), computed as ``Σ_t (z_jt − z_it)²`` in float64 from the stored values, where
``z = x`` (euclidean) or ``z = x / ‖x‖`` (cosine, the division in float64).

The first call of each kernel compiles it (a few seconds); compiled code is cached next to this
file (``__pycache__``) and reused by later processes.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

# Below this group size the selection scans the row directly (the grouping gains nothing).
MIN_GROUP = 4


def group_size(n: int, p: int) -> int:
    """Columns per group for :func:`select_refine`: ≈ √(1.5 n / p), so that the bisection over
    the n / g group maxima and the scan of the ≈ p kept groups (p · g values) cost about the
    same. [ours]"""
    g = int(round((1.5 * n / max(1, p)) ** 0.5))
    return g if g >= MIN_GROUP and n // g >= p else 1


@nb.njit(cache=True)
def _unkey(key):
    """The float32 of an integer key of :func:`_int_keys`."""
    bits = key if key >= 0 else (-(key + 1)) | -0x80000000
    return np.array(np.int32(bits)).view(np.float32)[()]


@nb.njit(cache=True)
def _int_keys(a, out):
    """The integer key of every element of the float32 array ``a``, into ``out`` (vectorised):
    strictly increasing in the value (the IEEE bits, negatives mirrored; −0.0 just below 0.0)."""
    bits = a.view(np.int32)
    for i in range(a.size):
        b = bits[i]
        out[i] = b if b >= 0 else -(b & 0x7FFFFFFF) - 1


@nb.njit(cache=True)
def _count_at_least(a, t):
    c = 0
    for i in range(a.size):  # (this form vectorises; ``for v in a`` does not)
        c += a[i] >= t
    return c


@nb.njit(cache=True)
def _pth_largest_bound(a, p, scratch):
    """A value ``t`` with ``#{a ≥ t} ≥ p``, tight: either ``#{a ≥ t} = p`` or ``t`` is the p-th
    largest value of ``a`` (float32; ``scratch``: int32, at least ``a.size``). Bisection on the
    order-preserving integer keys (about 32 vectorised counting passes, no data-dependent
    branches per element)."""
    keys = scratch[:a.size]
    _int_keys(a, keys)
    lo = np.int64(keys.min())  # #{keys ≥ lo} ≥ p
    hi = np.int64(keys.max()) + 1  # #{keys ≥ hi} < p
    while hi - lo > 1:
        mid = (lo + hi) // 2
        c = _count_at_least(keys, np.int32(mid))
        if c == p:
            return _unkey(mid)
        if c > p:
            lo = mid
        else:
            hi = mid
    return _unkey(lo)


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
def _group_maxima(row, ng, full, gm):
    """Maximum of each strided group ``g, g + ng, g + 2 ng, …`` of ``row``, into ``gm`` (size
    ng): an elementwise max of contiguous slices (vectorised), then the last, shorter slice."""
    gm[:] = row[:ng]
    for t in range(1, full):
        np.maximum(gm, row[t * ng:(t + 1) * ng], gm)
    for g in range(row.size - full * ng):
        if row[full * ng + g] > gm[g]:
            gm[g] = row[full * ng + g]


@nb.njit(cache=True)
def _select_row(row, p, k, ng, full, gm, scratch, ordered, vals, cols):
    """Candidates of ``row`` (float32): at least its ``p`` largest values, into ``vals[:c]`` /
    ``cols[:c]``. Work space: ``gm`` (ng float32), ``scratch`` (row.size int32), ``ordered``
    (64 float32), ``vals`` / ``cols`` (row.size).
    Returns ``(c, τ, v_k)`` (``1 ≤ k ≤ p``):

    - every column left out has a value ``< τ``, every candidate ``≥ τ``;
    - at least ``k`` candidates are ``≥ v_k`` (the k-th largest value of the row, or a value with
      exactly k candidates ``≥`` it).

    The row is split into strided groups (group ``g`` = columns ``g, g + ng, g + 2 ng, …``;
    ``ng = n``: one column each). ``τ`` bounds the p-th largest group maximum from below
    (``#{groups with max ≥ τ} ≥ p``), so at least p values are ``≥ τ``; only those groups are
    scanned. The group maxima are an elementwise max of contiguous slices and the scan is
    branch-free, so most of the row costs one vector compare. ``c`` is p or a little more
    (values ≥ τ in the same group, ties). [ours]
    """
    n = row.size
    _group_maxima(row, ng, full, gm)
    tau = _pth_largest_bound(gm, p, scratch)
    c = 0
    for g in range(ng):
        if gm[g] >= tau:
            for j in range(g, n, ng):  # branch-free: write always, advance if ≥ τ
                v = row[j]
                vals[c] = v
                cols[c] = j
                c += v >= tau
    return c, tau, _kth_largest(vals[:c], k, ordered, scratch)


@nb.njit(cache=True)
def _kth_largest(vals, k, ordered, scratch):
    """The k-th largest of the float32 ``vals`` (sorting a copy in ``ordered`` when it fits),
    or a value with exactly k values ``≥`` it (:func:`_pth_largest_bound`)."""
    c = vals.size
    if c > ordered.size:
        return _pth_largest_bound(vals, k, scratch)
    ordered[:c] = vals
    _sort_desc(ordered[:c])
    return ordered[k - 1]


@nb.njit(cache=True)
def _sort_desc(a):
    """Sort a short float array in place, descending (insertion sort)."""
    for s in range(1, a.size):
        v = a[s]
        b = s - 1
        while b >= 0 and a[b] < v:
            a[b + 1] = a[b]
            b -= 1
        a[b + 1] = v


@nb.njit(cache=True, inline="always")
def sqdist_rows(xi, xj, ni, nj, cosine, tmp):
    """``‖xj/nj − xi/ni‖²`` (cosine) or ``‖xj − xi‖²`` in float64 of two rows: feature ``t``
    goes to partial sum ``t mod 4`` (in order), then ``(s0 + s1) + (s2 + s3)`` — a fixed order
    (four chains hide the add latency). The squared differences go through ``tmp`` (d float64)
    first: that loop vectorises, a loop that also accumulates does not. Every exact distance of
    the package is this one (``rra.knn.cross_kernels`` too), so a pair gets the same value
    whichever search computes it."""
    d = xi.shape[0]
    if not cosine:
        for t in range(d):
            e = np.float64(xj[t]) - np.float64(xi[t])
            tmp[t] = e * e
    else:
        for t in range(d):
            e = np.float64(xj[t]) / nj - np.float64(xi[t]) / ni
            tmp[t] = e * e
    d4 = d - d % 4
    s0 = s1 = s2 = s3 = 0.0
    for t in range(0, d4, 4):
        s0 += tmp[t]
        s1 += tmp[t + 1]
        s2 += tmp[t + 2]
        s3 += tmp[t + 3]
    for t in range(d4, d):
        s0 += tmp[t]
    return (s0 + s1) + (s2 + s3)


@nb.njit(cache=True, inline="always")
def _sqdist(x, norms, i, j, tmp):
    """``‖z_i − z_j‖²`` in float64 (:func:`sqdist_rows`); ``norms``: empty for euclidean,
    ``‖x_i‖`` for cosine."""
    if norms.size == 0:
        return sqdist_rows(x[i], x[j], 1.0, 1.0, False, tmp)
    return sqdist_rows(x[i], x[j], norms[i], norms[j], True, tmp)


@nb.njit(parallel=True, cache=True)
def sqdist_pairs(x, norms, rows, cols, out):
    """``out[r, c] = ‖z_cols[r, c] − z_rows[r]‖²`` (float64). ``norms``: empty for euclidean,
    ``‖x_i‖`` for cosine."""
    m, c = cols.shape
    for r in nb.prange(m):
        tmp = np.empty(x.shape[1])
        for q in range(c):
            out[r, q] = _sqdist(x, norms, rows[r], cols[r, q], tmp)


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


@nb.njit(cache=True)
def _refine_row(cand_val, cand_idx, v_k, thr, i, base, k, complete, nc, gamma, radius, x, norms,
                es, js, tmp, out_idx, out_sqd):
    """Exact top k of query ``i``'s candidates, and its certificate (see ``rra.knn.exact``).

    ``ẽ_j = base − 2 o_ij`` estimates the squared distance within ``w_j = γ (‖c_i‖ + ‖c_j‖)²``
    (``base = ‖c_i‖²`` for the values of the per-block search, 0 for those of the symmetric one).
    ``U`` = the largest ``ẽ_j + w_j`` over the candidates with ``o_ij ≥ v_k`` (at least k of
    them, so the k-th smallest exact distance is ``≤ U``); only candidates with
    ``ẽ_j − w_j ≤ U`` can be among the k nearest. Their exact distances are computed (work
    space ``es`` / ``js``, as long as the candidates, and ``tmp``, d floats) and the first k by
    (distance, index) written to ``out_idx`` / ``out_sqd``; ``E_i`` is the k-th. Returns
    ``(ok, contenders)``: ``ok`` = every non-candidate (value ``≤ thr``) is provably farther
    than ``E_i`` (``complete``: the candidates are all other rows).
    """
    u = -np.inf
    for t in range(cand_idx.size):
        if cand_val[t] >= v_k:
            up = base - 2.0 * np.float64(cand_val[t]) + gamma * (nc[i] + nc[cand_idx[t]]) ** 2
            u = max(u, up)
    cnt = 0
    for t in range(cand_idx.size):
        j = cand_idx[t]
        if base - 2.0 * np.float64(cand_val[t]) - gamma * (nc[i] + nc[j]) ** 2 <= u:
            js[cnt] = j
            es[cnt] = _sqdist(x, norms, i, j, tmp)
            cnt += 1
    _sort_pairs(es[:cnt], js[:cnt])
    out_idx[:] = js[:k]
    out_sqd[:] = es[:k]
    floor = base - 2.0 * np.float64(thr) - gamma * (nc[i] + radius) ** 2
    return complete or es[k - 1] < floor, cnt


@nb.njit(cache=True)
def _row_work(n, n_keys, d):
    """One thread's work space for selecting and refining one row at a time: ``(scratch``
    int32 keys (n_keys), ``ordered`` (64 float32 to sort), candidate ``vals`` / ``cols`` and
    exact ``es`` / ``js`` (n each), ``tmp`` (a float64 row of d))."""
    return (np.empty(n_keys, np.int32), np.empty(64, np.float32), np.empty(n, np.float32),
            np.empty(n, np.int64), np.empty(n), np.empty(n, np.int64), np.empty(d))


@nb.njit(parallel=True, cache=True)
def select_refine(o, queries, p, k, group, complete, sq, nc, gamma, radius, x, norms,
                  out_idx, out_sqd, ok, n_exact, parts):
    """Steps 3–5 of ``rra.knn.exact`` for a block of float32 products ``o`` (row ``r`` = query
    ``queries[r]`` against all rows): excludes self (writes −∞ into ``o``), selects at least
    ``p`` candidates (:func:`_select_row`, strided groups of about ``group`` columns) and
    refines them (:func:`_refine_row`), one row at a time while it is in cache. The rows are
    split into ``parts`` contiguous ranges (one per thread), each allocating its work space
    once. ``n_exact[r] = −1`` flags a row with fewer than p candidates (impossible: a row has
    n − 1 finite values)."""
    m, n = o.shape
    ng, full = _strided_groups(n, p, group)
    parts = max(1, min(m, parts))
    for part in nb.prange(parts):
        gm = np.empty(ng, np.float32)
        scratch, ordered, vals, cols, es, js, tmp = _row_work(n, n, x.shape[1])
        for r in range(part * m // parts, (part + 1) * m // parts):
            i = queries[r]
            row = o[r]
            row[i] = -np.inf
            c, tau, v_k = _select_row(row, p, k, ng, full, gm, scratch, ordered, vals, cols)
            if c < p:
                n_exact[r] = -1
                ok[r] = True
                continue
            ok[r], n_exact[r] = _refine_row(vals[:c], cols[:c], v_k, tau, i, sq[i], k, complete,
                                            nc, gamma, radius, x, norms, es, js, tmp,
                                            out_idx[r], out_sqd[r])


@nb.njit(parallel=True, cache=True)
def refine(cand_val, cand_idx, thr, queries, k, complete, sq, nc, gamma, radius, x, norms,
           out_idx, out_sqd, ok, n_exact):
    """:func:`_refine_row` for candidates selected elsewhere (``cand_val`` / ``cand_idx``:
    m × p, any order; ``thr[r]``: no non-candidate of row r has a larger value)."""
    m, p = cand_idx.shape
    for r in nb.prange(m):
        v_k = np.sort(cand_val[r])[p - k]  # the k-th largest
        ok[r], n_exact[r] = _refine_row(cand_val[r], cand_idx[r], v_k, thr[r], queries[r],
                                        sq[queries[r]], k, complete, nc, gamma, radius, x, norms,
                                        np.empty(p), np.empty(p, np.int64),
                                        np.empty(x.shape[1]), out_idx[r], out_sqd[r])


@nb.njit(parallel=True, cache=True)
def recheck(o_rows, queries, k, bound, sq, nc, gamma, x, norms, out_idx, out_sqd, n_exact):
    """Rows whose certificate failed: every ``j ≠ i`` whose lower bound ``‖c_i‖² − 2 o_ij −
    γ (‖c_i‖ + ‖c_j‖)²`` is ``≤ bound[r]`` (the k-th exact distance among the candidates) gets
    its exact distance; the first k by (distance, index) are kept. ``n_exact[r]`` = the number of
    such contenders (fewer than k is impossible while the error bound holds; it is reported as
    −1 for the caller to raise)."""
    m, n = o_rows.shape
    for r in nb.prange(m):
        i = queries[r]
        contender = np.empty(n, np.bool_)
        tmp = np.empty(x.shape[1])
        for j in range(n):
            contender[j] = j != i and (sq[i] - 2.0 * np.float64(o_rows[r, j])
                                       - gamma * (nc[i] + nc[j]) ** 2 <= bound[r])
        cnt = contender.sum()
        js = np.empty(cnt, np.int64)
        es = np.empty(cnt)
        c = 0
        for j in range(n):
            if contender[j]:
                js[c] = j
                es[c] = _sqdist(x, norms, i, j, tmp)
                c += 1
        if cnt < k:
            n_exact[r] = -1
        else:
            n_exact[r] = cnt
            _sort_pairs(es, js)
            out_idx[r, :] = js[:k]
            out_sqd[r, :] = es[:k]


# ------------------------------------------------------ symmetric search, small d: group maxima
# S_ij = ka_i · kb_j with ka = [c, −h, 1] and kb = [c, 1, −h] (h = fl(‖c‖²/2)) estimates
# −‖c_i − c_j‖²/2 and is symmetric: a block of rows against the columns from it on serves both
# its rows and, through its columns, the rows after it. Pass 1 (``rra.knn.exact``, torch) keeps
# only maxima of column groups per row; pass 2 (here) recomputes, per row, the few groups that
# can hold its candidates. [ours]


@nb.njit(cache=True, fastmath={"reassoc", "contract"})
def _dot(ka, kb, i, j):
    """``S_ij = ka_i · kb_j`` in float32, any summation order (vectorised): covered by the error
    bound of ``rra.knn.exact``, which holds for every order."""
    acc = np.float32(0.0)
    for t in range(ka.shape[1]):
        acc += ka[i, t] * kb[j, t]
    return acc


@nb.njit(parallel=True, cache=True)
def gram_select_refine(gm, ka, kb, row0, m, block, group, p, k, complete, nc, gamma, radius, x,
                       norms, out_idx, out_sqd, ok, n_exact, widened, parts):
    """Pass 2 for rows ``row0 … row0 + m − 1``: ``τ`` = a bound of the p-th largest group
    maximum (``gm``, pass 1); every group whose maximum reaches ``τ`` is recomputed
    (:func:`_dot`) and its values ``≥ τ`` are the candidates; :func:`_refine_row` with base 0.
    A non-candidate's value is ``< τ`` by pass 1 (its group) or by the recomputation, both
    within the error bound. A row whose certificate fails is tried again with 4 p, 16 p, …
    groups (a lower τ) up to all of them; a row still unproved, or left with fewer than k
    candidates (recomputed values a rounding below the group maxima), gets ``ok = False``, and
    the latter also an infinite bound ``out_sqd[r, k − 1]``, so that the caller re-checks it
    against every row. ``n_exact[r]`` counts the exact distances of all tries, ``widened[r]``
    whether more than one was needed."""
    n = ka.shape[0]
    parts = max(1, min(m, parts))
    for part in nb.prange(parts):
        scratch, ordered, vals, cols, es, js, tmp = _row_work(n, max(n, gm.shape[1]), x.shape[1])
        for r in range(part * m // parts, (part + 1) * m // parts):
            i = row0 + r
            a = (i // block) * block
            nc0 = a // group
            ng, _ = _strided_groups(n - a, p, group)
            row_gm = gm[i, :nc0 + ng]
            n_exact[r] = 0
            widened[r] = False
            tries = p
            while True:
                tries = min(tries, nc0 + ng)
                tau = _pth_largest_bound(row_gm, tries, scratch)
                c = 0
                for g in range(nc0 + ng):
                    if row_gm[g] < tau:
                        continue
                    if g < nc0:  # columns before the row's block
                        start, stop, step = g * group, (g + 1) * group, 1
                    else:  # strided, from the block on
                        start, stop, step = a + g - nc0, n, ng
                    for j in range(start, stop, step):
                        if j != i:
                            v = _dot(ka, kb, i, j)
                            vals[c] = v
                            cols[c] = j
                            c += v >= tau
                if c < k:
                    ok[r] = False
                    out_sqd[r, k - 1] = np.inf
                    break
                v_k = _kth_largest(vals[:c], k, ordered, scratch)
                ok[r], cnt = _refine_row(vals[:c], cols[:c], v_k, tau, i, 0.0, k, complete, nc,
                                         gamma, radius, x, norms, es, js, tmp, out_idx[r],
                                         out_sqd[r])
                n_exact[r] += cnt
                if ok[r] or tries == nc0 + ng:
                    break
                tries *= 4
                widened[r] = True


# ------------------------------------------------------------- symmetric search, large d: heaps
# A block G = C_I C_Jᵀ (columns J from I on) serves rows I (values G_ij − h_j) and, transposed,
# the rows J (values G_ij − h_i), h = fl(‖c‖²/2). Each row keeps a min-heap of its p largest
# values seen so far; its root bounds every value the row has dropped. [ours]


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

    As in :func:`_select_row`, strided group maxima bound what a scan can find: a row whose
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
        gm = np.empty(ng, np.float32)
        _group_maxima(vals, ng, full, gm)
        count = hc[row]
        lim = -np.inf
        if count < p and ng >= p:
            lim = _pth_largest_bound(gm, p, np.empty(ng, np.int32))
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


# ------------------------------------------------- large k: neighbour sets as bitmaps (sweep)
# For k in the thousands (NNTS at k = 6000, 12000 of 60,000 rows) a row's k nearest are a fifth
# of all rows: ``rra.knn.sweep`` keeps them as bitmaps (one bit per row) instead of lists, so
# that overlaps of two sets are popcounts of their AND. Per block of rows and hook, three steps:
# :func:`members_select` (per row: the k-th largest value, the bitmap of the values clearly
# above it, the band of values too close to call), :func:`band_distances` (exact distances of
# every band pair, grouped by column so that each column's row is read once per block) and
# :func:`members_finish` (per row: the band's nearest complete the set). [ours]

SAMPLE = 1024  # strided sample of a row that brackets its k-th largest value


@intrinsic
def _popcount(typingctx, x):
    """Number of set bits of a uint64 (LLVM's ctpop: one instruction where the CPU has it)."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.ctpop.i64")
        return builder.call(fn, args)

    return nb.types.uint64(nb.types.uint64), codegen


@nb.njit(cache=True)
def _bracket(sample, k, n):
    """``(lo, hi)`` from the sorted strided ``sample`` of a row of n values: the row's k-th
    largest value lies in [lo, hi] unless the sample is unusual (binomial margin of 4 standard
    deviations plus 4 sample ranks; ±∞ at the ends)."""
    s = sample.size
    rk = k * s / n
    margin = 4.0 * np.sqrt(rk + 1.0) + 4.0
    top = int(rk - margin)
    bottom = int(rk + margin)
    hi = np.float64(sample[s - 1 - top]) if top > 0 else np.inf
    lo = np.float64(sample[s - 1 - bottom]) if bottom < s - 1 else -np.inf
    return lo, hi


@nb.njit(cache=True)
def _outward(v, up):
    """float32 value at or beyond the float64 ``v`` (above it if ``up``, below otherwise)."""
    f = np.float32(v)
    if up and np.float64(f) < v:
        f = np.nextafter(f, np.float32(np.inf))
    if not up and np.float64(f) > v:
        f = np.nextafter(f, np.float32(-np.inf))
    return f


@nb.njit(cache=True)
def _set_bits_above(row, thr, bits):
    """``bits`` (uint64 words) ← the bitmap of ``row > thr`` (bit ``j % 64`` of word ``j // 64``).
    Returns the number of bits set."""
    n = row.size
    total = 0
    for w in range(bits.size):
        word = np.uint64(0)
        base = w * 64
        stop = min(64, n - base)
        for b in range(stop):
            word |= np.uint64(row[base + b] > thr) << np.uint64(b)
        bits[w] = word
        total += _popcount(word)
    return total


@intrinsic
def _trailing_zeros(typingctx, x):
    """Index of the lowest set bit of a non-zero uint64 (LLVM's cttz)."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64), ir.IntType(1)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.cttz.i64")
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 1)])

    return nb.types.uint64(nb.types.uint64), codegen


@nb.njit(cache=True)
def _collect(row, lo, hi, vals, cols):
    """The values of ``row`` in [lo, hi] and their columns, in column order, into ``vals`` /
    ``cols``; returns how many. Each 64 columns give a bitmap word (a vectorised compare), whose
    set bits are then visited one by one: a pass over the row costs about one compare per value
    when few values are inside."""
    n = row.size
    c = 0
    for w in range(-(-n // 64)):
        base = w * 64
        word = np.uint64(0)
        for b in range(min(64, n - base)):
            v = row[base + b]
            word |= np.uint64((v >= lo) & (v <= hi)) << np.uint64(b)
        while word:
            j = base + np.int64(_trailing_zeros(word))
            vals[c] = row[j]
            cols[c] = j
            c += 1
            word &= word - np.uint64(1)
    return c


@nb.njit(cache=True)
def _select_members_row(row, k, w_i, lo, hi, vals, cols, scratch, bits, band_j):
    """One row and one k of :func:`members_select`; returns ``(inside, band, need)``.

    ``[lo, hi]`` brackets the k-th largest value (else, or with ``[−∞, ∞]``, the whole row is
    used). The values in
    ``[lo − 2w, hi + 2w]`` are collected once; the k-th largest ``v_k`` is selected among them;
    ``row > v_k + w`` goes into ``bits`` (``inside`` of them), ``[v_k − w, v_k + w]`` is the band
    (its columns into ``band_j``, at most its size; ``band`` = how many), of which the nearest
    ``need = k − inside`` belong to the set."""
    n = row.size
    above = 0
    ge = 0
    for j in range(n):  # vectorised counts
        v = row[j]
        above += v > hi
        ge += v >= lo
    if not (above < k <= ge):  # the bracket missed: the whole row
        lo, hi, above = -np.inf, np.inf, 0
    c = _collect(row, _outward(lo - 2.0 * w_i, False), _outward(hi + 2.0 * w_i, True), vals,
                 cols)
    hi32 = _outward(hi, True)
    over = 0  # collected values above the bracket: all larger than the k-th
    for t in range(c):
        over += vals[t] > hi32
    p = k - above + over
    t = _pth_largest_bound(vals[:c], p, scratch)
    v_k = np.inf
    for q in range(c):  # the smallest collected value ≥ t: the p-th largest collected
        v = np.float64(vals[q])
        if v >= t and v < v_k:
            v_k = v
    thr = _outward(v_k + w_i, True)
    low = _outward(v_k - w_i, False)
    inside = _set_bits_above(row, thr, bits)
    band = 0
    for t in range(c):
        v = vals[t]
        if v >= low and v <= thr:
            if band < band_j.size:
                band_j[band] = cols[t]
            band += 1
    return inside, band, k - inside


@nb.njit(parallel=True, cache=True)
def members_select(o, queries, ks, nc, gamma, radius, bits, band_j, band_n, need, parts):
    """Step 1 of the large-k sets for a block of per-block values ``o`` (m × n float32, row r =
    query ``queries[r]``; ``o_ij = c_i·c_j − h_j``, larger = nearer, ``ẽ_ij = ‖c_i‖² − 2 o_ij``
    within ``w_ij ≤ W_i = γ (‖c_i‖ + R)²`` of the exact squared distance ``e_ij``). Self is
    excluded (−∞ is written into ``o``). For the q-th k:

    - ``v_k`` = the k-th largest ``o_ij``: the k-th smallest estimate is ``‖c_i‖² − 2 v_k``, and
      the k-th smallest exact distance ``E_k`` is within ``W_i`` of it (order statistics move no
      more than the values);
    - ``o_ij > v_k + W_i`` ⟹ ``e_ij < E_k``: in the set (``bits[q, r]``); ``o_ij < v_k − W_i``
      ⟹ ``e_ij > E_k``: out; between (both thresholds rounded outwards to float32): the band,
      whose columns go to ``band_j[r, q]`` (``band_n[r, q]`` of them; more than fit are counted
      only, for the caller to handle) and of which the ``need[r, q]`` nearest by (distance,
      index) belong to the set (:func:`members_finish`).

    The k-th largest value: a sorted strided sample brackets it, one vectorised pass counts the
    values above and inside the bracket, one pass collects those inside, a bisection among them
    finishes (:func:`_pth_largest_bound`); a bracket that misses falls back to the whole row."""
    m, n = o.shape
    parts = max(1, min(m, parts))
    s = min(n, SAMPLE)
    stride = n // s
    for part in nb.prange(parts):
        sample = np.empty(s, np.float32)
        vals = np.empty(n, np.float32)
        cols = np.empty(n, np.int64)
        scratch = np.empty(n, np.int32)
        for r in range(part * m // parts, (part + 1) * m // parts):
            i = queries[r]
            row = o[r]
            row[i] = -np.inf
            w_i = gamma * (nc[i] + radius) ** 2
            for t in range(s):
                sample[t] = row[t * stride]
            sample.sort()
            for q in range(ks.size):
                lo, hi = _bracket(sample, ks[q], n)
                inside, band, nd = _select_members_row(row, ks[q], w_i, lo, hi, vals, cols,
                                                       scratch, bits[q, r], band_j[r, q])
                band_n[r, q] = band
                need[r, q] = nd


@nb.njit(cache=True)
def _by_column(band_j, band_n, n):
    """Band pairs of a block grouped by column: ``(starts, order)`` with the pairs of column j
    at ``order[starts[j]:starts[j + 1]]``, each pair encoded as ``(r · K + q) · cap + slot``."""
    m, nk, cap = band_j.shape
    starts = np.zeros(n + 1, np.int64)
    for r in range(m):
        for q in range(nk):
            for t in range(min(band_n[r, q], cap)):
                starts[band_j[r, q, t] + 1] += 1
    for j in range(n):
        starts[j + 1] += starts[j]
    fill = starts[:n].copy()
    order = np.empty(starts[n], np.int64)
    for r in range(m):
        for q in range(nk):
            for t in range(min(band_n[r, q], cap)):
                j = band_j[r, q, t]
                order[fill[j]] = (r * nk + q) * cap + t
                fill[j] += 1
    return starts, order


@nb.njit(parallel=True, cache=True)
def band_distances(queries, band_j, band_n, x, norms, band_e, parts):
    """Exact squared distances (:func:`_sqdist`) of every stored band pair of a block into
    ``band_e`` (shape of ``band_j``), column by column: each column's row of ``x`` is read once
    and compared with the block's rows that hold it in their band (those rows stay in cache)."""
    n = x.shape[0]
    m, nk, cap = band_j.shape
    starts, order = _by_column(band_j, band_n, n)
    parts = max(1, parts)
    for part in nb.prange(parts):
        tmp = np.empty(x.shape[1])
        for j in range(part * n // parts, (part + 1) * n // parts):
            for t in range(starts[j], starts[j + 1]):
                code = order[t]
                slot = code % cap
                rq = code // cap
                r = rq // nk
                q = rq % nk
                band_e[r, q, slot] = _sqdist(x, norms, queries[r], j, tmp)


@nb.njit(cache=True)
def _identical_rows(x, a, b):
    for t in range(x.shape[1]):
        if x[a, t] != x[b, t]:
            return False
    return True


@nb.njit(cache=True)
def _near(es, t, tie_rel, tie_abs):
    """Sorted values ``es[t]`` and ``es[t + 1]`` are within their bounds (``rra.knn.ties``)."""
    return es[t + 1] - es[t] <= tie_rel * (es[t + 1] + es[t]) + 2.0 * tie_abs


@nb.njit(cache=True)
def _mixed_group(x, es, js, t, c, tie_rel, tie_abs):
    """The group (maximal run of near values in ``es[:c]``) holding positions t and t + 1 has
    two rows that are not identical (``rra.knn.ties.near_pairs``: a group of identical rows is
    already in exact order, a group with identical rows and others is re-ordered whole)."""
    if not _identical_rows(x, js[t], js[t + 1]):
        return True
    lo = t
    while lo > 0 and _near(es, lo - 1, tie_rel, tie_abs):
        lo -= 1
    hi = t + 1
    while hi + 1 < c and _near(es, hi, tie_rel, tie_abs):
        hi += 1
    for s in range(lo, hi):
        if not _identical_rows(x, js[s], js[s + 1]):
            return True
    return False


@nb.njit(parallel=True, cache=True)
def members_finish(o, queries, ks, nc, gamma, radius, x, norms, bits, band_j, band_n,
                   band_e, need, tie_rel, tie_abs, tied, parts):
    """Step 3: per row and k, the band sorted by (float64 distance, index); its first ``need``
    join the set's bitmap. A band larger than ``band_j`` holds is redone here from the row's
    values ``o`` (exact distances computed directly). ``tied[r, q]``: the last member and the
    first row left out are a near tie (``rra.knn.ties``: float64 values within their bounds
    ``tie_rel · ê + tie_abs`` of each other) in a group of the band not made only of identical
    rows, for the caller to put in exact order. Returns nothing; a band smaller than ``need``
    (impossible while the error bound holds) sets ``need`` to −1."""
    m, n = o.shape
    nk, cap = ks.size, band_j.shape[2]
    parts = max(1, min(m, parts))
    for part in nb.prange(parts):
        es = np.empty(n)
        js = np.empty(n, np.int64)
        vals = np.empty(n, np.float32)
        cols = np.empty(n, np.int64)
        scratch = np.empty(n, np.int32)
        tmp = np.empty(x.shape[1])
        for r in range(part * m // parts, (part + 1) * m // parts):
            i = queries[r]
            for q in range(nk):
                c = band_n[r, q]
                if c <= cap:
                    es[:c] = band_e[r, q, :c]
                    js[:c] = band_j[r, q, :c]
                else:  # an overfull band: its columns again, from the whole row
                    w_i = gamma * (nc[i] + radius) ** 2
                    _, c, _ = _select_members_row(o[r], ks[q], w_i, -np.inf, np.inf, vals,
                                                  cols, scratch, bits[q, r], js)
                    for t in range(c):
                        es[t] = _sqdist(x, norms, i, js[t], tmp)
                nd = need[r, q]
                if nd < 0 or c < nd:
                    need[r, q] = -1
                    continue
                _sort_pairs(es[:c], js[:c])
                for t in range(nd):
                    j = js[t]
                    bits[q, r, j >> 6] |= np.uint64(1) << np.uint64(j & 63)
                tied[r, q] = (0 < nd < c and _near(es, nd - 1, tie_rel, tie_abs)
                              and _mixed_group(x, es, js, nd - 1, c, tie_rel, tie_abs))


@nb.njit(parallel=True, cache=True)
def pair_overlaps(bits, out):
    """``out[q, r, p] = |K_a ∩ K_b|`` of row r at the q-th k for the p-th pair a < b (pairs in
    the order (0, 1), (0, 2), …, (1, 2), …): popcounts of the AND of two bitmaps.
    ``bits``: (hooks, len(ks), m, words) uint64."""
    h, nk, m, nw = bits.shape
    for r in nb.prange(m):
        for q in range(nk):
            p = 0
            for a in range(h):
                for b in range(a + 1, h):
                    c = np.uint64(0)
                    for w in range(nw):
                        c += _popcount(bits[a, q, r, w] & bits[b, q, r, w])
                    out[q, r, p] = c
                    p += 1


@nb.njit(parallel=True, cache=True)
def row_sqnorms(x, sq):
    """``sq[j] = ‖x_j‖²`` in float64, summed in order."""
    n, d = x.shape
    for j in nb.prange(n):
        acc = 0.0
        for t in range(d):
            z = np.float64(x[j, t])
            acc += z * z
        sq[j] = acc
