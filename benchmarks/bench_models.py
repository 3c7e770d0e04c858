"""Cost of each attention variant: parameters, FLOPs (ratios to `none`) and training-step time.

    .venv/bin/python benchmarks/bench_models.py --model resnet20 --image-size 32 --device auto

Prints one line per variant. Timing: mean seconds of a forward + backward pass over a random
batch after warm-up steps (CUDA synchronised), on the device ``rra.device.pick_device`` picks.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rra.device import pick_device
from rra.models import build_model
from rra.models.cost import cost_table


def step_seconds(model: torch.nn.Module, batch: torch.Tensor, repeats: int,
                 warmup: int = 2) -> float:
    """Mean wall time of one forward + backward pass on ``batch``."""
    model.train()
    for i in range(warmup + repeats):
        if i == warmup:
            if batch.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model(batch).logsumexp(dim=1).mean().backward()
    if batch.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--scales", default="[4, 2, 1]", help="JSON list of STAC scales per stage")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    variants = {"none": {}, "se": {}, "cbam": {}, "ac": {},
                "stac": {"attention_kwargs": {"scales": json.loads(args.scales)}}}
    rows = cost_table(args.model, variants, args.in_channels, args.num_classes, args.image_size)
    device = pick_device(args.device)
    torch.manual_seed(0)
    batch = torch.randn(args.batch_size, args.in_channels, args.image_size, args.image_size,
                        device=device)
    print(f"{args.model} {args.in_channels}×{args.image_size}² on {device}, "
          f"batch {args.batch_size}")
    print(f"{'variant':8} {'params':>11} {'×':>6} {'MFLOPs':>9} {'×':>6} {'s/step':>8}")
    for row in rows:
        torch.manual_seed(0)
        model = build_model(args.model, in_channels=args.in_channels,
                            num_classes=args.num_classes, image_size=args.image_size,
                            attention=row["attention"],
                            attention_kwargs=row["attention_kwargs"]).to(device)
        secs = step_seconds(model, batch, args.repeats)
        print(f"{row['variant']:8} {row['params']:>11,} {row['params_ratio']:6.3f} "
              f"{row['flops'] / 1e6:9.2f} {row['flops_ratio']:6.3f} {secs:8.4f}")


if __name__ == "__main__":
    main()
