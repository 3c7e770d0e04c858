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
zero counts inside the forward hook. Deterministic for a seed (the tree's ``random_state``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from rra.layers.common import (INPUT_HOOK, HookRunner, as_batch, as_labels, check_hooks,
                              hook_positions, on_device, positive_int)

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


class ReluCodes:
    """Binary codes (``codes[hook]``: n × C bool), exact-zero counts (``zeros[hook]``) and
    element counts (``elements[hook]``) per hook, and the model's predictions (n,)."""

    def __init__(self, codes: dict, zeros: dict, elements: dict, predictions: np.ndarray):
        self.codes, self.zeros, self.elements = codes, zeros, elements
        self.predictions = predictions


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
    elements = {h: 0 for h in hook_list}
    preds = []

    def reduce(hook: str, out: torch.Tensor) -> None:
        if out.ndim < 2:
            raise ValueError(f"hook {hook!r}: output of shape {tuple(out.shape)} has no "
                             "channel dimension")
        on = (out if out.ndim == 2 else out.flatten(2).amax(dim=2)) > 0
        codes[hook].append(on.cpu().numpy())
        zeros[hook] += int((out == 0).sum())
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
                     np.concatenate(preds).astype(np.int64))


def activation_patterns(model: "nn.Module", probe: Any, labels: Any, hooks: Sequence[str], *,
                        train: Any = None, seed: int = 0,
                        tree_kwargs: Mapping[str, Any] | None = None, device: Any = "auto",
                        batch_size: int = 256,
                        positions: Mapping[str, int] | None = None) -> list[dict]:
    """Sparsity, pattern groups and (with ``train``) layer-wise decision trees per ReLU hook.

    ``probe``: normalised float N × C × H × W images with integer ``labels``; ``hooks``:
    ``nn.ReLU`` module names in forward order (:func:`relu_hooks`); ``train``: normalised
    images of a training subset for the trees (``None``: no tree rows); ``seed``: the trees'
    ``random_state``; ``tree_kwargs``: further ``DecisionTreeClassifier`` arguments (e.g.
    ``max_depth``); ``positions``: ``pos_a`` per hook (default: the index in ``hooks``).

    Returns tidy rows (``hook_a``, ``pos_a``, ``value``; no scale, no class):
    ``relu_channel_sparsity``, ``relu_element_sparsity``, ``relu_pattern_unique_fraction``,
    ``relu_pattern_purity`` and, with ``train``, ``relu_tree_fidelity`` (probe),
    ``relu_tree_fidelity_train``, ``relu_tree_depth``, ``relu_tree_leaves``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    tree_kwargs = dict(tree_kwargs or {})
    if "random_state" in tree_kwargs:
        raise ValueError("tree_kwargs must not set random_state: it is the seed argument")
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
    rows: list[dict] = []
    for h in hook_list:
        common = dict(hook_a=h, pos_a=pos[h])
        codes = probe_codes.codes[h]
        n_unique, _ = pattern_groups(codes)
        values = {
            "relu_channel_sparsity": float((~codes).sum() / codes.size),  # 1 − mean(on)
            "relu_element_sparsity": probe_codes.zeros[h] / probe_codes.elements[h],
            "relu_pattern_unique_fraction": n_unique / n,
            "relu_pattern_purity": pattern_purity(codes, y),
        }
        if train_codes is not None:
            tree = trees[h].fit(train_codes.codes[h].astype(np.uint8), train_codes.predictions)
            values.update({
                "relu_tree_fidelity": float(np.mean(tree.predict(codes.astype(np.uint8))
                                                    == probe_codes.predictions)),
                "relu_tree_fidelity_train": float(np.mean(
                    tree.predict(train_codes.codes[h].astype(np.uint8))
                    == train_codes.predictions)),
                "relu_tree_depth": float(tree.get_depth()),
                "relu_tree_leaves": float(tree.get_n_leaves()),
            })
        rows += [dict(common, measure=m, value=float(v)) for m, v in values.items()]
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
