"""Benchmark of the published E1 (config/published-mnist.yaml): the README's command, timed.

Runs, from nothing (an empty results folder), exactly

    snakemake --cores 2 --configfile config/published-mnist.yaml --config data_dir=DATA ...

(train LeNet-5 on the 60,000 MNIST training images, embed all 12 hooks with the input, exact
kNN graphs at k = 100 and the NNTS sweep at k = 6000 and 12000, the NNTS and NNTP tables, the
figures) and prints every job's seconds and peak RSS (Snakemake's ``benchmark:`` files), the
wall-clock total and the peak RSS of the largest job. Targets (issue #10): ≤ 15 minutes, ≤ 6 GB.

Usage: python benchmarks/bench_e1.py [--data-dir ../shared/data] [--out DIR] [--quick] [--keep]
``--quick``: the overlay config/published-mnist-subset.yaml, a 6,000-image stratified subset
(600 per class) of the training images, one epoch, k = 15, 100, 600, 1200 (graphs stored up to
300, the rest from the sweep): the same path at a tenth of the rows, in a few minutes. The device is the config's (``auto``: CUDA
when present); it is printed.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def benchmark_records(results: Path) -> list[tuple[Path, dict[str, float]]]:
    """(file, {column: value}) of every Snakemake benchmark file under ``results``: ``s``
    (wall seconds), ``max_rss`` (MB), ``cpu_time`` (seconds), …; NaN where not measured."""
    out = []
    for tsv in sorted(results.rglob("benchmarks/*.tsv")):
        with tsv.open() as f:
            rec = next(csv.DictReader(f, delimiter="\t"))
        out.append((tsv, {k: float(v) if v not in ("", "NA", "-") else float("nan")
                          for k, v in rec.items() if k != "h:m:s"}))
    return out


def stage_rows(results: Path) -> list[tuple[str, float, float]]:
    """(job, seconds, max RSS MB) from every Snakemake benchmark file under ``results``."""
    rows = [(tsv.stem, rec["s"], rec["max_rss"]) for tsv, rec in benchmark_records(results)]
    order = ["prepare", "probe", "train", "summary", "cost", "embed", "knn", "metrics", "report"]
    return sorted(rows, key=lambda r: next((i for i, o in enumerate(order)
                                            if r[0].startswith(o)), len(order)))


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"),
                        help="folder holding MNIST/raw (default: ../shared/data)")
    parser.add_argument("--out", default=None, help="results/reports folder (default: temporary)")
    parser.add_argument("--quick", action="store_true", help="6,000-image subset, one epoch")
    parser.add_argument("--keep", action="store_true", help="keep the output folder")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    if not (Path(args.data_dir) / "MNIST" / "raw").is_dir():
        print(f"bench_e1: skipped, no MNIST/raw under {args.data_dir} (pass --data-dir)")
        return 0
    out = Path(args.out or tempfile.mkdtemp(prefix="rra-bench-e1-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    configs = [str(ROOT / "config" / "published-mnist.yaml")]
    if args.quick:
        configs.append(str(ROOT / "config" / "published-mnist-subset.yaml"))
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--configfile",
           *configs, "--config", f"data_dir={Path(args.data_dir).resolve()}",
           f"results_dir={out / 'results'}", f"reports_dir={out / 'reports'}"]
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode:
        print(proc.stdout[-6000:])
        print(f"bench_e1: snakemake failed (exit {proc.returncode}); output kept in {out}")
        return proc.returncode
    rows = stage_rows(out / "results")
    print(f"\npublished E1{' (--quick: 6,000 images)' if args.quick else ''} on {device_name()}, "
          f"{args.cores} cores, {time.strftime('%Y-%m-%d')}")
    print(f"{'job':<48} {'seconds':>9} {'peak RSS MB':>12}")
    for name, sec, rss in rows:
        print(f"{name:<48} {sec:>9.1f} {rss:>12.0f}")
    print(f"{'sum of jobs':<48} {sum(r[1] for r in rows):>9.1f}")
    print(f"{'wall clock (snakemake, all jobs)':<48} {wall:>9.1f} {peak:>12.0f}")
    print("targets (full run): ≤ 900 s wall clock, ≤ 6144 MB peak RSS")
    if not args.keep and args.out is None:
        shutil.rmtree(out)
    else:
        print(f"outputs: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
