"""Model registry: every model × attention variant, hook points, sizes, parameters, FLOPs."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from hooks import capture
from rra.models import ATTENTION, MODELS, analyses_input, build_model, list_models
from rra.models.attention import STAC, SqueezeExcite
from rra.models.cost import (cost_stage, cost_table, count_elementwise_flops, count_flops,
                             count_live_params, count_params, live_taps, measure_cost)
from rra.models.resnet import PadShortcut

MODEL_KWARGS = {"cifar_resnet": {"depth": 8}}
ATTN_KWARGS = {"stac": {"scale": 2}}
CASES = [(m, a) for m in sorted(MODELS) for a in sorted(ATTENTION)
         if (m != "lenet5" or a == "none") and (not m.endswith("nobn") or m == "resnet8nobn")]


pytestmark = pytest.mark.usefixtures("one_thread")


def _size(name: str) -> int:
    return 28 if name == "lenet5" else 12  # tiny maps keep the sweep fast


@functools.lru_cache(maxsize=None)
def _model(name: str, attention: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, in_channels=3, num_classes=7, image_size=_size(name),
                       attention=attention, attention_kwargs=ATTN_KWARGS.get(attention),
                       **MODEL_KWARGS.get(name, {})).eval()


def _input(name: str, batch: int = 2) -> torch.Tensor:
    size = _size(name)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_registry_names():
    depths = ("8", "14", "20", "32", "44", "56")
    expected = {"lenet5", "cifar_resnet", "resnet18", *(f"resnet{d}" for d in depths),
                *(f"resnet{d}nobn" for d in depths)}
    assert set(list_models()) == expected and list_models() == sorted(expected)


@pytest.mark.parametrize("name,attention", CASES)
def test_forward_and_hooks(name, attention):
    model = _model(name, attention)
    x = _input(name)
    with capture(model, model.hook_names, keep=lambda o: (o, o.clone())) as captured, \
            torch.no_grad():
        y = model(x)
    order = captured.calls
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()
    assert len(set(model.hook_names)) == len(model.hook_names)
    assert order == model.hook_names  # each hook fires once, in the listed order
    for hook, (ref, copy) in captured.items():
        assert torch.equal(ref, copy), f"{hook}: output modified in place after the hook"
    assert torch.equal(captured[model.hook_names[-1]][0], y)
    assert not any(getattr(m, "inplace", False) for m in model.modules())


@pytest.mark.parametrize("name,attention", CASES)
def test_deterministic_for_seed(name, attention):
    a = _model(name, attention)
    torch.manual_seed(0)
    b = build_model(**a.spec).eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        assert torch.equal(a(_input(name)), b(_input(name)))
    torch.manual_seed(1)
    c = build_model(**a.spec)
    assert not all(torch.equal(sa[k], v) for k, v in c.state_dict().items()
                   if k.endswith("weight"))


@pytest.mark.parametrize("name", ["resnet8", "resnet18"])
def test_resnet_hooks_are_block_outputs(name):
    """stem → layer1.0 → … → pool → fc is a chain: each hook's output is the next's input."""
    model = _model(name, "se")
    with capture(model, model.hook_names, what="input") as ins, \
            capture(model, model.hook_names) as outs, torch.no_grad():
        model(_input(name))
    hooks = model.hook_names
    for prev, nxt in zip(hooks[:-2], hooks[1:-1]):
        if nxt == "pool":
            assert torch.equal(ins[nxt], outs[prev])
        else:
            assert ins[nxt] is outs[prev] or torch.equal(ins[nxt], outs[prev])
    assert torch.equal(ins["fc"], outs["pool"])
    for h in hooks[:-2]:
        assert (outs[h] >= 0).all(), f"{h} is not after a ReLU"
    last = model.stages[-1][-1]
    assert torch.allclose(outs["pool"], outs[last].mean(dim=(2, 3)))
    assert outs["pool"].dim() == 2


def test_stages_and_hook_names():
    m = build_model("resnet20", in_channels=3, num_classes=10, image_size=32)
    assert m.stages == [[f"layer{s}.{b}" for b in range(3)] for s in (1, 2, 3)]
    assert m.hook_names == ["stem", *sum(m.stages, []), "pool", "fc"]
    r18 = _model("resnet18", "none")
    assert r18.stages == [[f"layer{s}.{b}" for b in range(2)] for s in (1, 2, 3, 4)]
    lenet = _model("lenet5", "none")
    assert lenet.hook_names == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3",
                                "relu3", "fc1", "relu4", "fc2"]
    assert lenet.stages == []


def test_analyse_input_flags():
    """LeNet-5 analyses its input (hook ``input``) by default, the ResNets do not; the
    registry-level lookup (``embed.input: auto``) agrees with every built model, and no model
    has a submodule named ``input`` (that would make the input hook ambiguous)."""
    assert _model("lenet5", "none").analyse_input is True
    assert _model("resnet8", "none").analyse_input is False
    assert {name: analyses_input(name) for name in MODELS} == {
        name: name == "lenet5" for name in MODELS}
    for name in MODELS:
        model = _model(name, "none")
        assert analyses_input(name) == getattr(model, "analyse_input", False), name
        assert "input" not in dict(model.named_modules()), name
    with pytest.raises(ValueError, match="unknown model 'vgg11'"):
        analyses_input("vgg11")


@pytest.mark.parametrize("name", ["lenet5", "resnet8", "resnet18"])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_input_sizes(name, in_channels, size):
    torch.manual_seed(0)
    model = build_model(name, in_channels=in_channels, num_classes=10, image_size=size).eval()
    with torch.no_grad():
        y = model(torch.randn(1, in_channels, size, size))
    assert y.shape == (1, 10)


def test_lenet_param_counts():
    def lenet_params(c, side, k):
        return ((c * 25 + 1) * 6 + (6 * 25 + 1) * 16 + (16 * 25 + 1) * 120
                + (120 * side * side + 1) * 84 + (84 + 1) * k)

    m = build_model("lenet5", in_channels=1, num_classes=10, image_size=28)
    assert count_params(m) == 61_706 == lenet_params(1, 1, 10)
    for size, side in [(32, 2), (64, 10)]:
        m = build_model("lenet5", in_channels=3, num_classes=100, image_size=size)
        assert count_params(m) == lenet_params(3, side, 100)
        assert m.fc1.in_features == 120 * side * side


def test_resnet20_params_and_flops():
    m = build_model("resnet20", in_channels=3, num_classes=10, image_size=32)
    convs = 3 * 16 * 9 + 6 * 16 * 16 * 9 + (16 * 32 + 5 * 32 * 32) * 9 + (32 * 64 + 5 * 64 * 64) * 9
    bns = 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
    assert count_params(m) == convs + bns + 64 * 10 + 10 == 269_722
    assert abs(count_params(m) - 0.27e6) < 0.005e6
    macs = (3 * 16 * 9 * 32 * 32 + 6 * 16 * 16 * 9 * 32 * 32
            + (16 * 32 + 5 * 32 * 32) * 9 * 16 * 16 + (32 * 64 + 5 * 64 * 64) * 9 * 8 * 8 + 640)
    flops = count_flops(m, (3, 32, 32))
    assert flops == 2 * macs
    assert abs(flops / 2 - 41e6) / 41e6 < 0.03
    assert count_flops(m, (4, 3, 32, 32)) == 4 * flops
    assert m.training  # the training flag is restored


def test_resnet_without_batchnorm():
    """bn=False: no BatchNorm left, every convolution with a bias, the same hook names and
    module names (Identity in BatchNorm's place), each residual branch zero at init (so each
    block's output is relu(shortcut(x))); ``resnet8nobn`` is ``resnet8`` with bn=False."""
    from torch import nn

    kw = dict(in_channels=3, num_classes=10, image_size=12)
    torch.manual_seed(0)
    plain = build_model("resnet8nobn", **kw)
    torch.manual_seed(0)
    via_kwargs = build_model("resnet8", bn=False, **kw)
    with_bn = build_model("resnet8", **kw)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert [n for n, _ in plain.named_modules()] == [n for n, _ in with_bn.named_modules()]
    assert plain.hook_names == with_bn.hook_names
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.bias is not None and not m.bias.any() for m in convs)
    bn_params = sum(p.numel() for m in with_bn.modules() if isinstance(m, nn.BatchNorm2d)
                    for p in m.parameters())
    conv_bias = sum(m.out_channels for m in convs)
    assert count_params(plain) == count_params(with_bn) - bn_params + conv_bias
    for a, b in zip(plain.state_dict().values(), via_kwargs.state_dict().values()):
        assert torch.equal(a, b)
    block = plain.layer2[0]
    assert not block.conv2.weight.any()
    x = torch.randn(2, 16, 12, 12)
    assert torch.equal(block(x), torch.relu(block.shortcut(x)))
    r18 = build_model("resnet18", bn=False, **kw)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in r18.modules())
    with pytest.raises(ValueError, match="bn must be true or false"):
        build_model("resnet8", bn="no", **kw)
    with pytest.raises(ValueError, match="unknown keyword"):
        build_model("resnet8nobn", bn=True, **kw)


def test_resnet18_params():
    m = _model("resnet18", "none")
    assert count_params(build_model("resnet18", in_channels=3, num_classes=10,
                                    image_size=32)) == 11_173_962
    shortcut = m.layer2[0].shortcut
    assert shortcut.conv.stride == (2, 2) and shortcut.conv.kernel_size == (1, 1)


def test_option_a_shortcut():
    x = torch.randn(2, 4, 5, 5)
    y = PadShortcut(4, 8, 2)(x)
    assert y.shape == (2, 8, 3, 3)
    assert torch.equal(y[:, 2:6], x[:, :, ::2, ::2])
    assert (y[:, :2] == 0).all() and (y[:, 6:] == 0).all()
    m = _model("resnet8", "none")
    assert count_params(m.layer2[0].shortcut) == 0


def test_stac_scales_per_stage():
    torch.manual_seed(0)
    m = build_model("resnet20", in_channels=3, num_classes=10, image_size=32,
                    attention="stac", attention_kwargs={"scales": [4, 2, 1]})
    sizes = [[m.get_submodule(b).attn.size for b in stage] for stage in m.stages]
    assert sizes == [[4] * 3, [2] * 3, [1] * 3]
    with pytest.raises(ValueError, match="scales has 3 entries"):
        build_model("resnet18", in_channels=3, num_classes=10, image_size=32,
                    attention="stac", attention_kwargs={"scales": [4, 2, 1]})


def test_cost_table():
    rows = cost_table("resnet20", {"none": {}, "se": {},
                                   "stac": {"attention_kwargs": {"scales": [4, 2, 1]}}},
                      in_channels=3, num_classes=10, image_size=32)
    by = {r["variant"]: r for r in rows}
    assert by["none"]["params_ratio"] == 1.0 and by["none"]["flops_ratio"] == 1.0
    base_p, base_f = by["none"]["params"], by["none"]["flops"]
    # SE: per block C·h + h + h·C + C params and 2·(C·h + h·C) FLOPs (two linear layers)
    se = [(c, max(1, c // 16)) for c in (16, 32, 64) for _ in range(3)]
    assert by["se"]["params_extra"] == sum(2 * c * h + h + c for c, h in se)
    assert by["se"]["flops_extra"] == sum(2 * 2 * c * h for c, h in se)
    # STAC: k×k and 1×1 convs on the s × s map: 2·(k²C² + C²)·s² FLOPs per block, k = 3 for
    # s ≥ 2 and k = 1 at s = 1 (the 3×3's only live tap; every parameter live)
    st = [(c, s, 3 if s > 1 else 1) for c, s in ((16, 4), (32, 2), (64, 1)) for _ in range(3)]
    assert by["stac"]["params_extra"] == sum((k * k + 1) * c * c + 3 * c + 1 for c, _, k in st)
    assert by["stac"]["flops_extra"] == sum(2 * (k * k + 1) * c * c * s * s for c, s, k in st)
    assert by["stac"]["params_live"] == by["stac"]["params"]
    assert by["stac"]["params"] == base_p + by["stac"]["params_extra"]
    assert by["stac"]["flops_ratio"] == pytest.approx(by["stac"]["flops"] / base_f)
    assert 1.0 < by["stac"]["flops_ratio"] < 1.02 < by["stac"]["params_ratio"] < 2.0
    with pytest.raises(ValueError, match="unknown key"):
        cost_table("resnet8", {"x": {"attn": "se"}}, 3, 10, 32)


@pytest.mark.parametrize("kwargs,match", [
    ({"name": "vgg16"}, "unknown model 'vgg16'.*resnet20"),
    ({"name": "resnet20", "depth": 20}, "unknown keyword.*depth"),
    ({"name": "lenet5", "width": 2}, "unknown keyword.*width"),
    ({"name": "cifar_resnet", "depth": 21}, "6n \\+ 2"),
    ({"name": "cifar_resnet", "depth": 2}, "6n \\+ 2"),
    ({"name": "resnet20", "attention": "xx"}, "unknown attention 'xx'"),
    ({"name": "resnet20", "attention": "se", "attention_kwargs": {"scale": 2}},
     "attention 'se'.*unknown keyword"),
    ({"name": "resnet20", "attention": "stac", "attention_kwargs": {"stage": 1, "scale": 2}},
     "unknown keyword.*stage"),
    ({"name": "resnet20", "attention": "stac"}, "exactly one of scale"),
    ({"name": "lenet5", "attention": "se"}, "no residual blocks"),
    ({"name": "lenet5", "image_size": 27}, "at least 28"),
    ({"name": "resnet20", "in_channels": 0}, "in_channels"),
    ({"name": "resnet18", "num_classes": 0}, "num_classes"),
])
def test_bad_arguments_raise(kwargs, match):
    args = {"in_channels": 3, "num_classes": 10, "image_size": 32, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_model(**args)


def test_count_flops_bad_shape():
    with pytest.raises(ValueError, match="input_shape"):
        count_flops(_model("resnet8", "none"), (32, 32))
    for fn in (count_elementwise_flops, count_live_params, measure_cost):
        with pytest.raises(ValueError, match="input_shape"):
            fn(_model("resnet8", "none"), (3, 0, 8))


# --- element-wise operations and live parameters (rra.models.cost) [ours] -------------------

def test_elementwise_se_block_hand_count():
    """SE on 1 × C × H × W: pool C·H·W adds, fc1 bias h, relu h, fc2 bias C, sigmoid C,
    product C·H·W; torch's counter has the two matrix products (2 FLOPs per multiply-add)."""
    c, hh, ww, r = 32, 5, 6, 8
    h = c // r
    m = SqueezeExcite(c, reduction=r)
    cost = measure_cost(m, (c, hh, ww))
    assert cost["flops"] == 2 * (c * h + h * c) == count_flops(m, (c, hh, ww))
    assert cost["flops_elementwise"] == 2 * c * hh * ww + 2 * h + 2 * c
    assert cost["flops_elementwise"] == count_elementwise_flops(m, (c, hh, ww))
    assert cost["flops_total"] == cost["flops"] + cost["flops_elementwise"]
    assert count_elementwise_flops(m, (3, c, hh, ww)) == 3 * cost["flops_elementwise"]
    assert cost["params"] == cost["params_live"] == count_params(m)


class _EveryRule(torch.nn.Module):
    """One module per counting rule, tensor ops written in forward() included."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)             # bias: 1 per output
        self.bn = torch.nn.BatchNorm2d(3)                            # 2 per element
        self.unused = torch.nn.Linear(4, 4)                          # never called: dead

    def forward(self, x: torch.Tensor) -> torch.Tensor:              # x: 1 × 2 × 5 × 5
        y = torch.relu(self.bn(self.conv(x)))                        # 3·25 each
        p = F.max_pool2d(y, 3, stride=2, padding=1)                  # 3 × 3 × 3
        a = F.adaptive_avg_pool2d(F.pad(y, (1, 1, 1, 1)), (3, 3))    # 7 × 7 → 3 × 3
        b = F.avg_pool2d(y, 2)                                       # 5 × 5 → 2 × 2
        u = F.interpolate(b, size=(3, 3), mode="bilinear", align_corners=False)
        n = F.interpolate(b, size=(3, 3), mode="nearest")            # a copy: 0
        s = torch.softmax(p * a + u - n, dim=1)                      # 3 ops of 27, softmax
        return s.sum(dim=(2, 3)) / 2                                 # sum 27, divide 3


def test_elementwise_every_rule_hand_count():
    m = _EveryRule()
    # max pool k = 3, s = 2, p = 1 on 5: windows read 2 + 3 + 2 = 7 per axis (padding reads
    # nothing); adaptive 7 → 3: windows [0, 3), [2, 5), [4, 7): 9 per axis; avg 2 × 2, s = 2
    # on 5: 2 windows of 2 per axis
    expected = {"conv bias": 3 * 25, "bn": 2 * 3 * 25, "relu": 3 * 25,
                "max pool": 3 * 7 * 7, "adaptive pool": 3 * 9 * 9, "avg pool": 3 * 4 * 4,
                "bilinear": 7 * 27, "nearest": 0, "mul, add, sub": 3 * 27,
                "softmax": 5 * 27, "sum": 27, "div": 3}
    cost = measure_cost(m, (2, 5, 5))
    assert cost["flops_elementwise"] == sum(expected.values()) == 1173
    assert cost["flops"] == 2 * 3 * 2 * 9 * 25  # the convolution, every tap
    assert cost["params_live"] == cost["params"] - (4 * 4 + 4)  # the unused Linear


def test_elementwise_unknown_op_is_an_error():
    class Cumulative(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, dim=1)

    with pytest.raises(NotImplementedError, match=r"aten\.cumsum.*ELEMENTWISE_RULES"):
        count_elementwise_flops(Cumulative(), (2, 3, 3))


def test_elementwise_resnet20_hand_count():
    """ResNet-20 at 3×32×32: stem BN + ReLU; per block 2 BN (2 ops), 2 ReLU and the residual
    addition, 7 ops per element of C·H·W (option-A shortcuts: slicing and padding, 0); the
    global average pool (64·8·8) and the classifier bias (10). SE adds per block
    2·C·H·W + 2h + 2C (≈ 170 k in all, while its matrix products add ≈ 4 k FLOPs)."""
    stages = [16 * 32 * 32, 32 * 16 * 16, 64 * 8 * 8]
    base = 3 * 16 * 32 * 32 + 3 * 7 * sum(stages) + 64 * 8 * 8 + 10
    assert base == 655_370
    rows = {r["variant"]: r for r in cost_table("resnet20", {"none": {}, "se": {}},
                                                 in_channels=3, num_classes=10, image_size=32)}
    assert rows["none"]["flops_elementwise"] == base
    se = sum(3 * (2 * n + 2 * (c // 16) + 2 * c) for c, n in zip((16, 32, 64), stages))
    assert se == 172_746
    assert rows["se"]["flops_elementwise"] - base == se
    assert rows["se"]["flops_extra"] == 4_032  # torch's counter alone: +0.005 %
    assert rows["se"]["flops_total_extra"] == se + 4_032
    assert rows["se"]["flops_total_ratio"] == pytest.approx(
        rows["se"]["flops_total"] / rows["none"]["flops_total"])
    assert rows["none"]["flops_total"] == rows["none"]["flops"] + base


@pytest.mark.parametrize("length,k,s,p,d,live", [
    (1, 3, 1, 1, 1, [False, True, False]),   # 3×3 on a 1×1 map: the centre tap only
    (2, 3, 1, 1, 1, [True, True, True]),
    (1, 3, 1, 2, 2, [False, True, False]),   # dilation 2, padding 2
    (1, 5, 1, 2, 1, [False, False, True, False, False]),
    (3, 3, 2, 1, 1, [True, True, True]),
    (1, 1, 1, 0, 1, [True]),
])
def test_live_taps_one_axis(length, k, s, p, d, live):
    mask = live_taps([length, 4], [k, 1], [s, 1], [p, 0], [d, 1])
    assert mask.shape == (k, 1) and mask[:, 0].tolist() == live


def test_live_params_catch_the_old_stac_at_scale_one():
    """STAC's 3×3 conv at s = 1 as it was (zero padding, 1×1 pooled map) has 8C² dead
    weights; the 1×1 conv used now has none. A 3×3 at s = 2 has none either."""
    c = 8
    old = STAC(c, scale=1)
    old.conv3 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
    assert count_live_params(old, (c, 6, 6)) == count_params(old) - 8 * c * c
    new = STAC(c, scale=1)
    assert count_live_params(new, (c, 6, 6)) == count_params(new) == count_params(old) - 8 * c * c
    two = STAC(c, scale=2)
    assert count_live_params(two, (c, 6, 6)) == count_params(two)
    assert count_live_params(two, (c, 1, 6)) == count_params(two) - 6 * c * c  # rows 0, 2 dead
    # in a network: ResNet-20 with the old layer in every last-stage block
    m = build_model("resnet20", in_channels=3, num_classes=10, image_size=32,
                    attention="stac", attention_kwargs={"scales": [4, 2, 1]})
    assert measure_cost(m, (3, 32, 32))["params_live"] == count_params(m)
    for block in m.stages[2]:
        m.get_submodule(block).attn.conv3 = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
    assert count_live_params(m, (3, 32, 32)) == count_params(m) - 3 * 8 * 64 * 64


def test_cost_stage_columns(tmp_path):
    import polars as pl

    variants = [{"model": "resnet8", "attention": a, "module": a, "attention_kwargs": kw}
                for a, kw in (("none", {}), ("se", {}), ("stac", {"scales": [2, 1, 1]}))]
    df = cost_stage("mnist5k", variants, tmp_path / "cost")
    assert pl.read_parquet(tmp_path / "cost.parquet").equals(df)
    rows = {r["attention"]: r for r in df.to_dicts()}
    for label, kw in (("none", {}), ("se", {}), ("stac", {"scales": [2, 1, 1]})):
        model = build_model("resnet8", in_channels=1, num_classes=10, image_size=28,
                            attention=label, attention_kwargs=kw)
        expected = measure_cost(model, (1, 28, 28))
        assert {k: rows[label][k] for k in expected} == expected
        assert rows[label]["params_live"] == rows[label]["params"]
        assert rows[label]["flops_total_extra"] == (rows[label]["flops_total"]
                                                    - rows["none"]["flops_total"])
    assert rows["none"]["flops_total_ratio"] == 1.0 < rows["se"]["flops_total_ratio"]


def test_stac_matches_functional_block():
    """One block with STAC at s = 1 computed by hand: relu(x + V·σ(K)·S)."""
    torch.manual_seed(0)
    m = build_model("resnet8", in_channels=3, num_classes=10, image_size=8,
                    attention="stac", attention_kwargs={"scale": 1}).eval()
    block = m.layer1[0]
    x = torch.relu(torch.randn(2, 16, 8, 8))

    def bn(b, t):
        return F.batch_norm(t, b.running_mean, b.running_var, b.weight, b.bias, False, 0.0, b.eps)

    v = bn(block.bn2, F.conv2d(torch.relu(bn(block.bn1, F.conv2d(x, block.conv1.weight,
                                                                   padding=1))),
                               block.conv2.weight, padding=1))
    a = block.attn
    h = torch.relu(bn(a.bn, (v.mean(dim=(2, 3)) @ a.conv3.weight[:, :, 0, 0].T)[:, :, None, None]))
    k = h[:, :, 0, 0] @ a.conv1.weight[:, :, 0, 0].T + a.conv1.bias
    expected = torch.relu(x + v * torch.sigmoid(k)[:, :, None, None] * a.gain)
    with torch.no_grad():
        assert torch.allclose(block(x), expected, atol=1e-5)
