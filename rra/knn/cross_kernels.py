"""The compiled distance kernel of the cross search (``rra.knn.cross``): exact float64 squared
distances between rows of two arrays, by ``rra.knn.kernels.sqdist_rows`` (the graphs' own), so
a (query, reference) pair gets the value it would get from one stacked array. Imported lazily
(numba loads here), after a job has sized its thread pools. [ours]"""

from __future__ import annotations

import numba as nb
import numpy as np

from rra.knn.kernels import sqdist_rows


@nb.njit(parallel=True, cache=True)
def cross_sqdist(xq, nq, xr, nr, rows, cols, out):
    """``out[r, c] = ‖z_r(cols[r, c]) − z_q(rows[r])‖²`` in float64 by direct differences:
    query rows of ``xq``, reference rows of ``xr``; ``nq``/``nr``: their norms under cosine
    (empty under euclidean); ``rra.knn.kernels.sqdist_rows``, the distance of every search."""
    m, c = cols.shape
    d = xr.shape[1]
    cosine = nr.size > 0
    for r in nb.prange(m):
        tmp = np.empty(d)
        i = rows[r]
        for q in range(c):
            j = cols[r, q]
            if cosine:
                out[r, q] = sqdist_rows(xq[i], xr[j], nq[i], nr[j], True, tmp)
            else:
                out[r, q] = sqdist_rows(xq[i], xr[j], 1.0, 1.0, False, tmp)
