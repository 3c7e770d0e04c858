"""Benchmark of the training stage: seconds per epoch and peak memory per model.

Prepares the default dataset (``mnist5k``: 4,000 train / 1,000 test images) once in a temporary
directory, then trains each model in its own subprocess (so peak RSS is the model's own) with
``rra.train.train`` and prints one table row per model:

    python benchmarks/bench_train.py                       # LeNet-5 and ResNet-20, 2 epochs
    python benchmarks/bench_train.py --epochs 3 --threads 2 --device cuda

``s/epoch`` is the mean over epochs of the logged per-epoch time (training + evaluation pass);
``first`` is epoch 1 alone (includes warm-up). ``peak RSS`` is the child's ``ru_maxrss``
(data, model, optimizer and the torch runtime).
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

SPEC = {"dataset": "mnist5k", "seed": 0, "batch_size": 128, "lr": 0.05, "momentum": 0.9,
        "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine",
        "augmentation": "standard", "eval_batch_size": 500}


def child(args: argparse.Namespace) -> None:
    """Train one model and print its measurements as one JSON line."""
    import torch

    from rra.io import read_json
    from rra.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = {**SPEC, "model": args.child, "epochs": args.epochs, "batch_size": args.batch_size}
    out = Path(args.work) / "runs" / args.child
    t0 = time.perf_counter()
    metrics = train(spec, Path(args.work) / "mnist5k", out, device=args.device, progress=False)
    wall = time.perf_counter() - t0
    epochs = read_json(out / "train_log.json")["epochs"]
    seconds = [r["seconds"] for r in epochs]
    print(json.dumps({
        "model": args.child, "params": metrics["params"], "device": metrics["device"],
        "threads": torch.get_num_threads(), "epochs": len(seconds),
        "s_per_epoch": sum(seconds) / len(seconds), "first_epoch_s": seconds[0], "wall_s": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "eval_acc": metrics["eval_acc"], "n_train": metrics["n_train"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--models", default="lenet5,resnet20", help="comma-separated registry names")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    from rra.data import prepare_dataset

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as work:
        t0 = time.perf_counter()
        prepare_dataset("mnist5k", Path(work) / "mnist5k")
        print(f"prepared mnist5k in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for model in args.models.split(","):
            cmd = [sys.executable, __file__, "--child", model, "--work", work,
                   "--epochs", str(args.epochs), "--device", args.device,
                   "--threads", str(args.threads), "--batch-size", str(args.batch_size)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{model}: benchmark child failed\n{done.stderr}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    head = ("model", "params", "device", "threads", "n_train", "epochs", "s/epoch", "first",
            "peak RSS MiB", "eval acc")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['device']} | {r['threads']} | "
              f"{r['n_train']} | {r['epochs']} | {r['s_per_epoch']:.2f} | "
              f"{r['first_epoch_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['eval_acc']:.3f} |")


if __name__ == "__main__":
    main()
