"""Margins: hidden (first-order, per hook), input (DeepFool) and constrained to the top-k PCA
directions of the training inputs (seed-measures §3).

Hidden margin [ours, after the Stellenbosch/NWU group's normalised first-order margin]. For a
correctly classified sample x with logits z, label y and runner-up j = argmax_{k≠y} z_k, at the
hook's output h = h(x) (the full, unpooled tensor, flattened),

    d(x) = (z_y − z_j) / ‖∇_h (z_y − z_j)‖₂,       d̃(x) = d(x) / sqrt(tr Cov(h)),

tr Cov(h) = Σ_f Var_probe(h_f) (unbiased, n − 1) over all probe rows, correct or not. d is the
distance from h to the head's decision boundary y|j in the first-order (linearised) sense; the
normalisation makes layers of different width and scale comparable. Reported per hook: the
quartiles (median, 25 % and 75 %) and the mean of d̃ over the correctly classified rows.
∇_h is the partial derivative through the model after the hook, the other paths held fixed
(for the hook points of the registry's models every path to the logits passes through the
hook, so it is the full derivative). Rows whose gradient is exactly zero (e.g. every unit
after the hook dead) have no finite first-order margin: they are left out and counted
(``hidden_margin_flat``). For the hook ``input`` (the normalised image) d is the first-order
input margin; for the logits (``fc``) ∇ = e_y − e_j and d = (z_y − z_j)/√2. One forward and one
backward pass per batch give the gradients at every hook at once (in eval mode rows do not
interact, so the gradient of Σ_i (z_y − z_j)_i at row i is that row's own gradient).

Input margin by DeepFool [source: Moosavi-Dezfooli et al. 2016, Algorithm 2 and the authors'
reference implementation]: with k̂ the class of x₀ (here its correct label) and
x_i = x₀ + (1 + η) r, r = Σ steps so far, each iteration linearises the candidates
k ≠ k̂ (the ``candidates`` classes with the largest logits at x₀, 10 as in the reference code),
f'_k = z_k(x_i) − z_k̂(x_i), w'_k = ∇_x f'_k(x_i), takes l = argmin_k |f'_k| / ‖w'_k‖ and the step
|f'_l| / ‖w'_l‖² · w'_l, until argmax z(x₀ + (1 + η) r) ≠ k̂ (converged) or ``max_iter`` (50)
steps. Overshoot η = 0.02. The margin is ‖r‖ [ours: the overshoot only serves to cross the
boundary numerically; ‖r‖ is DeepFool's estimate of the distance to the boundary and is exact
for an affine classifier: min_j |(w_y − w_j)·x + b_y − b_j| / ‖w_y − w_j‖ after one step]. No
clipping to the pixel range [source: DeepFool does not clip]; the reference code's 1e-4 added
to each step is left out (the overshoot crosses the boundary). Distances are in the normalised
input space (what the model receives).

Constrained margin [after arXiv 2308.15466; the formulation ours where the abstract is silent]:
DeepFool restricted to x₀ + span(V_k), V_k the D × k matrix of the top-k principal directions
of the training inputs: DeepFool on c ↦ f(x₀ + V_k c), i.e. every gradient projected,
w'_k ← V_k V_kᵀ w'_k, both in the choice of l and in the step (the minimal step inside the
subspace that reaches the linearised boundary; projecting the unconstrained step instead would
not reach it). Exact for an affine classifier: min_j |f'_j| / ‖V_k V_kᵀ (w_y − w_j)‖. k = D is
the unconstrained margin. A row whose projected gradients all vanish cannot move and counts as
not converged.

PCA directions by ``torch.linalg.svd`` of the centred training inputs (float64, CPU) [ours]:
exact and deterministic (LAPACK, no randomised solver, hence no seed), no extra code path;
``sklearn.decomposition.PCA(svd_solver="full")`` runs the same LAPACK SVD and would add only a
sign convention, which a projector V Vᵀ ignores. Directions of tied singular values are not
unique (the subspace is, unless a tie straddles k).

Reported per k (column ``pca_k``, D for the unconstrained margin): the mean and median margin
over the correctly classified probe rows where DeepFool converged, their number, and how many
did not converge within ``max_iter`` (left out of the mean: their margin is unknown).

Uncertainty [ours] (:mod:`rra.layers.intervals`; methods.md §4), with ``bootstrap``
(``metrics.bootstrap``; B = 0: the four columns null, the values unchanged). ``lo``, ``hi``:
the class-stratified bootstrap over the images (their labels the strata): the hidden margins
resample all probe rows, the input margins the attacked rows (the first ``deepfool_per_class``
of each class in the stage: with one image per class every resample is the same set, so
lo = hi = value); each resample recomputes the statistic from the per-image margins of the
rows it draws (a row drawn twice counts twice) that have one (correct, ∇_h ≠ 0, or converged):
the quantiles with ``np.quantile``'s linear interpolation, the mean as
Σ_i W[b, i] d̃_i f_i / Σ_i W[b, i] f_i. sqrt tr Cov(h) is held at its probe value (resampling it
would need every row's full hook output kept; it is a per-hook unit, not a statistic of the
margins). No chance level (``null``, ``p`` null): a margin is a distance of one image to its
own decision boundary, so a shuffled correspondence between images has no meaning for it, and
"margin 0" is not chance but the boundary. The counts (``*_n``, ``hidden_margin_flat``,
``input_margin_not_converged``) and ``hidden_margin_spread`` keep null columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from rra.layers.common import (FULL_SCALE, INPUT_HOOK, HookRunner, as_batch, as_labels,
                              check_hooks, hook_positions, on_device, positive_int)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rra.metrics.uncertainty import Settings

QUARTILES = (0.25, 0.5, 0.75)
PCA_KS: tuple[int | str, ...] = (1, 5, 25, "full")


# --------------------------------------------------------------------------- hidden margins

@dataclass
class HiddenMargins:
    """Per-sample hidden margins of the correctly classified probe rows, per hook."""

    hooks: list[str]
    correct: np.ndarray                 # (n,) bool: argmax z == label
    margin: dict[str, np.ndarray]       # hook -> (n,) normalised d̃; NaN where not correct/flat
    raw: dict[str, np.ndarray]          # hook -> (n,) d (unnormalised); NaN likewise
    spread: dict[str, float]            # hook -> sqrt(tr Cov(h)) over the probe
    flat: dict[str, int]                # hook -> correct rows with ∇_h = 0 (left out)
    positions: dict[str, int] = field(default_factory=dict)
    labels: np.ndarray | None = None    # (n,) the images' classes: the bootstrap's strata

    def rows(self, quantiles: Sequence[float] = QUARTILES,
             bootstrap: "Mapping[str, Any] | Settings | None" = None) -> list[dict]:
        """Tidy rows per hook: ``hidden_margin`` (one per ``quantile``), ``hidden_margin_mean``,
        ``hidden_margin_n`` (rows used), ``hidden_margin_flat``, ``hidden_margin_spread``
        (sqrt tr Cov(h)); ``scale_a`` = ``full``. A hook without usable rows gets NaN values.
        ``lo``, ``hi`` of the quantiles and the mean: the class-stratified bootstrap over the
        probe rows (``labels``; ``bootstrap`` = ``metrics.bootstrap``, None: the defaults,
        B = 0: null), the same statistic of the usable rows among each resample's rows, with
        sqrt tr Cov(h) held at its probe value; no chance level (module docstring); the
        counts and the spread keep null columns."""
        from rra.layers.intervals import (NONE, columns, resampled_means, resampled_quantiles,
                                          row_bootstrap)

        qs = _check_quantiles(quantiles)
        n = self.correct.size
        boot = row_bootstrap(self.labels, n, bootstrap)
        out: list[dict] = []
        for h in self.hooks:
            common = dict(hook_a=h, pos_a=self.positions.get(h), scale_a=FULL_SCALE)
            v = self.margin[h][np.isfinite(self.margin[h])]
            values = [float(np.quantile(v, q)) if v.size else float("nan") for q in qs]
            values.append(float(v.mean()) if v.size else float("nan"))
            unc = [dict(NONE) for _ in values]
            if boot is not None:
                samples = np.concatenate(
                    [resampled_quantiles(boot, self.margin[h], qs),
                     resampled_means(boot, self.margin[h])[:, None]], axis=1)
                unc = columns(boot, samples, values)
            for q, value, u in zip(qs, values, unc):
                out.append(dict(common, measure="hidden_margin", quantile=q, value=value, **u))
            out.append(dict(common, measure="hidden_margin_mean", value=values[-1], **unc[-1]))
            out.append(dict(common, measure="hidden_margin_n", value=float(v.size), **NONE))
            out.append(dict(common, measure="hidden_margin_flat", value=float(self.flat[h]),
                            **NONE))
            out.append(dict(common, measure="hidden_margin_spread", value=float(self.spread[h]),
                            **NONE))
        return out


def hidden_margins(model: "nn.Module", images: Any, labels: Any, hooks: Sequence[str], *,
                   positions: Mapping[str, int] | None = None, device: Any = "auto",
                   batch_size: int = 256) -> HiddenMargins:
    """Normalised first-order hidden margin d̃ = (z_y − z_j) / ‖∇_h(z_y − z_j)‖ / sqrt(tr Cov h)
    of every correctly classified row, at every hook (see the module docstring) [ours].

    ``images``: float N × … network inputs (normalised); ``labels``: N class indices;
    ``hooks``: module names or ``input``, in forward order (``pos_a`` = index, or
    ``positions``). One forward + one backward pass per batch of ``batch_size`` rows.
    """
    import torch

    x_all = as_batch(images)
    n = x_all.shape[0]
    if n < 2:
        raise ValueError(f"images: the hidden margin needs at least 2 rows (tr Cov over the "
                         f"probe), got {n}")
    y_all = as_labels(labels, n)
    hooks = check_hooks(model, hooks)
    pos = hook_positions(hooks, positions)
    batch_size = positive_int(batch_size, "batch_size")

    sums = _MarginSums.empty(hooks, n)
    runner = HookRunner(model, hooks)
    with on_device(model, device) as dev, torch.enable_grad():
        for start in range(0, n, batch_size):
            _margin_batch(runner, sums, x_all, y_all, start, batch_size, dev)
    return sums.result(pos, y_all)


@dataclass
class _MarginSums:
    """What :func:`hidden_margins` gathers batch by batch, per hook: d (``raw``), ‖∇_h‖
    (``gnorm``), which rows are correct, and the shifted sums Σ(h − h₀), Σ‖h − h₀‖² of
    tr Cov(h) (h₀ = the first row, so the sums do not cancel)."""

    hooks: list[str]
    n: int
    raw: dict[str, np.ndarray]
    gnorm: dict[str, np.ndarray]
    correct: np.ndarray
    sums: dict[str, "torch.Tensor"] = field(default_factory=dict)
    sumsq: dict[str, float] = field(default_factory=dict)
    shift: dict[str, "torch.Tensor"] = field(default_factory=dict)

    @classmethod
    def empty(cls, hooks: list[str], n: int) -> "_MarginSums":
        return cls(hooks, n, raw={h: np.full(n, np.nan) for h in hooks},
                   gnorm={h: np.zeros(n) for h in hooks}, correct=np.zeros(n, dtype=bool))

    def add_spread(self, hook: str, out: "torch.Tensor") -> None:
        """Add one batch of the hook's outputs to the shifted sums of tr Cov(h)."""
        import torch

        flat = out.detach().flatten(1).double()
        if hook not in self.shift:  # shifted sums: tr Cov without cancellation
            self.shift[hook] = flat[0].clone()
            self.sums[hook] = torch.zeros_like(flat[0])
            self.sumsq[hook] = 0.0
        c = flat - self.shift[hook]
        self.sums[hook] += c.sum(0)
        self.sumsq[hook] += float((c * c).sum())

    def add_margins(self, hook: str, rows: slice, grad: "torch.Tensor | None", diff: np.ndarray,
                    ok: np.ndarray) -> None:
        """d = (z_y − z_j) / ‖∇_h(z_y − z_j)‖ of one batch's correct rows with ∇_h ≠ 0."""
        norms = (np.zeros(diff.shape[0]) if grad is None
                 else grad.flatten(1).double().norm(dim=1).cpu().numpy())
        self.gnorm[hook][rows] = norms
        with np.errstate(divide="ignore", invalid="ignore"):
            self.raw[hook][rows] = np.where(ok & (norms > 0), diff / norms, np.nan)

    def result(self, positions: dict[str, int], labels: np.ndarray | None = None
               ) -> HiddenMargins:
        """Normalise d by sqrt(tr Cov(h)) per hook and count the flat rows."""
        n = self.n
        margin, spread, flat_counts = {}, {}, {}
        for h in self.hooks:
            tr_cov = (self.sumsq[h] - float((self.sums[h] * self.sums[h]).sum()) / n) / (n - 1)
            spread[h] = float(np.sqrt(max(tr_cov, 0.0)))
            with np.errstate(divide="ignore", invalid="ignore"):
                margin[h] = self.raw[h] / spread[h] if spread[h] > 0 else np.full(n, np.nan)
            flat_counts[h] = int(np.sum(self.correct & (self.gnorm[h] == 0)))
        return HiddenMargins(hooks=self.hooks, correct=self.correct, margin=margin, raw=self.raw,
                             spread=spread, flat=flat_counts, positions=positions,
                             labels=labels)


def _margin_batch(runner: HookRunner, sums: _MarginSums, x_all: "torch.Tensor",
                  y_all: np.ndarray, start: int, batch_size: int, dev: Any) -> None:
    """One forward and one backward pass over rows [start, start + batch_size): the runner-up
    j, the gradient of Σ_i (z_y − z_j)_i at every hook, and their sums."""
    import torch

    x = x_all[start:start + batch_size].to(dev).requires_grad_(True)
    y = torch.from_numpy(y_all[start:start + batch_size]).to(dev)
    rows = slice(start, start + x.shape[0])
    store: dict[str, torch.Tensor] = {}
    z = runner.run(x, store.__setitem__)
    _check_logits(z, x.shape[0], y_all)
    index = torch.arange(x.shape[0], device=dev)
    others = z.detach().clone()
    others[index, y] = -torch.inf
    j = others.argmax(1)
    diff = z[index, y] - z[index, j]
    outs = [store[h] for h in sums.hooks]
    grads = torch.autograd.grad(diff.sum(), outs, allow_unused=True)
    ok = (z.detach().argmax(1) == y).cpu().numpy()
    sums.correct[rows] = ok
    dv = diff.detach().double().cpu().numpy()
    for h, out, g in zip(sums.hooks, outs, grads):
        sums.add_spread(h, out)
        sums.add_margins(h, rows, g, dv, ok)


def hidden_margin_rows(model: "nn.Module", images: Any, labels: Any, hooks: Sequence[str], *,
                       quantiles: Sequence[float] = QUARTILES,
                       positions: Mapping[str, int] | None = None, device: Any = "auto",
                       batch_size: int = 256,
                       bootstrap: "Mapping[str, Any] | Settings | None" = None) -> list[dict]:
    """Tidy rows of :func:`hidden_margins` (measures ``hidden_margin`` with extra column
    ``quantile``, ``hidden_margin_mean``, ``hidden_margin_n``, ``hidden_margin_flat``,
    ``hidden_margin_spread``; per hook, ``scale_a`` = ``full``) [ours], with ``lo``, ``hi``
    (:meth:`HiddenMargins.rows`; ``bootstrap`` = ``metrics.bootstrap``)."""
    qs = _check_quantiles(quantiles)
    res = hidden_margins(model, images, labels, hooks, positions=positions, device=device,
                         batch_size=batch_size)
    return res.rows(qs, bootstrap)


# --------------------------------------------------------------------------- PCA subspace

def pca_basis(train_inputs: Any, k: int) -> np.ndarray:
    """The top-``k`` principal directions of the training inputs (rows flattened to D), as an
    orthonormal D × k float64 matrix: the first k right singular vectors of the centred data
    (``torch.linalg.svd``, float64) [ours: see the module docstring]. k ≤ min(n − 1, D): the
    centred data have at most that rank."""
    import torch

    x = as_batch(train_inputs, "train_inputs")
    flat = x.flatten(1).double()
    n, d = flat.shape
    k = positive_int(k, "k")
    if k > min(n - 1, d):
        raise ValueError(f"k = {k} exceeds the rank bound min(n − 1, D) = {min(n - 1, d)} of "
                         f"the centred train_inputs ({n} rows of dimension {d})")
    centred = flat - flat.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:k].T.contiguous().numpy()


# --------------------------------------------------------------------------- DeepFool

@dataclass
class DeepFoolResult:
    """Per-row DeepFool outcome; ``margin`` is ‖r‖ where converged, NaN otherwise."""

    margin: np.ndarray      # (n,) float64
    converged: np.ndarray   # (n,) bool
    iterations: np.ndarray  # (n,) int: steps taken
    attacked: np.ndarray    # (n,) bool: rows attacked (correctly classified, or all)
    predicted: np.ndarray   # (n,) int: the model's class at x₀


def deepfool(model: "nn.Module", images: Any, labels: Any = None, *, basis: Any = None,
             max_iter: int = 50, overshoot: float = 0.02, candidates: int = 10,
             device: Any = "auto", batch_size: int = 256) -> DeepFoolResult:
    """Multi-class DeepFool margin ‖r‖ of each row [source: Moosavi-Dezfooli et al. 2016],
    optionally constrained to x₀ + span(``basis``) (a D × k orthonormal matrix, e.g.
    :func:`pca_basis`) [ours]; formulas in the module docstring.

    ``labels``: when given, only correctly classified rows are attacked (others: NaN, not
    attacked); ``None`` attacks every row from its predicted class. Rows are processed
    ``batch_size`` at a time; per iteration one forward pass and ``candidates`` backward
    passes over the rows not yet across the boundary.
    """
    import torch

    x_all = as_batch(images)
    n = x_all.shape[0]
    d = int(np.prod(x_all.shape[1:]))
    y_given = None if labels is None else as_labels(labels, n)
    max_iter = positive_int(max_iter, "max_iter")
    candidates = positive_int(candidates, "candidates")
    batch_size = positive_int(batch_size, "batch_size")
    if not np.isfinite(overshoot) or overshoot < 0:
        raise ValueError(f"overshoot must be a finite number ≥ 0, got {overshoot!r}")
    V = None
    if basis is not None:
        V = np.asarray(basis, dtype=np.float64)
        if V.ndim != 2 or V.shape[0] != d or not 1 <= V.shape[1] <= d:
            raise ValueError(f"basis must be a D × k matrix with D = {d} (the flattened input) "
                             f"and 1 ≤ k ≤ D, got shape {V.shape}")
        if not np.allclose(V.T @ V, np.eye(V.shape[1]), atol=1e-5):
            raise ValueError("basis must have orthonormal columns (e.g. from pca_basis)")

    margin = np.full(n, np.nan)
    converged = np.zeros(n, dtype=bool)
    iterations = np.zeros(n, dtype=np.int64)
    attacked = np.zeros(n, dtype=bool)
    predicted = np.zeros(n, dtype=np.int64)
    with on_device(model, device) as dev, torch.enable_grad():
        Vt = None if V is None else torch.from_numpy(V).to(dev, torch.float32)
        for s in range(0, n, batch_size):
            x0 = x_all[s:s + batch_size].to(dev)
            res = _deepfool_batch(model, x0, None if y_given is None
                                  else torch.from_numpy(y_given[s:s + batch_size]).to(dev),
                                  Vt, max_iter, float(overshoot), candidates, y_given)
            sl = slice(s, s + x0.shape[0])
            margin[sl], converged[sl], iterations[sl], attacked[sl], predicted[sl] = res
    return DeepFoolResult(margin=margin, converged=converged, iterations=iterations,
                          attacked=attacked, predicted=predicted)


def _deepfool_batch(model, x0, y, V, max_iter, overshoot, candidates, all_labels):
    import torch

    b = x0.shape[0]
    shape = x0.shape[1:]
    with torch.no_grad():
        z0 = model(x0)
    _check_logits(z0, b, all_labels)
    pred = z0.argmax(1)
    attacked = (pred == y) if y is not None else torch.ones(b, dtype=torch.bool, device=x0.device)
    n_cand = min(candidates, z0.shape[1])
    # candidate classes: the largest logits at x₀, the original class first
    order = z0.argsort(dim=1, descending=True)
    cand = torch.cat([pred[:, None], order[order != pred[:, None]].view(b, -1)], 1)[:, :n_cand]
    r_tot = torch.zeros(b, int(np.prod(shape)), dtype=torch.float64, device=x0.device)
    converged = torch.zeros(b, dtype=torch.bool, device=x0.device)
    iters = torch.zeros(b, dtype=torch.int64, device=x0.device)
    active = attacked.clone()
    for it in range(max_iter + 1):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        xp = (x0[idx] + ((1 + overshoot) * r_tot[idx]).view(-1, *shape).to(x0.dtype))
        xp.requires_grad_(True)
        z = model(xp)
        fooled = z.detach().argmax(1) != pred[idx]
        converged[idx[fooled]] = True
        active[idx[fooled]] = False
        if it == max_iter or bool(fooled.all()):
            continue
        c = cand[idx]
        rows = torch.arange(idx.numel(), device=x0.device)
        zc = z.gather(1, c)                                    # (m, C)
        grads = [torch.autograd.grad(zc[:, m].sum(), xp, retain_graph=m < n_cand - 1)[0]
                 .flatten(1).double() for m in range(n_cand)]
        g = torch.stack(grads, 1)                              # (m, C, D)
        fp = (zc - zc[:, :1]).detach().double()                # f'_k = z_k − z_k̂
        wp = g - g[:, :1]                                      # w'_k = ∇ f'_k
        if V is not None:
            coef = wp @ V.double()                             # (m, C, k)
            norms = coef.norm(dim=2)
        else:
            norms = wp.norm(dim=2)
        ratio = fp.abs() / norms
        ratio[norms == 0] = torch.inf
        ratio[:, 0] = torch.inf                                # k ≠ k̂
        ratio[~torch.isfinite(ratio)] = torch.inf
        best, l_idx = ratio.min(1)
        stuck = ~torch.isfinite(best) | fooled
        step_dir = (coef[rows, l_idx] @ V.double().T) if V is not None else wp[rows, l_idx]
        scale = fp[rows, l_idx].abs() / norms[rows, l_idx] ** 2
        step = torch.where(stuck[:, None], torch.zeros_like(step_dir), scale[:, None] * step_dir)
        r_tot[idx] += step
        iters[idx] += (~stuck).long()
        active[idx[stuck & ~fooled]] = False                    # cannot move: not converged
    margin = torch.where(converged, r_tot.norm(dim=1),
                         torch.full_like(r_tot[:, 0], float("nan")))
    return (margin.cpu().numpy(), converged.cpu().numpy(), iters.cpu().numpy(),
            attacked.cpu().numpy(), pred.cpu().numpy())


def input_margin_rows(model: "nn.Module", images: Any, labels: Any, *,
                      train_inputs: Any = None, ks: Sequence[int | str] = PCA_KS,
                      max_iter: int = 50, overshoot: float = 0.02, candidates: int = 10,
                      device: Any = "auto", batch_size: int = 256,
                      bootstrap: "Mapping[str, Any] | Settings | None" = None) -> list[dict]:
    """DeepFool input margin (``pca_k`` = D) and constrained margins (top-k PCA directions of
    ``train_inputs``, k in ``ks``; ``"full"`` = D) over the correctly classified rows.

    Rows (``hook_a`` = ``input``, ``pos_a`` = 0, ``scale_a`` = ``full``, extra column
    ``pca_k``): ``input_margin_mean``, ``input_margin_median`` (over converged rows),
    ``input_margin_n`` (correctly classified rows), ``input_margin_not_converged``.
    One SVD of ``train_inputs`` and one DeepFool run per k. ``lo``, ``hi`` of the mean and the
    median: the class-stratified bootstrap over the attacked images (``labels`` the strata;
    ``bootstrap`` = ``metrics.bootstrap``, None: the defaults, B = 0: null), the same statistic
    of the converged margins among each resample's images; no chance level; the counts keep
    null columns (module docstring).
    """
    from rra.layers.intervals import (NONE, columns, resampled_means, resampled_quantiles,
                                      row_bootstrap)

    x = as_batch(images)
    d = int(np.prod(x.shape[1:]))
    ks_int = _check_ks(ks, d)
    n = x.shape[0]
    boot = row_bootstrap(None if labels is None else as_labels(labels, n), n, bootstrap)
    basis_all = None
    if any(k < d for k in ks_int):
        if train_inputs is None:
            raise ValueError(f"train_inputs is required for constrained margins (ks {list(ks)} "
                             f"has k < D = {d})")
        t = as_batch(train_inputs, "train_inputs")
        if int(np.prod(t.shape[1:])) != d:
            raise ValueError(f"train_inputs rows have {int(np.prod(t.shape[1:]))} values, the "
                             f"images {d}: they must be inputs of the same model")
        basis_all = pca_basis(t, max(k for k in ks_int if k < d))
    rows: list[dict] = []
    for k in ks_int:
        res = deepfool(model, x, labels, basis=None if k == d else basis_all[:, :k],
                       max_iter=max_iter, overshoot=overshoot, candidates=candidates,
                       device=device, batch_size=batch_size)
        ok = res.attacked & res.converged
        per_image = np.where(ok, res.margin, np.nan)
        v = res.margin[ok]
        values = [float(v.mean()) if v.size else float("nan"),
                  float(np.median(v)) if v.size else float("nan")]
        unc = [dict(NONE), dict(NONE)]
        if boot is not None:
            samples = np.concatenate([resampled_means(boot, per_image)[:, None],
                                      resampled_quantiles(boot, per_image, [0.5])], axis=1)
            unc = columns(boot, samples, values)
        common = dict(hook_a=INPUT_HOOK, pos_a=0, scale_a=FULL_SCALE, pca_k=k)
        rows += [
            dict(common, measure="input_margin_mean", value=values[0], **unc[0]),
            dict(common, measure="input_margin_median", value=values[1], **unc[1]),
            dict(common, measure="input_margin_n", value=float(res.attacked.sum()), **NONE),
            dict(common, measure="input_margin_not_converged",
                 value=float((res.attacked & ~res.converged).sum()), **NONE),
        ]
    return rows


# --------------------------------------------------------------------------- checks

def _check_logits(z: "torch.Tensor", b: int, labels: np.ndarray | None) -> None:
    if z.ndim != 2 or z.shape[0] != b:
        raise ValueError(f"model output must be B × classes logits, got shape {tuple(z.shape)}")
    if z.shape[1] < 2:
        raise ValueError(f"margins need at least 2 classes, the model outputs {z.shape[1]}")
    if labels is not None and labels.size and labels.max() >= z.shape[1]:
        raise ValueError(f"labels: class {int(labels.max())} out of range for a model with "
                         f"{z.shape[1]} outputs")


def _check_quantiles(quantiles: Sequence[float]) -> list[float]:
    qs = [float(q) for q in quantiles]
    if not qs or any(not 0 <= q <= 1 for q in qs):
        raise ValueError(f"quantiles must be a non-empty list of numbers in [0, 1], got "
                         f"{list(quantiles)}")
    return qs


def _check_ks(ks: Sequence[int | str], d: int) -> list[int]:
    if isinstance(ks, (str, int)):
        ks = [ks]
    out: list[int] = []
    for k in ks:
        if k == "full":
            out.append(d)
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 1 <= k <= d:
            out.append(int(k))
        else:
            raise ValueError(f"ks: each k must be an integer in 1..D = {d} or 'full', got {k!r}")
    if not out:
        raise ValueError("ks is empty: give at least one k (e.g. 'full')")
    return list(dict.fromkeys(out))
