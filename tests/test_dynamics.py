"""Representation dynamics (E10, rra.metrics.dynamics): NNTS to the final epoch, between
consecutive kept epochs and the settling epoch, against brute force with Python sets; ties and
duplicate rows; a hook that never settles before the final epoch; one epoch."""

from __future__ import annotations

import numpy as np
import pytest

from rra.knn import knn_exact
from rra.metrics.dynamics import (TAU, check_epochs, dynamics_frame, dynamics_rows,
                                  settling_epoch)
from rra.metrics.tables import SCHEMA


def brute_graph(x: np.ndarray, k: int) -> np.ndarray:
    """float64 distances, self excluded, rows sorted by (distance, index)."""
    x = x.astype(np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.lexsort((np.broadcast_to(np.arange(len(x)), d.shape), d), axis=1)[:, :k]


def brute_nnts(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean over rows of |A ∩ B| / |A ∪ B| of the first k neighbours, with Python sets."""
    js = []
    for ra, rb in zip(a.tolist(), b.tolist()):
        sa, sb = set(ra[:k]), set(rb[:k])
        js.append(len(sa & sb) / len(sa | sb))
    return sum(js) / len(js)


def brute_settling(epochs: list[int], to_final: list[float], tau: float) -> int:
    """The definition read literally: the smallest e_j with D(e_l) ≥ τ for every l ≥ j (the
    final epoch counts as D = 1)."""
    d = list(to_final[:-1]) + [1.0]
    return min(e for j, e in enumerate(epochs) if all(v >= tau - 1e-9 for v in d[j:]))


def epoch_graphs(rng, epochs, hooks, n=24, d=3, k_max=6):
    """Per (epoch, hook) a graph of integer rows (many exact ties, two duplicate rows), the
    rows drifting from epoch to epoch towards the final ones."""
    final = {h: rng.integers(-2, 3, size=(n, d)).astype(np.float64) for h in hooks}
    graphs = {}
    for i, e in enumerate(epochs):
        for h in hooks:
            noise = rng.integers(-2, 3, size=(n, d)) * (len(epochs) - 1 - i)
            x = final[h] + noise
            x[5] = x[4]  # duplicate rows: equal distances to everything
            graphs[e, h] = brute_graph(x, k_max)
    return graphs


def test_rows_match_brute_force_with_ties_and_duplicates():
    rng = np.random.default_rng(0)
    epochs, hooks = [0, 1, 3, 7], ["conv1", "relu1", "fc"]
    graphs = epoch_graphs(rng, epochs, hooks)
    for tau in (0.2, TAU, 0.8):
        rows = dynamics_rows(lambda e, h: graphs[e, h], epochs, hooks, [2, 6], tau=tau,
                             positions={"conv1": 1, "relu1": 2, "fc": 3})
        got = {(r["measure"], r["hook_a"], r["k"], r["epoch"], r["epoch_b"]): r["value"]
               for r in rows}
        for h in hooks:
            for k in (2, 6):
                to_final = [brute_nnts(graphs[e, h], graphs[7, h], k) for e in epochs]
                for e, v in zip(epochs, to_final):
                    assert got["dynamics_nnts_final", h, k, e, 7] == pytest.approx(v, abs=1e-12)
                for a, b in zip(epochs, epochs[1:]):
                    assert got["dynamics_nnts_step", h, k, a, b] == pytest.approx(
                        brute_nnts(graphs[a, h], graphs[b, h], k), abs=1e-12)
                s = brute_settling(epochs, to_final, tau)
                assert got["dynamics_settling_epoch", h, k, s, 7] == s
                assert got["dynamics_settled_before_final", h, k, s, 7] == float(s < 7)
        assert {r["pos_a"] for r in rows if r["hook_a"] == "relu1"} == {2}
        assert all(r["hook_b"] == r["hook_a"] and r["scale_a"] == "full" for r in rows)
        # per hook and k: m final values, m − 1 steps, one settling epoch, one flag
        assert len(rows) == len(hooks) * 2 * (4 + 3 + 1 + 1)


def test_rows_on_exact_graphs_of_tied_rows():
    """Graphs of rra's exact search (ties in exact order) give the same rows as brute force."""
    rng = np.random.default_rng(3)
    xs = {e: rng.integers(-1, 2, size=(30, 2)).astype(np.float32) for e in (0, 2, 4)}
    xs[4][7] = xs[4][8]
    exact = {e: knn_exact(x, 5, progress=False)[0] for e, x in xs.items()}
    brute = {e: brute_graph(x, 5) for e, x in xs.items()}
    for e in xs:
        np.testing.assert_array_equal(exact[e], brute[e])
    rows = dynamics_rows(lambda e, h: exact[e], [0, 2, 4], ["h"], [5])
    final = [r for r in rows if r["measure"] == "dynamics_nnts_final"]
    assert [r["value"] for r in final] == pytest.approx(
        [brute_nnts(brute[e], brute[4], 5) for e in (0, 2, 4)], abs=1e-12)


def test_a_hook_that_never_settles_before_the_final_epoch():
    """Graphs that share no neighbour with the final one: D = 0 before the end, so the hook
    settles at the final epoch; a hook that reaches τ, drops and comes back settles at its
    return."""
    n = 12
    ring = lambda shift: np.array([[(i + shift + j) % n for j in (1, 2)] for i in range(n)])
    final = ring(0)
    never = {0: ring(4), 1: ring(6), 2: final}
    rows = dynamics_rows(lambda e, h: never[e], [0, 1, 2], ["h"], [2])
    settle = next(r for r in rows if r["measure"] == "dynamics_settling_epoch")
    assert settle["value"] == 2.0 and settle["epoch"] == 2
    flag = next(r for r in rows if r["measure"] == "dynamics_settled_before_final")
    assert flag["value"] == 0.0
    assert settling_epoch([0, 1, 2, 3], [0.9, 0.3, 0.9, 1.0], 0.5) == 2
    assert settling_epoch([0, 1, 2, 3], [0.9, 0.6, 0.7, 1.0], 0.5) == 0
    assert settling_epoch([0, 5], [0.5 - 1e-12, 1.0], 0.5) == 0  # rounding slack
    assert settling_epoch([0, 5], [0.49, 1.0], 0.5) == 5


def test_one_epoch_and_argument_checks():
    g = brute_graph(np.arange(10, dtype=np.float64)[:, None], 3)
    rows = dynamics_rows(lambda e, h: g, [4], ["a", "b"], [3])
    assert {r["measure"] for r in rows} == {"dynamics_nnts_final", "dynamics_settling_epoch",
                                            "dynamics_settled_before_final"}
    assert all(r["value"] in (1.0, 4.0, 0.0) for r in rows)
    assert settling_epoch([4], [1.0]) == 4
    with pytest.raises(ValueError, match="strictly increasing"):
        check_epochs([0, 2, 2])
    with pytest.raises(ValueError, match=">= 0"):
        check_epochs([-1, 2])
    with pytest.raises(ValueError, match="tau"):
        dynamics_rows(lambda e, h: g, [0, 4], ["a"], [3], tau=1.5)
    other = brute_graph(np.arange(11, dtype=np.float64)[:, None], 3)
    with pytest.raises(ValueError, match="same probe rows|rows"):
        dynamics_rows(lambda e, h: g if e == 4 else other, [0, 4], ["a"], [3])


def test_frame_has_the_schema():
    g = brute_graph(np.arange(10, dtype=np.float64)[:, None], 3)
    df = dynamics_frame(dynamics_rows(lambda e, h: g, [0, 4], ["a"], [2, 3]),
                        {"model": "m", "seed": 0})
    assert df.columns == list(SCHEMA) and df["epoch"].dtype.is_integer()
    assert set(df["model"]) == {"m"} and df.height == 2 * (2 + 1 + 1 + 1)


# ---------------------------------------------------------------------------------------------
# Training keeps the weights of selected epochs (rra.train, spec key keep_epochs)

import io  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from hooks import forward_outputs  # noqa: E402
from rra.io import save_npy, sha256_file, write_json  # noqa: E402

SPEC = {"dataset": "mnist5k", "model": "lenet5", "seed": 0, "epochs": 3, "batch_size": 40,
        "lr": 0.05}


def write_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    d = root / split
    save_npy(d / "images.npy", images)
    save_npy(d / "labels.npy", labels)
    write_json(d / "manifest.json", {
        "dataset": "mnist5k", "split": split, "n": int(labels.shape[0]),
        "image_shape": list(images.shape[1:]), "images_sha256": sha256_file(d / "images.npy"),
        "labels_sha256": sha256_file(d / "labels.npy")})


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist5k")
    rng = np.random.default_rng(0)
    for split, n in (("train", 120), ("test", 40)):
        labels = (np.arange(n) % 10).astype(np.int64)
        images = rng.integers(0, 40, (n, 28, 28, 1)).astype(np.uint8)
        for i, label in enumerate(labels):
            r, q = divmod(int(label), 4)
            images[i, 4 + 7 * r:9 + 7 * r, 2 + 6 * q:7 + 6 * q, :] = 255
        write_split(root, split, images, labels)
    return root


def state_bytes(path: Path) -> bytes:
    """The serialised state_dict of an rra weights file (model.pt or a kept epoch)."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def kept_runs(digits, tmp_path_factory):
    from rra.train import train

    root = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    train(SPEC, digits, root / "plain", device="cpu", progress=False, keep_checkpoints=None)
    train({**SPEC, "keep_epochs": [3, 0, 1, 1]}, digits, root / "kept", device="cpu",
          progress=False)
    return root / "plain", root / "kept"


def test_kept_epochs_change_no_weight(kept_runs):
    from rra.train.checkpoint import checkpoint_path, kept_epoch_path, list_kept_epochs

    plain, kept = kept_runs
    assert state_bytes(plain / "model.pt") == state_bytes(kept / "model.pt")
    # the final epoch is model.pt; 0 (the initialisation) and 1 are kept
    assert [e for e, _ in list_kept_epochs(kept)] == [0, 1] and not list_kept_epochs(plain)
    stored = torch.load(kept_epoch_path(kept, 1), map_location="cpu", weights_only=True)
    assert stored["epoch"] == 1 and stored["spec"]["keep_epochs"] == [0, 1]
    resume = torch.load(checkpoint_path(plain, 1), map_location="cpu", weights_only=True)
    for name, value in resume["model"].items():
        assert torch.equal(value, stored["state_dict"][name]), name
    from rra.models import build_model
    torch.manual_seed(SPEC["seed"])
    fresh = build_model("lenet5", in_channels=1, num_classes=10, image_size=28)
    init = torch.load(kept_epoch_path(kept, 0), map_location="cpu", weights_only=True)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, init["state_dict"][name]), name


def test_missing_kept_epochs_are_retrained_and_resume_keeps_them(kept_runs, digits, tmp_path,
                                                                  capfd):
    from rra.train import load_trained, train, validate_spec
    from rra.train.checkpoint import kept_epoch_path

    plain, kept = kept_runs
    spec = {**SPEC, "keep_epochs": [0, 2]}
    out = tmp_path / "run"
    first = train(spec, digits, out, device="cpu", progress=False, stop_after_epoch=1)
    assert first["complete"] is False and kept_epoch_path(out, 0).is_file()
    train(spec, digits, out, device="cpu", progress=False)  # resumes after epoch 1
    assert kept_epoch_path(out, 2).is_file()
    assert state_bytes(out / "model.pt") == state_bytes(plain / "model.pt")
    kept_epoch_path(out, 0).unlink()
    train(spec, digits, out, device="cpu", progress=False)
    assert "training from scratch" in capfd.readouterr().err
    assert kept_epoch_path(out, 0).is_file() and kept_epoch_path(out, 2).is_file()
    assert state_bytes(out / "model.pt") == state_bytes(plain / "model.pt")
    assert isinstance(load_trained(kept_epoch_path(out, 2)), torch.nn.Module)
    assert "keep_epochs" not in validate_spec({**SPEC, "keep_epochs": [3]})
    with pytest.raises(ValueError, match="keep_epochs.*\\[0, 3\\].*\\[4\\]"):
        validate_spec({**SPEC, "keep_epochs": [1, 4]})


# ---------------------------------------------------------------------------------------------
# rra.api.dynamics on a tiny model, against brute force


def tiny_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(2 * 6 * 6, 3)).eval()


def test_api_dynamics_matches_brute_force(tmp_path):
    from rra.api import dynamics

    torch.manual_seed(0)
    hooks = ["0", "1", "3"]
    x = torch.randn(25, 1, 8, 8)
    states = []
    for i in range(3):  # three checkpoints drifting towards the last one
        torch.manual_seed(10 + i)
        states.append(tiny_model().state_dict())
    final = states[-1]
    states[1] = {n: 0.3 * v + 0.7 * final[n] for n, v in states[1].items()}
    torch.save(states[0], tmp_path / "s0.pt")  # a path of a plain state_dict
    torch.save({"format": "rra.train.model/1", "state_dict": states[1], "epoch": 4},
               tmp_path / "s1.pt")  # an rra weights file
    table = dynamics(tiny_model, [tmp_path / "s0.pt", tmp_path / "s1.pt", states[2]], x,
                     torch.arange(25) % 3, epochs=[0, 4, 9], hooks=hooks, k=[2, 5], tau=0.3,
                     batch_size=7, out_dir=tmp_path / "out", progress=False)
    assert table.columns == list(SCHEMA) and set(table["scale_a"]) == {"full"}
    assert not any((tmp_path / "out").glob("epoch-*/embed"))  # embeddings removed
    graphs = {}
    for e, state in zip([0, 4, 9], states):
        net = tiny_model()
        net.load_state_dict(state)
        out = forward_outputs(net, x, hooks)
        for h in hooks:
            graphs[e, h] = brute_graph(out[h].flatten(1).numpy(), 5)
    got = {(r["measure"], r["hook_a"], r["k"], r["epoch"]): r["value"]
           for r in table.iter_rows(named=True)}
    for h in hooks:
        for k in (2, 5):
            d = [brute_nnts(graphs[e, h], graphs[9, h], k) for e in (0, 4, 9)]
            for e, v in zip((0, 4, 9), d):
                assert got["dynamics_nnts_final", h, k, e] == pytest.approx(v, abs=1e-12)
            assert got["dynamics_nnts_step", h, k, 0] == pytest.approx(
                brute_nnts(graphs[0, h], graphs[4, h], k), abs=1e-12)
            s = brute_settling([0, 4, 9], d, 0.3)
            assert got["dynamics_settling_epoch", h, k, s] == s
    model = tiny_model()
    before = {n: v.clone() for n, v in model.state_dict().items()}
    dynamics(model, states, x, hooks=hooks, k=3, progress=False)  # a module: copied
    assert all(torch.equal(v, model.state_dict()[n]) for n, v in before.items())
    with pytest.raises(ValueError, match="epochs"):
        dynamics(model, states, x, epochs=[0, 1], hooks=hooks, k=3, progress=False)


# ---------------------------------------------------------------------------------------------
# The workflow: a tiny E10 (one LeNet-5 run, kept epochs 0 and 1 of 2)


@pytest.mark.slow
def test_workflow_e10_table_equals_a_direct_computation(tmp_path):
    import json
    import os
    import subprocess
    import sys

    import polars as pl
    import yaml

    from rra.data import dataset_info, normalise
    from rra.train import load_trained

    root = Path(__file__).resolve().parent.parent
    lenet = {"model": "lenet5", "attention": ["none"], "augmentation": ["none"], "seeds": [0]}
    overlay = {"runs": [lenet], "dynamics": {"epochs": [0, 1], "k": [3]},
               "experiments": {"E7": {"enabled": False}, "E8": {"enabled": False},
                               "E9": {"enabled": False}, "E11": {"enabled": False},
                               "E10": {"enabled": True, "runs": [lenet]}}}
    (tmp_path / "e10.yaml").write_text(yaml.safe_dump(overlay))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(tmp_path),
           "--cores", "2", "E10", "--configfile", str(root / "config" / "test.yaml"),
           str(tmp_path / "e10.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONHASHSEED="0"))
    assert proc.returncode == 0, proc.stderr[-6000:]
    run = tmp_path / "results" / "mnist5k" / "lenet5-none-none-s0"
    folder = run / "dynamics" / "test-n12-s0" / "euclidean-auto"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["epochs"] == [0, 1, 2] and manifest["tau"] == 0.5
    assert not list(folder.glob("epoch-*/embed"))  # the kept epochs' embeddings are removed
    table = pl.read_parquet(folder / "dynamics.parquet")
    data = tmp_path / "results" / "data" / "mnist5k"
    probe = np.load(data / "probe" / "test-n12-s0.npy")
    x = torch.from_numpy(normalise(np.load(data / "test" / "images.npy")[probe],
                                   dataset_info("mnist5k")))
    graphs, hooks = {}, None
    for e, weights in ((0, run / "epochs" / "epoch-000.pt"), (1, run / "epochs" / "epoch-001.pt"),
                       (2, run / "model.pt")):
        model = load_trained(weights)
        hooks = list(model.hook_names)
        out = forward_outputs(model, x, hooks)
        out["input"] = x
        for h in ["input", *hooks]:
            graphs[e, h] = brute_graph(out[h].flatten(1).numpy(), 3)
    got = {(r["measure"], r["hook_a"], r["epoch"]): r["value"]
           for r in table.iter_rows(named=True)}
    assert {r["hook_a"] for r in table.iter_rows(named=True)} == {"input", *hooks}
    for h in ["input", *hooks]:
        d = [brute_nnts(graphs[e, h], graphs[2, h], 3) for e in (0, 1, 2)]
        for e in (0, 1, 2):
            assert got["dynamics_nnts_final", h, e] == pytest.approx(d[e], abs=1e-12), (h, e)
        assert got["dynamics_nnts_step", h, 0] == pytest.approx(
            brute_nnts(graphs[0, h], graphs[1, h], 3), abs=1e-12)
        assert got["dynamics_settling_epoch", h, brute_settling([0, 1, 2], d, 0.5)] is not None
    assert got["dynamics_nnts_final", "input", 0] == 1.0  # the input does not train
    # the uncertainty columns, the bootstrap stratified by the probe's labels
    assert manifest["stratified"] and manifest["bootstrap"]["B"] > 0
    finals = table.filter(pl.col("measure") == "dynamics_nnts_final")
    assert finals["lo"].null_count() == 0 and finals["p"].null_count() == 0
    settling = table.filter(pl.col("measure") == "dynamics_settling_epoch")
    assert set(settling["lo"]) | set(settling["hi"]) <= {0.0, 1.0, 2.0}


# ---------------------------------------------------------------------------------------------
# Config: dynamics block, E10, keep_epochs of the runs


@pytest.fixture(scope="module")
def study_config(tmp_path_factory) -> dict:
    import yaml

    root = Path(__file__).resolve().parent.parent
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    cfg["results_dir"] = str(tmp_path_factory.mktemp("config") / "results")
    return cfg


def test_default_config_keeps_the_epochs_of_e10_runs(study_config):
    import copy

    from rra import config as rc

    cfg = rc.validate(copy.deepcopy(study_config))
    runs = rc.dynamics_runs(cfg)
    assert [r.name for r in runs] == [
        "lenet5-none-none-s0", "lenet5-none-standard-s0", "resnet20-none-none-s0",
        "resnet20-none-none-s1", "resnet20-none-none-s2", "resnet20-none-standard-s0",
        "resnet20-none-standard-s1", "resnet20-none-standard-s2"]
    assert rc.train_spec(cfg, runs[0])["keep_epochs"] == [0, 1, 2]
    assert "keep_epochs" not in rc.train_spec(cfg, rc.Run("resnet20nobn", "none", "none", 0))
    assert rc.dynamics_epochs(cfg, runs[0]) == [0, 1, 2, 3]
    assert rc.dynamics_params(cfg, runs[0]) == {
        "k": [10], "tau": 0.5, "scales": ["full"], "epochs": [0, 1, 2, 3],
        "bootstrap": dict(cfg["metrics"].get("bootstrap") or {})}
    assert rc.dynamics_folder(cfg) == ("test-n50-s0", "euclidean-auto")
    assert rc.dynamics_knn_params(cfg, runs[0])["k"] == 10


@pytest.mark.parametrize("change, needle", [
    (lambda c: c["dynamics"].update(epochs=[0, 5]),
     "config key 'dynamics.epochs': epochs [5] are beyond the 3 training epochs of run "
     "lenet5-none-none-s0"),
    (lambda c: c["dynamics"].update(epochs=[-1]), "config key 'dynamics.epochs[0]'"),
    (lambda c: c["dynamics"].update(k=[60]), "config key 'dynamics.k': k = 60 exceeds the stored"),
    (lambda c: c["dynamics"].update(scales=[8]), "config key 'dynamics.scales': ['8'] not among"),
    (lambda c: c["dynamics"].update(tau=1.5), "config key 'dynamics.tau'"),
    (lambda c: c["dynamics"].update(bogus=1), "config key 'dynamics.bogus': unknown key"),
    (lambda c: c["experiments"]["E10"].update(analyse=False),
     "config key 'experiments.E10.dynamics': needs analyse: true"),
])
def test_dynamics_config_errors_name_the_key(study_config, change, needle):
    import copy

    from rra import config as rc

    cfg = copy.deepcopy(study_config)
    change(cfg)
    with pytest.raises(rc.ConfigError) as err:
        rc.validate(cfg)
    assert needle in str(err.value)


def test_report_draws_the_dynamics_figures(tmp_path):
    """The E10 figures from dynamics tables in the workflow's layout (here written by the API):
    per probe and model a heat map and the settling epochs, mean over seeds."""
    from rra.api import dynamics
    from rra.report import build_report
    from rra.report.inputs import ReportInputs

    torch.manual_seed(0)
    x = torch.randn(20, 1, 8, 8)
    states = [tiny_model().state_dict() for _ in range(3)]
    manifests = []
    for aug, seed in (("none", 0), ("none", 1), ("standard", 0)):
        folder = (tmp_path / "results" / "ds" / f"tiny-none-{aug}-s{seed}" / "dynamics" /
                  "test-n2-s0" / "euclidean-auto")
        run = {"dataset": "ds", "model": "tiny", "attention": "none", "augmentation": aug,
               "seed": seed, "probe": "test-n2-s0"}
        dynamics(tiny_model, states, x, epochs=[0, 2, 5], hooks=["0", "1", "3"], k=[3],
                 out_dir=folder, run=run, progress=False)
        manifests.append(folder / "manifest.json")
    records = build_report(ReportInputs.of(tmp_path / "results", dynamics=manifests),
                           tmp_path / "reports")
    ids = sorted(r.id for r in records)
    assert ids == ["ds-test-n2-s0-dynamics-settling-tiny", "ds-test-n2-s0-dynamics-tiny"]
    png = tmp_path / "reports" / "figures" / "ds" / "test-n2-s0" / "dynamics-settling-tiny.png"
    assert png.stat().st_size > 0
    from report_captions import figure_caption  # docs/report/figures.rst as snakemake renders it

    assert figure_caption("ds/test-n2-s0/dynamics-tiny").startswith(
        "**Representation dynamics (E10).**")
    assert figure_caption("ds/test-n2-s0/dynamics-settling-tiny").startswith(
        "**Settling epoch per hook (E10).**")
