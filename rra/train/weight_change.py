"""Per-layer relative weight change between epochs (methods.md §5).

[source: Agrawal et al., "Investigating Learning in Deep Neural Networks using Layer-Wise Weight
Change", arXiv:2011.06735] For the weight tensor W of every convolution and linear layer, after
epoch t, with ΔW = W_t − W_{t−1}:

- ``l1``:          ‖ΔW‖₁ / ‖W_{t−1}‖₁  (the L1 ratio);
- ``elementwise``: mean over elements of |ΔW| / max(|W_{t−1}|, ε)  (the authors' measure).

The authors' code divides by |W_{t−1}| unguarded; ε = 1e-8 [ours] only keeps an exactly-zero
weight from producing inf (any real weight of a trained CNN is far above it). ``l1`` is NaN when
the whole layer was zero. Both are computed in float64. W_0 is the weight at initialisation, so
epoch 1 compares against the freshly built model. Biases, BatchNorm and attention scalars are
not conv/linear weights and are not logged.
"""

from __future__ import annotations

import torch

EPS: float = 1e-8


def tracked_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{module name: weight}`` of every ``Conv*d`` and ``Linear`` module, in module order."""
    kinds = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
    return {name: mod.weight for name, mod in model.named_modules()
            if isinstance(mod, kinds) and isinstance(getattr(mod, "weight", None), torch.Tensor)}


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of :func:`tracked_weights` (the W_{t−1} of the next epoch)."""
    return {name: w.detach().clone() for name, w in tracked_weights(model).items()}


def relative_weight_change(prev: torch.Tensor, curr: torch.Tensor,
                           eps: float = EPS) -> dict[str, float]:
    """``{"l1": ‖ΔW‖₁ / ‖W_prev‖₁, "elementwise": mean |ΔW| / max(|W_prev|, ε)}``, float64."""
    if prev.shape != curr.shape:
        raise ValueError(f"weight shapes differ: {tuple(prev.shape)} vs {tuple(curr.shape)}")
    p = prev.detach().to(torch.float64)
    d = (curr.detach().to(torch.float64) - p).abs()
    denom = p.abs().sum()
    l1 = (d.sum() / denom).item() if denom > 0 else float("nan")
    elementwise = (d / p.abs().clamp_min(eps)).mean().item()
    return {"l1": l1, "elementwise": elementwise}


def weight_changes(prev: dict[str, torch.Tensor], model: torch.nn.Module,
                   eps: float = EPS) -> dict[str, dict[str, float]]:
    """:func:`relative_weight_change` for every tracked layer of ``model`` against ``prev``."""
    curr = tracked_weights(model)
    if set(curr) != set(prev):
        raise ValueError(f"tracked layers changed: {sorted(set(curr) ^ set(prev))}")
    return {name: relative_weight_change(prev[name], w, eps) for name, w in curr.items()}
