"""rra.embed: pooling by scale, streamed dumps, the stage entry, bounded memory."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hooks import forward_outputs
from rra.embed import (dump_embeddings, embed_run, parse_scales, pool_embedding, scale_name,
                       scales_for)
from rra.io import read_json, sha256_file

ROOT = Path(__file__).resolve().parents[1]
SCALES = [1, 2, 4, "full"]


# ---------------------------------------------------------------- stand-in models and references

class SmallNet(nn.Module):
    """3×7×7 input: 7×7 maps (non-divisible pooling), 3×3 maps (scale 4 skipped), vectors."""

    hook_names = ["conv1", "relu1", "pool1", "conv2", "gap", "flat", "fc"]

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        return self.fc(self.flat(self.gap(self.conv2(x))))


def small_net(seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet()


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 7, 7, generator=torch.Generator().manual_seed(seed))


def hand_pool(a: np.ndarray, s: int) -> np.ndarray:
    """Adaptive average pooling by its definition: cell (i, j) = mean of rows
    floor(i·H/s) .. ceil((i+1)·H/s) − 1 and the same columns; flattened channel-major."""
    b, c, h, w = a.shape
    out = np.empty((b, c, s, s), dtype=np.float64)
    for i in range(s):
        r0, r1 = (i * h) // s, math.ceil((i + 1) * h / s)
        for j in range(s):
            c0, c1 = (j * w) // s, math.ceil((j + 1) * w / s)
            out[:, :, i, j] = a[:, :, r0:r1, c0:c1].astype(np.float64).mean(axis=(2, 3))
    return out.reshape(b, -1)


def reference(model: nn.Module, x: torch.Tensor, hooks: list[str], scales=SCALES) -> dict:
    """Direct forward pass of all rows at once, each hook's output pooled by hand."""
    outs = {h: o.numpy() for h, o in forward_outputs(model.eval(), x, hooks).items()}
    ref = {}
    for h, a in outs.items():
        for s in scales:
            if s == "full":
                ref[(h, "full")] = a.reshape(a.shape[0], -1)
            elif a.ndim == 4 and s <= min(a.shape[2:]):
                ref[(h, str(s))] = hand_pool(a, s)
    return ref


def npy_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.suffix == ".npy")


# ---------------------------------------------------------------- scales and pooling

def test_parse_scales_orders_and_validates():
    assert parse_scales(["full", 4, "2", 1]) == [1, 2, 4, "full"]
    assert parse_scales("full") == ["full"]
    assert [scale_name(s) for s in parse_scales([2, "FULL"])] == ["2", "full"]
    for bad in (0, -1, "0", "huge", 1.5, True, None):
        with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
            parse_scales([1, bad])
    with pytest.raises(ValueError, match="more than once"):
        parse_scales([1, 2, "1"])
    with pytest.raises(ValueError, match="no scales"):
        parse_scales([])


def test_scales_for_skips_scales_larger_than_the_map():
    assert scales_for((2, 8, 3, 3), SCALES) == [1, 2, "full"]
    assert scales_for((2, 8, 6, 3), SCALES) == [1, 2, "full"]  # limit is min(H, W)
    assert scales_for((2, 8, 4, 4), SCALES) == [1, 2, 4, "full"]
    assert scales_for((2, 8, 1, 1), [2, 4]) == []
    assert scales_for((2, 10), SCALES) == ["full"]  # a vector: only its full embedding
    assert scales_for((2, 10), [1, 2]) == []
    with pytest.raises(ValueError, match="shape"):
        scales_for((2, 3, 10), SCALES)


@pytest.mark.parametrize("shape", [(3, 2, 7, 5), (2, 3, 8, 8), (1, 1, 4, 6)])
def test_pool_embedding_matches_hand_pooling(shape):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    a = t.numpy()
    for s in scales_for(shape, SCALES):
        got = pool_embedding(t, s)
        assert got.dtype == torch.float32
        if s == "full":
            assert torch.equal(got, t.reshape(shape[0], -1))
        else:
            assert got.shape == (shape[0], shape[1] * s * s)
            np.testing.assert_allclose(got.numpy(), hand_pool(a, s), rtol=1e-6, atol=1e-6)
    # exactly divisible map: plain block means via reshape
    if shape[2] % 4 == 0 and shape[3] % 4 == 0:
        b, c, h, w = shape
        blocks = a.reshape(b, c, 4, h // 4, 4, w // 4).mean(axis=(3, 5)).reshape(b, -1)
        np.testing.assert_allclose(pool_embedding(t, 4).numpy(), blocks, rtol=1e-6, atol=1e-6)


def test_pool_embedding_vectors_and_errors():
    v = torch.randn(4, 6)
    assert torch.equal(pool_embedding(v, "full"), v)
    with pytest.raises(ValueError, match="does not apply"):
        pool_embedding(v, 1)
    with pytest.raises(ValueError, match="does not apply"):
        pool_embedding(torch.randn(2, 3, 3, 3), 4)
    with pytest.raises(ValueError, match="'x'"):
        pool_embedding(torch.randn(2, 3, 3, 3), "x")


# ---------------------------------------------------------------- dump_embeddings

def test_dump_equals_direct_forward_pooled_by_hand(tmp_path):
    model, x = small_net(), images(23)
    hooks = SmallNet.hook_names
    ref = reference(model, x, hooks)
    model.train()
    man = dump_embeddings(model, x, hooks, ["full", 4, 2, 1], tmp_path, batch_size=5,
                          device="cpu", meta={"checkpoint_sha256": "abc"}, progress=False)
    # conv1/relu1: 7×7 (all scales); pool1/conv2: 3×3 (scale 4 skipped); gap 1×1; flat/fc vectors
    expected = [("conv1", s) for s in ("1", "2", "4", "full")] \
        + [("relu1", s) for s in ("1", "2", "4", "full")] \
        + [("pool1", s) for s in ("1", "2", "full")] + [("conv2", s) for s in ("1", "2", "full")] \
        + [("gap", "1"), ("gap", "full"), ("flat", "full"), ("fc", "full")]
    assert [(e["hook"], e["scale"]) for e in man["entries"]] == expected
    assert set(ref) == set(expected)
    assert man["hooks"] == hooks and man["scales"] == ["1", "2", "4", "full"] and man["n"] == 23
    assert man["checkpoint_sha256"] == "abc" and "versions" in man
    assert read_json(tmp_path / "manifest.json") == json.loads(json.dumps(man))
    for entry in man["entries"]:
        want = ref[(entry["hook"], entry["scale"])]
        got = np.load(tmp_path / entry["file"])
        assert entry["file"] == f"{entry['hook']}@{entry['scale']}.npy"
        assert got.dtype == np.float32 and got.shape == want.shape == tuple(entry["shape"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=entry["file"])
        side = read_json(tmp_path / entry["file"].replace(".npy", ".json"))
        assert side["shape"] == list(want.shape) and side["dtype"] == "float32"
        assert (side["hook"], side["scale"]) == (entry["hook"], entry["scale"])
        assert side["checkpoint_sha256"] == "abc"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert model.training  # mode restored


def test_dump_uint8_memmap_with_transform(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(11, 7, 7, 3), dtype=np.uint8)
    np.save(tmp_path / "img.npy", raw)
    mm = np.load(tmp_path / "img.npy", mmap_mode="r")

    def to_input(batch):
        return torch.from_numpy(np.asarray(batch, dtype=np.float32) / 255.0).permute(0, 3, 1, 2)

    model = small_net()
    ref = reference(model, to_input(raw), ["conv2", "fc"])
    man = dump_embeddings(model, mm, ["conv2", "fc"], SCALES, tmp_path / "e", batch_size=4,
                          device="cpu", transform=to_input, progress=False)
    for e in man["entries"]:
        np.testing.assert_allclose(np.load(tmp_path / "e" / e["file"]), ref[(e["hook"], e["scale"])],
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="uint8.*transform"):
        dump_embeddings(model, mm, ["fc"], SCALES, tmp_path / "f", device="cpu", progress=False)


def test_dataloader_input_equals_array_input(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    model, x = small_net(), images(13)
    y = torch.arange(13)
    hooks = ["conv1", "conv2", "fc"]
    a = dump_embeddings(model, x, hooks, SCALES, tmp_path / "a", batch_size=4, device="cpu",
                        progress=False)
    b = dump_embeddings(model, DataLoader(TensorDataset(x, y), batch_size=4), hooks, SCALES,
                        tmp_path / "b", device="cpu", progress=False)
    c = dump_embeddings(model, DataLoader(x, batch_size=6), hooks, SCALES, tmp_path / "c",
                        device="cpu", progress=False)
    assert a["entries"] == b["entries"] == c["entries"] and b["n"] == c["n"] == 13
    ref = reference(model, x, hooks)
    for e in a["entries"]:
        fa, fb = np.load(tmp_path / "a" / e["file"]), np.load(tmp_path / "b" / e["file"])
        np.testing.assert_array_equal(fa, fb)  # same batches -> same bytes
        np.testing.assert_allclose(np.load(tmp_path / "c" / e["file"]), ref[(e["hook"], e["scale"])],
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shuffle"):
        dump_embeddings(model, DataLoader(x, batch_size=4, shuffle=True), hooks, SCALES,
                        tmp_path / "d", device="cpu", progress=False)
    with pytest.raises(ValueError, match="drop_last"):
        dump_embeddings(model, DataLoader(x, batch_size=4, drop_last=True), hooks, SCALES,
                        tmp_path / "d", device="cpu", progress=False)


def test_dump_is_deterministic(tmp_path):
    for name in ("a", "b"):
        dump_embeddings(small_net(3), images(9), SmallNet.hook_names, SCALES, tmp_path / name,
                        batch_size=4, device="cpu", progress=False)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(names) > 10
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_hook_errors(tmp_path):
    model, x = small_net(), images(4)
    with pytest.raises(ValueError, match=r"unknown hook\(s\) \['conv9'\].*conv1, relu1, pool1"):
        dump_embeddings(model, x, ["conv1", "conv9"], SCALES, tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="forward call order.*'conv2', 'conv1'.*'conv1', 'conv2'"):
        dump_embeddings(model, x, ["conv2", "conv1"], SCALES, tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="more than once"):
        dump_embeddings(model, x, ["conv1", "conv1"], SCALES, tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"'fc'.*no embedding"):
        dump_embeddings(model, x, ["conv1", "fc"], [1, 2], tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        dump_embeddings(model, x, ["conv1"], SCALES, tmp_path, batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="reserved"):
        dump_embeddings(model, x, ["conv1"], SCALES, tmp_path, meta={"n": 3}, device="cpu")

    class Reuse(nn.Module):  # one ReLU module called twice, one module never called
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.unused = nn.Conv2d(3, 2, 1), nn.ReLU(), nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(self.act(x)))

    with pytest.raises(ValueError, match=r"\['act'\] were called more than once"):
        dump_embeddings(Reuse(), x, ["act"], SCALES, tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"\['unused'\] were not called"):
        dump_embeddings(Reuse(), x, ["conv", "unused"], SCALES, tmp_path, device="cpu",
                        progress=False)
    assert list(tmp_path.iterdir()) == []


class NaNAt(nn.Module):
    """Identity except that the output is NaN for input rows whose first value is > 100."""

    def forward(self, x):
        bad = (x.flatten(1)[:, 0] > 100).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(bad, torch.full_like(x, float("nan")), x)


def test_nan_error_leaves_no_files(tmp_path):
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, 2, 3, padding=1))
    model.add_module("check", NaNAt())
    model.add_module("head", nn.Sequential(nn.Flatten(), nn.Linear(2 * 7 * 7, 3)))
    x = images(10)
    x[7, 0] = 1e4  # row 7: third batch of size 3, after earlier batches were written
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
        model[0].weight[:, 0, 1, 1] = 1.0  # conv copies channel 0, so row 7 passes 100
    out = tmp_path / "e"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a stale manifest must not survive a failed run
    with pytest.raises(ValueError, match=r"hook 'check'.*NaN or inf.*rows 6\.\.8"):
        dump_embeddings(model, x, ["conv", "check", "head"], SCALES, out, batch_size=3,
                        device="cpu", progress=False)
    assert list(out.iterdir()) == []  # no final names, no temporaries, no manifest


# ---------------------------------------------------------------- the input hook

def test_input_hook_is_the_pooled_model_input(tmp_path):
    """Hook ``input`` = the batch the model receives (after ``transform``), pooled like a map."""
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, size=(13, 8, 8, 3), dtype=np.uint8)  # 8×8: scale 4 divides

    def to_input(batch):  # a normalisation, as rra.data.normalise does for the workflow
        x = (np.asarray(batch, dtype=np.float32) / 255.0 - 0.3) / 0.2
        return torch.from_numpy(x).permute(0, 3, 1, 2)

    model = small_net()
    hooks = ["input", "conv1", "fc"]
    man = dump_embeddings(model, raw, hooks, ["full", 4, 2, 1], tmp_path, batch_size=5,
                          device="cpu", transform=to_input, progress=False)
    assert man["hooks"] == hooks
    assert [(e["hook"], e["scale"]) for e in man["entries"]][:4] == [
        ("input", "1"), ("input", "2"), ("input", "4"), ("input", "full")]
    x = to_input(raw)  # 13 × 3 × 8 × 8, the model's input
    got = {e["scale"]: np.load(tmp_path / e["file"])
           for e in man["entries"] if e["hook"] == "input"}
    np.testing.assert_array_equal(got["full"], x.reshape(13, -1).numpy())
    for s in (1, 2, 4):
        torch_pool = torch.nn.functional.adaptive_avg_pool2d(x, s).flatten(1).numpy()
        np.testing.assert_array_equal(got[str(s)], torch_pool)
        blocks = x.numpy().reshape(13, 3, s, 8 // s, s, 8 // s).mean(axis=(3, 5)).reshape(13, -1)
        np.testing.assert_allclose(got[str(s)], blocks, rtol=1e-6, atol=1e-6)
        assert got[str(s)].shape == (13, 3 * s * s)
    assert read_json(tmp_path / "input@full.json")["hook"] == "input"
    # the module hooks are unchanged by the input hook
    ref = reference(model, x, ["conv1", "fc"])
    for e in man["entries"][4:]:
        np.testing.assert_allclose(np.load(tmp_path / e["file"]), ref[(e["hook"], e["scale"])],
                                   rtol=1e-5, atol=1e-6)
    # input alone: no module hook at all
    alone = dump_embeddings(model, x, ["input"], [2, "full"], tmp_path / "alone", device="cpu",
                            progress=False)
    assert [e["file"] for e in alone["entries"]] == ["input@2.npy", "input@full.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "alone" / "input@full.npy"),
                                  x.reshape(13, -1).numpy())


def test_input_hook_errors(tmp_path):
    model, x = small_net(), images(6)
    with pytest.raises(ValueError, match=r"'input' \(the model's input\) must come first"):
        dump_embeddings(model, x, ["conv1", "input"], SCALES, tmp_path, device="cpu",
                        progress=False)

    class HasInput(nn.Module):  # a submodule literally named "input"
        def __init__(self):
            super().__init__()
            self.input = nn.Identity()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.conv(self.input(x))

    with pytest.raises(ValueError, match="'input' is ambiguous.*submodule named 'input'"):
        dump_embeddings(HasInput(), x, ["input", "conv"], SCALES, tmp_path, device="cpu",
                        progress=False)
    dump_embeddings(HasInput(), x, ["conv"], SCALES, tmp_path / "ok", device="cpu",
                    progress=False)  # not asked for: no ambiguity
    bad = x.clone()
    bad[4, 1, 2, 3] = float("inf")  # second batch of 3
    with pytest.raises(ValueError, match=r"hook 'input' \(scale 1\): NaN or inf.*rows 3\.\.5"):
        dump_embeddings(model, bad, ["input", "conv1"], SCALES, tmp_path / "nan", batch_size=3,
                        device="cpu", progress=False)
    assert list((tmp_path / "nan").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan", "ok"]


# ---------------------------------------------------------------- the stage entry

def fake_stage_modules(monkeypatch, tmp_path):
    """Stand-ins for rra.data / rra.train with the interfaces of docs/design.md."""
    rng = np.random.default_rng(5)
    split_dir = tmp_path / "data" / "toy" / "test"
    split_dir.mkdir(parents=True)
    raw = rng.integers(0, 256, size=(30, 7, 7, 3), dtype=np.uint8)
    labels = np.arange(30, dtype=np.int64) % 3
    np.save(split_dir / "images.npy", raw)
    np.save(split_dir / "labels.npy", labels)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save(small_net(7).state_dict(), run_dir / "model.pt")

    def normalise(batch, info):
        return torch.from_numpy((np.asarray(batch, np.float32) / 255 - info.mean)).permute(0, 3, 1, 2)

    data = types.ModuleType("rra.data")
    data.dataset_info = lambda name: types.SimpleNamespace(name=name, mean=0.5)
    data.load_split = lambda d: types.SimpleNamespace(
        images=np.load(Path(d) / "images.npy", mmap_mode="r"),
        labels=np.load(Path(d) / "labels.npy", mmap_mode="r"),
        manifest={"dataset": "toy", "split": "test"})
    data.normalise = normalise
    train = types.ModuleType("rra.train")

    def load_trained(d, device="cpu"):
        model = SmallNet()
        model.load_state_dict(torch.load(Path(d) / "model.pt", weights_only=True))
        return model

    train.load_trained = load_trained
    monkeypatch.setitem(sys.modules, "rra.data", data)
    monkeypatch.setitem(sys.modules, "rra.train", train)
    return run_dir, split_dir, raw, labels, normalise


def test_embed_run_probe_rows_labels_and_hashes(monkeypatch, tmp_path):
    run_dir, split_dir, raw, labels, normalise = fake_stage_modules(monkeypatch, tmp_path)
    probe = np.array([2, 5, 8, 0, 3, 29, 1, 4], dtype=np.int64)  # a fixed order, not sorted
    probe_path = tmp_path / "probe.npy"
    np.save(probe_path, probe)
    (tmp_path / "probe.json").write_text("{}")
    out = tmp_path / "embed"
    man = embed_run(run_dir, split_dir, probe_path, out, scales=[1, "full"], batch_size=3,
                    device="cpu")
    assert man["hooks"] == SmallNet.hook_names and man["n"] == 8
    assert man["checkpoint_sha256"] == sha256_file(run_dir / "model.pt")
    assert man["probe_sha256"] == sha256_file(probe_path)
    assert (man["dataset"], man["split"]) == ("toy", "test")
    np.testing.assert_array_equal(np.load(out / "labels.npy"), labels[probe])
    model = sys.modules["rra.train"].load_trained(run_dir)
    ref = reference(model, normalise(raw[probe], types.SimpleNamespace(mean=0.5)),
                    SmallNet.hook_names, [1, "full"])
    for e in man["entries"]:
        np.testing.assert_allclose(np.load(out / e["file"]), ref[(e["hook"], e["scale"])],
                                   rtol=1e-5, atol=1e-6)
        assert read_json(out / e["file"].replace(".npy", ".json"))["probe_sha256"] == man["probe_sha256"]
    # the input hook on request: the normalised probe images, first
    with_input = embed_run(run_dir, split_dir, probe_path, tmp_path / "embed-input",
                           scales=[1, "full"], batch_size=3, device="cpu", include_input=True)
    assert with_input["hooks"] == ["input", *SmallNet.hook_names]
    x = normalise(raw[probe], types.SimpleNamespace(mean=0.5))
    np.testing.assert_array_equal(np.load(tmp_path / "embed-input" / "input@full.npy"),
                                  x.reshape(8, -1).numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "embed-input" / "input@1.npy"),
                                  x.mean(dim=(2, 3)).numpy())
    np.save(probe_path, np.array([1, 1, 2]))
    with pytest.raises(ValueError, match="repeat"):
        embed_run(run_dir, split_dir, probe_path, out, scales=[1], device="cpu")
    np.save(probe_path, np.array([0, 30]))
    with pytest.raises(ValueError, match="out of range"):
        embed_run(run_dir, split_dir, probe_path, out, scales=[1], device="cpu")
    (tmp_path / "probe.json").unlink()
    with pytest.raises(FileNotFoundError, match="probe.json"):
        embed_run(run_dir, split_dir, probe_path, out, scales=[1], device="cpu")


# ---------------------------------------------------------------- bounded memory

MEMORY_SCRIPT = r"""
import json, resource, sys, time
import numpy as np, torch, tqdm
from torch import nn
from rra.embed import dump_embeddings
sys.path.insert(0, "tests")
from hooks import forward_outputs

torch.set_num_threads(1)
torch.manual_seed(0)

class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(1, 64, 1)
        self.act = nn.ReLU()
        self.mix = nn.Hardtanh(0.0, 0.5)
    def forward(self, x):
        return self.mix(self.act(self.expand(x)))

n, out = int(sys.argv[1]), sys.argv[2]
model = Wide()
x = torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    model(x[:50])
mb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
base = mb()
t0 = time.time()
man = dump_embeddings(model, x, ["expand", "act", "mix"], [1, "full"], out,
                      batch_size=50, device="cpu", progress=False)
seconds = time.time() - t0
peak = mb()
rows = {}
with torch.no_grad():
    for e in man["entries"]:
        arr = np.load(out + "/" + e["file"], mmap_mode="r")
        assert arr.shape == tuple(e["shape"]), e
        rows[e["file"]] = [arr[0].copy(), arr[-1].copy()]
    outs = forward_outputs(model, x[[0, n - 1]], ["expand", "act", "mix"], keep=lambda o: o)
    ok = all(np.allclose(rows[f"{h}@full.npy"][k], outs[h][k].reshape(-1).numpy(), atol=1e-6)
             and np.allclose(rows[f"{h}@1.npy"][k], outs[h][k].mean(dim=(1, 2)).numpy(), atol=1e-6)
             for h in outs for k in (0, 1))
total = sum(4 * e["shape"][0] * e["shape"][1] for e in man["entries"])
print(json.dumps({"base_mb": base, "peak_mb": peak, "total_mb": total / 2**20, "ok": ok,
                  "entries": len(man["entries"]), "n": man["n"], "seconds": seconds}))
"""


def test_dump_memory_is_bounded(tmp_path):
    n = 4000
    out = tmp_path / "big"
    try:
        proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n), str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        files = {p.name: p.stat().st_size for p in out.iterdir() if p.suffix == ".npy"}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert res["ok"] and res["n"] == n and res["entries"] == 6
    assert res["total_mb"] > 3000  # the activations written are > 3 GB …
    assert res["peak_mb"] - res["base_mb"] < 600, res  # … but the process stays small
    assert files["act@full.npy"] >= n * 64 * 32 * 32 * 4 and len(files) == 6


# ---------------------------------------------------------------- the real model registry

@pytest.mark.parametrize("name,attention,size,channels", [
    ("lenet5", "none", 28, 1), ("resnet8", "se", 16, 3), ("resnet8", "cbam", 16, 3)])
def test_dump_real_models_every_hook(tmp_path, name, attention, size, channels):
    models = pytest.importorskip("rra.models")
    torch.manual_seed(0)
    model = models.build_model(name, in_channels=channels, num_classes=10, image_size=size,
                               attention=attention)
    x = torch.randn(7, channels, size, size, generator=torch.Generator().manual_seed(2))
    ref = reference(model, x, model.hook_names)
    man = dump_embeddings(model, x, model.hook_names, SCALES, tmp_path, batch_size=3,
                          device="cpu", progress=False)
    assert man["hooks"] == model.hook_names
    assert {(e["hook"], e["scale"]) for e in man["entries"]} == set(ref)
    assert [e["hook"] for e in man["entries"]] == sorted(
        (e["hook"] for e in man["entries"]), key=model.hook_names.index)
    for e in man["entries"]:
        np.testing.assert_allclose(np.load(tmp_path / e["file"]), ref[(e["hook"], e["scale"])],
                                   rtol=1e-4, atol=1e-5, err_msg=e["file"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dump_on_cuda_matches_cpu(tmp_path):
    model, x = small_net(), images(10)
    ref = reference(model, x, SmallNet.hook_names)
    man = dump_embeddings(model, x, SmallNet.hook_names, SCALES, tmp_path, batch_size=4,
                          device="cuda", progress=False)
    assert man["device"].startswith("cuda")
    for e in man["entries"]:
        np.testing.assert_allclose(np.load(tmp_path / e["file"]), ref[(e["hook"], e["scale"])],
                                   rtol=1e-3, atol=1e-4)


def test_embed_run_end_to_end_with_real_stages(tmp_path):
    """rra.data (mnist5k) + a saved lenet5 run + rra.embed, against a direct forward pass."""
    data = pytest.importorskip("rra.data")
    models = pytest.importorskip("rra.models")
    checkpoint = pytest.importorskip("rra.train.checkpoint")
    try:
        data.prepare_dataset("mnist5k", tmp_path / "data")
    except (FileNotFoundError, ImportError) as err:
        pytest.skip(f"mnist5k not available: {err}")
    split_dir = tmp_path / "data" / "test"
    probe_path = tmp_path / "probe" / "test-n2-s0.npy"
    probe = data.select_probe(split_dir, 2, 0, probe_path)
    torch.manual_seed(0)
    args = {"name": "lenet5", "in_channels": 1, "num_classes": 10, "image_size": 28,
            "attention": "none", "attention_kwargs": {}, "kwargs": {}}
    model = models.build_model("lenet5", in_channels=1, num_classes=10, image_size=28)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoint.save_model(run_dir, model, {"model": "lenet5"}, args)
    out = tmp_path / "embed"
    man = embed_run(run_dir, split_dir, probe_path, out, scales=[1, 2, "full"], batch_size=7,
                    device="cpu")
    split = data.load_split(split_dir)
    x = torch.from_numpy(data.normalise(np.asarray(split.images[probe]), split.info))
    ref = reference(model, x, model.hook_names, [1, 2, "full"])
    # LeNet-5 analyses its input by default: hook "input" first, the normalised images
    ref[("input", "full")] = x.reshape(20, -1).numpy()
    for s in (1, 2):
        ref[("input", str(s))] = torch.nn.functional.adaptive_avg_pool2d(x, s).flatten(1).numpy()
    assert man["hooks"] == ["input", *model.hook_names] and man["n"] == 20
    assert (man["dataset"], man["split"]) == ("mnist5k", "test")
    assert man["checkpoint_sha256"] == sha256_file(run_dir / "model.pt")
    np.testing.assert_array_equal(np.load(out / "labels.npy"), split.labels[probe])
    assert {(e["hook"], e["scale"]) for e in man["entries"]} == set(ref)
    np.testing.assert_array_equal(np.load(out / "input@full.npy"), ref[("input", "full")])
    without = embed_run(run_dir, split_dir, probe_path, tmp_path / "no-input", scales=["full"],
                        device="cpu", include_input=False)
    assert without["hooks"] == model.hook_names
    assert not (tmp_path / "no-input" / "input@full.npy").exists()
    for e in man["entries"]:
        np.testing.assert_allclose(np.load(out / e["file"]), ref[(e["hook"], e["scale"])],
                                   rtol=1e-5, atol=1e-5, err_msg=e["file"])
    np.save(probe_path, probe[::-1].copy())  # indices no longer match the sidecar's hash
    with pytest.raises(ValueError, match="differ from the hash"):
        embed_run(run_dir, split_dir, probe_path, out, scales=[1], device="cpu")
