"""On a cluster (README "On a cluster"): `snakemake --profile profiles/slurm` runs the tiny study on
a real one-node Slurm (tests/slurm_cluster.py) with the outputs of a local run; Slurm gives GPU
jobs their devices by id; DVC moves tables, models and figures between machines through a
remote, and the large intermediates only when asked to.

The local run is `dvc repro` (the study's DVC stage, `snakemake --cores 2`) in a copy of this
checkout whose default config is the small study (tests/projects.py); the Slurm run is the same
commit cloned elsewhere, as a second machine would have it. Skipped, with the reason, only
where Slurm cannot be installed (no root, no apt-get, apt-get failing).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slurm_cluster  # noqa: E402  (tests/ helper)
from projects import BIN, copy_checkout, small_study, sh  # noqa: E402

pytestmark = pytest.mark.slow
#: what the test cluster needs beyond the profile: it has no accounting database, so job states
#: come from `squeue` (the plugin's default is `sacct`); its jobs take seconds, so the first
#: status check comes after 4 s (default 40 s); Slurm's job logs are kept for a failure report.
TEST_CLUSTER_FLAGS = ["--slurm-status-command", "squeue",
                      "--slurm-init-seconds-before-status-checks", "4",
                      "--slurm-keep-successful-logs"]


@pytest.fixture(scope="module")
def local_project(tmp_path_factory) -> Path:
    """A git copy of this checkout whose default config is the small study (one LeNet-5, its kNN
    analyses and one layers job), run locally by `dvc repro` and committed (dvc.lock,
    reports/metrics.json)."""
    proj = copy_checkout(tmp_path_factory.mktemp("machine-a") / "proj", small_study())
    sh(proj, str(BIN / "dvc"), "repro")
    sh(proj, "git", "add", "-A")
    sh(proj, "git", "commit", "-qm", "dvc repro")
    return proj


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm for this module; its daemons are stopped at the end."""
    if os.geteuid() != 0:
        pytest.skip("a one-node Slurm needs root (slurmd starts jobs as their user; apt-get)")
    why = slurm_cluster.ensure_packages()
    if why:
        pytest.skip(f"Slurm unavailable: {why}")
    cluster = slurm_cluster.LocalSlurm(tmp_path_factory.mktemp("slurm"), gpus=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _skip(rel: Path) -> bool:
    """Files whose bytes hold measured times by design: Snakemake's logs and benchmarks, the
    epoch checkpoints (each epoch's seconds; the final model.pt is compared)."""
    return bool({"logs", "benchmarks", "checkpoints"} & set(rel.parts)) or rel.suffix == ".tsv"


def compare_outputs(a: Path, b: Path) -> int:
    """Assert that two runs' results/ and figures agree: every file byte for byte, except JSON
    manifests (equal without their measured seconds: rra.io.sha256_artifact) and the accuracy
    table (equal without its training seconds). Returns the number of files compared."""
    import polars as pl

    from rra.io import sha256_artifact

    def files(root: Path) -> set[Path]:
        found = {p.relative_to(root) for p in (root / "results").rglob("*") if p.is_file()}
        found |= {p.relative_to(root) for p in (root / "reports/figures").rglob("*") if p.is_file()}
        found.add(Path("reports/metrics.json"))
        return {p for p in found if not _skip(p)}

    fa, fb = files(a), files(b)
    assert fa == fb, f"only in {a}: {sorted(fa - fb)[:10]}; only in {b}: {sorted(fb - fa)[:10]}"
    differ = []
    for rel in sorted(fa):
        if rel.parts[0] == "results" and rel.name.startswith("accuracy."):
            read = pl.read_parquet if rel.suffix == ".parquet" else pl.read_csv
            same = read(a / rel).drop("seconds").equals(read(b / rel).drop("seconds"))
        elif rel.suffix == ".json":
            same = sha256_artifact(a / rel) == sha256_artifact(b / rel)
        else:
            same = (a / rel).read_bytes() == (b / rel).read_bytes()
        if not same:
            differ.append(str(rel))
    assert not differ, f"{len(differ)} of {len(fa)} files differ: {differ[:20]}"
    return len(fa)


def test_slurm_profile_runs_the_study_with_identical_outputs(local_project, slurm, tmp_path):
    clone = tmp_path / "machine-b"
    sh(tmp_path, "git", "clone", "-q", str(local_project), str(clone))
    assert not (clone / "results").exists()
    env = dict(slurm.env)
    start = time.monotonic()
    try:
        out = sh(clone, str(BIN / "snakemake"), "--profile", "profiles/slurm", *TEST_CLUSTER_FLAGS,
                 env=env)
    except AssertionError as err:
        logs = "\n".join(f"== {p}\n{p.read_text()[-1500:]}"
                         for p in sorted((clone / ".snakemake/slurm_logs").rglob("*.log"))[-4:])
        raise AssertionError(f"{err}\n{logs}\n{slurm.logs()}") from None
    seconds = time.monotonic() - start
    # every job went through sbatch but the local ones: the `all` target and the report's input
    # list (rule input_list, written in the Snakemake process)
    submitted = out.count("has been submitted with SLURM jobid")
    assert submitted == 11, out[-3000:]
    assert "13 of 13 steps (100%) done" in out
    n = compare_outputs(local_project, clone)
    assert n > 100
    # Slurm gave each GPU job (train, embed, layers: `gpu: 1` in the profile) a device by id, which it
    # found in CUDA_VISIBLE_DEVICES (and ran on the CPU: the test's GPUs are stand-ins); the
    # kNN jobs asked for none
    logs = sorted((clone / "results").rglob("logs/*.log"))
    for log in logs:
        rule = log.stem.split("-")[0]
        lines = [ln for ln in log.read_text().splitlines() if ": device: " in ln]
        if rule in ("train", "embed", "layers"):
            assert lines and lines[-1].endswith(("CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1")), (log, lines)
        elif rule == "knn":
            assert lines and lines[-1].endswith("CUDA_VISIBLE_DEVICES=unset"), (log, lines)
    print(f"Slurm run of the tiny study: {seconds:.0f} s, {submitted} Slurm jobs, {n} files identical")


def test_parallel_gpu_jobs_get_distinct_devices(slurm, tmp_path):
    """Two 1-CPU jobs asking for one GPU each (what the plugin submits for `gpu: 1`) run at the
    same time on the 2-GPU node with different CUDA_VISIBLE_DEVICES."""
    ids = []
    for i in range(2):
        out = slurm.run("sbatch", "--parsable", "--gpus=1", "--cpus-per-task=1", "--mem=100",
                        "-o", str(tmp_path / f"{i}.out"), "--wrap",
                        "echo $CUDA_VISIBLE_DEVICES $(date +%s.%N); sleep 3; date +%s.%N").stdout
        ids.append(out.strip())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = slurm.run("squeue", "-h", "--states=all", "-j", ",".join(ids), "-o", "%T").stdout.split()
        if len(states) == 2 and all(s == "COMPLETED" for s in states):
            break
        assert not {"FAILED", "CANCELLED", "NODE_FAIL"} & set(states), states
        time.sleep(0.5)
    else:
        raise AssertionError(f"jobs {ids} did not complete: {slurm.logs()}")
    runs = [(tmp_path / f"{i}.out").read_text().split() for i in range(2)]
    devices = sorted(r[0] for r in runs)
    assert devices == ["0", "1"], runs
    (s0, e0), (s1, e1) = [(float(r[1]), float(r[2])) for r in runs]
    assert max(s0, s1) < min(e0, e1), f"the jobs did not overlap: {runs}"


def test_dvc_remote_moves_tables_models_figures_not_intermediates(local_project, tmp_path):
    """`dvc push` from machine A, `git clone` + `dvc pull` on machine B: tables, models and
    figures arrive byte for byte; embeddings and graphs are not pushed (.dvcignore) until their
    lines are dropped, committed and pushed; `snakemake --touch` makes B's copy up to date."""
    dvc = str(BIN / "dvc")
    store = tmp_path / "store"
    sh(local_project, dvc, "remote", "add", "-d", "--local", "store", str(store))
    sh(local_project, dvc, "push")
    b = tmp_path / "machine-b"
    sh(tmp_path, "git", "clone", "-q", str(local_project), str(b))
    sh(b, dvc, "remote", "add", "-d", "--local", "store", str(store))
    sh(b, dvc, "pull")
    run = Path("results/mnist5k/lenet5-none-none-s0")
    moved = [run / "model.pt", run / "metrics/test-n12-s0/euclidean-auto/nnts.parquet",
             Path("results/mnist5k/cost.parquet"), Path("results/mnist5k/accuracy.parquet"),
             Path("reports/index.html"), Path("reports/metrics.json")]
    for rel in moved:
        assert (b / rel).read_bytes() == (local_project / rel).read_bytes(), rel
    figures = sorted(p.relative_to(local_project) for p in (local_project / "reports/figures").rglob("*.png"))
    assert figures and all((b / f).read_bytes() == (local_project / f).read_bytes() for f in figures)
    assert not list((b / "results").rglob("embed")) and not list((b / "results").rglob("knn"))
    assert (local_project / run / "embed").is_dir()  # A keeps its own
    assert "up to date" in sh(b, dvc, "status")
    # DVC writes the pulled files in no particular order, and Snakemake may read a newer input
    # as a reason to rerun (to retrain, or only to redo later steps: which, depends on the
    # order, so it is not asserted); `--touch` restores the workflow's order, after which B's
    # copy is up to date without its intermediates
    snakemake = str(BIN / "snakemake")
    sh(b, snakemake, "--touch", "--cores", "1")
    assert "Nothing to be done" in sh(b, snakemake, "-n")

    # including the intermediates: drop their .dvcignore lines, commit, push; B pulls them
    ignore = local_project / ".dvcignore"
    kept = [ln for ln in ignore.read_text().splitlines() if not ln.startswith("results/**/")]
    ignore.write_text("\n".join(kept) + "\n")
    sh(local_project, dvc, "commit", "-f")
    sh(local_project, dvc, "push")
    sh(local_project, "git", "commit", "-qam", "version the intermediates")
    sh(b, "git", "pull", "-q")
    sh(b, dvc, "pull")
    graph = run / "knn/test-n12-s0/euclidean-auto/conv1@full.idx.npy"
    embedding = run / "embed/test-n12-s0/conv1@full.npy"
    for rel in (graph, embedding):
        assert (b / rel).read_bytes() == (local_project / rel).read_bytes(), rel
