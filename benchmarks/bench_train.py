"""Training benchmark: seconds per epoch, peak memory, parameters and FLOPs per model and
attention variant.

Prepares ``mnist5k`` (4,000 train / 1,000 test images) once in a temporary directory, then
trains every model of ``--models`` (default LeNet-5 and ResNet-20) with every attention variant
of ``--variants`` it accepts (LeNet-5 has no residual blocks: ``none`` only), each in its own
subprocess (so peak RSS is the run's own) with ``rra.train.train``, and prints one table row
per run:

    python benchmarks/bench_train.py --quick            # 1 epoch on 50 images per class
    python benchmarks/bench_train.py --models resnet20 --epochs 2 --threads 2 --device cuda

Variants: ``none, se, cbam, ac`` with their module defaults (SE/CBAM reduction 16) and ``stac``
with the fixed scales ``--stac-scales`` (default 4,2,1, one per stage). ``s/epoch`` is the mean
of the logged per-epoch times (training + evaluation pass on the 1,000 test images); ``first``
is epoch 1 alone (includes warm-up); ``peak RSS`` the child's ``ru_maxrss``. Parameters and FLOPs
(one 1×28×28 image) come from ``rra.models.cost``; ×none is the ratio to the model's ``none`` row.
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

SPEC = {"dataset": "mnist5k", "seed": 0, "lr": 0.05, "momentum": 0.9, "nesterov": True,
        "weight_decay": 5e-4, "schedule": "cosine", "augmentation": "standard",
        "eval_batch_size": 500}
VARIANTS = ("none", "se", "cbam", "ac", "stac")
QUICK_PER_CLASS = 50


def attention_kwargs(variant: str, stac_scales: list[int]) -> dict:
    return {"scales": stac_scales} if variant == "stac" else {}


def child(args: argparse.Namespace) -> None:
    """Train one variant and print its measurements as one JSON line."""
    import torch

    from rra.io import read_json
    from rra.models import build_model
    from rra.models.cost import count_flops, count_params
    from rra.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = attention_kwargs(args.child, args.stac_scales)
    spec = {**SPEC, "model": args.model, "attention": args.child, "attention_kwargs": kwargs,
            "epochs": args.epochs, "batch_size": args.batch_size,
            "max_train_per_class": args.max_train_per_class}
    model = build_model(args.model, in_channels=1, num_classes=10, image_size=28,
                        attention=args.child, attention_kwargs=kwargs)
    params, flops = count_params(model), count_flops(model, (1, 28, 28))
    del model
    out = Path(args.work) / "runs" / f"{args.model}-{args.child}"
    t0 = time.perf_counter()
    metrics = train(spec, Path(args.work) / "mnist5k", out, device=args.device, progress=False)
    wall = time.perf_counter() - t0
    seconds = [r["seconds"] for r in read_json(out / "train_log.json")["epochs"]]
    print(json.dumps({
        "model": args.model, "variant": args.child, "kwargs": kwargs, "params": params, "flops": flops,
        "device": metrics["device"], "threads": torch.get_num_threads(), "epochs": len(seconds),
        "s_per_epoch": sum(seconds) / len(seconds), "first_epoch_s": seconds[0], "wall_s": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "eval_acc": metrics["eval_acc"], "n_train": metrics["n_train"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,resnet20", help="comma-separated registry names")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated attention names")
    ap.add_argument("--stac-scales", default="4,2,1", help="the fixed STAC scales, one per stage")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help=f"1 epoch on {QUICK_PER_CLASS} training images per class")
    ap.add_argument("--max-train-per-class", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.stac_scales = [int(s) for s in str(args.stac_scales).split(",")]
    if args.quick:
        args.epochs = 1
        args.max_train_per_class = args.max_train_per_class or QUICK_PER_CLASS
    if args.child:
        child(args)
        return

    import inspect

    from rra.data import prepare_dataset
    from rra.models import MODELS

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as work:
        t0 = time.perf_counter()
        prepare_dataset("mnist5k", Path(work) / "mnist5k")
        print(f"prepared mnist5k in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        runs = [(m, v) for m in args.models.split(",") for v in args.variants.split(",")
                if v == "none" or "attention" in inspect.signature(MODELS[m]).parameters]
        for model, variant in runs:
            cmd = [sys.executable, __file__, "--child", variant, "--work", work, "--model", model,
                   "--epochs", str(args.epochs),
                   "--stac-scales", ",".join(map(str, args.stac_scales)),
                   "--device", args.device, "--threads", str(args.threads),
                   "--batch-size", str(args.batch_size)]
            if args.max_train_per_class:
                cmd += ["--max-train-per-class", str(args.max_train_per_class)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{model} {variant}: benchmark child failed\n{done.stderr}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{model} {variant}: {rows[-1]['wall_s']:.1f} s", file=sys.stderr)

    head = ("model", "variant", "params", "×none", "MFLOPs", "×none", "device", "threads", "n_train",
            "epochs", "s/epoch", "first", "×none s/epoch", "peak RSS MiB", "eval acc")
    print(f"mnist5k (28×28), batch {args.batch_size}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        base = next((b for b in rows if b["model"] == r["model"] and b["variant"] == "none"), None)
        ratio = (lambda key: f"{r[key] / base[key]:.3f}") if base else (lambda key: "–")
        name = r["variant"] + (f" {r['kwargs']['scales']}" if r["kwargs"] else "")
        print(f"| {r['model']} | {name} | {r['params']:,} | {ratio('params')} | {r['flops'] / 1e6:.1f} | "
              f"{ratio('flops')} | {r['device']} | {r['threads']} | {r['n_train']} | "
              f"{r['epochs']} | {r['s_per_epoch']:.2f} | {r['first_epoch_s']:.2f} | "
              f"{ratio('s_per_epoch')} | {r['peak_rss_mib']:.0f} | {r['eval_acc']:.3f} |")


if __name__ == "__main__":
    main()
