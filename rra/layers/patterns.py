"""Activation sparsity, binary ReLU patterns, implicit clustering and layer-wise decision trees,
per ReLU hook (seed-measures.md §2, experiment E8).

For a ReLU hook with output a(x) of shape C × H × W (or D for a vector output) and probe
images x_1 … x_n with labels y_i:

- binary code [source: binary ReLU activation patterns]: b_c(x) = 1 if max_{h,w} a_c(x)[h, w] > 0
  else 0, one bit per channel (per unit a_c(x) for vector outputs);
- channel sparsity [source: BatchNorm sparsity]: 1 − (1/(nC)) Σ_i Σ_c b_c(x_i);
- element sparsity [source]: the share of exact zeros, (1/(n·C·H·W)) Σ_i #{a(x_i) = 0};
- pattern groups [source: implicit clustering]: the probe images with identical codes;
  ``n_unique / n`` and the class purity Σ_g max_y #{i ∈ g : y_i = y} / n (1 for one class, and
  trivially 1 when every code is unique, n_unique = n; read the two together);
- layer-wise decision tree [ours, after arXiv 2202.00345]: a
  ``sklearn.tree.DecisionTreeClassifier(random_state=seed, **tree_kwargs)`` (default: fully
  grown, Gini) fitted on the codes of a training subset to predict the model's own predictions
  ŷ(x) = argmax model(x) (first maximum on ties); fidelity = (1/n) Σ_i [tree(b(x_i)) = ŷ(x_i)] on
  the probe (and on the training subset), the tree's depth and number of leaves.

Which hooks are ReLU hooks [ours]: modules of type ``nn.ReLU`` (``model.get_submodule``); any
other hook is a ``ValueError`` that names it (and the ReLUs inside it). :func:`relu_hooks` maps a
model's analysed hooks to ReLU modules: a hook that is an ``nn.ReLU`` itself (LeNet-5's
``relu1`` …), or the hook's last direct child when that is an ``nn.ReLU`` — the op that makes
the hook's output in an ``nn.Sequential`` and in rra's ResNet ``BasicBlock`` (``stem.relu``,
``layer1.0.relu``, …). Each ReLU module must be called once per forward pass (a reused module,
e.g. torchvision's BasicBlock ``relu``, is refused).

Streaming: the activations of each forward batch are reduced to codes (n × C bits per hook) and
zero counts per image inside the forward hook. Deterministic for a seed (the tree's
``random_state``) and ``metrics.bootstrap``.

Uncertainty and chance (the ``lo``, ``hi``, ``null``, ``p`` columns; docs/methods.md §4 and §8)
[ours]. ``bootstrap``: ``metrics.bootstrap`` (:class:`rra.metrics.uncertainty.Settings`;
``None``: its defaults; B = 0: the four columns null). One class-stratified bootstrap of the
probe images (:class:`rra.metrics.uncertainty.RowBootstrap` on the probe labels, seed
``metrics.bootstrap.seed``) serves every hook:

- channel sparsity: the per-image 1 − (1/C) Σ_c b_c(x_i), element sparsity: the per-image share
  of exact zeros (every image has C·H·W elements, so both values are means over images) →
  resampled means; no chance level (a descriptive share: nothing is shuffled against what);
- tree fidelity (probe): the per-image agreement 1[tree(b(x_i)) = ŷ(x_i)] → resampled means
  with the tree fixed (fitted once on the training subset, never refitted: the interval is over
  probe images given the tree); chance level: the fidelity of a tree whose predictions t_i keep
  their counts but are put in a uniformly random correspondence π with the model's m_i,
  E_π[(1/n) Σ_i 1[t_i = m_π(i)]] = Σ_c n_t,c n_m,c / n² and its exact sd from Hoeffding's
  variance of a linear permutation statistic, Var_π(Σ_i a_{i,π(i)}) = Σ_ij d_ij² / (n − 1),
  d_ij = a_ij − ā_i· − ā_·j + ā_·· with a_ij = 1[t_i = m_j] (:func:`agreement_null`);
  ``p`` one-sided (fidelity > chance);
- pattern-group purity: chance level = the purity of the same code groups under uniformly
  shuffled labels (class counts kept), Monte-Carlo over :data:`PURITY_SHUFFLES` seeded shuffles
  (:func:`purity_null`): ``null`` their mean, ``p`` one-sided from their sd σ̂ √(1 + 1/S) (the
  value's null spread and the estimate's own); the exact mean would need the expected maximum
  of a multivariate hypergeometric per group size, and the variance couples the groups (they
  share the labels), so both are estimated; no interval (below);
- unique fraction and purity: no interval. Both depend on the sample through code collisions:
  a with-replacement resample repeats rows, and a repeated row is a group of two equal codes
  with one class, which deflates n_unique / n and inflates purity (a resample of n distinct
  codes has n_unique ≈ 0.63 n); counting each drawn row once is a without-replacement
  subsample of ≈ 0.63 n rows, which has fewer collisions than the n rows the value is computed
  on, again biased. Neither quantity has a size-free estimand to put an interval around. The
  unique fraction has no chance level either (descriptive);
- ``relu_tree_fidelity_train``: none (an in-sample fit: an interval would have to refit the
  tree per resample, and beating chance on the rows the tree was fitted to says nothing);
  depth and leaves: none (structural properties of one fitted tree).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from rra.layers.common import (INPUT_HOOK, HookRunner, as_batch, as_labels, check_hooks,
                              hook_positions, on_device, positive_int)

#: label shuffles of the Monte-Carlo chance level of the pattern-group purity [ours; cheap:
#: one bincount over the rows of the groups with ≥ 2 members per shuffle]
PURITY_SHUFFLES = 1000
#: the random stream of those shuffles, ``np.random.default_rng([seed, PURITY_STREAM])``
PURITY_STREAM = 21
#: shuffles generated per call of ``Generator.permuted`` (fixed, so the stream depends on the
#: seed and the shuffle count only)
PURITY_CHUNK = 100

if TYPE_CHECKING:
    from torch import nn

MEASURES = ("relu_channel_sparsity", "relu_element_sparsity", "relu_pattern_unique_fraction",
            "relu_pattern_purity", "relu_tree_fidelity", "relu_tree_fidelity_train",
            "relu_tree_depth", "relu_tree_leaves")


def relu_hooks(model: "nn.Module", hooks: Sequence[str] | None = None) -> list[str]:
    """The ReLU modules behind a model's analysed hooks (default ``model.hook_names``), in
    their order: the hook itself if it is an ``nn.ReLU``, else its last direct child if that is
    an ``nn.ReLU`` (``stem`` → ``stem.relu``, ``layer1.0`` → ``layer1.0.relu``), else nothing
    (``input``, convolutions, pooling, linear layers). [ours]"""
    from torch import nn

    if hooks is None:
        hooks = getattr(model, "hook_names", None)
        if hooks is None:
            raise ValueError(f"{type(model).__name__} has no hook_names: pass hooks")
    out: list[str] = []
    for h in hooks:
        if h == INPUT_HOOK:
            continue
        module = _submodule(model, h)
        if isinstance(module, nn.ReLU):
            out.append(h)
            continue
        children = list(module.named_children())
        if children and isinstance(children[-1][1], nn.ReLU):
            out.append(f"{h}.{children[-1][0]}")
    return out


def check_relu_hooks(model: "nn.Module", hooks: Sequence[str]) -> list[str]:
    """``hooks`` checked as known, distinct modules of type ``nn.ReLU``; ``ValueError`` naming
    the first hook that is not one (and the ReLU modules inside it, if any)."""
    from torch import nn

    hook_list = check_hooks(model, hooks)
    for h in hook_list:
        if h == INPUT_HOOK:
            raise ValueError(f"hook {h!r} is the model's input, not an nn.ReLU: binary "
                             "patterns need ReLU outputs")
        module = model.get_submodule(h)
        if not isinstance(module, nn.ReLU):
            inner = [f"{h}.{name}" for name, m in module.named_modules()
                     if name and isinstance(m, nn.ReLU)]
            hint = f"; ReLU modules inside it: {inner[:8]}" if inner else ""
            raise ValueError(f"hook {h!r} is a {type(module).__name__}, not an nn.ReLU: binary "
                             f"patterns need ReLU outputs (see relu_hooks){hint}")
    return hook_list


def pattern_groups(codes: np.ndarray) -> tuple[int, np.ndarray]:
    """Rows with identical binary codes form a group: (number of groups, group id per row)."""
    codes = _check_codes(codes)
    packed = np.packbits(codes, axis=1) if codes.shape[1] else codes.astype(np.uint8)
    _, inverse = np.unique(packed, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    return int(inverse.max()) + 1, inverse


def pattern_purity(codes: np.ndarray, labels: Any) -> float:
    """Class purity of the pattern groups, Σ_g max_y #{i ∈ g : y_i = y} / n. [source]"""
    codes = _check_codes(codes)
    y = as_labels(labels, codes.shape[0])
    n_groups, group = pattern_groups(codes)
    _, cls = np.unique(y, return_inverse=True)
    k = int(cls.max()) + 1
    counts = np.bincount(group * k + cls.reshape(-1), minlength=n_groups * k).reshape(n_groups, k)
    return float(counts.max(axis=1).sum() / codes.shape[0])


def purity_null(group: np.ndarray, labels: Any, seed: int,
                shuffles: int = PURITY_SHUFFLES) -> tuple[float, float, np.ndarray]:
    """Chance level of the pattern-group purity [ours]: the groups ``group`` (a group id per
    row, :func:`pattern_groups`) kept, the labels permuted uniformly (class counts kept),
    ``shuffles`` times. Returns (mean, σ̂ √(1 + 1/S) the sd for the p-value, the S purities).

    Seeded: shuffles come from ``np.random.default_rng([seed, PURITY_STREAM])``, generated as
    ``rng.permuted(np.tile(classes, (m, 1)), axis=1)`` in chunks of m ≤ :data:`PURITY_CHUNK`
    rows (``classes``: the labels as 0 … K − 1 in sorted order). A group of one row adds 1 to
    n·purity whatever its label, so only the rows of groups with ≥ 2 members are counted."""
    group = np.asarray(group).reshape(-1)
    n = group.size
    y = as_labels(labels, n)
    shuffles = positive_int(shuffles, "shuffles")
    _, cls = np.unique(y, return_inverse=True)
    cls = cls.reshape(-1)
    k = int(cls.max()) + 1
    sizes = np.bincount(group)
    multi = sizes[group] > 1
    singles = int((sizes == 1).sum())
    _, sub = np.unique(group[multi], return_inverse=True)
    sub = sub.reshape(-1)
    g = int(sub.max()) + 1 if sub.size else 0
    rng = np.random.default_rng([int(seed), PURITY_STREAM])
    out = np.empty(shuffles)
    for start in range(0, shuffles, PURITY_CHUNK):
        m = min(PURITY_CHUNK, shuffles - start)
        perm = rng.permuted(np.tile(cls, (m, 1)), axis=1)[:, multi]
        if g == 0:
            out[start:start + m] = singles / n
            continue
        flat = ((np.arange(m)[:, None] * g + sub[None, :]) * k + perm).ravel()
        counts = np.bincount(flat, minlength=m * g * k).reshape(m, g, k)
        out[start:start + m] = (counts.max(axis=2).sum(axis=1) + singles) / n
    sigma = float(out.std(ddof=1)) if shuffles > 1 else 0.0
    return float(out.mean()), sigma * float(np.sqrt(1.0 + 1.0 / shuffles)), out


def agreement_null(t: Any, m: Any) -> tuple[float, float]:
    """(E_π, sd_π) of the agreement (1/n) Σ_i 1[t_i = m_π(i)] of two label vectors under a
    uniformly random correspondence π, exact [ours]: E = Σ_c n_t,c n_m,c / n²; with
    a_ij = 1[t_i = m_j], Var_π(Σ_i a_{i,π(i)}) = Σ_ij d_ij² / (n − 1),
    d_ij = a_ij − ā_i· − ā_·j + ā_·· [source: Hoeffding 1951, the combinatorial central limit
    theorem's variance], summed over the class pairs (d depends on i and j through t_i and m_j
    only); the sd is √Var / n (0 for n = 1)."""
    t, m = np.asarray(t).reshape(-1), np.asarray(m).reshape(-1)
    if t.size != m.size or t.size == 0:
        raise ValueError(f"agreement_null: need two non-empty label vectors of one length, got "
                         f"{t.size} and {m.size}")
    n = t.size
    classes, inv = np.unique(np.concatenate([t, m]), return_inverse=True)
    inv = inv.reshape(-1)
    nt = np.bincount(inv[:n], minlength=classes.size).astype(np.float64)
    nm = np.bincount(inv[n:], minlength=classes.size).astype(np.float64)
    mean = float(nt @ nm) / n ** 2
    # d(c, c') for t_i = c, m_j = c': δ − ā_i· (= n_m,c / n) − ā_·j (= n_t,c' / n) + ā
    d = np.eye(classes.size) - nm[:, None] / n - nt[None, :] / n + mean
    ss = float(nt @ (d ** 2) @ nm)
    var = ss / (n - 1) if n > 1 else 0.0
    return mean, float(np.sqrt(max(var, 0.0))) / n


class ReluCodes:
    """Binary codes (``codes[hook]``: n × C bool), exact-zero counts (``zeros[hook]``; per image
    ``row_zeros[hook]``, (n,)) and element counts (``elements[hook]``, all images) per hook, and
    the model's predictions (n,)."""

    def __init__(self, codes: dict, zeros: dict, elements: dict, predictions: np.ndarray,
                 row_zeros: dict | None = None):
        self.codes, self.zeros, self.elements = codes, zeros, elements
        self.predictions = predictions
        self.row_zeros = row_zeros or {}


def relu_codes(model: "nn.Module", images: Any, hooks: Sequence[str], *, device: Any = "auto",
               batch_size: int = 256, name: str = "images") -> ReluCodes:
    """Binary codes, zero counts and predictions of ``images`` (normalised float N × C × H × W)
    at ReLU ``hooks``, streamed in batches of ``batch_size``."""
    import torch

    x_all = as_batch(images, name, ndim=4)
    hook_list = check_relu_hooks(model, hooks)
    batch_size = positive_int(batch_size, "batch_size")
    codes: dict[str, list] = {h: [] for h in hook_list}
    zeros = {h: 0 for h in hook_list}
    row_zeros: dict[str, list] = {h: [] for h in hook_list}
    elements = {h: 0 for h in hook_list}
    preds = []

    def reduce(hook: str, out: torch.Tensor) -> None:
        if out.ndim < 2:
            raise ValueError(f"hook {hook!r}: output of shape {tuple(out.shape)} has no "
                             "channel dimension")
        on = (out if out.ndim == 2 else out.flatten(2).amax(dim=2)) > 0
        codes[hook].append(on.cpu().numpy())
        per_row = (out == 0).flatten(1).sum(dim=1).cpu().numpy().astype(np.int64)
        row_zeros[hook].append(per_row)
        zeros[hook] += int(per_row.sum())
        elements[hook] += out.numel()

    with on_device(model, device, inference=True) as dev:
        runner = HookRunner(model, hook_list)
        runner.shapes(x_all[:1].to(dev))
        for start in range(0, x_all.shape[0], batch_size):
            logits = runner.run(x_all[start:start + batch_size].to(dev), reduce)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                raise ValueError("the model's output must be B × classes logits to give "
                                 "predictions")
            preds.append(logits.argmax(dim=1).cpu().numpy())
    return ReluCodes({h: np.concatenate(v) for h, v in codes.items()}, zeros, elements,
                     np.concatenate(preds).astype(np.int64),
                     {h: np.concatenate(v) for h, v in row_zeros.items()})


def activation_patterns(model: "nn.Module", probe: Any, labels: Any, hooks: Sequence[str], *,
                        train: Any = None, seed: int = 0,
                        tree_kwargs: Mapping[str, Any] | None = None, device: Any = "auto",
                        batch_size: int = 256,
                        positions: Mapping[str, int] | None = None,
                        bootstrap: Any = None) -> list[dict]:
    """Sparsity, pattern groups and (with ``train``) layer-wise decision trees per ReLU hook.

    ``probe``: normalised float N × C × H × W images with integer ``labels``; ``hooks``:
    ``nn.ReLU`` module names in forward order (:func:`relu_hooks`); ``train``: normalised
    images of a training subset for the trees (``None``: no tree rows); ``seed``: the trees'
    ``random_state``; ``tree_kwargs``: further ``DecisionTreeClassifier`` arguments (e.g.
    ``max_depth``); ``positions``: ``pos_a`` per hook (default: the index in ``hooks``);
    ``bootstrap``: ``metrics.bootstrap`` for the ``lo``, ``hi``, ``null``, ``p`` columns (see
    the module docstring; ``None``: the defaults of
    :meth:`rra.metrics.uncertainty.Settings.of`; ``{"B": 0}``: all four null).

    Returns tidy rows (``hook_a``, ``pos_a``, ``value``, ``lo``, ``hi``, ``null``, ``p``; no
    scale, no class): ``relu_channel_sparsity``, ``relu_element_sparsity``,
    ``relu_pattern_unique_fraction``, ``relu_pattern_purity`` and, with ``train``,
    ``relu_tree_fidelity`` (probe), ``relu_tree_fidelity_train``, ``relu_tree_depth``,
    ``relu_tree_leaves``.
    """
    from rra.layers.intervals import row_bootstrap
    from rra.metrics import uncertainty as U

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    tree_kwargs = dict(tree_kwargs or {})
    if "random_state" in tree_kwargs:
        raise ValueError("tree_kwargs must not set random_state: it is the seed argument")
    settings = U.Settings.of(bootstrap)
    hook_list = check_relu_hooks(model, hooks)
    pos = hook_positions(hook_list, positions)
    x = as_batch(probe, "probe", ndim=4)
    y = as_labels(labels, x.shape[0], "labels")
    trees = {h: _tree(seed, tree_kwargs) for h in hook_list} if train is not None else {}
    probe_codes = relu_codes(model, x, hook_list, device=device, batch_size=batch_size,
                             name="probe")
    train_codes = (relu_codes(model, train, hook_list, device=device, batch_size=batch_size,
                              name="train") if train is not None else None)
    n = x.shape[0]
    boot = row_bootstrap(y, x.shape[0], settings)
    rows: list[dict] = []
    for h in hook_list:
        common = dict(hook_a=h, pos_a=pos[h])
        codes = probe_codes.codes[h]
        n_unique, group = pattern_groups(codes)
        values = {
            "relu_channel_sparsity": float((~codes).sum() / codes.size),  # 1 − mean(on)
            "relu_element_sparsity": probe_codes.zeros[h] / probe_codes.elements[h],
            "relu_pattern_unique_fraction": n_unique / n,
            "relu_pattern_purity": pattern_purity(codes, y),
        }
        agree = None
        if train_codes is not None:
            tree = trees[h].fit(train_codes.codes[h].astype(np.uint8), train_codes.predictions)
            tree_pred = tree.predict(codes.astype(np.uint8))
            agree = tree_pred == probe_codes.predictions
            values.update({
                "relu_tree_fidelity": float(np.mean(agree)),
                "relu_tree_fidelity_train": float(np.mean(
                    tree.predict(train_codes.codes[h].astype(np.uint8))
                    == train_codes.predictions)),
                "relu_tree_depth": float(tree.get_depth()),
                "relu_tree_leaves": float(tree.get_n_leaves()),
            })
        stats = {m: dict.fromkeys(U.COLUMNS) for m in values}
        if boot is not None:
            channel = 1.0 - codes.mean(axis=1)                               # per image
            element = probe_codes.row_zeros[h] / (probe_codes.elements[h] / n)
            stats["relu_channel_sparsity"] = U.stats(boot, boot.mean(channel),
                                                     values["relu_channel_sparsity"])
            stats["relu_element_sparsity"] = U.stats(boot, boot.mean(element),
                                                     values["relu_element_sparsity"])
            null, sd, _ = purity_null(group, y, settings.seed)
            stats["relu_pattern_purity"] = dict(
                lo=None, hi=None, null=null,
                p=U.p_value(values["relu_pattern_purity"], null, sd))
            if agree is not None:
                null, sd = agreement_null(tree_pred, probe_codes.predictions)
                stats["relu_tree_fidelity"] = U.stats(
                    boot, boot.mean(agree.astype(np.float64)), values["relu_tree_fidelity"],
                    null, sd)
        rows += [dict(common, measure=m, value=float(v), **stats[m]) for m, v in values.items()]
    return rows


def _tree(seed: int, kwargs: dict):
    from sklearn.tree import DecisionTreeClassifier

    try:
        tree = DecisionTreeClassifier(random_state=int(seed), **kwargs)
    except TypeError as err:
        raise ValueError(f"tree_kwargs {kwargs}: {err}") from err
    try:
        tree._validate_params()
    except AttributeError:  # older sklearn: checked at fit time
        pass
    except ValueError as err:
        raise ValueError(f"tree_kwargs {kwargs}: {err}") from err
    return tree


def _submodule(model: "nn.Module", hook: str) -> "nn.Module":
    try:
        return model.get_submodule(hook)
    except AttributeError as err:
        raise ValueError(f"unknown hook {hook!r}: no such module in {type(model).__name__}") \
            from err


def _check_codes(codes: Any) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"codes must be a non-empty n × C array, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("codes must be binary (bool or 0/1)")
        arr = arr.astype(bool)
    return arr
