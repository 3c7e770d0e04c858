"""Cost of the uncertainty columns (lo, hi, null, p; docs/methods.md §4, "Uncertainty and chance
levels"): the metrics stage of one synthetic run with them (metrics.bootstrap B = 200,
permutations = 20) and without (B = 0), per table, from the stage's own manifest (seconds per
table), and the share of the stage they take.

The run: n probe rows in 10 classes, 12 hooks in a chain (each hook a noisy nonlinear map of the
previous one, so neighbouring hooks share neighbours as in a trained network), d = 32, exact kNN
graphs stored at the largest k. Tables: nnts, nntp (α = 0), class_response by default (E1's
kind of analysis; ``--tables`` adds others, e.g. classrepsim needs two scales: ``--scales``).

Usage: python benchmarks/bench_uncertainty.py [--n 10000] [--k 15 100] [--hooks 12]
       [--tables nnts nntp class_response] [--B 200] [--permutations 20]
Graph building is not timed. Runs single-threaded (RRA's metrics job has 1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_run(folder: Path, n: int, hooks: int, k: int, scales: list[str]) -> tuple[Path, Path]:
    from rra.io import save_npy
    from rra.knn import build_graphs

    rng = np.random.default_rng(0)
    labels = np.arange(n) % 10
    x = rng.normal(size=(n, 32)) + 2.0 * np.eye(32)[labels]
    emb = folder / "embed"
    emb.mkdir()
    entries = []
    for h in range(hooks):
        x = np.tanh(x @ rng.normal(size=(32, 32)) / 4) + 0.3 * rng.normal(size=x.shape)
        for scale in scales:
            y = x if scale == "full" else x[:, : 32 // int(scale)]
            name = f"h{h}@{scale}.npy"
            save_npy(emb / name, np.asarray(y, dtype=np.float32))
            entries.append({"hook": f"h{h}", "scale": scale, "file": name, "shape": list(y.shape)})
    save_npy(emb / "labels.npy", labels)
    (emb / "manifest.json").write_text(json.dumps(
        {"hooks": [f"h{h}" for h in range(hooks)], "scales": scales, "entries": entries, "n": n}))
    build_graphs(emb, folder / "knn", k=k, distance="euclidean", backend="exact", progress=False)
    return emb, folder / "knn"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--k", type=int, nargs="+", default=[15, 100])
    ap.add_argument("--hooks", type=int, default=12)
    ap.add_argument("--tables", nargs="+", default=["nnts", "nntp", "class_response"])
    ap.add_argument("--scales", nargs="+", default=["full"])
    ap.add_argument("--B", type=int, default=200)
    ap.add_argument("--permutations", type=int, default=20)
    args = ap.parse_args()

    from rra.metrics.tables import run_tables

    run = {"dataset": "bench", "model": "m", "attention": "none", "augmentation": "none",
           "seed": 0, "probe": "p"}
    with tempfile.TemporaryDirectory(prefix="rra-bench-unc-") as tmp:
        emb, knn = make_run(Path(tmp), args.n, args.hooks, max(args.k), args.scales)
        seconds = {}
        for label, B in (("off", 0), ("on", args.B)):
            m = run_tables(emb, knn, Path(tmp) / label, ks=args.k, alphas=[0], run=run,
                           tables=args.tables,
                           bootstrap={"B": B, "permutations": args.permutations})
            seconds[label] = {t: m["tables"][t]["seconds"] for t in args.tables}
    print(f"n = {args.n}, {args.hooks} hooks, k = {args.k}, scales {args.scales}, "
          f"B = {args.B}, permutations = {args.permutations}, 1 thread")
    print(f"{'table':16} {'B = 0 s':>9} {'with s':>9} {'added s':>9} {'share':>7}")
    for t in args.tables:
        off, on = seconds["off"][t], seconds["on"][t]
        print(f"{t:16} {off:9.2f} {on:9.2f} {on - off:9.2f} {(on - off) / on:7.0%}")
    off, on = sum(seconds["off"].values()), sum(seconds["on"].values())
    print(f"{'metrics stage':16} {off:9.2f} {on:9.2f} {on - off:9.2f} {(on - off) / on:7.0%}")


if __name__ == "__main__":
    main()
