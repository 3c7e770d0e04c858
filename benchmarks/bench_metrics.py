"""Benchmark of the core RRA metrics: seconds and peak RSS per case, each case in a subprocess.

Cases (targets from the metrics issue):
  a  all-pairs NNTS + mutual kNN for 10 hooks at n = 5k, d = 512, k = 10, INCLUDING building the
     exact kNN graphs from embeddings stored as .npy (target ≤ 5 s, ≤ 300 MB above baseline)
  b  all-pairs NNTS for 20 hooks at n = 10k, k = 15 from stored random graphs (.npy)
  c  NNTP for 12 hooks at n = 60k, k = 15 from stored random graphs (target ≤ 60 s, ≤ 4 GB)

Usage: python benchmarks/bench_metrics.py [--quick] [--cases a b c]
Inputs are generated (seeded) in a temporary folder before the clock starts; the time and the
peak RSS cover loading them and computing. "peak above baseline" is the peak RSS of the case's
process minus its RSS after imports and input generation.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = {"a": dict(hooks=10, n=5000, d=512, k=10),
        "b": dict(hooks=20, n=10000, k=15),
        "c": dict(hooks=12, n=60000, k=15)}
QUICK = {"a": dict(hooks=5, n=2000, d=512, k=10),
         "b": dict(hooks=10, n=5000, k=15),
         "c": dict(hooks=12, n=20000, k=15)}
TARGETS = {"a": "≤ 5 s, ≤ 300 MB", "b": "-", "c": "≤ 60 s, ≤ 4096 MB"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def random_graph(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """k distinct other rows per row, uniformly spread: i + cumulative positive gaps (mod n)."""
    gap = (n - 1) // k
    offsets = np.cumsum(rng.integers(1, gap + 1, size=(n, k)), axis=1)  # distinct, in [1, n-1]
    idx = (np.arange(n)[:, None] + offsets) % n
    return rng.permuted(idx, axis=1).astype(np.int32)


def knn_function():
    """rra.knn's exact kNN if available, else a local torch blocked top-k (self excluded)."""
    try:
        from rra.knn import knn_exact
        return knn_exact, "rra.knn.knn_exact"
    except ImportError:
        pass
    try:
        from rra.knn.exact import knn_exact
        return knn_exact, "rra.knn.exact.knn_exact"
    except ImportError:
        pass

    def local_knn(x: np.ndarray, k: int, block_rows: int = 1024, **_):
        import torch
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        sq = (t * t).sum(1)
        out = np.empty((t.shape[0], k), dtype=np.int32)
        for s in range(0, t.shape[0], block_rows):
            d = sq[None, :] - 2.0 * t[s:s + block_rows] @ t.T
            d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = float("inf")
            out[s:s + block_rows] = torch.topk(d, k, dim=1, largest=False).indices.numpy()
        return out, None

    return local_knn, "local torch top-k"


def make_inputs(case: str, p: dict, folder: Path) -> None:
    rng = np.random.default_rng(0)
    if case == "a":  # embeddings: a shared latent seen through a different map per hook, + noise
        latent = rng.standard_normal((p["n"], 32)).astype(np.float32)
        for v in range(p["hooks"]):
            proj = rng.standard_normal((32, p["d"])).astype(np.float32)
            x = latent @ proj + (0.5 + 0.2 * v) * rng.standard_normal((p["n"], p["d"]),
                                                                        dtype=np.float32)
            np.save(folder / f"hook{v}.npy", x)
    else:
        for v in range(p["hooks"]):
            np.save(folder / f"hook{v}.idx.npy", random_graph(rng, p["n"], p["k"]))


def run_case(case: str, p: dict, folder: Path) -> dict:
    from rra.knn.sets import overlap_counts
    from rra.metrics.nnts import nnts_matrix, prepare_graphs
    from rra.metrics.nntp import nntp

    knn, knn_name = knn_function()
    if case == "a":
        import torch  # noqa: F401  (imported before the baseline: its RSS is not the metric's)
    make_inputs(case, p, folder)
    base = current_rss_mb()
    start = time.perf_counter()
    info = {}
    if case == "a":
        graphs = []
        for v in range(p["hooks"]):
            x = np.load(folder / f"hook{v}.npy", mmap_mode="r")
            kw = {"progress": False, "block_rows": 1024} if "rra.knn" in knn_name else {}
            graphs.append(knn(x, p["k"], **kw)[0])
        t_knn = time.perf_counter() - start
        M = nnts_matrix(graphs)
        prepared = prepare_graphs(graphs)
        mutual = np.eye(len(graphs))
        for a in range(len(graphs)):
            for b in range(a + 1, len(graphs)):
                mutual[a, b] = mutual[b, a] = overlap_counts(prepared[a], prepared[b]).mean() / p["k"]
        info = {"knn": knn_name, "knn_s": round(t_knn, 2),
                "metrics_s": round(time.perf_counter() - start - t_knn, 3),
                "nnts_01": round(float(M[0, 1]), 4), "mutual_01": round(float(mutual[0, 1]), 4)}
    elif case == "b":
        graphs = [np.load(folder / f"hook{v}.idx.npy") for v in range(p["hooks"])]
        M = nnts_matrix(graphs)
        info = {"nnts_mean_offdiag": round(float(M[~np.eye(len(M), dtype=bool)].mean()), 5)}
    else:
        graphs = [np.load(folder / f"hook{v}.idx.npy") for v in range(p["hooks"])]
        res = nntp(graphs, alpha=0)
        info = {"edges_total": int(res.edge_totals.sum()), "runs": int(res.table.sum())}
    seconds = time.perf_counter() - start
    return {"case": case, "params": p, "seconds": seconds, "baseline_mb": base,
            "peak_mb": peak_rss_mb(), "above_mb": peak_rss_mb() - base, "info": info}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few seconds per case)")
    ap.add_argument("--cases", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    ap.add_argument("--child", choices=["a", "b", "c"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL

    if args.child:
        with tempfile.TemporaryDirectory(prefix="rra-bench-") as tmp:
            print(json.dumps(run_case(args.child, sizes[args.child], Path(tmp))))
        return

    rows = []
    for case in args.cases:
        cmd = [sys.executable, __file__, "--child", case] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            sys.exit(f"case {case} failed:\n{out.stderr}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(f"{'case':4} {'params':44} {'seconds':>8} {'peak MB':>8} {'+MB':>7}  {'target':18} info")
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"{r['case']:4} {params:44} {r['seconds']:8.2f} {r['peak_mb']:8.0f} "
              f"{r['above_mb']:7.0f}  {TARGETS[r['case']]:18} {json.dumps(r['info'])}")


if __name__ == "__main__":
    main()
