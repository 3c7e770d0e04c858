"""The command line's one error path: any exception is one line naming the stage and what to fix,
exit status 2 for the user's errors and 1 for internal ones, the traceback only with --debug."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rra import cli
from rra.io import save_npy, sha256_file, write_json

ROOT = Path(__file__).resolve().parent.parent


def run_main(capsys, *argv: str) -> tuple[int, list[str]]:
    status = cli.main(list(argv))
    return status, capsys.readouterr().err.splitlines()


def test_user_error_is_one_line_and_status_2(capsys, tmp_path):
    status, err = run_main(capsys, "probe", "--split-dir", str(tmp_path / "nowhere"),
                           "--n-per-class", "5", "--seed", "0", "--out", str(tmp_path / "p.npy"))
    assert (status, len(err)) == (2, 1)
    assert err[0].startswith("rra probe: error: ") and str(tmp_path / "nowhere") in err[0]


@pytest.mark.parametrize("out, line", [
    ("{tmp}/file/reports", "rra report: error: File exists: {tmp}/file (cannot write or read "
                           "there: check the paths given to this stage, e.g. --out, and their "
                           "permissions)"),
    ("/sys/rra-out/reports", "rra report: error: Operation not permitted: /sys/rra-out (cannot "
                             "write or read there"),
])
def test_unwritable_out_is_one_line(capsys, tmp_path, out, line):
    """An --out that cannot be written (below a regular file, on a file system that takes no new
    folders; a read-only folder for a non-root user): one line, status 2."""
    (tmp_path / "results").mkdir()
    (tmp_path / "file").write_text("x")
    inputs = write_json(tmp_path / "results" / "inputs.json",
                        {"results_dir": str(tmp_path / "results")})  # nothing to draw
    status, err = run_main(capsys, "report", "--inputs", str(inputs),
                           "--out", out.format(tmp=tmp_path))
    assert status == 2 and len(err) == 1
    assert err[0].startswith(line.format(tmp=tmp_path))


def test_internal_error_is_one_line_status_1_and_debug_shows_the_traceback(capsys, tmp_path,
                                                                           monkeypatch):
    def broken(args):
        raise KeyError("boom")

    monkeypatch.setattr(cli, "cmd_report", broken)
    argv = ["report", "--inputs", str(tmp_path / "inputs.json"), "--out", str(tmp_path / "r")]
    monkeypatch.delenv("RRA_DEBUG", raising=False)
    status, err = run_main(capsys, *argv)
    assert status == 1
    assert err == ["rra report: internal error: KeyError: 'boom' (rerun with --debug or "
                   "RRA_DEBUG=1 for the traceback, and report it)"]
    for extra, env in ((["--debug"], None), ([], "1")):
        if env:
            monkeypatch.setenv("RRA_DEBUG", env)
        status, err = run_main(capsys, *argv[:1], *extra, *argv[1:])
        assert status == 1 and err[0] == "Traceback (most recent call last):"
        assert err[-1].startswith("rra report: internal error: KeyError")
    status, err = run_main(capsys, "--debug", *argv)  # also before the stage
    assert status == 1 and err[0] == "Traceback (most recent call last):"


def test_config_error_and_multiline_messages_become_one_line(capsys, monkeypatch, tmp_path):
    from rra.config import ConfigError

    def bad(args):
        raise ConfigError("config key 'knn.k': first line\nsecond line")

    monkeypatch.setattr(cli, "cmd_report", bad)
    status, err = run_main(capsys, "report", "--inputs", str(tmp_path / "inputs.json"), "--out",
                           str(tmp_path))
    assert (status, err) == (2, ["rra report: error: config key 'knn.k': first line second line"])


def write_split(root: Path, split: str, n: int, rng: np.random.Generator) -> None:
    labels = np.arange(n, dtype=np.int64) % 10
    images = rng.integers(0, 256, (n, 28, 28, 1)).astype(np.uint8)
    d = root / split
    save_npy(d / "images.npy", images)
    save_npy(d / "labels.npy", labels)
    write_json(d / "manifest.json", {
        "dataset": "mnist5k", "split": split, "n": n, "image_shape": [28, 28, 1],
        "images_sha256": sha256_file(d / "images.npy"),
        "labels_sha256": sha256_file(d / "labels.npy")})


def test_diverging_lr_is_a_clear_error_naming_run_epoch_and_lr(capsys, tmp_path):
    """A loss that becomes nan/inf stops training at the end of that epoch, before its
    checkpoint, with the run, the epoch and lr named; through the CLI one line, status 2."""
    import torch

    from rra.train import train
    from rra.train.loop import TrainingDiverged

    rng = np.random.default_rng(0)
    write_split(tmp_path / "data", "train", 40, rng)
    write_split(tmp_path / "data", "test", 20, rng)
    spec = {"dataset": "mnist5k", "model": "lenet5", "augmentation": "none", "seed": 0,
            "epochs": 2, "batch_size": 10, "lr": 1e30}
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(TrainingDiverged, match=r"run run-a: training diverged, the loss "
                                                   r"became nan in epoch 1 of 2 at lr = 1e\+30 .*"
                                                   r"lower the learning rate \(config key "
                                                   r"training.lr"):
            train(spec, tmp_path / "data", tmp_path / "run-a", device="cpu", progress=False)
        assert not list((tmp_path / "run-a").glob("checkpoints/*.pt"))
        assert not (tmp_path / "run-a" / "model.pt").exists()
        status, err = run_main(capsys, "train", "--spec", json.dumps(spec), "--data",
                               str(tmp_path / "data"), "--out", str(tmp_path / "run-b"),
                               "--device", "cpu", "--threads", "1")
    finally:
        torch.set_num_threads(saved)
    assert status == 2
    assert len(err) == 1 and err[0].startswith("rra train: error: run run-b: training diverged, "
                                               "the loss became nan in epoch 1 of 2 at lr = 1e+30")
    assert isinstance(TrainingDiverged("x"), FloatingPointError)


def test_prepare_checks_probe_sizes_against_the_files(capsys, tmp_path):
    """Sizes only the files know ('all' of a split) are checked once prepare has read them,
    before the stage's completion marker is written."""
    reqs = [{"probe": "test-all-s0", "probe_key": "probe", "split": "test",
             "n_per_class": "all", "seed": 0, "k": 50, "k_key": "knn.k"}]
    argv = ["prepare", "--dataset", "mnist5k", "--options", '{"test_per_class": 5}',
            "--out", str(tmp_path / "data"), "--probe-check"]
    status, err = run_main(capsys, *argv, json.dumps(reqs))
    assert status == 2
    assert err == ["rra prepare: error: config key 'knn.k': k = 50 must be smaller than the probe "
                   "size n = 50 of probe test-all-s0 ('probe': every row of split 'test', counted "
                   "in the files of test); lower k or enlarge the probe"]
    assert not (tmp_path / "data" / "manifest.json").exists()
    reqs[0]["k"] = 49
    status, err = run_main(capsys, *argv, json.dumps(reqs))
    assert status == 0 and (tmp_path / "data" / "manifest.json").is_file()


def test_snakemake_config_error_is_short(tmp_path):
    """An unknown top-level key used to print 564 lines (the schema and the config)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(ROOT / "Snakefile"),
                           "-d", str(tmp_path), "--config", "bogus=1"],
                          capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    lines = [line for line in out.splitlines() if line.startswith("rra: config error: ")]
    assert len(lines) == 1 and lines[0].startswith(
        "rra: config error: config key 'bogus': unknown key; allowed at the top level: attention,")
    assert len(out.splitlines()) <= 3 and "Traceback" not in out and "File " not in out


@pytest.mark.parametrize("threads", [1, 2])
def test_a_job_uses_exactly_its_threads(tmp_path, threads):
    """`--threads n` sizes every pool the stage loads (torch, OpenMP, BLAS, numba) to n, even
    when the environment asks for more: a kNN job on a tiny embedding, in a fresh process."""
    emb = tmp_path / "embed"
    emb.mkdir()
    x = np.random.default_rng(0).standard_normal((60, 4)).astype(np.float32)
    save_npy(emb / "h@full.npy", x)
    save_npy(emb / "labels.npy", np.arange(60) % 3)
    write_json(emb / "manifest.json", {"hooks": ["h"], "scales": ["full"], "entries": [
        {"hook": "h", "scale": "full", "file": "h@full.npy", "shape": [60, 4]}]})
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.update(OMP_NUM_THREADS="7", NUMBA_NUM_THREADS="7")  # a parent's wish the job overrides
    proc = subprocess.run(
        [sys.executable, "-m", "rra", "knn", "--embed-dir", str(emb), "--out",
         str(tmp_path / "knn"), "--distance", "euclidean", "--backend", "exact",
         "--params", json.dumps({"k": 5}), "--threads", str(threads)],
        capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("rra knn: threads: "))
    pools = dict(part.rsplit(" ", 1) for part in line.split("threads: ", 1)[1].split(", "))
    assert {"torch", "numba", "openmp"} <= set(pools), line  # the pools a kNN job loads
    assert all(int(v) == threads for v in pools.values()), line


def test_building_the_parser_loads_no_thread_pool():
    """Every stage's pools are sized by --threads before numpy, torch or numba load; building
    the parser (every subcommand, the layers stage's included) must not load them."""
    code = ("import sys; from rra.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('numpy', 'torch', 'numba') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_in_process_threads_leave_a_loaded_numba_working(tmp_path):
    """An in-process call (the API, tests) after numba's pool started must not change
    NUMBA_NUM_THREADS: numba's next compilation would fail with "Cannot set NUMBA_NUM_THREADS
    to a different value once the threads have been launched" (CI's clean clone, no kernel
    cache, failed 70 tests so). The pool is narrowed with numba.set_num_threads instead."""
    code = ("import os, numba, numpy as np\n"
            "@numba.njit(parallel=True)\n"
            "def f(x):\n"
            "    s = 0.0\n"
            "    for i in numba.prange(x.size):\n"
            "        s += x[i]\n"
            "    return s\n"
            "f(np.ones(8))\n"  # the pool starts at NUMBA_NUM_THREADS = 2
            "from rra.cli import use_threads\n"
            "use_threads(1)\n"
            "@numba.njit\n"
            "def g(x):\n"
            "    return x + 1\n"
            "print(g(1), numba.get_num_threads(), os.environ['NUMBA_NUM_THREADS'], "
            "os.environ['OMP_NUM_THREADS'])\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env.update(NUMBA_NUM_THREADS="2", NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["2", "1", "2", "1"]
