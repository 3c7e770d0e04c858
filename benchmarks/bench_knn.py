"""Benchmark of the kNN backends (rra.knn): exact vs a bare matrix product, and Annoy.

For each (n, d) and k, on seeded clustered non-negative data (20 Gaussian blobs through a ReLU,
like pooled CNN features), every measurement runs in its own subprocess (so peak RSS is per
case, from ``resource.getrusage(RUSAGE_SELF)`` in the child):

- ``product``: x @ x.T in blocks (torch.mm into a buffer allocated and touched before the
  timing), the faster of the exact backend's block size and the largest block within its
  memory budget: the limit;
- ``exact``: ``rra.knn.knn(x, k, backend="exact")`` on the memory-mapped .npy, everything
  included (checks, centring, candidates, float64 distances, re-checks); target ≤ 1.5 × product;
- ``annoy -1`` / ``annoy auto``: ``knn_annoy`` with search_k = -1 (Annoy's default
  n_trees · (k + 1)) and ``"auto"``: build + tuning + query seconds and recall@k on the sample.

Cases whose estimated time or memory exceeds the budget are skipped and marked in the table;
a subprocess that exceeds the time budget is stopped and marked. Not run by the tests.

``--auto-rows`` (on in the full run, off with ``--quick``): a second table for n = 60,000,
d = 64, 784, 4704 and k = 100 with what ``backend: auto`` picks (``rra.knn.choose_backend``),
both predicted times and the measured ones: exact, and Annoy with ``search_k: auto`` (build +
tuning + query; stopped at ``--budget-seconds`` and shown as ``> limit``), so the table shows
whether auto picked the faster backend.

    python benchmarks/bench_knn.py --quick
    python benchmarks/bench_knn.py --n 5000 20000 60000 --d 64 512 4096 --budget-seconds 600
    python benchmarks/bench_knn.py --auto-rows --n --budget-seconds 900   # only the auto table
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_data(path: Path, n: int, d: int, seed: int = 0) -> None:
    """Clustered non-negative float32 data, written in row chunks (no n × d float64 copy)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)) * 2
    labels = rng.integers(0, 20, n)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    step = max(1, (64 << 20) // (8 * d))
    for s in range(0, n, step):
        lab = labels[s:s + step]
        out[s:s + step] = np.maximum(centres[lab] + rng.normal(size=(lab.size, d)), 0)
    out.flush()
    del out


def rss_mb() -> float:
    """Current resident set size of this process (MB)."""
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def child(args: argparse.Namespace) -> None:
    """Run one measurement and print one JSON line (after a small warm-up of the libraries)."""
    import torch

    from rra.knn import knn, knn_annoy
    from rra.knn.exact import default_block_rows

    x = np.load(args.file, mmap_mode="r")
    n, d = x.shape
    warm = np.array(x[:300])
    torch.mm(torch.from_numpy(warm), torch.from_numpy(warm).T)
    if args.case == "exact":
        knn(warm, 5, backend="exact", device=args.device, progress=False)
    rec: dict = {"start_rss_mb": rss_mb(), "seconds": float("inf")}
    for _ in range(args.repeat):  # the fastest of the repeats
        if args.case == "product":  # the faster of the exact backend's blocks and big blocks
            c = torch.from_numpy(np.array(x))
            seconds = float("inf")
            for b in {default_block_rows(n, d), default_block_rows(n)}:
                buf = torch.empty((b, n))
                buf.fill_(0)  # first touch outside the timing
                t0 = time.perf_counter()
                for s in range(0, n, b):
                    torch.mm(c[s:s + b], c.T, out=buf[:min(b, n - s)])
                seconds = min(seconds, time.perf_counter() - t0)
                del buf
            del c
        elif args.case == "exact":
            t0 = time.perf_counter()
            _, _, info = knn(x, args.k, backend="exact", device=args.device, progress=False)
            seconds = time.perf_counter() - t0
            rec.update(search=info["search"], rows_widened=info["rows_widened"],
                       rows_rechecked=info["rows_rechecked"])
        else:
            search_k = "auto" if args.case == "annoy-auto" else -1
            t0 = time.perf_counter()
            _, _, info = knn_annoy(x, args.k, "euclidean", n_trees=args.n_trees,
                                   search_k=search_k, progress=False)
            seconds = time.perf_counter() - t0
            rec.update(recall=info["recall"], search_k=info["search_k"],
                       build_seconds=info["build_seconds"], query_seconds=info["query_seconds"],
                       tuning_seconds=info["tuning_seconds"])
        rec["seconds"] = min(rec["seconds"], seconds)
    rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rec["threads"] = torch.get_num_threads()
    print(json.dumps(rec))


def run_case(case: str, file: Path, args: argparse.Namespace, k: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--file", str(file),
           "--k", str(args.k if k is None else k), "--n-trees", str(args.n_trees),
           "--device", args.device, "--repeat", str(args.repeat)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.budget_seconds)
    except subprocess.TimeoutExpired:
        return {"skip": f"> {args.budget_seconds:.0f} s"}
    if res.returncode != 0:
        return {"skip": f"failed: {res.stderr.strip().splitlines()[-1][:60]}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def product_gflops() -> float:
    """Measured float32 matrix-product speed of this machine (for the time estimates)."""
    import torch

    a = torch.randn(2000, 512)
    torch.mm(a, a.T)
    t0 = time.perf_counter()
    for _ in range(3):
        torch.mm(a, a.T)
    return 3 * 2 * 2000 * 2000 * 512 / (time.perf_counter() - t0) / 1e9


def fmt(v, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def auto_rows(args: argparse.Namespace, tmp: str) -> None:
    """The ``--auto-rows`` table: auto's choice and predicted times against measured ones."""
    from rra.knn import choose_backend

    n, k = args.auto_n, args.auto_k
    print(f"\n# backend: auto at n = {n}, k = {k} (n_trees = {args.n_trees}, search_k auto, "
          f"recall target 0.95); Annoy stopped at {args.budget_seconds:.0f} s; one run each")
    print("| n | d | k | auto picks | predicted exact s | predicted Annoy s (build + tuning + "
          "query) | exact s | Annoy s (build + tuning + query) | Annoy recall | search_k "
          "| measured faster | auto right | reason |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in args.auto_d:
        dec = choose_backend(n, d, k, "auto", n_trees=args.n_trees)
        pred = dec["predicted_s"]
        file = Path(tmp) / f"auto_{n}_{d}.npy"
        make_data(file, n, d)
        ex = run_case("exact", file, args, k=k)
        an = run_case("annoy-auto", file, args, k=k)
        file.unlink()
        ex_s, an_s = ex.get("seconds"), an.get("seconds")
        # a stopped run counts as slower than the other when that one finished
        if ex_s is not None and (an_s is None or ex_s <= an_s):
            faster = "exact"
        elif an_s is not None:
            faster = "annoy"
        else:
            faster = "—"
        right = "—" if faster == "—" else ("yes" if faster == dec["backend"] else "NO")
        annoy_parts = (f"{an_s:.1f} ({an['build_seconds']:.1f} + {an['tuning_seconds']:.1f} + "
                       f"{an['query_seconds']:.1f})" if an_s is not None else an.get("skip"))
        print("| " + " | ".join([
            str(n), str(d), str(k), dec["backend"], f"{pred['exact']:.3g}",
            f"{pred['annoy']:.3g} ({pred['annoy_build']:.3g} + {pred['annoy_tuning']:.3g} + "
            f"{pred['annoy_query']:.3g})",
            ex.get("skip") or f"{ex_s:.2f}", annoy_parts, fmt(an.get("recall"), ".3f"),
            fmt(an.get("search_k"), "d"), faster, right, dec["reason"]]) + " |", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="n ∈ {5k, 20k}, d ∈ {64, 512}")
    p.add_argument("--n", type=int, nargs="*", default=[5000, 20000, 60000],
                   help="rows of the main table (none: only the --auto-rows table)")
    p.add_argument("--d", type=int, nargs="+", default=[64, 512, 4096])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--n-trees", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--budget-seconds", type=float, default=600.0,
                   help="per measurement; longer estimates are skipped, longer runs stopped")
    p.add_argument("--mem-gb", type=float, default=None,
                   help="memory budget (default: half of the machine's memory)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed runs per measurement, the fastest counts (default 3 with --quick, "
                        "else 1)")
    p.add_argument("--no-annoy", action="store_true")
    p.add_argument("--auto-rows", action=argparse.BooleanOptionalAction, default=None,
                   help="the backend: auto table at n = 60,000 (default: on, off with --quick)")
    p.add_argument("--auto-d", type=int, nargs="+", default=[64, 784, 4704],
                   help=argparse.SUPPRESS)
    p.add_argument("--auto-n", type=int, default=60000, help=argparse.SUPPRESS)
    p.add_argument("--auto-k", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:
        return child(args)
    if args.quick:
        args.n, args.d = [5000, 20000], [64, 512]
    if args.repeat is None:
        args.repeat = 3 if args.quick else 1
    if args.auto_rows is None:
        args.auto_rows = not args.quick
    mem_gb = args.mem_gb or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 31
    gflops = product_gflops()
    import torch

    print(f"# kNN benchmark: k={args.k}, n_trees={args.n_trees}, device={args.device}, "
          f"torch threads={torch.get_num_threads()}, cpus={os.cpu_count()}, "
          f"product speed ≈ {gflops:.0f} GFLOP/s, budget {args.budget_seconds:.0f} s and "
          f"{mem_gb:.1f} GB per measurement, fastest of {args.repeat} run(s)")
    if args.n:
        print("| n | d | product s | exact s | exact/product | exact search | exact peak RSS MB "
              "(at start) | rows widened / re-checked "
              "| annoy -1 s | recall | annoy auto s | recall | search_k |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_knn.") as tmp:
        for n in args.n:
            for d in args.d:
                est_s = 2.0 * n * n * d / (gflops * 1e9)
                est_gb = (2 * n * d * 4 + (256 << 20)) / 2 ** 30
                row = [str(n), str(d)]
                if est_gb > mem_gb or 1.5 * est_s * args.repeat > args.budget_seconds:
                    why = (f"skipped: est. {est_gb:.1f} GB" if est_gb > mem_gb
                           else f"skipped: est. {1.5 * est_s * args.repeat:.0f} s")
                    print("| " + " | ".join(row + [why] + [""] * 10) + " |", flush=True)
                    continue
                file = Path(tmp) / f"x_{n}_{d}.npy"
                make_data(file, n, d)
                prod = run_case("product", file, args)
                ex = run_case("exact", file, args)
                ratio = (ex["seconds"] / prod["seconds"]
                         if "seconds" in ex and "seconds" in prod else None)
                rss = f"{fmt(ex.get('peak_rss_mb'), '.0f')} ({fmt(ex.get('start_rss_mb'), '.0f')})"
                widened = fmt(ex.get("rows_widened"), "d")
                row += [prod.get("skip") or fmt(prod["seconds"]),
                        ex.get("skip") or fmt(ex["seconds"]), fmt(ratio), ex.get("search", "—"),
                        rss, f"{widened} / {fmt(ex.get('rows_rechecked'), 'd')}"]
                for case in ("annoy-fixed", "annoy-auto"):
                    if args.no_annoy:
                        row += ["not run", ""] + ([""] if case == "annoy-auto" else [])
                        continue
                    an = run_case(case, file, args)
                    row += [an.get("skip") or fmt(an["seconds"]), fmt(an.get("recall"), ".3f")]
                    if case == "annoy-auto":
                        row.append(fmt(an.get("search_k"), "d"))
                print("| " + " | ".join(row) + " |", flush=True)
                file.unlink()
        if args.auto_rows:
            auto_rows(args, tmp)


if __name__ == "__main__":
    main()
