"""Activation sparsity, binary patterns and layer-wise trees (rra.layers.patterns)."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from torch import nn

from hooks import forward_outputs
from rra.layers.patterns import (activation_patterns, check_relu_hooks, pattern_groups,
                                 pattern_purity, relu_codes, relu_hooks)

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """conv (3@3×3, fixed weights) → relu → flatten → fc (4) → relu_fc → out (3)."""

    def __init__(self, bias: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = nn.Conv2d(1, 3, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3 * 4 * 4, 4)
        self.relu_fc = nn.ReLU()
        self.out = nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            self.conv.bias.fill_(bias)
        self.hook_names = ["conv", "relu", "fc", "relu_fc", "out"]

    def forward(self, x):
        return self.out(self.relu_fc(self.fc(self.relu(self.conv(x)).flatten(1))))


def _brute(model: Tiny, x: torch.Tensor):
    """Per-hook activations of the whole probe, computed directly."""
    with torch.no_grad():
        a = model.relu(model.conv(x))
        b = model.relu_fc(model.fc(a.flatten(1)))
        pred = model.out(b).argmax(1)
    return {"relu": a.numpy(), "relu_fc": b.numpy()}, pred.numpy()


def _rows(rows):
    return {(r["hook_a"], r["measure"]): r["value"] for r in rows}


def test_pattern_purity_hand_computed():
    codes = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1]], dtype=bool)
    labels = [0, 0, 1, 0, 2]
    n_groups, group = pattern_groups(codes)
    assert n_groups == 3
    assert group[0] == group[1] and group[2] == group[3] and len(set(group)) == 3
    assert pattern_purity(codes, labels) == pytest.approx(4 / 5)   # 2 + 1 + 1
    assert pattern_purity(codes, [7] * 5) == 1.0                    # one class
    assert pattern_purity(np.zeros((4, 3), bool), [0, 1, 1, 2]) == pytest.approx(2 / 4)
    # more than 8 channels (packed bits): codes differing only in bit 9 are distinct
    wide = np.zeros((2, 10), bool)
    wide[1, 9] = True
    assert pattern_groups(wide)[0] == 2
    with pytest.raises(ValueError, match="binary"):
        pattern_groups(np.array([[0, 2]]))
    with pytest.raises(ValueError, match="labels"):
        pattern_purity(codes, [0, 1])


@pytest.mark.parametrize("batch_size", [3, 100])
def test_measures_match_brute_force(batch_size):
    model = Tiny()
    torch.manual_seed(0)
    x = torch.randn(12, 1, 6, 6)
    x[3] = -5.0  # a dark image: many channels off
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1])
    rows = activation_patterns(model, x, labels, ["relu", "relu_fc"], device="cpu",
                               batch_size=batch_size)
    got = _rows(rows)
    acts, _ = _brute(model, x)
    for hook, a in acts.items():
        on = a.reshape(len(a), a.shape[1], -1).max(axis=2) > 0
        codes = [tuple(row) for row in on]
        groups = defaultdict(Counter)
        for c, y in zip(codes, labels):
            groups[c][y] += 1
        assert got[(hook, "relu_channel_sparsity")] == pytest.approx(1 - on.mean())
        assert got[(hook, "relu_element_sparsity")] == pytest.approx((a == 0).mean())
        assert got[(hook, "relu_pattern_unique_fraction")] == pytest.approx(len(groups) / 12)
        assert got[(hook, "relu_pattern_purity")] == pytest.approx(
            sum(max(g.values()) for g in groups.values()) / 12)
    # the vector hook: channel and element sparsity coincide
    assert got[("relu_fc", "relu_channel_sparsity")] == got[("relu_fc", "relu_element_sparsity")]
    # the conv hook: a channel is on if any of its map is: element sparsity ≥ channel sparsity
    assert got[("relu", "relu_element_sparsity")] > got[("relu", "relu_channel_sparsity")]
    assert {r["pos_a"] for r in rows if r["hook_a"] == "relu_fc"} == {1}
    assert all("scale_a" not in r and "class" not in r for r in rows)


def test_relu_codes_stream_matches_brute_force():
    model = Tiny()
    x = torch.randn(7, 1, 6, 6)
    res = relu_codes(model, x, ["relu", "relu_fc"], device="cpu", batch_size=2)
    acts, pred = _brute(model, x)
    np.testing.assert_array_equal(res.codes["relu"], acts["relu"].max(axis=(2, 3)) > 0)
    np.testing.assert_array_equal(res.codes["relu_fc"], acts["relu_fc"] > 0)
    assert res.zeros["relu"] == int((acts["relu"] == 0).sum())
    assert res.elements["relu"] == acts["relu"].size
    np.testing.assert_array_equal(res.predictions, pred)


def test_all_zero_activations():
    model = Tiny(bias=-1e3)  # conv never positive
    x = torch.randn(6, 1, 6, 6)
    got = _rows(activation_patterns(model, x, [0, 0, 0, 1, 1, 2], ["relu"], device="cpu"))
    assert got[("relu", "relu_channel_sparsity")] == 1.0
    assert got[("relu", "relu_element_sparsity")] == 1.0
    assert got[("relu", "relu_pattern_unique_fraction")] == pytest.approx(1 / 6)
    assert got[("relu", "relu_pattern_purity")] == pytest.approx(3 / 6)  # the majority class


class Sign(nn.Module):
    """1×1 conv with channels +x and −x → relu → global max → logits = the two maxima:
    the prediction is 0 for a positive image, 1 for a negative one, read off one bit."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, x):
        return self.relu(self.conv(x)).amax(dim=(2, 3))


def test_tree_hand_computed():
    sign = torch.tensor([1, -1, 1, 1, -1, -1, 1, -1], dtype=torch.float32)
    train = sign.view(-1, 1, 1, 1) * torch.rand(8, 1, 3, 3).add(0.1)
    probe = -train[:5]
    got = _rows(activation_patterns(Sign(), probe, [0, 1, 1, 0, 0], ["relu"], train=train,
                                    device="cpu"))
    assert got[("relu", "relu_tree_fidelity")] == 1.0
    assert got[("relu", "relu_tree_fidelity_train")] == 1.0
    assert got[("relu", "relu_tree_depth")] == 1.0
    assert got[("relu", "relu_tree_leaves")] == 2.0
    assert got[("relu", "relu_pattern_purity")] == pytest.approx(3 / 5)  # groups {0,2,3}, {1,4}
    # one predicted class in training (0, a positive image): a single leaf of depth 0, right
    # on positive probe images, wrong on negative ones
    got = _rows(activation_patterns(Sign(), probe[:2], [0, 0], ["relu"], train=train[:1],
                                    device="cpu"))
    assert got[("relu", "relu_tree_depth")] == 0.0 and got[("relu", "relu_tree_leaves")] == 1.0
    assert got[("relu", "relu_tree_fidelity")] == 0.5
    assert got[("relu", "relu_pattern_purity")] == 1.0  # one class


def test_tree_matches_sklearn_on_brute_force_codes():
    from sklearn.tree import DecisionTreeClassifier

    model = Tiny()
    torch.manual_seed(3)
    train, probe = torch.randn(40, 1, 6, 6), torch.randn(15, 1, 6, 6)
    rows = activation_patterns(model, probe, np.zeros(15, int), ["relu_fc"], train=train,
                               seed=5, tree_kwargs={"max_depth": 3}, device="cpu",
                               batch_size=7)
    got = _rows(rows)
    acts_t, pred_t = _brute(model, train)
    acts_p, pred_p = _brute(model, probe)
    tree = DecisionTreeClassifier(random_state=5, max_depth=3).fit(
        (acts_t["relu_fc"] > 0).astype(np.uint8), pred_t)
    assert got[("relu_fc", "relu_tree_fidelity")] == pytest.approx(
        np.mean(tree.predict((acts_p["relu_fc"] > 0).astype(np.uint8)) == pred_p))
    assert got[("relu_fc", "relu_tree_depth")] == tree.get_depth() <= 3
    assert got[("relu_fc", "relu_tree_leaves")] == tree.get_n_leaves()
    again = activation_patterns(model, probe, np.zeros(15, int), ["relu_fc"], train=train,
                                seed=5, tree_kwargs={"max_depth": 3}, device="cpu")
    assert rows == again
    assert not any(r["measure"].startswith("relu_tree") for r in activation_patterns(
        model, probe, np.zeros(15, int), ["relu_fc"], device="cpu"))


def test_relu_hooks_of_registry_models():
    from rra.models import build_model

    lenet = build_model("lenet5", in_channels=1, num_classes=10, image_size=28)
    assert relu_hooks(lenet) == ["relu1", "relu2", "relu3", "relu4"]
    assert relu_hooks(lenet, ["input", "conv1", "relu2"]) == ["relu2"]
    resnet = build_model("resnet8", in_channels=3, num_classes=10, image_size=8)
    hooks = relu_hooks(resnet)
    assert hooks == ["stem.relu", "layer1.0.relu", "layer2.0.relu", "layer3.0.relu"]
    assert check_relu_hooks(resnet, hooks) == hooks
    # the ReLU's output is the block's output
    seen = forward_outputs(resnet.eval(), torch.randn(2, 3, 8, 8), ["layer1.0", "layer1.0.relu"],
                           keep=lambda o: o)
    assert seen["layer1.0"] is seen["layer1.0.relu"]


def test_bad_arguments():
    model = Tiny()
    x = torch.randn(4, 1, 6, 6)
    y = [0, 1, 0, 1]
    with pytest.raises(ValueError, match=r"hook 'conv' is a Conv2d, not an nn.ReLU"):
        activation_patterns(model, x, y, ["relu", "conv"], device="cpu")
    with pytest.raises(ValueError, match="'input' is the model's input"):
        activation_patterns(model, x, y, ["input"], device="cpu")
    with pytest.raises(ValueError, match="unknown hook"):
        activation_patterns(model, x, y, ["relu9"], device="cpu")
    with pytest.raises(ValueError, match="labels must be 1-D with one label per image"):
        activation_patterns(model, x, [0, 1], ["relu"], device="cpu")
    with pytest.raises(ValueError, match="labels must be integers"):
        activation_patterns(model, x, [0.5, 1, 0, 1], ["relu"], device="cpu")
    with pytest.raises(ValueError, match="random_state"):
        activation_patterns(model, x, y, ["relu"], train=x, tree_kwargs={"random_state": 1},
                            device="cpu")
    with pytest.raises(ValueError, match="tree_kwargs"):
        activation_patterns(model, x, y, ["relu"], train=x, tree_kwargs={"max_depth": -1},
                            device="cpu")
    with pytest.raises(ValueError, match="tree_kwargs"):
        activation_patterns(model, x, y, ["relu"], train=x, tree_kwargs={"depth": 2},
                            device="cpu")
    with pytest.raises(ValueError, match="seed"):
        activation_patterns(model, x, y, ["relu"], seed=-1, device="cpu")
    with pytest.raises(ValueError, match="train must be floating point"):
        activation_patterns(model, x, y, ["relu"], train=np.zeros((2, 1, 6, 6), np.uint8),
                            device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        activation_patterns(model, x, y, ["relu"], batch_size=0, device="cpu")
    resnet_like = nn.Sequential()
    resnet_like.add_module("block", nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU()))
    with pytest.raises(ValueError, match=r"ReLU modules inside it: \['block.1'\]"):
        check_relu_hooks(resnet_like, ["block"])


def test_reused_relu_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(self.relu(x))).amax(dim=(2, 3))

    with pytest.raises(ValueError, match="more than once"):
        activation_patterns(Twice(), torch.randn(2, 1, 3, 3), [0, 1], ["relu"], device="cpu")
