"""Translation sensitivity maps (rra.layers.translation) against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from rra.layers.translation import (black_fill, shift_grid, shift_stack,
                                    translation_sensitivity)

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """conv (2@3×3, pad 1, fixed weights) → relu → pool (2×2 avg) → flatten → fc (3)."""

    def __init__(self, side: int = 6, bias: float = 0.1):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(2 * (side // 2) ** 2, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(2, 1, 3, 3, generator=g))
            self.conv.bias.fill_(bias)
            self.fc.weight.copy_(torch.randn(3, 2 * (side // 2) ** 2, generator=g))
            self.fc.bias.zero_()
        self.hook_names = ["conv", "relu", "pool", "fc"]

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def _shift_ref(img: np.ndarray, dx: int, dy: int, fill: np.ndarray) -> np.ndarray:
    c, h, w = img.shape
    out = np.empty_like(img)
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                si, sj = i - dy, j - dx
                out[ch, i, j] = img[ch, si, sj] if 0 <= si < h and 0 <= sj < w else fill[ch]
    return out


def _outputs(model: nn.Module, img: np.ndarray) -> dict[str, np.ndarray]:
    """Every hook's output for one image, in float64, by running the layers by hand."""
    x = torch.from_numpy(img[None].astype(np.float32))
    with torch.no_grad():
        c = model.conv(x)
        r = model.relu(c)
        p = model.pool(r)
        f = model.fc(p.flatten(1))
    return {"input": x[0].double().numpy(), "conv": c[0].double().numpy(),
            "relu": r[0].double().numpy(), "pool": p[0].double().numpy(),
            "fc": f[0].double().numpy()}


def _vec(a: np.ndarray, scale: str) -> np.ndarray:
    if scale == "1":
        return a.mean(axis=(1, 2))
    return a.reshape(-1)


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0 and nv == 0:
        return 1.0
    if nu == 0 or nv == 0:
        return 0.0
    return float(u @ v / (nu * nv))


def _reference(model, x: np.ndarray, hooks, s: int, fill: np.ndarray) -> dict:
    """(hook, scale, dx, dy) → (mean cos, mean relative change over ‖h(x)‖ > 0)."""
    ref = {}
    base = [_outputs(model, img) for img in x]
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            shifted = [_outputs(model, _shift_ref(img, dx, dy, fill)) for img in x]
            for h in hooks:
                scales = ["full"] if base[0][h].ndim == 1 else ["1", "full"]
                for sc in scales:
                    cos, rel = [], []
                    for b, t in zip(base, shifted):
                        u, v = _vec(b[h], sc), _vec(t[h], sc)
                        cos.append(_cos(u, v))
                        if np.linalg.norm(u) > 0:
                            rel.append(np.linalg.norm(u - v) / np.linalg.norm(u))
                    ref[(h, sc, dx, dy)] = (np.mean(cos), np.mean(rel) if rel else np.nan)
    return ref


def _by(rows, measure):
    return [r for r in rows if r["measure"] == measure]


def test_shift_grid_order_and_bounds():
    g = shift_grid(1)
    assert g == [(-1, -1), (0, -1), (1, -1), (-1, 0), (0, 0), (1, 0), (-1, 1), (0, 1), (1, 1)]
    assert len(shift_grid(4)) == 81
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="max_shift"):
            shift_grid(bad)


def test_shift_stack_matches_index_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 5, 4)).astype(np.float32)
    fill = np.array([-0.5, 2.0], dtype=np.float32)
    shifts = [(0, 0), (1, 0), (0, -2), (-3, 1), (2, 2), (4, 0), (0, -5), (-7, 9)]
    out = shift_stack(torch.from_numpy(x), shifts, fill).numpy()
    assert out.shape == (len(shifts) * 3, 2, 5, 4)
    for k, (dx, dy) in enumerate(shifts):
        for i in range(3):
            np.testing.assert_array_equal(out[k * 3 + i], _shift_ref(x[i], dx, dy, fill))
    # positive dx moves content right: the pixel at column 0 lands in column 1
    one = torch.zeros(1, 1, 3, 3)
    one[0, 0, 1, 0] = 1.0
    moved = shift_stack(one, [(1, 0), (0, 1)], 0.0)
    assert moved[0, 0, 1, 1] == 1.0 and moved[1, 0, 2, 0] == 1.0
    with pytest.raises(ValueError, match="fill has 3 values"):
        shift_stack(torch.from_numpy(x), shifts, [0.0, 1.0, 2.0])


@pytest.mark.parametrize("batch_size", [2, 1000])
def test_maps_match_brute_force(batch_size):
    torch.manual_seed(0)
    model = Tiny(bias=-0.1)
    x = torch.randn(5, 1, 6, 6).numpy()
    x[4] = 0.0  # every hook zero on it (conv = bias < 0); fill shifted in wakes some up
    fill = np.array([-0.4242], dtype=np.float32)
    hooks = ["input", "conv", "relu", "pool", "fc"]
    rows = translation_sensitivity(model, x, hooks, fill=fill, max_shift=2, device="cpu",
                                   batch_size=batch_size)
    ref = _reference(model, x, hooks, 2, fill)
    cos_rows, rel_rows = _by(rows, "translation_cosine"), _by(rows, "translation_rel_change")
    assert len(cos_rows) == len(rel_rows) == len(ref) == 25 * (2 * 4 + 1)
    for r in cos_rows:
        assert r["value"] == pytest.approx(ref[(r["hook_a"], r["scale_a"], r["dx"], r["dy"])][0],
                                           abs=2e-5)
    for r in rel_rows:
        want = ref[(r["hook_a"], r["scale_a"], r["dx"], r["dy"])][1]
        assert r["value"] == pytest.approx(want, rel=1e-4, abs=1e-5, nan_ok=True)
    # summaries from the maps
    for measure in ("translation_cosine", "translation_rel_change"):
        i = 0 if measure == "translation_cosine" else 1
        for r in _by(rows, f"{measure}_mean"):
            vals = [v[i] for (h, sc, dx, dy), v in ref.items()
                    if h == r["hook_a"] and sc == r["scale_a"] and (dx, dy) != (0, 0)]
            assert r["value"] == pytest.approx(np.mean(vals), abs=2e-5)
        for r in _by(rows, f"{measure}_radial"):
            vals = [v[i] for (h, sc, dx, dy), v in ref.items()
                    if h == r["hook_a"] and sc == r["scale_a"]
                    and max(abs(dx), abs(dy)) == r["radius"]]
            assert r["value"] == pytest.approx(np.mean(vals), abs=2e-5)
    assert sorted({r["radius"] for r in _by(rows, "translation_cosine_radial")}) == [0, 1, 2]
    zero = {(r["hook_a"], r["scale_a"]): r["value"]
            for r in _by(rows, "translation_zero_norm_fraction")}
    assert zero[("relu", "full")] == zero[("input", "full")] == zero[("fc", "full")] == 0.2
    # positions and scales: vectors (fc) only at full
    assert {(r["hook_a"], r["pos_a"]) for r in rows} == {(h, i) for i, h in enumerate(hooks)}
    assert {r["scale_a"] for r in rows if r["hook_a"] == "fc"} == {"full"}
    assert {r["scale_a"] for r in rows if r["hook_a"] == "conv"} == {"1", "full"}


def test_hand_computed_single_pixel():
    """h = identity (1×1 conv, weight 1): one bright pixel in the centre of a 3 × 3 image.
    Within the image a shift moves it (full: cos 0, change √2; global mean: unchanged); a
    shift by 2 pushes it out (only fill 0: cos 0 by the one-zero convention, change 1)."""
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 1, 1, bias=False))
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 2.0
    rows = translation_sensitivity(model, x, ["conv"], fill=0.0, max_shift=2, device="cpu")
    get = {(r["measure"], r["scale_a"], r.get("dx"), r.get("dy"), r.get("radius")): r["value"]
           for r in rows}
    for dx, dy in shift_grid(2):
        rad = max(abs(dx), abs(dy))
        cos_full, rel_full = {0: (1, 0), 1: (0, math.sqrt(2)), 2: (0, 1)}[rad]
        cos_1, rel_1 = (1, 0) if rad < 2 else (0, 1)
        assert get[("translation_cosine", "full", dx, dy, None)] == pytest.approx(cos_full)
        assert get[("translation_rel_change", "full", dx, dy, None)] == pytest.approx(rel_full)
        assert get[("translation_cosine", "1", dx, dy, None)] == pytest.approx(cos_1)
        assert get[("translation_rel_change", "1", dx, dy, None)] == pytest.approx(rel_1)
    assert get[("translation_cosine_radial", "full", None, None, 1)] == pytest.approx(0)
    assert get[("translation_rel_change_radial", "full", None, None, 2)] == pytest.approx(1)
    assert get[("translation_rel_change_mean", "full", None, None, None)] == pytest.approx(
        (8 * math.sqrt(2) + 16) / 24)
    assert get[("translation_cosine_mean", "1", None, None, None)] == pytest.approx(8 / 24)
    assert get[("translation_zero_norm_fraction", "full", None, None, None)] == 0.0


def test_all_zero_activations():
    """A ReLU that is never on: both vectors zero → cos 1; relative change undefined → NaN;
    every probe image counted in the zero-norm share."""
    model = Tiny(bias=-1e3)
    x = torch.randn(4, 1, 6, 6)
    rows = translation_sensitivity(model, x, ["relu"], fill=0.0, max_shift=1, device="cpu")
    for r in _by(rows, "translation_cosine"):
        assert r["value"] == 1.0
    for r in _by(rows, "translation_rel_change"):
        assert math.isnan(r["value"])
    assert all(r["value"] == 1.0 for r in _by(rows, "translation_zero_norm_fraction"))


def test_fill_is_translated_in():
    """An image equal to the fill everywhere is unchanged by any shift (black_fill of a dataset
    is −mean/std per channel)."""
    info = type("Info", (), {"mean": (0.5, 0.25), "std": (0.5, 0.125)})()
    fill = black_fill(info)
    assert fill == pytest.approx((-1.0, -2.0))
    x = torch.tensor(fill).view(1, 2, 1, 1).expand(2, 2, 5, 5).clone()
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(2, 2, 3))
    rows = translation_sensitivity(model, x, ["input", "conv"], fill=fill, max_shift=2,
                                   device="cpu")
    for r in _by(rows, "translation_cosine"):
        assert r["value"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="mean"):
        black_fill(object())


def test_deterministic_and_restores_training_flag():
    model = Tiny().train()
    x = torch.randn(3, 1, 6, 6)
    a = translation_sensitivity(model, x, ["conv", "fc"], fill=0.0, max_shift=1, device="cpu")
    b = translation_sensitivity(model, x, ["conv", "fc"], fill=0.0, max_shift=1, device="cpu",
                                positions={"conv": 3, "fc": 7})
    assert model.training
    assert [r["value"] for r in a] == [r["value"] for r in b]
    assert {r["pos_a"] for r in b} == {3, 7}


def test_bad_arguments():
    model = Tiny()
    x = torch.randn(2, 1, 6, 6)
    kw = dict(fill=0.0, device="cpu")
    with pytest.raises(ValueError, match="max_shift 6 must be smaller"):
        translation_sensitivity(model, x, ["conv"], max_shift=6, **kw)
    with pytest.raises(ValueError, match="max_shift"):
        translation_sensitivity(model, x, ["conv"], max_shift=0, **kw)
    with pytest.raises(ValueError, match="fill"):
        translation_sensitivity(model, x, ["conv"], fill=None, device="cpu")
    with pytest.raises(ValueError, match="fill has 2 values"):
        translation_sensitivity(model, x, ["conv"], fill=[0.0, 1.0], device="cpu")
    with pytest.raises(ValueError, match="probe must be floating point"):
        translation_sensitivity(model, x.to(torch.uint8), ["conv"], **kw)
    with pytest.raises(ValueError, match="probe must be N × C × H × W"):
        translation_sensitivity(model, x[0], ["conv"], **kw)
    with pytest.raises(ValueError, match="unknown hook"):
        translation_sensitivity(model, x, ["nope"], **kw)
    with pytest.raises(ValueError, match="batch_size"):
        translation_sensitivity(model, x, ["conv"], batch_size=0, **kw)
    with pytest.raises(ValueError, match="hook 'fc'"):
        translation_sensitivity(model, x, ["fc"], scales=[1], **kw)
    with pytest.raises(ValueError, match="positions"):
        translation_sensitivity(model, x, ["conv"], positions={"fc": 1}, **kw)


def test_reused_module_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.relu(self.conv(self.relu(x)))

    with pytest.raises(ValueError, match="more than once"):
        translation_sensitivity(Twice(), torch.randn(2, 1, 4, 4), ["relu"], fill=0.0,
                                max_shift=1, device="cpu")
