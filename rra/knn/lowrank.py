"""Exact products of an embedding that lies in a low-dimensional subspace. [ours]

Some hooks are linear images of earlier ones: LeNet-5's first convolution (4,704 values per
image) is an affine map of the 784-pixel input, so its rows span at most 785 dimensions; the
second convolution's 1,600 values are an affine map of the 1,176 of the first pooling. Their
products ``z_i·z_j`` cost ``d`` multiply-adds but carry only ``r ≪ d`` dimensions of
information. Here the subspace is found from the data (no model knowledge), the products are
computed from ``r`` coordinates, and whatever the coordinates miss is *measured* per row and
folded into the certified error bound of ``rra.knn.exact`` (methods.md §3, "Low-rank
products"), so the neighbours stay exact:

1. a basis ``Q`` (d × r, float64, orthonormal up to ``η = ‖QᵀQ − I‖_F`` + its rounding): the
   span of a strided sample of rows (singular values above ``RTOL · σ_1``, from the sample's
   Gram matrix), completed by the residual directions of rows it misses (a few rounds);
2. coordinates ``u_i = fl32(z_i Q)`` (any float32 vector would do: step 3 measures them) and
   residuals ``s_i = z_i − Q u_i`` in float64, ``σ_i = ‖s_i‖`` rounded up by the float64
   evaluation's own bound;
3. the bound: with ``a_i = (‖z_i‖ + σ_i) / √(1 − η)`` (≥ ‖u_i‖) and
   ``g = γ_r + u + η + 10⁻¹²``, the product ``o_ij = fl(u_i·u_j − h_j)`` differs from
   ``z_i·z_j − ‖z_j‖²/2`` by at most ``g a_i a_j + β (a_i σ_j + σ_i a_j) + σ_i σ_j + 2u ‖z_j‖²``
   (β = √(1 + η)), which is at most ``γ' (ñ_i + ñ_j)² / 2`` for the per-row norms
   ``ñ_i = a_i + β σ_i / g`` and ``γ' = γ(r) + η`` (γ(r) = ``rra.knn.exact.error_gamma`` of a
   length-r product). The kernels take ``ñ`` where they take ``‖c‖`` and ``γ'`` for γ: every
   step of the search (candidates, certificate, large-k bands) stays valid, and every
   distance that decides a neighbour is still computed in float64 from the stored rows.

Used only where it pays (:func:`worth_trying`): euclidean float32 rows, many rows, and
``n (d − r) > 4 d r`` (the saved products exceed the projections' cost); where a row's
residual would still widen its bound norm ñ_i by more than 10 % after a few completions of
the basis, it gives up (``None``): never approximate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: rows of the strided sample whose singular vectors give the first basis
SAMPLE = 2048
#: singular values above RTOL · σ_1 of the sample are kept (float32 rounding of a row is ~6e-8;
#: a direction missed matters only through the rows' measured residuals)
RTOL = 1e-6
#: rounds of completing the basis with residual directions of rows it misses
ROUNDS = 3
#: largest widening of a row's bound norm, ñ_i / ‖z_i‖ − 1 ≈ σ_i / (g ‖z_i‖), accepted
MAX_WIDENING = 0.1
#: largest r / d tried (above it the saving is small beside the projections and the sample)
MAX_FRACTION = 0.5
#: tried by default from this many rows on (the sample's SVD must be small beside the products)
MIN_ROWS = 8192
MIN_D = 256
#: rows per chunk of the projections
CHUNK = 4096


@dataclass
class LowRank:
    """Coordinates ``u`` (float32 n × r) of rows in a basis of (nearly) their span, the rows'
    residual bounds ``sigma`` (float64 σ_i ≥ ‖z_i − Q u_i‖) and the basis' ``eta``."""

    u: np.ndarray
    sigma: np.ndarray
    eta: float

    @property
    def r(self) -> int:
        return self.u.shape[1]

    def bound(self, norms: np.ndarray, length: int, unit: float) -> tuple[np.ndarray, float]:
        """``(ñ, γ')`` of step 3 for products summed as dot products of ``length`` terms at
        unit round-off ``unit``: the kernels' per-row norms and γ."""
        from rra.knn.exact import error_gamma

        g = _g(length, unit, self.eta)
        a = (norms + self.sigma) / np.sqrt(1 - self.eta)
        return a + np.sqrt(1 + self.eta) * self.sigma / g, error_gamma(length, unit) + self.eta


def _g(length: int, unit: float, eta: float) -> float:
    """g of step 3: γ_length + u + η + 10⁻¹²."""
    return length * unit / (1 - length * unit) + unit + eta + 1e-12


def worth_trying(n: int, d: int, distance: str, x: np.ndarray) -> bool:
    """The default gate: euclidean float32 C-contiguous rows, ``n ≥ MIN_ROWS``, ``d ≥ MIN_D``."""
    return (distance == "euclidean" and x.dtype == np.float32 and x.flags.c_contiguous
            and n >= MIN_ROWS and d >= MIN_D)


def low_rank(x: np.ndarray, sq: np.ndarray, unit: float, length_of: Callable[[int], int],
             gamma_full: float) -> LowRank | None:
    """Coordinates and residual bounds of rows ``x`` (n × d float32) in a basis of their span,
    or ``None`` where the span is not low enough to pay (:func:`_pays`) or where, after
    :data:`ROUNDS` completions of the basis, a row's bound norm is still too wide: ñ_i above
    ``W ‖z_i‖``, W = max(1 + MAX_WIDENING, √(gamma_full / γ')), i.e. the row's bound wider
    than both the low-rank bound widened by :data:`MAX_WIDENING` and the bound of its own d
    products (``gamma_full``). ``sq``: the rows' exact squared norms (float64); ``unit``: the
    unit round-off of the float32 products; ``length_of(r)``: the length of the dot products
    that r features are summed as (the caller's chunks).

    A completion appends directions orthogonal to the basis (from the missed rows' residuals)
    and recomputes only the missed rows: the other rows keep their coordinates, padded with
    zeros, and their measured residuals, which the longer basis leaves unchanged."""
    n, d = x.shape
    norms = np.sqrt(sq)
    q = _sample_basis(x)
    if q is None or not _pays(n, d, q.shape[1]):
        return None
    eta = _orthonormality(q)
    coords, sigma = _project(x, q, norms, eta)
    rows = np.arange(n)
    for _ in range(ROUNDS + 1):
        found = LowRank(u=coords, sigma=sigma, eta=eta)
        nc, gamma = found.bound(norms, length_of(q.shape[1]), unit)
        widest = max(1 + MAX_WIDENING, np.sqrt(gamma_full / gamma))
        missed = rows[nc > widest * norms]
        if not missed.size:
            return found
        q = _complete(x, q, missed, sigma[missed] / norms[missed])
        if q is None or not _pays(n, d, q.shape[1]):
            return None
        eta = _orthonormality(q)
        coords = np.pad(coords, ((0, 0), (0, q.shape[1] - coords.shape[1])))
        coords[missed], sigma[missed] = _project(x, q, norms, eta, missed)
    return None


def _pays(n: int, d: int, r: int) -> bool:
    return r <= MAX_FRACTION * d and r < 0.9 * min(n, SAMPLE) and n * (d - r) > 4 * d * r


def _sample_basis(x: np.ndarray) -> np.ndarray | None:
    """A basis of the numerical span of a strided sample of :data:`SAMPLE` rows (``None`` if
    it does not pay)."""
    n, d = x.shape
    rows = np.unique(np.linspace(0, n - 1, min(n, SAMPLE)).round().astype(np.int64))
    return _span(np.asarray(x[rows], dtype=np.float64), lambda r: _pays(n, d, r))


def _span(m: np.ndarray, pays: Callable[[int], bool] = lambda r: True) -> np.ndarray | None:
    """An orthonormal basis (d × r, float64) of the numerical span of the rows of ``m``: the
    eigenvectors of ``m mᵀ`` with eigenvalue above ``RTOL² λ_1`` (singular values above
    ``RTOL σ_1``), mapped back through ``mᵀ`` and orthonormalised by a QR (``None`` for zero
    rows, or where ``pays(r)`` is false). The Gram matrix of the rows, not an SVD of them:
    m² d instead of m d² work."""
    lam, v = np.linalg.eigh(m @ m.T)
    if lam.size == 0 or lam[-1] <= 0:
        return None
    keep = lam > RTOL ** 2 * lam[-1]
    if not pays(int(keep.sum())):
        return None
    basis, _ = np.linalg.qr(m.T @ (v[:, keep] / np.sqrt(lam[keep])))
    return np.ascontiguousarray(basis)


def _complete(x: np.ndarray, q: np.ndarray, missed: np.ndarray, rel: np.ndarray
              ) -> np.ndarray | None:
    """``q`` followed by an orthonormal basis of what it misses of the missed rows (of the
    :data:`SAMPLE` with the largest relative residuals): their residuals' span, made
    orthogonal to ``q`` (twice, for orthogonality to rounding level)."""
    rows = np.sort(missed[np.argsort(-rel, kind="stable")[:SAMPLE]])
    z = np.asarray(x[rows], dtype=np.float64)
    new = _span(z - (z @ q) @ q.T)
    if new is None:
        return None
    for _ in range(2):
        new = new - q @ (q.T @ new)
    new, _ = np.linalg.qr(new)
    return np.ascontiguousarray(np.concatenate([q, new], axis=1))


def _orthonormality(q: np.ndarray) -> float:
    """``η ≥ ‖QᵀQ − I‖₂``: the Frobenius norm of the float64 residual plus its rounding bound."""
    d, r = q.shape
    e = q.T @ q - np.eye(r)
    return float(np.sqrt((e * e).sum()) + r * (d + 2) * 2.0 ** -52)


def _project(x: np.ndarray, q: np.ndarray, norms: np.ndarray, eta: float,
             rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``u = fl32(x Q)`` and ``σ_i ≥ ‖x_i − Q u_i‖`` (float64 residuals, rounded up by their
    evaluation bound) of ``rows`` (default: all), chunk by chunk."""
    import torch

    rows = np.arange(x.shape[0]) if rows is None else rows
    d, r = q.shape
    coords = np.empty((rows.size, r), np.float32)
    sigma = np.empty(rows.size, np.float64)
    q32 = torch.from_numpy(q.astype(np.float32))
    q64 = torch.from_numpy(q)
    # float64 evaluation: ‖fl(Q u) − Q u‖ ≤ γ_r ‖Q‖_F ‖u‖, the subtraction and the norm (d terms)
    slack = (r + 2) * 2.0 ** -52 * np.sqrt(r * (1 + eta)) + (d + 2) * 2.0 ** -52
    contiguous = rows.size == x.shape[0]
    for a in range(0, rows.size, CHUNK):
        b = min(rows.size, a + CHUNK)
        part = x[a:b] if contiguous else x[rows[a:b]]
        xc = torch.from_numpy(np.array(part, dtype=np.float32))  # a writable copy
        uc = torch.mm(xc, q32)
        coords[a:b] = uc.numpy()
        res = xc.double() - torch.mm(uc.double(), q64.T)
        s = torch.linalg.vector_norm(res, dim=1).numpy()
        size = norms[rows[a:b]] + torch.linalg.vector_norm(uc.double(), dim=1).numpy()
        sigma[a:b] = s * (1 + 1e-9) + slack * size
    return coords, sigma
