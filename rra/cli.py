"""Command line: one subcommand per stage, each a thin call of the stage's entry function.

The Snakemake rules call these (``python -m rra <stage> ...``); researchers can too. Settings
arrive as JSON strings (``--spec``, ``--params``), exactly as the rule's ``params`` hold them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


def cmd_prepare(a: argparse.Namespace) -> None:
    from rra.data import prepare_dataset

    prepare_dataset(a.dataset, a.out, data_dir=a.data_dir or None, **a.options)


def cmd_probe(a: argparse.Namespace) -> None:
    from rra.data import select_probe

    select_probe(a.split_dir, a.n_per_class, a.seed, a.out)


def cmd_train(a: argparse.Namespace) -> None:
    from rra.train import train

    _threads(a.threads)
    train(a.spec, a.data, a.out, device=a.device)


def cmd_embed(a: argparse.Namespace) -> None:
    from rra.embed import embed_run

    _threads(a.threads)
    embed_run(a.run_dir, a.split_dir, a.probe, a.out, scales=a.scales, batch_size=a.batch_size,
              device=a.device)


def cmd_knn(a: argparse.Namespace) -> None:
    from rra.knn import build_graphs

    _threads(a.threads)
    p = dict(a.params)
    build_graphs(a.embed_dir, a.out, k=p.pop("k"), distance=a.distance, backend=a.backend, options=p)


def cmd_metrics(a: argparse.Namespace) -> None:
    from rra.metrics.tables import run_tables

    _threads(a.threads)
    run_tables(a.embed_dir, a.knn_dir, a.out, ks=a.params["k"], alphas=a.params["nntp_alpha"], run=a.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rra", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)

    def stage(name: str, fn: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(fn=fn)
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        return p

    p = stage("prepare", cmd_prepare, "prepare a dataset's splits as versionable arrays")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir", default="")
    p.add_argument("--options", type=_json, default={})
    p.add_argument("--out", required=True)

    p = stage("probe", cmd_probe, "select the probe set (n per class, seeded)")
    p.add_argument("--split-dir", required=True)
    p.add_argument("--n-per-class", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)

    p = stage("train", cmd_train, "train one model of the grid")
    p.add_argument("--spec", type=_json, required=True)
    p.add_argument("--data", required=True, help="prepared dataset directory")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--device", default="auto")

    p = stage("embed", cmd_embed, "dump every hook's embeddings of the probe set")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--split-dir", required=True)
    p.add_argument("--probe", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--scales", type=_json, required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")

    p = stage("knn", cmd_knn, "build one kNN graph per embedding")
    p.add_argument("--embed-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--distance", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--params", type=_json, required=True)

    p = stage("metrics", cmd_metrics, "compute the metric tables of one run")
    p.add_argument("--embed-dir", required=True)
    p.add_argument("--knn-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--params", type=_json, required=True)
    p.add_argument("--run", type=_json, required=True, help="run identity columns")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"rra {args.stage}: error: {err}", file=sys.stderr)
        return 2
    return 0
