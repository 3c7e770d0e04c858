"""How long each layer analysis (E7–E9) takes on the default study: every ``layers`` job's
seconds, CPU seconds and peak RSS from its Snakemake benchmark file, per analysis and in total,
with the trainings the layer experiments add (E8's ResNet-20 without BatchNorm).

Usage: python benchmarks/bench_layers.py [--results results] [--run] [--quick]
Without ``--run`` it reads the benchmark files of an existing study (after ``make study``).
``--run`` first runs ``snakemake --cores 2 E7 E8 E9`` (the default config, or with ``--quick``
the tiny overlay config/test.yaml) into a temporary results folder, from nothing: the data,
the trainings the experiments need and the layer jobs; the wall clock of that command is
printed too. Seconds are wall time; on cores shared with other work compare the CPU seconds
(a job has 2 threads, so its uncontended wall time is at least CPU seconds / 2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e1 import benchmark_records, device_name  # noqa: E402

ANALYSES = ("translation", "patterns", "margins", "saliency", "fragmentation")
#: runs only the layer experiments add to the study (E8's ResNets without BatchNorm; the others
#: are trained for the other experiments anyway)
ADDED_RUN = "nobn-"


def layer_rows(results: Path) -> list[tuple[str, str, dict[str, float]]]:
    """(analysis or "train", run folder, benchmark record) of every layers job and of every
    training the layer experiments add."""
    rows = []
    for tsv, rec in benchmark_records(results):
        run = tsv.parent.parent.name
        if tsv.stem.startswith("layers-"):
            rows.append((tsv.stem.rsplit("-", 1)[1], run, rec))
        elif tsv.stem == "train" and ADDED_RUN in run:
            rows.append(("train (added)", run, rec))
    order = {a: i for i, a in enumerate(("train (added)", *ANALYSES))}
    return sorted(rows, key=lambda r: (order.get(r[0], 99), r[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--run", action="store_true", help="run E7–E9 from nothing first")
    parser.add_argument("--quick", action="store_true", help="with --run: config/test.yaml")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    results = Path(args.results)
    out = None
    wall = None
    if args.run or args.quick:
        out = Path(tempfile.mkdtemp(prefix="rra-bench-layers-"))
        results = out / "results"
        cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "E7", "E8", "E9",
               "--config", f"results_dir={results}", f"reports_dir={out / 'reports'}"]
        if args.quick:
            cmd += ["--configfile", str(ROOT / "config" / "config.yaml"),
                    str(ROOT / "config" / "test.yaml")]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, DVC_NO_ANALYTICS="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            print(proc.stdout[-6000:])
            print(f"bench_layers: snakemake failed (exit {proc.returncode}); kept {out}")
            return proc.returncode
    rows = layer_rows(results)
    if not rows:
        print(f"bench_layers: no layers benchmark files under {results} (run the study, or "
              "pass --run)")
        return 1
    print(f"layer analyses (E7–E9) on {device_name()}, {time.strftime('%Y-%m-%d')}, "
          f"from {results}")
    print(f"{'job':<16} {'run':<34} {'seconds':>8} {'CPU s':>8} {'peak RSS MB':>12}")
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for analysis, run, rec in rows:
        print(f"{analysis:<16} {run:<34} {rec['s']:>8.1f} {rec['cpu_time']:>8.1f} "
              f"{rec['max_rss']:>12.0f}")
        t = totals[analysis]
        t[0] += rec["s"]
        t[1] += rec["cpu_time"]
        t[2] += 1
    print()
    print(f"{'per analysis':<16} {'jobs':>34} {'seconds':>8} {'CPU s':>8}")
    for analysis, (sec, cpu, n) in totals.items():
        print(f"{analysis:<16} {n:>34d} {sec:>8.1f} {cpu:>8.1f}")
    print(f"{'all':<16} {sum(t[2] for t in totals.values()):>34d} "
          f"{sum(t[0] for t in totals.values()):>8.1f} {sum(t[1] for t in totals.values()):>8.1f}")
    if wall is not None:
        print(f"wall clock of `snakemake E7 E8 E9` from nothing (data, every training they "
              f"need, the layer jobs): {wall:.1f} s")
    if out is not None:
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
