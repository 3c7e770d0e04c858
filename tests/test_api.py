"""The Python API on a torchvision model: tables equal direct computations on the hooks' outputs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torchvision

from hooks import forward_outputs
from rra.api import analyse

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ["layer1", "layer3", "avgpool", "fc"]


def brute_knn(x: np.ndarray, k: int) -> np.ndarray:
    x = x.astype(np.float64)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return np.lexsort((np.broadcast_to(np.arange(len(x)), d.shape), d), axis=1)[:, :k]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    x = torch.randn(36, 3, 32, 32)
    y = torch.arange(36) % 4
    return model, x, y, forward_outputs(model, x, HOOKS)


def test_tables_match_direct_computation(setup, tmp_path):
    model, x, y, outputs = setup
    tables = analyse(model, x, y, hooks=HOOKS, scales=[1, "full"], k=[3, 5], batch_size=10,
                     out_dir=tmp_path, progress=False)
    assert set(tables) == {"nnts", "nntp", "class_response", "classrepsim", "peers", "cka", "knn"}
    flat = {h: outputs[h].flatten(1).numpy() for h in HOOKS}
    graphs = {h: brute_knn(v, 5) for h, v in flat.items()}
    nnts = tables["nnts"].filter((pl.col("measure") == "nnts") & (pl.col("scale_a") == "full"))
    for a, b in [("layer1", "layer3"), ("layer3", "fc"), ("avgpool", "fc")]:
        for k in (3, 5):
            ref = np.mean([len(set(p[:k]) & set(q[:k])) / len(set(p[:k]) | set(q[:k]))
                           for p, q in zip(graphs[a], graphs[b])])
            got = nnts.filter((pl.col("hook_a") == a) & (pl.col("hook_b") == b) & (pl.col("k") == k))["value"]
            assert got.to_list() == pytest.approx([ref], abs=1e-12), (a, b, k)
    purity = tables["class_response"].filter((pl.col("measure") == "knn_purity_rows") & (pl.col("hook_a") == "fc")
                                             & (pl.col("k") == 5))
    labels = y.numpy()
    ref = np.mean(labels[graphs["fc"]] == labels[:, None])
    assert purity["value"].to_list() == pytest.approx([ref], abs=1e-12)
    # layer1 pooled to 1×1 is the channel mean; its graph is a different one from full
    assert (tmp_path / "embed" / "layer1@1.npy").exists() and not (tmp_path / "embed" / "fc@1.npy").exists()
    assert tables["nnts"]["model"].unique().to_list() == ["ResNet"]


def test_large_k_through_the_sweep(setup, tmp_path):
    """k above store_k_max: NNTS from the sweep equals brute force; graphs stay small."""
    model, x, y, outputs = setup
    tables = analyse(model, x, y, hooks=HOOKS, k=[3, 20, 30], store_k_max=5, out_dir=tmp_path,
                     progress=False)
    flat = {h: outputs[h].flatten(1).numpy() for h in HOOKS}
    graphs = {h: brute_knn(v, 30) for h, v in flat.items()}
    nnts = tables["nnts"].filter(pl.col("measure") == "nnts")
    for a, b in [("layer1", "layer3"), ("avgpool", "fc")]:
        for k in (3, 20, 30):
            ref = np.mean([len(set(p[:k]) & set(q[:k])) / len(set(p[:k]) | set(q[:k]))
                           for p, q in zip(graphs[a], graphs[b])])
            got = nnts.filter((pl.col("hook_a") == a) & (pl.col("hook_b") == b) & (pl.col("k") == k))["value"]
            assert got.to_list() == pytest.approx([ref], abs=1e-12), (a, b, k)
    assert np.load(tmp_path / "knn" / "euclidean-auto" / "fc@full.idx.npy").shape == (36, 3)
    # the other tables at the stored k only
    assert tables["class_response"]["k"].unique().to_list() == [3]


def test_dataloader_and_defaults(setup):
    model, x, y, _ = setup
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    a = analyse(model, loader, y, hooks=HOOKS, k=4, progress=False)
    b = analyse(model, x, y.numpy(), hooks=HOOKS, k=4, progress=False)
    assert a["nnts"].equals(b["nnts"])
    single = analyse(model, x, None, hooks=HOOKS[:2], k=4, progress=False)
    assert single["class_response"].filter(pl.col("measure") == "knn_purity")["value"].to_list() == [1.0, 1.0]


def test_errors(setup):
    model, x, y, _ = setup
    with pytest.raises(ValueError, match="layer9"):
        analyse(model, x, y, hooks=["layer9"], progress=False)
    with pytest.raises(ValueError, match="expected 36 labels"):
        analyse(model, x, y[:10], hooks=HOOKS, progress=False)
    with pytest.raises(ValueError, match="hooks: give the module names"):
        analyse(model, x, y, progress=False)
    with pytest.raises(ValueError, match=r"k = 36 must be smaller"):
        analyse(model, x, y, hooks=HOOKS, k=36, progress=False)


def test_input_hook(setup, tmp_path):
    """LeNet-5 analyses its input by default: NNTS rows with hook_a == "input" at position 0,
    equal to NNTS recomputed from the flattened input and conv1's output."""
    from rra.models import build_model

    torch.manual_seed(0)
    lenet = build_model("lenet5", in_channels=1, num_classes=4, image_size=28).eval()
    x = torch.randn(30, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(30) % 4
    tables = analyse(lenet, x, y, scales=[2, "full"], k=[4], progress=False)
    nnts = tables["nnts"].filter(pl.col("measure") == "nnts")
    first = nnts.filter(pl.col("hook_a") == "input")
    assert first.height > 0 and first["pos_a"].unique().to_list() == [0]
    assert nnts.filter(pl.col("hook_a") == "conv1")["pos_a"].unique().to_list() == [1]
    assert set(first["scale_a"].unique()) == {"2", "full"}
    with torch.no_grad():
        conv1 = lenet.conv1(x)
    for scale, a, b in [("full", x.flatten(1), conv1.flatten(1)),
                        ("2", torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1),
                         torch.nn.functional.adaptive_avg_pool2d(conv1, 2).flatten(1))]:
        ga, gb = brute_knn(a.numpy(), 4), brute_knn(b.numpy(), 4)
        ref = np.mean([len(set(p) & set(q)) / len(set(p) | set(q)) for p, q in zip(ga, gb)])
        got = first.filter((pl.col("hook_b") == "conv1") & (pl.col("scale_a") == scale))["value"]
        assert got.to_list() == pytest.approx([ref], abs=1e-12), scale
    chain = tables["nntp"].filter(pl.col("measure") == "nntp_edges") \
        .filter(pl.col("scale_a") == "full").sort("pos_a")["hook_a"].to_list()
    assert chain[:2] == ["input", "conv1"] and len(chain) == 12  # I, C0, R0, P0, …, O
    off = analyse(lenet, x, y, include_input=False, k=[4], progress=False)
    assert "input" not in off["nnts"]["hook_a"].to_list()
    # any model: include_input=True, or "input" among the hooks; not by default
    model, xr, yr, _ = setup
    on = analyse(model, xr, yr, hooks=["layer1", "fc"], include_input=True, k=3, progress=False)
    listed = analyse(model, xr, yr, hooks=["input", "layer1", "fc"], k=3, progress=False)
    assert on["nnts"].equals(listed["nnts"])
    assert on["nnts"].filter(pl.col("pos_a") == 0)["hook_a"].unique().to_list() == ["input"]
    plain = analyse(model, xr, yr, hooks=["layer1", "fc"], k=3, progress=False)
    assert "input" not in plain["nnts"]["hook_a"].to_list()
    with pytest.raises(ValueError, match="include_input=False, but hooks list 'input'"):
        analyse(model, xr, yr, hooks=["input", "fc"], include_input=False, progress=False)
    with pytest.raises(ValueError, match="must come first"):
        analyse(model, xr, yr, hooks=["layer1", "input"], progress=False)


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?from rra\.api import analyse.*?)```", text, re.S)
    assert block, "README lost its Python API example"
    exec(compile(block.group(1), "README example", "exec"), {})
