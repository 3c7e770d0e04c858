"""The compiled distance kernel of the cross search (``rra.knn.cross``): exact float64 squared
distances between rows of two arrays, in the summation order of ``rra.knn.kernels._sqdist``, so
a (query, reference) pair gets the value it would get from one stacked array. Imported lazily
(numba loads here), after a job has sized its thread pools. [ours]"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def cross_sqdist(xq, nq, xr, nr, rows, cols, out):
    """``out[r, c] = ‖z_r(cols[r, c]) − z_q(rows[r])‖²`` in float64 by direct differences:
    query rows of ``xq``, reference rows of ``xr``; ``nq``/``nr``: their norms under cosine
    (empty under euclidean). Feature ``t`` goes to partial sum ``t mod 4`` (in order), then
    ``(s0 + s1) + (s2 + s3)``, as ``rra.knn.kernels._sqdist``."""
    m, c = cols.shape
    d = xr.shape[1]
    d4 = d - d % 4
    for r in nb.prange(m):
        tmp = np.empty(d)
        i = rows[r]
        for q in range(c):
            j = cols[r, q]
            if nr.size == 0:
                for t in range(d):
                    e = np.float64(xr[j, t]) - np.float64(xq[i, t])
                    tmp[t] = e * e
            else:
                ni = nq[i]
                nj = nr[j]
                for t in range(d):
                    e = np.float64(xr[j, t]) / nj - np.float64(xq[i, t]) / ni
                    tmp[t] = e * e
            s0 = s1 = s2 = s3 = 0.0
            for t in range(0, d4, 4):
                s0 += tmp[t]
                s1 += tmp[t + 1]
                s2 += tmp[t + 2]
                s3 += tmp[t + 3]
            for t in range(d4, d):
                s0 += tmp[t]
            out[r, q] = (s0 + s1) + (s2 + s3)
