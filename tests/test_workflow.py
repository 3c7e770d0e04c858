"""End-to-end: the Snakemake workflow on config/test.yaml in a temporary directory.

Checks the artifacts' contents against direct computations (a model's forward pass, brute-force
kNN), that a second run has nothing to do, that a config edit reruns only what depends on it,
and that a training job killed mid-run resumes to the same weights.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEST_CONFIG = ROOT / "config" / "test.yaml"
pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, configfiles: tuple[Path, ...] = (TEST_CONFIG,),
              check: bool = True) -> subprocess.CompletedProcess:
    # --configfile takes several values: targets and flags go before it
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--cores", "2", *args, "--configfile", *map(str, configfiles)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(workdir: Path, configfiles: tuple[Path, ...] = (TEST_CONFIG,)) -> dict[str, int]:
    """Rule → number of jobs a dry run plans."""
    out = snakemake(workdir, "-n", configfiles=configfiles)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1]
    jobs = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs[parts[0]] = int(parts[1])
        elif parts and parts[0] == "total":
            break
    return jobs


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("study")
    snakemake(work)
    return work


RUNS = ["lenet5-none-none-s0", "lenet5-none-standard-s0", "resnet8-none-standard-s0",
        "resnet8nobn-none-standard-s0"]
PROBE = "test-n12-s0"


def test_training_artifacts(study):
    for run in RUNS:
        d = study / "results" / "mnist5k" / run
        metrics = json.loads((d / "metrics.json").read_text())
        log = json.loads((d / "train_log.json").read_text())
        epochs = log["epochs"] if isinstance(log, dict) else log
        assert len(epochs) == 2
        prov = metrics["provenance"]
        assert prov["versions"]["torch"].startswith("2.14.1")
        assert prov["seed"] == 0 and prov["config"]["model"] == run.split("-")[0]
        assert metrics["n_train"] == 500 and metrics["complete"]
        # 500 training images, 2 epochs: at least twice chance (0.1) for LeNet-5
        if run.startswith("lenet5"):
            assert metrics["eval_acc"] > 0.2, metrics
        assert sorted(p.name for p in (d / "checkpoints").iterdir())[-1] == "epoch-002.pt"


def test_tables_hold_the_stored_expected_values(study):
    """Every table of the tiny study holds the values stored in tests/expected (a refactor that
    changes a number fails here; tests/expected_tables.py says how to regenerate them)."""
    from expected_tables import compare

    compare(study / "results")


def test_embeddings_equal_forward_pass(study):
    import torch

    from hooks import forward_outputs
    from rra.data import load_split, normalise
    from rra.train import load_trained

    run = study / "results" / "mnist5k" / "lenet5-none-standard-s0"
    embed = run / "embed" / PROBE
    manifest = json.loads((embed / "manifest.json").read_text())
    model = load_trained(run)
    assert manifest["hooks"] == ["input", *model.hook_names]  # embed.input: auto, LeNet-5 on
    probe = np.load(study / "results" / "data" / "mnist5k" / "probe" / f"{PROBE}.npy")
    assert len(probe) == 120
    split = load_split(study / "results" / "data" / "mnist5k" / "test")
    x = torch.from_numpy(normalise(np.asarray(split.images[probe]), split.info))
    outputs = forward_outputs(model, x, model.hook_names)
    assert np.array_equal(np.load(embed / "labels.npy"), split.labels[probe])
    conv = np.load(embed / "conv1@full.npy")
    np.testing.assert_allclose(conv, outputs["conv1"].flatten(1).numpy(), rtol=1e-5, atol=1e-5)
    pooled = np.load(embed / "conv1@2.npy")
    ref = torch.nn.functional.adaptive_avg_pool2d(outputs["conv1"], 2).flatten(1).numpy()
    np.testing.assert_allclose(pooled, ref, rtol=1e-5, atol=1e-5)
    assert not (embed / "fc2@2.npy").exists()  # 2-D outputs exist only at `full`
    np.testing.assert_array_equal(np.load(embed / "input@full.npy"), x.flatten(1).numpy())
    ref = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1).numpy()
    np.testing.assert_array_equal(np.load(embed / "input@2.npy"), ref)
    resnet = study / "results" / "mnist5k" / "resnet8-none-standard-s0" / "embed" / PROBE
    assert "input" not in json.loads((resnet / "manifest.json").read_text())["hooks"]


def test_knn_graphs_equal_brute_force(study):
    run = study / "results" / "mnist5k" / "resnet8-none-standard-s0"
    knn = run / "knn" / PROBE / "euclidean-auto"
    manifest = json.loads((knn / "manifest.json").read_text())
    assert manifest["k_max"] == 5
    for hook in ("stem", "layer3.0", "fc"):
        x = np.load(run / "embed" / PROBE / f"{hook}@full.npy").astype(np.float64)
        idx = np.load(knn / f"{hook}@full.idx.npy")
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        order = np.lexsort((np.broadcast_to(np.arange(len(x)), d.shape), d), axis=1)[:, :5]
        assert np.array_equal(idx, order), hook


def test_metric_tables(study):
    import polars as pl

    from rra.metrics.tables import load_tables

    nnts = load_tables(study / "results", "nnts")
    assert set(nnts["model"].unique()) == {"lenet5", "resnet8"}
    assert set(nnts["k"].unique()) == {3, 5}
    diag = nnts.filter((pl.col("measure") == "nnts") & (pl.col("hook_a") == pl.col("hook_b")))
    assert diag["value"].to_list() == pytest.approx([1.0] * diag.height)
    # NNTS between two hooks recomputed from the stored graphs
    run = study / "results" / "mnist5k" / "lenet5-none-none-s0"
    knn = run / "knn" / PROBE / "euclidean-auto"
    a, b = (np.load(knn / f"{h}@full.idx.npy")[:, :3] for h in ("conv1", "fc1"))
    j = [len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(a, b)]
    got = nnts.filter((pl.col("measure") == "nnts") & (pl.col("hook_a") == "conv1") & (pl.col("hook_b") == "fc1")
                      & (pl.col("k") == 3) & (pl.col("scale_a") == "full")
                      & (pl.col("augmentation") == "none") & (pl.col("model") == "lenet5"))
    assert got["value"].to_list() == pytest.approx([np.mean(j)], abs=1e-12)
    everything = load_tables(study / "results")
    assert {"nnts", "nntp_runs", "knn_purity", "classrepsim", "mutual_knn", "linear_cka"} <= set(everything["measure"].unique())


LAYERS = {"translation": ["lenet5-none-none-s0", "lenet5-none-standard-s0"],
          "patterns": ["resnet8-none-standard-s0", "resnet8nobn-none-standard-s0"],
          "margins": ["lenet5-none-none-s0", "lenet5-none-standard-s0",
                      "resnet8-none-standard-s0"],
          "saliency": ["lenet5-none-none-s0", "lenet5-none-standard-s0",
                       "resnet8-none-standard-s0"],
          "fragmentation": ["lenet5-none-none-s0", "lenet5-none-standard-s0"]}


def test_layer_tables(study):
    """E7–E9 on the tiny study: every layer table exists with its run's identity and sane
    values, and the report shows every figure family."""
    import polars as pl

    results = study / "results" / "mnist5k"
    found = sorted(p.relative_to(results).as_posix()
                   for p in results.glob("*/layers/*/*/manifest.json"))
    assert found == sorted(f"{run}/layers/test-n3-s0/{a}/manifest.json"
                           for a, runs in LAYERS.items() for run in runs)
    tables = {a: pl.concat([pl.read_parquet(results / run / "layers" / "test-n3-s0" / a /
                                            f"{a}.parquet") for run in runs])
              for a, runs in LAYERS.items()}
    t = tables["translation"]
    assert set(t["probe"]) == {"test-n3-s0"} and set(t["model"]) == {"lenet5"}
    assert set(t["hook_a"]) == {"input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
                                "conv3", "relu3", "fc1", "relu4", "fc2"}
    centre = t.filter((pl.col("measure") == "translation_cosine") & (pl.col("dx") == 0)
                      & (pl.col("dy") == 0))
    assert centre.height == t.select("augmentation", "hook_a", "scale_a").unique().height
    np.testing.assert_allclose(centre["value"].to_numpy(), 1.0, atol=1e-5)
    far = t.filter((pl.col("measure") == "translation_cosine_radial") & (pl.col("radius") == 2)
                   & (pl.col("hook_a") == "input") & (pl.col("scale_a") == "full"))
    assert far.height == 2 and (far["value"] < 1).all()
    p = tables["patterns"]
    assert set(p["model"]) == {"resnet8", "resnet8nobn"}
    assert set(p["hook_a"]) == {"stem", "layer1.0", "layer2.0", "layer3.0"}
    sparsity = p.filter(pl.col("measure").str.ends_with("_sparsity"))["value"]
    assert sparsity.min() >= 0 and sparsity.max() <= 1
    fidelity = p.filter(pl.col("measure") == "relu_tree_fidelity")["value"]
    assert fidelity.min() >= 0 and fidelity.max() <= 1
    m = tables["margins"]
    assert sorted(set(m["pca_k"].drop_nulls())) == [1, 5, 784]
    hidden = m.filter(pl.col("measure") == "hidden_margin")["value"]
    assert (hidden.drop_nans() > 0).all() and hidden.drop_nans().len() > 0
    s = tables["saliency"].filter(pl.col("class").is_null())
    assert s.height == 2 * 3 and s["value"].min() >= 0.05 and s["value"].max() <= 1
    maps = np.load(results / "lenet5-none-none-s0" / "layers" / "test-n3-s0" / "saliency" /
                   "maps.npz")
    assert maps["true"].shape == (4, 28, 28) and maps["filters"].shape == (6, 1, 5, 5)
    f = tables["fragmentation"].filter(pl.col("measure").is_in(["fragmentation_same_class",
                                                                "fragmentation_mixed"]))
    assert f.height == 2 * 2 * 12 and (f["value"].drop_nans() >= 1).all()
    figures = {p.stem for p in (study / "reports" / "figures" / "mnist5k" /
                                "layers-test-n3-s0").glob("*.png")}
    assert {"translation-lenet5", "translation-radial-lenet5", "translation-summary-lenet5",
            "patterns-resnet8-resnet8nobn", "margins-lenet5", "margins-resnet8", "margins-pca",
            "saliency", "saliency-share", "filters", "fragmentation-lenet5"} <= figures


def test_placement_equals_a_direct_computation(study):
    """E11 on the tiny study: each LeNet-5 run's placement table (test-n12-s0 placed in the
    training probe train-n12-s0, rule placement) holds what rra.metrics.placement computes
    from the stored embeddings of both probes (and, for one hook, a brute force); the report
    draws it."""
    import polars as pl

    from rra.metrics.placement import placement_table

    for run in ("lenet5-none-none-s0", "lenet5-none-standard-s0"):
        d = study / "results" / "mnist5k" / run
        folder = d / "placement" / "train-n12-s0" / PROBE / "euclidean"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["ks"] == [3, 5] and manifest["run"]["probe"] == PROBE
        assert (manifest["reference"]["n"], manifest["heldout"]["n"]) == (120, 120)
        ref, held = d / "embed" / "train-n12-s0", d / "embed" / PROBE
        emb = json.loads((ref / "manifest.json").read_text())
        files = {(e["hook"], str(e["scale"])): e["file"] for e in emb["entries"]}
        y_ref, y_q = np.load(ref / "labels.npy"), np.load(held / "labels.npy")
        expected = []
        for scale in map(str, emb["scales"]):
            hooks = [h for h in emb["hooks"] if (h, scale) in files]
            expected.append(placement_table(
                hooks, {h: np.load(ref / files[(h, scale)]) for h in hooks},
                {h: np.load(held / files[(h, scale)]) for h in hooks}, y_ref, y_q, [3, 5],
                scale=scale, positions={h: i for i, h in enumerate(emb["hooks"])},
                bootstrap=manifest["bootstrap"]))
        key = ["measure", "scale_a", "hook_a", "hook_b", "k"]
        got = pl.read_parquet(folder / "placement.parquet").sort(key, nulls_last=True)
        want = pl.concat(expected).sort(key, nulls_last=True)
        assert got.select(key).equals(want.select(key)) and got.height > 100
        np.testing.assert_allclose(got["value"], want["value"], rtol=0, atol=0)
        # the uncertainty columns with the study's metrics.bootstrap (one bootstrap per stage)
        assert manifest["bootstrap"]["B"] > 0 and got["lo"].null_count() == 0
        for column in ("lo", "hi", "null", "p"):
            np.testing.assert_allclose(got[column].to_numpy(), want[column].to_numpy(),
                                       rtol=0, atol=1e-12)
        assert set(got["augmentation"]) == {run.split("-")[2]} and set(got["probe"]) == {PROBE}
        # fc2 at full scale, k = 3: the held-out kNN vote among the 3 nearest training rows
        r, q = (np.load(p / "fc2@full.npy").astype(np.float64) for p in (ref, held))
        dist = ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
        near = np.lexsort((np.broadcast_to(np.arange(len(r)), dist.shape), dist), axis=1)[:, :3]
        votes = [np.bincount(y_ref[row], minlength=10).argmax() for row in near]
        acc = got.filter((pl.col("measure") == "placement_acc") & (pl.col("hook_a") == "fc2")
                         & (pl.col("scale_a") == "full") & (pl.col("k") == 3))["value"]
        assert acc.to_list() == pytest.approx([np.mean(np.array(votes) == y_q)])
    figure = (study / "reports" / "figures" / "mnist5k" / f"{PROBE}-in-train-n12-s0" /
              "euclidean" / "placement-lenet5.png")
    assert figure.is_file()


def test_every_job_used_exactly_its_threads(study):
    """Each job's log ends with the threads of every pool it loaded: the rule's `threads`
    (train, embed, kNN: 2; the others 1), whatever the library defaults. The input lists
    (rule input_list, `inputs-*.log`) are written in the Snakemake process and load no pool."""
    expected = {"train": 2, "embed": 2, "knn": 2, "layers": 2, "placement": 2}
    logs = sorted((study / "results").rglob("logs/*.log"))
    lists = [log for log in logs if log.stem.startswith("inputs-")]
    assert [log.stem for log in lists] == ["inputs-report"]  # no E2 job: one analysis per run
    assert len(logs) >= 10
    for log in (log for log in logs if log not in lists):
        lines = [ln for ln in log.read_text().splitlines() if ": threads: " in ln]
        assert lines, f"{log}: no thread report"
        want = expected.get(log.stem.split("-")[0], 1)
        counts = [int(part.rsplit(" ", 1)[1]) for part in lines[-1].split("threads: ")[1].split(", ")]
        assert counts and set(counts) == {want}, f"{log}: {lines[-1]} (rule threads {want})"


def test_rerun_does_nothing_and_edits_rerun_dependents(study, tmp_path):
    assert planned_jobs(study) == {}
    overlay = tmp_path / "edit.yaml"
    overlay.write_text(yaml.safe_dump({"knn": {"k": [3, 6]}}))
    assert planned_jobs(study, (TEST_CONFIG, overlay)) == {"knn": 3, "metrics": 3, "report": 1, "all": 1}
    # only LeNet-5's change (its test and E11's train probe); of the layer analyses, those
    # whose hooks include the input
    overlay.write_text(yaml.safe_dump({"embed": {"input": False}}))
    assert planned_jobs(study, (TEST_CONFIG, overlay)) == {"embed": 4, "knn": 2, "metrics": 2,
                                                            "layers": 4, "placement": 2,
                                                            "report": 1, "all": 1}
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["runs"][1]["training"] = {"lr": 0.01}  # ResNet-8, also listed by E8 and E9: the same
    cfg["experiments"]["E8"]["runs"][0]["training"] = {"lr": 0.01}
    cfg["experiments"]["E9"]["runs"][1]["training"] = {"lr": 0.01}
    overlay.write_text(yaml.safe_dump({"runs": cfg["runs"], "experiments": cfg["experiments"]}))
    assert planned_jobs(study, (TEST_CONFIG, overlay)) == {
        "train": 1, "embed": 1, "knn": 1, "metrics": 1, "summary": 1, "layers": 3, "report": 1,
        "all": 1}
    overlay.write_text(yaml.safe_dump({"layers": {"translation": {"max_shift": 1}}}))
    assert planned_jobs(study, (TEST_CONFIG, overlay)) == {"layers": 2, "report": 1, "all": 1}


def test_bad_config_fails_before_any_job(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump({"runs": [{"model": "vgg11"}]}))
    proc = snakemake(tmp_path, "-n", configfiles=(TEST_CONFIG, overlay), check=False)
    assert proc.returncode != 0
    assert "config key 'runs[0].model': unknown model 'vgg11'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_killed_training_resumes_to_same_weights(study, tmp_path):
    import torch

    target = "results/mnist5k/resnet8-none-standard-s0/model.pt"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
           "--cores", "2", target, "--configfile", str(TEST_CONFIG)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = tmp_path / "results/mnist5k/resnet8-none-standard-s0/checkpoints/epoch-001.pt"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), "training never wrote its first checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)  # kill Snakemake and the training job mid-epoch 2
    proc.wait()
    assert not (tmp_path / target).exists()
    snakemake(tmp_path, "--unlock", target)  # a hard kill leaves Snakemake's lock behind
    snakemake(tmp_path, "--rerun-incomplete", target)
    resumed = torch.load(tmp_path / target, weights_only=True)
    reference = torch.load(study / target, weights_only=True)
    sd_a, sd_b = resumed["state_dict"], reference["state_dict"]
    assert sd_a.keys() == sd_b.keys()
    for key in sd_a:
        assert torch.equal(sd_a[key], sd_b[key]), key
    log = (tmp_path / "results/mnist5k/resnet8-none-standard-s0/logs/train.log").read_text()
    assert re.search(r"resum", log, re.IGNORECASE), log[-2000:]


def test_snakemake_report_collects_the_figures(study, tmp_path):
    out = tmp_path / "report.html"
    proc = snakemake(study, "--report", str(out))
    added = re.findall(r"Adding (\S+\.png)", proc.stdout + proc.stderr)
    pngs = sorted(p.name for p in (study / "reports" / "figures").rglob("*.png"))
    assert sorted(added) == pngs and len(pngs) >= 10
    assert out.stat().st_size > 100_000  # self-contained: the PNGs are embedded
    # each figure with its family's caption (docs/report/figures.rst), none without one
    page = out.read_text(errors="replace")
    assert page.count("NNTS heat maps (E1)") == 2 and page.count("Saliency maps (E9)") == 1
    assert "A figure of the rra study" not in page


def test_a_run_not_in_the_config_is_in_no_figure(study, tmp_path):
    """The report draws the files its rule lists from the config, not what results/ holds: a
    run folder the config does not name (as a run removed from the config leaves it; here a
    copy of a run as seed 9) is in no figure, table or record of a rebuilt report."""
    import shutil

    work = tmp_path / "copy"
    shutil.copytree(study, work, symlinks=True)
    runs = work / "results" / "mnist5k"
    shutil.copytree(runs / "lenet5-none-none-s0", runs / "lenet5-none-none-s9")
    snakemake(work, "--forcerun", "report")
    index = (work / "reports" / "index.json").read_text()
    assert "lenet5-none-none-s9" not in index
    seeds = [r["config"]["seeds"] for r in json.loads(index)["figures"]
             if isinstance(r["config"].get("seeds"), list)]
    assert seeds and all(s == [0] for s in seeds)
    tables = [p.read_text() for p in (work / "reports" / "figures").rglob("*.csv")]
    assert not any("s9" in t for t in tables)


def test_failed_report_job_keeps_the_previous_report(study, tmp_path):
    """A report job that fails (here: an unreadable metric table) leaves the previous report
    byte for byte: Snakemake keeps and restores the update() outputs, and the report is only
    swapped in when complete."""
    import shutil

    work = tmp_path / "copy"
    shutil.copytree(study, work, symlinks=True)
    before = {p.relative_to(work): p.read_bytes()
              for p in (work / "reports").rglob("*") if p.is_file()}
    assert any(p.suffix == ".png" for p in before)
    table = next((work / "results").rglob("metrics/*/*/nnts.parquet"))
    table.write_bytes(b"not a parquet file")
    proc = snakemake(work, "--forcerun", "report", check=False)
    assert proc.returncode != 0 and "Error in rule report" in proc.stdout + proc.stderr
    after = {p.relative_to(work): p.read_bytes()
             for p in (work / "reports").rglob("*") if p.is_file()}
    assert after == before
