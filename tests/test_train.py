"""Tests of the training stage (rra.train): determinism, resuming, weight change, augmentation.

Tiny synthetic datasets are written by the tests in the prepared-dataset format under the names
of real datasets (``mnist5k``: 28 × 28 × 1, no flips; ``cifar10``: 32 × 32 × 3, flips), so the
real ``rra.data.dataset_info`` / ``load_split`` / ``normalise`` and ``rra.models`` are used.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rra.io import read_json, save_npy, sha256_file, write_json
from rra.train import (AUGMENTATIONS, build_augmentation, checkpoint_sha256, load_trained,
                       lr_factor, relative_weight_change, train, validate_spec)
from rra.train.checkpoint import list_checkpoints
from rra.train.loop import batch_bounds, epoch_generator, resolve_eval_split, stratified_subset

SPEC = {"dataset": "mnist5k", "model": "lenet5", "seed": 0, "epochs": 3, "batch_size": 20,
        "lr": 0.05}


pytestmark = pytest.mark.usefixtures("one_thread")


def write_split(root: Path, dataset: str, split: str, images: np.ndarray,
                labels: np.ndarray) -> None:
    """A split in the format of ``rra.data.prepare_dataset`` (the keys ``load_split`` reads)."""
    d = root / split
    save_npy(d / "images.npy", images)
    save_npy(d / "labels.npy", labels)
    write_json(d / "manifest.json", {
        "dataset": dataset, "split": split, "n": int(labels.shape[0]),
        "image_shape": list(images.shape[1:]), "images_sha256": sha256_file(d / "images.npy"),
        "labels_sha256": sha256_file(d / "labels.npy")})


def easy_images(rng: np.random.Generator, n: int, size: int, channels: int):
    """Dark noise plus one bright 5 × 5 square whose position is the class (10 classes)."""
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, (n, size, size, channels)).astype(np.uint8)
    for i, label in enumerate(labels):
        r, q = divmod(int(label), 4)
        images[i, 4 + 7 * r:9 + 7 * r, 2 + 6 * q:7 + 6 * q, :] = 255
    return images, labels.astype(np.int64)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist5k")
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("test", 100)):
        write_split(root, "mnist5k", split, *easy_images(rng, n, 28, 1))
    return root


@pytest.fixture(scope="module")
def colour(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar10")
    rng = np.random.default_rng(1)
    for split, n in (("train", 120), ("test", 60)):
        write_split(root, "cifar10", split, *easy_images(rng, n, 32, 3))
    return root


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory) -> Path:
    """Uninterrupted 3-epoch LeNet-5 run, every checkpoint kept."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # train() must not depend on (or leak) the global RNG
        train(SPEC, digits, out, device="cpu", progress=False, keep_checkpoints=None)
    return out


def weights(run_dir: Path, epoch: int | None = None) -> dict[str, torch.Tensor]:
    if epoch is None:
        return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]
    path = run_dir / "checkpoints" / f"epoch-{epoch:03d}.pt"
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def log_without_times(run_dir: Path) -> list[dict]:
    epochs = read_json(run_dir / "train_log.json")["epochs"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in epochs]


# --- spec, schedule, batching ---------------------------------------------------------------

def test_validate_spec_fills_defaults_and_normalises():
    spec = validate_spec({**SPEC, "lr": 1, "milestones": (2,)})
    assert spec["lr"] == 1.0 and isinstance(spec["lr"], float)
    assert spec["milestones"] == [2]
    assert spec["attention"] == "none" and spec["augmentation"] == "none" and spec["pad"] == 4
    assert spec["eval_split"] is None and spec["train_split"] == "train"
    assert validate_spec(spec) == spec


@pytest.mark.parametrize("change, match", [
    ({"epochs": None}, "'epochs'"),
    ({"learning_rate": 0.1}, "unknown key.*learning_rate"),
    ({"batch_size": 0}, "'batch_size'.*at least 1"),
    ({"seed": 1.5}, "'seed'.*integer"),
    ({"lr": -0.1}, "'lr'"),
    ({"nesterov": "yes"}, "'nesterov'"),
    ({"momentum": 0.0, "nesterov": True}, "'nesterov'.*momentum"),
    ({"augmentation": "mixup"}, "'augmentation'.*mixup"),
    ({"schedule": "linear"}, "'schedule'.*linear"),
    ({"milestones": [3, 2]}, "'milestones'"),
    ({"model_kwargs": [1]}, "'model_kwargs'"),
])
def test_validate_spec_errors_name_the_key(change, match):
    spec = {**SPEC, **change}
    if change.get("epochs", 0) is None:
        del spec["epochs"]
    with pytest.raises(ValueError, match=match):
        validate_spec(spec)


def test_lr_factor_matches_torch_schedulers():
    for schedule, extra, torch_sched in (
            ("cosine", {}, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7)),
            ("step", {"milestones": [2, 5], "gamma": 0.1},
             lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5], 0.1))):
        spec = validate_spec({**SPEC, "epochs": 7, "schedule": schedule, **extra})
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
        sched = torch_sched(opt)
        for t in range(7):
            assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * lr_factor(spec, t), rel=1e-12)
            opt.step()
            sched.step()
    step = validate_spec({**SPEC, "schedule": "step", "milestones": [1, 2], "gamma": 0.5})
    assert [lr_factor(step, t) for t in range(4)] == [1.0, 0.5, 0.25, 0.25]


def test_batch_bounds_and_eval_split():
    assert batch_bounds(64, 32) == [(0, 32), (32, 64)]
    assert batch_bounds(65, 32) == [(0, 32), (32, 65)]  # a last batch of one joins the previous
    assert batch_bounds(66, 32) == [(0, 32), (32, 64), (64, 66)]
    assert batch_bounds(5, 32) == [(0, 5)]
    from rra.data import dataset_info
    spec = validate_spec(SPEC)
    assert resolve_eval_split(spec, dataset_info("imagenet64"))["eval_split"] == "val"
    assert resolve_eval_split(spec, dataset_info("cifar10"))["eval_split"] == "test"


def test_stratified_subset():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 7)
    rows = stratified_subset(labels, 3, seed=0)
    assert np.all(np.diff(rows) > 0)
    assert np.bincount(labels[rows]).tolist() == [3, 2, 3]
    assert np.array_equal(rows, stratified_subset(labels, 3, seed=0))
    assert any(not np.array_equal(rows, stratified_subset(labels, 3, seed=s)) for s in (1, 2, 3))


# --- augmentation ---------------------------------------------------------------------------

def reference_augment(images: np.ndarray, g: torch.Generator, pad: int, allow_flip: bool):
    """Per-image loop over the documented draws: dy (N), dx (N), then flips (N)."""
    n, h, w, _ = images.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).numpy()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).numpy()
    flip = (torch.rand(n, generator=g) < 0.5).numpy() if allow_flip else np.zeros(n, bool)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out[flip] = out[flip][:, :, ::-1]
    return out, flip


@pytest.mark.parametrize("allow_flip", [True, False])
def test_standard_augmentation_is_crop_and_flip(allow_flip):
    images = np.random.default_rng(0).integers(1, 256, (64, 6, 5, 3)).astype(np.uint8)
    policy = build_augmentation("standard", allow_flip=allow_flip, pad=2)
    got = policy(torch.from_numpy(images), epoch_generator(0, 1)).numpy()
    want, flip = reference_augment(images, epoch_generator(0, 1), 2, allow_flip)
    assert got.shape == images.shape and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    assert (got == 0).any()  # zero padding entered some crops (inputs have no zeros)
    assert flip.any() == allow_flip


def test_augmentation_deterministic_per_seed_and_epoch():
    images = np.random.default_rng(0).integers(1, 256, (32, 8, 8, 1)).astype(np.uint8)
    images = torch.from_numpy(images)
    policy = build_augmentation("standard", allow_flip=True, pad=4)
    a = policy(images, epoch_generator(3, 2))
    assert torch.equal(a, policy(images, epoch_generator(3, 2)))
    assert not torch.equal(a, policy(images, epoch_generator(3, 3)))
    assert not torch.equal(a, policy(images, epoch_generator(4, 2)))
    identity = build_augmentation("standard", allow_flip=False, pad=0)
    assert torch.equal(identity(images, epoch_generator(0, 1)), images)
    assert build_augmentation("none", allow_flip=True)(images, epoch_generator(0, 1)) is images
    assert set(AUGMENTATIONS) >= {"none", "standard"}
    with pytest.raises(ValueError, match="unknown augmentation 'cutout'"):
        build_augmentation("cutout", allow_flip=True)
    with pytest.raises(ValueError, match="'pad'"):
        build_augmentation("standard", allow_flip=True, pad=-1)


# --- weight change --------------------------------------------------------------------------

def test_relative_weight_change_by_hand():
    prev = torch.tensor([1.0, -2.0, 0.0, 4.0], dtype=torch.float64)
    curr = torch.tensor([1.5, -2.0, 1e-9, 3.0], dtype=torch.float64)
    got = relative_weight_change(prev, curr)
    assert got["l1"] == pytest.approx((0.5 + 1e-9 + 1.0) / 7.0, rel=1e-12)
    assert got["elementwise"] == pytest.approx((0.5 + 0.0 + 1e-9 / 1e-8 + 0.25) / 4, rel=1e-9)
    assert math.isnan(relative_weight_change(torch.zeros(3), torch.ones(3))["l1"])
    with pytest.raises(ValueError, match="shapes differ"):
        relative_weight_change(torch.zeros(3), torch.zeros(4))


def expected_change(prev: torch.Tensor, curr: torch.Tensor) -> tuple[float, float]:
    p, c = prev.double().numpy(), curr.double().numpy()
    d = np.abs(c - p)
    return d.sum() / np.abs(p).sum(), np.mean(d / np.maximum(np.abs(p), 1e-8))


def test_weight_change_log_matches_checkpoints(reference):
    from rra.models import build_model

    log = read_json(reference / "train_log.json")
    assert log["weight_change_eps"] == 1e-8
    torch.manual_seed(SPEC["seed"])  # W_0: the model as train() builds it
    init = build_model("lenet5", in_channels=1, num_classes=10, image_size=28).state_dict()
    states = [init, weights(reference, 1), weights(reference, 2), weights(reference, 3)]
    layers = {"conv1", "conv2", "conv3", "fc1", "fc2"}
    assert {k[:-len(".weight")] for k in init if k.endswith(".weight")} == layers
    assert log["weight_change_layers"] == ["conv1", "conv2", "conv3", "fc1", "fc2"]  # module order
    for record in log["epochs"]:
        e = record["epoch"]
        assert set(record["weight_change"]) == layers
        for layer, got in record["weight_change"].items():
            key = layer + ".weight"
            l1, elementwise = expected_change(states[e - 1][key], states[e][key])
            assert got["l1"] == pytest.approx(l1, rel=1e-10)
            assert got["elementwise"] == pytest.approx(elementwise, rel=1e-10)
            assert got["l1"] > 0


# --- training runs --------------------------------------------------------------------------

def test_reference_run_learns_and_writes_artifacts(reference):
    log = read_json(reference / "train_log.json")
    losses = [r["train_loss"] for r in log["epochs"]]
    assert [r["epoch"] for r in log["epochs"]] == [1, 2, 3]
    assert losses[-1] < 0.5 * losses[0]
    assert log["epochs"][-1]["eval_acc"] >= 0.9  # chance is 0.1
    lrs = [0.05 * lr_factor(log["spec"], t) for t in range(3)]
    assert [r["lr"] for r in log["epochs"]] == pytest.approx(lrs, rel=1e-15)
    metrics = read_json(reference / "metrics.json")
    assert metrics["eval_acc"] == log["epochs"][-1]["eval_acc"]
    assert metrics["n_train"] == 200 and metrics["n_eval"] == 100 and metrics["epochs"] == 3
    assert metrics["params"] == sum(v.numel() for k, v in weights(reference).items())
    assert metrics["model_sha256"] == checkpoint_sha256(reference)
    assert metrics["model_sha256"] == sha256_file(reference / "model.pt")
    assert metrics["provenance"]["seed"] == 0 and metrics["provenance"]["config"]["lr"] == 0.05
    assert [e for e, _ in list_checkpoints(reference)] == [3, 2, 1]
    state = torch.load(reference / "checkpoints" / "epoch-002.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["log"]) == 2
    assert {"optimizer", "scheduler"} <= set(state)


def test_same_seed_is_bit_identical_and_other_seed_differs(reference, digits, tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    train(SPEC, digits, tmp_path / "again", device="cpu", progress=False)
    assert_same_weights(weights(reference), weights(tmp_path / "again"))
    assert log_without_times(reference) == log_without_times(tmp_path / "again")
    assert checkpoint_sha256(reference) == checkpoint_sha256(tmp_path / "again")
    assert [e for e, _ in list_checkpoints(tmp_path / "again")] == [3, 2]  # keep the last two
    rng_state = torch.get_rng_state()
    out = train({**SPEC, "seed": 1}, digits, tmp_path / "seed1", device="cpu", progress=False,
                stop_after_epoch=1)
    assert out == {"complete": False, "epochs_done": 1, "epochs": 3}
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is left as it was
    other = weights(tmp_path / "seed1", 1)
    assert not torch.equal(other["conv1.weight"], weights(reference, 1)["conv1.weight"])



def test_malloc_settings_change_no_number(reference, digits, tmp_path, monkeypatch):
    """keep_freed_memory (glibc mallopt, applied by every train() call) is speed only: a run in
    a fresh process without it writes the same model.pt, byte for byte."""
    import subprocess
    import sys

    from rra.train.loop import keep_freed_memory

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # the environment's own setting wins
    assert keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    if not sys.platform.startswith("linux"):
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory() is True
    code = ("import sys, json, torch; torch.set_num_threads(1); import rra.train.loop as loop; "
            "loop.keep_freed_memory = lambda: False; "
            "loop.train(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], device='cpu', "
            "progress=False)")
    subprocess.run([sys.executable, "-c", code, json.dumps(SPEC), str(digits),
                    str(tmp_path / "plain")], check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parents[1])
    assert checkpoint_sha256(tmp_path / "plain") == checkpoint_sha256(reference)


def test_resume_after_stop_equals_uninterrupted_run(reference, digits, tmp_path):
    run = tmp_path / "run"
    train(SPEC, digits, run, device="cpu", progress=False, stop_after_epoch=1)
    assert [e for e, _ in list_checkpoints(run)] == [1]
    assert not (run / "model.pt").exists() and not (run / "metrics.json").exists()
    first = read_json(run / "train_log.json")["epochs"]
    assert len(first) == 1
    ckpt_hash = sha256_file(run / "checkpoints" / "epoch-001.pt")
    assert train(SPEC, digits, run, device="cpu", progress=False, stop_after_epoch=1) == \
        {"complete": False, "epochs_done": 1, "epochs": 3}  # nothing left to do up to epoch 1
    assert sha256_file(run / "checkpoints" / "epoch-001.pt") == ckpt_hash
    metrics = train(SPEC, digits, run, device="cpu", progress=False)
    assert metrics["complete"] and metrics["epochs"] == 3
    assert_same_weights(weights(reference), weights(run))
    assert log_without_times(reference) == log_without_times(run)
    # epoch 1 was resumed, not retrained (a retrained epoch would be bit-identical too,
    # so the wall time copied from the checkpoint's log is the witness)
    assert read_json(run / "train_log.json")["epochs"][0]["seconds"] == first[0]["seconds"]
    # a finished run called again only rewrites the same final artifacts
    again = train(SPEC, digits, run, device="cpu", progress=False)
    assert again["model_sha256"] == metrics["model_sha256"]


def test_resume_after_kill_mid_epoch_and_corrupt_checkpoint(reference, digits, tmp_path):
    # killed during epoch 2: epoch 1 complete, half-written temporaries left behind
    run = tmp_path / "killed"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(reference / "checkpoints" / "epoch-001.pt", run / "checkpoints")
    (run / "checkpoints" / ".epoch-002.pt.x1y2.tmp").write_bytes(b"PK\x03\x04partial")
    (run / ".train_log.json.abcd.tmp").write_text("{")
    train(SPEC, digits, run, device="cpu", progress=False)
    assert_same_weights(weights(reference), weights(run))
    assert not list(run.rglob("*.tmp"))
    ref_seconds = [r["seconds"] for r in read_json(reference / "train_log.json")["epochs"]]
    seconds = [r["seconds"] for r in read_json(run / "train_log.json")["epochs"]]
    assert seconds[0] == ref_seconds[0] and seconds[1] != ref_seconds[1]  # resumed after epoch 1
    # newest checkpoint truncated (e.g. the disk filled up): fall back to the previous one
    run = tmp_path / "corrupt"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(reference / "checkpoints" / "epoch-001.pt", run / "checkpoints")
    data = (reference / "checkpoints" / "epoch-002.pt").read_bytes()
    (run / "checkpoints" / "epoch-002.pt").write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match="epoch-002.pt"):
        train(SPEC, digits, run, device="cpu", progress=False)
    assert_same_weights(weights(reference), weights(run))
    assert log_without_times(reference) == log_without_times(run)
    seconds = [r["seconds"] for r in read_json(run / "train_log.json")["epochs"]]
    assert seconds[0] == ref_seconds[0] and seconds[1] != ref_seconds[1]


def test_spec_mismatch_is_an_error(reference, digits, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(reference / "checkpoints" / "epoch-001.pt", run / "checkpoints")
    with pytest.raises(ValueError,
                       match=r"epoch-001\.pt.*lr: 0\.05 -> 0\.1.*delete the run directory"):
        train({**SPEC, "lr": 0.1}, digits, run, device="cpu", progress=False)
    before = sha256_file(reference / "model.pt")
    with pytest.raises(ValueError, match=r"model\.pt.*augmentation.*delete the run directory"):
        train({**SPEC, "augmentation": "standard"}, digits, reference, device="cpu", progress=False)
    assert sha256_file(reference / "model.pt") == before


def test_spec_change_restart_trains_from_scratch(reference, digits, tmp_path, capfd):
    """The workflow's choice: another spec's checkpoints are discarded, the result equals a
    fresh run of the new spec."""
    new = {**SPEC, "lr": 0.1}
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    got = train(new, digits, run, device="cpu", progress=False, on_spec_change="restart")
    assert "discarding the old run" in capfd.readouterr().err
    fresh = train(new, digits, tmp_path / "fresh", device="cpu", progress=False)
    assert got["model_sha256"] == fresh["model_sha256"] != sha256_file(reference / "model.pt")
    with pytest.raises(ValueError, match="on_spec_change"):
        train(new, digits, run, device="cpu", progress=False, on_spec_change="ignore")


def test_input_errors(digits, tmp_path):
    with pytest.raises(FileNotFoundError, match="prepared dataset directory"):
        train(SPEC, tmp_path / "nowhere", tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(FileNotFoundError, match="split 'val'"):
        train({**SPEC, "eval_split": "val"}, digits, tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(ValueError, match="holds dataset 'mnist5k'.*'mnist'"):
        train({**SPEC, "dataset": "mnist"}, digits, tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_trained(tmp_path / "run")


def test_resnet_with_flips_subset_and_load_trained(colour, tmp_path):
    spec = {"dataset": "cifar10", "model": "resnet8", "seed": 3, "epochs": 2, "batch_size": 16,
            "lr": 0.05, "augmentation": "standard", "max_train_per_class": 5, "eval_batch_size": 25}
    a = train(spec, colour, tmp_path / "a", device="cpu", progress=False)
    b = train(spec, colour, tmp_path / "b", device="cpu", progress=False)
    assert a["n_train"] == 50 and a["n_eval"] == 60
    assert a["model_sha256"] == b["model_sha256"]
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    model = load_trained(tmp_path / "a")
    assert not model.training and model.hook_names[0] == "stem"
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    x = torch.from_numpy(x)
    with torch.no_grad():
        assert torch.equal(model(x), load_trained(tmp_path / "b")(x))
    log = read_json(tmp_path / "a" / "train_log.json")
    kinds = (torch.nn.Conv2d, torch.nn.Linear)
    convs = {n for n, m in model.named_modules() if isinstance(m, kinds)}
    assert set(log["epochs"][0]["weight_change"]) == convs and "fc" in convs
    assert log["spec"]["eval_split"] == "test"
    assert json.loads(json.dumps(a))["model_args"]["name"] == "resnet8"
