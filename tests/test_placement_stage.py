"""Held-out placement as a workflow stage (E11): the cross search block by block on memory-mapped
inputs, the stage on two embed folders (table, manifest, one-line CLI errors), its registry
entries, its report figure and caption, and the config's placement blocks."""

from __future__ import annotations

import copy
import json
import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from rra import cli
from rra import config as rc
from rra.embed import dump_embeddings
from rra.io import save_npy
from rra.knn.cross import cross_neighbours
from rra.metrics import MEASURES
from rra.metrics.placement import OUTPUTS, placement_stage, placement_table
from rra.metrics.tables import COMPUTED_TABLES, SCHEMA, load_tables
from test_placement import brute_cross

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ the cross search, chunked

def _memmaps(tmp_path: Path, ref: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    np.save(tmp_path / "ref.npy", ref)
    np.save(tmp_path / "q.npy", q)
    return (np.load(tmp_path / "ref.npy", mmap_mode="r"),
            np.load(tmp_path / "q.npy", mmap_mode="r"))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_cross_blocks_on_memory_maps_equal_one_block(tmp_path, distance):
    """Row blocks of memory-mapped queries (1, 7 and 64 rows, the default) give the one-block
    result, the brute force's, ties and duplicates included."""
    rng = np.random.default_rng(11)
    ref = rng.integers(-2, 3, size=(200, 6)).astype(np.float32)
    ref[50:53] = ref[0]  # duplicates
    q = rng.integers(-2, 3, size=(61, 6)).astype(np.float32)
    q[[0, 1]] = 1.0  # no zero rows (cosine)
    q[5] = ref[0]
    ref_m, q_m = _memmaps(tmp_path, ref, q)
    whole = cross_neighbours(ref, q, 9, distance, block_rows=len(q))
    assert whole[2]["blocks"] == 1 and whole[2]["rows_tie_resolved"] > 0
    if distance == "euclidean":  # integer rows: float64 distances are exact, so is the order
        np.testing.assert_array_equal(whole[0], brute_cross(ref, q, 9))
    for rows in (1, 7, 64, None):
        idx, sqd, stats = cross_neighbours(ref_m, q_m, 9, distance, block_rows=rows)
        np.testing.assert_array_equal(idx, whole[0])
        np.testing.assert_array_equal(sqd, whole[1])
        if rows is not None:
            assert stats["blocks"] == -(-len(q) // rows)


def test_cross_never_stacks_reference_and_queries(tmp_path, monkeypatch):
    """With memory-mapped inputs the search allocates the reference keys and one block, never a
    stacked copy of R and Q (numpy allocations traced; the old stacked search peaked at over
    twice R + Q). The input scan's float64 chunks are made small here, as they are relative to
    a large embedding (32 MB)."""
    from rra.knn import common

    monkeypatch.setattr(common, "chunk_rows", lambda d, budget=None: 256)
    rng = np.random.default_rng(12)
    ref = rng.standard_normal((4000, 200)).astype(np.float32)
    q = rng.standard_normal((4000, 200)).astype(np.float32)
    ref_m, q_m = _memmaps(tmp_path, ref, q)
    cross_neighbours(ref_m[:50], q_m[:5], 3)  # compile the kernels outside the trace
    tracemalloc.start()
    try:
        idx, _, _ = cross_neighbours(ref_m, q_m, 5, block_rows=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * ref.nbytes, (peak, ref.nbytes)  # the keys (R's size) and a block
    rows = rng.choice(len(q), 20, replace=False)
    np.testing.assert_array_equal(idx[rows], brute_cross(ref, q[rows], 5))


# ------------------------------------------------------------------ the stage and its CLI

def _embed(folder: Path, model: torch.nn.Module, x: torch.Tensor, y: np.ndarray,
           hooks: list[str], checkpoint: str = "c0") -> Path:
    dump_embeddings(model, x, hooks, [1, "full"], folder, batch_size=7, device="cpu",
                    meta={"checkpoint_sha256": checkpoint}, progress=False)
    save_npy(folder / "labels.npy", np.asarray(y, dtype=np.int64))
    return folder


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(2 * 6 * 6, 3)).eval()


HOOKS = ["0", "1", "3"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """results/toy/{run}/embed/{train-n8-s0, test-n4-s0} of two toy runs (augmentation none
    and standard) and their placement folders."""
    results = tmp_path_factory.mktemp("placement") / "results"
    g = torch.Generator().manual_seed(0)
    x_ref, x_q = torch.randn(24, 1, 8, 8, generator=g), torch.randn(12, 1, 8, 8, generator=g)
    y_ref, y_q = np.arange(24) % 3, np.arange(12) % 3
    for seed, aug in enumerate(("none", "standard")):
        run = results / "toy" / f"toy-none-{aug}-s0"
        model = _model(seed)
        ref = _embed(run / "embed" / "train-n8-s0", model, x_ref, y_ref, HOOKS, f"c{seed}")
        held = _embed(run / "embed" / "test-n4-s0", model, x_q, y_q, HOOKS, f"c{seed}")
        placement_stage(ref, held, run / "placement" / "train-n8-s0" / "test-n4-s0" / "euclidean",
                        ks=[2, 5], run={"dataset": "toy", "model": "toy", "attention": "none",
                                        "augmentation": aug, "seed": 0, "probe": "test-n4-s0"})
    return results


def test_stage_writes_the_direct_computation(study):
    run = study / "toy" / "toy-none-standard-s0"
    folder = run / "placement" / "train-n8-s0" / "test-n4-s0" / "euclidean"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["ks"] == [2, 5] and manifest["distance"] == "euclidean"
    assert manifest["reference"]["probe"] == "train-n8-s0" and manifest["heldout"]["n"] == 12
    assert manifest["tables"]["placement"]["rows"] > 0 and "versions" in manifest
    table = pl.read_parquet(folder / "placement.parquet")
    assert table.columns == list(SCHEMA) and set(table["measure"]) == set(OUTPUTS)
    assert set(table["probe"]) == {"test-n4-s0"} and set(table["augmentation"]) == {"standard"}
    expected = []
    for scale in ("1", "full"):
        hooks = [h for h in HOOKS if (run / "embed" / "train-n8-s0" / f"{h}@{scale}.npy").exists()]
        ref = {h: np.load(run / "embed" / "train-n8-s0" / f"{h}@{scale}.npy") for h in hooks}
        q = {h: np.load(run / "embed" / "test-n4-s0" / f"{h}@{scale}.npy") for h in hooks}
        expected.append(placement_table(hooks, ref, q, np.arange(24) % 3, np.arange(12) % 3,
                                        [2, 5], scale=scale, positions={h: i for i, h in
                                                                        enumerate(HOOKS)}))
    key = ["measure", "scale_a", "hook_a", "hook_b", "k"]
    got, want = table.sort(key, nulls_last=True), pl.concat(expected).sort(key, nulls_last=True)
    assert got.select(key).equals(want.select(key))
    np.testing.assert_allclose(got["value"], want["value"])
    assert load_tables(study, "placement").height == 2 * table.height


def test_cli_one_line_error_for_other_hooks(study, capsys, tmp_path):
    """Held-out embeddings with other hooks (or of another checkpoint): one line, status 2."""
    run = study / "toy" / "toy-none-none-s0"
    other = _embed(tmp_path / "other", _model(0), torch.randn(6, 1, 8, 8), np.arange(6) % 3,
                   ["0", "3"])
    args = ["placement", "--reference", str(run / "embed" / "train-n8-s0"), "--heldout",
            str(other), "--out", str(tmp_path / "out"), "--settings", '{"k": [2]}',
            "--run", '{"model": "toy"}', "--threads", "1"]
    status = cli.main(args)
    err = capsys.readouterr().err.splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith("rra placement: error: the reference embeddings ")
    assert "have different hooks (['0', '1', '3'] vs ['0', '3'])" in err[0]
    other = _embed(tmp_path / "ckpt", _model(0), torch.randn(6, 1, 8, 8), np.arange(6) % 3,
                   HOOKS, "another")
    assert cli.main(args[:4] + [str(other)] + args[5:]) == 2
    assert "different checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_registry_lists_the_placement_measures():
    names = ["placement_acc", "placement_train_acc", "placement_gap", "placement_purity",
             "placement_agreement"]
    assert [m.name for m in MEASURES.values() if m.table == "placement"] == names
    assert tuple(o for n in names for o in MEASURES[n].outputs) == OUTPUTS
    assert all(MEASURES[n].tag == "ours" and MEASURES[n].kind == "heldout+embeddings"
               and MEASURES[n].needs_embeddings for n in names)
    assert MEASURES["placement_agreement"].symmetric is True
    assert MEASURES["placement_acc"].symmetric is None
    assert "placement" not in COMPUTED_TABLES  # not a run_tables table: its own stage


def test_report_draws_the_placement_figure(study, tmp_path):
    from rra.report import ReportInputs, build_report
    from report_captions import figure_caption

    manifests = sorted(study.glob("toy/*/placement/*/*/*/manifest.json"))
    recs = build_report(ReportInputs.of(study, placement=manifests), tmp_path / "reports",
                        config={"report": {"k": 5}})
    [rec] = recs
    assert rec.config["k"] == 5 and rec.config["seeds"] == [0]
    figure = rec.file("png").removeprefix("figures/").removesuffix(".png")
    assert figure == "toy/test-n4-s0-in-train-n8-s0/euclidean/placement-toy"
    assert figure_caption(figure).startswith("**Held-out placement (E11).**")
    assert len(rec.inputs) == 2
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "placement_gap" in index  # the Measures table lists the registered measures


# ------------------------------------------------------------------ config

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["experiments"] = {"E11": copy.deepcopy(cfg["experiments"]["E11"])}
    cfg["results_dir"] = str(tmp_path_factory.mktemp("config") / "results")
    return cfg


def test_default_placements(base):
    cfg = rc.validate(copy.deepcopy(base))
    found = rc.placements(cfg)
    assert [p.run.name for p in found] == [
        "lenet5-none-none-s0", "lenet5-none-standard-s0",
        *[f"resnet20-none-{a}-s{s}" for a in ("none", "standard") for s in (0, 1, 2)]]
    assert {(p.reference, p.heldout, p.distance, p.ks) for p in found} == {
        ("train-n50-s0", "test-n50-s0", "euclidean", (10, 50))}
    assert rc.placement_params(cfg, found[0].run, "train-n50-s0", "test-n50-s0",
                               "euclidean") == {
        "k": [10, 50], "bootstrap": dict(cfg["metrics"].get("bootstrap") or {})}
    req = {r["probe"]: r for r in rc.probe_requirements(cfg)}
    assert req["train-n50-s0"]["k"] == 50 and req["train-n50-s0"]["k_key"] == "knn.k"
    assert req["train-n50-s0"]["probe_key"] == "experiments.E11.placement.reference"
    assert not [a for a in rc.analyses(cfg) if a.experiment == "E11"]  # analyse: false
    cfg["experiments"]["E11"]["placement"].pop("heldout")  # default: the top-level probe
    assert rc.placements(rc.validate(cfg))[0].heldout == "test-n50-s0"


@pytest.mark.parametrize("edit, needle", [
    ({"heldout": {"split": "train", "n_per_class": 5}},
     "config key 'experiments.E11.placement.heldout.split': the held-out probe of experiment "
     "E11's placement reads split 'train', as its reference"),
    ({"reference": {"split": "test"}, "heldout": None},
     "config key 'probe.split': the held-out probe of experiment E11's placement reads split "
     "'test'"),
    ({"reference": {"n_per_class": 2}},
     "config key 'knn.k': k = 50 must be smaller than the probe size n = 20 of probe "
     "train-n2-s0 ('experiments.E11.placement.reference'"),
    ({"reference": {"split": "nope"}},
     "config key 'experiments.E11.placement.reference.split': dataset 'mnist5k' has splits"),
    ({"bogus": 1}, "config key 'experiments.E11.placement.bogus': unknown key"),
    ({"distance": ["manhattan"]},
     "config key 'experiments.E11.placement.distance[0]': 'manhattan' is not one of"),
    ({"reference": {"n_per_class": 0}},
     "config key 'experiments.E11.placement.reference.n_per_class': 0 is not allowed"),
])
def test_bad_placement_blocks_name_their_key(base, edit, needle):
    cfg = copy.deepcopy(base)
    block = cfg["experiments"]["E11"]["placement"]
    for key, value in edit.items():
        if value is None:
            block.pop(key)
        elif isinstance(value, dict):
            block[key] = {**block.get(key, {}), **value}
        else:
            block[key] = value
    with pytest.raises(rc.ConfigError) as err:
        rc.validate(cfg)
    assert needle in str(err.value)


def test_placement_k_from_the_experiment(base):
    cfg = copy.deepcopy(base)
    cfg["experiments"]["E11"]["k"] = [499, 3]
    cfg["experiments"]["E11"]["placement"]["distance"] = ["euclidean", "cosine"]
    cfg = rc.validate(cfg)
    assert {(p.distance, p.ks) for p in rc.placements(cfg)} == {("euclidean", (3, 499)),
                                                               ("cosine", (3, 499))}
    cfg["experiments"]["E11"]["k"] = [500]
    with pytest.raises(rc.ConfigError, match=r"config key 'experiments.E11.k': k = 500 must be "
                                             r"smaller than the probe size n = 500"):
        rc.validate(cfg)
