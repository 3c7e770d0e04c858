"""Command line: one subcommand per stage, each a thin call of the stage's entry function.

The Snakemake rules call these (``python -m rra <stage> ...``); researchers can too. Settings
arrive as JSON strings (``--spec``, ``--params``), exactly as the rule's ``params`` hold them.

Errors (:func:`main`): one line ``rra <stage>: error: <what, which file or key, the fix>`` on
stderr and exit status 2 for what the user can fix (:data:`USER_ERRORS`: a config value, a
missing, unreadable or malformed file, a permission, a diverging training); exit status 1 with
``internal error`` for anything else. The traceback only with ``--debug`` or ``RRA_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, Callable

#: exceptions that are the user's to fix, exit status 2: ValueError (rra.config.ConfigError, bad
#: data, JSON, a diverging training: rra.train.loop.TrainingDiverged), OSError (a missing file,
#: a permission, a full disk), MemoryError. Anything else is an internal error, exit status 1.
USER_ERRORS = (ValueError, OSError, MemoryError)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err


def _n_per_class(text: str) -> int | str:
    return "all" if text == "all" else int(text)


#: environment variables that size a thread pool when its library loads: OpenMP (torch's
#: intra-op pool, libgomp), the BLAS libraries numpy and torch may use, numba's pool
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "GOTO_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "NUMBA_NUM_THREADS")


def use_threads(n: int) -> None:
    """Size every thread pool of this process to ``n`` (a job's Snakemake ``threads``): the
    variables of :data:`THREAD_VARIABLES`, set before torch, numpy or numba load, and torch's
    intra- and inter-op pools. Two jobs whose pools were larger than their share of the cores
    slowed each other 70-fold here (README, "Threads"). [ours]"""
    if n < 1:
        raise ValueError(f"--threads must be at least 1, got {n}")
    numba = sys.modules.get("numba")
    for name in THREAD_VARIABLES:
        if name == "NUMBA_NUM_THREADS" and numba is not None:
            # numba is loaded (an in-process call: the API, tests): its pool size is fixed, and a
            # changed variable would make its next compilation fail ("Cannot set
            # NUMBA_NUM_THREADS ... once the threads have been launched"); use fewer instead
            numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
            continue
        os.environ[name] = str(n)


def _threads(n: int | None) -> None:
    """torch's pools at ``n`` threads (the variables are set by :func:`main` already)."""
    if n:
        import torch

        torch.set_num_threads(int(n))
        try:
            torch.set_num_interop_threads(int(n))
        except RuntimeError:  # already used in this process (the API, tests): leave it
            pass


def thread_report() -> str:
    """One line: the threads of each pool this process has loaded (for the job's log)."""
    parts = []
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        parts.append(f"torch {torch.get_num_threads()}")
    if "numba" in sys.modules:
        parts.append(f"numba {sys.modules['numba'].get_num_threads()}")
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            parts.append(f"{pool['internal_api']} {pool['num_threads']}")
    except ImportError:
        pass
    return "threads: " + (", ".join(parts) if parts else "no thread pool loaded")


def cmd_prepare(a: argparse.Namespace) -> None:
    from rra.data import dataset_info, prepare_dataset

    check = None
    if a.probe_check:
        from rra.config import check_probes

        def counts_of(splits: dict, split: str) -> tuple[tuple[int, ...] | None, str]:
            if split not in splits:
                return None, ""
            return tuple(splits[split]["class_counts"]), f"counted in the files of {split}"

        def check(splits: dict) -> None:
            check_probes(a.probe_check, lambda split: counts_of(splits, split),
                         dataset_info(a.dataset).num_classes)

    prepare_dataset(a.dataset, a.out, data_dir=a.data_dir or None, check=check,
                    val_per_class=a.val_per_class, val_seed=a.val_seed, **a.options)


def cmd_probe(a: argparse.Namespace) -> None:
    from rra.data import select_probe

    select_probe(a.split_dir, a.n_per_class, a.seed, a.out)


def cmd_train(a: argparse.Namespace) -> None:
    from rra.train import train

    _threads(a.threads)
    spec = dict(a.spec)
    if a.attention_kwargs_file:
        from rra.stac import read_attention_kwargs

        spec["attention_kwargs"] = {**spec.get("attention_kwargs", {}),
                                    **read_attention_kwargs(a.attention_kwargs_file)}
    train(spec, a.data, a.out, device=a.device, on_spec_change=a.on_spec_change)


def cmd_stac_scales(a: argparse.Namespace) -> None:
    from rra.stac import choose_scales, stac_flops_ratios
    from rra.train.checkpoint import build_from_args, read_model_file

    model_args = read_model_file(a.run_dir)["model_args"]
    model = build_from_args(model_args)
    choose_scales(a.classrepsim, model.stages, a.out, k=a.k, criterion=a.criterion, tau=a.tau,
                  delta=a.delta, max_flops_ratio=a.max_flops_ratio,
                  flops_ratios=stac_flops_ratios(model_args, a.attention_kwargs))


def cmd_cost(a: argparse.Namespace) -> None:
    from rra.models.cost import cost_stage

    _threads(a.threads)
    cost_stage(a.dataset, a.variants, a.out)


def cmd_summary(a: argparse.Namespace) -> None:
    from rra.train.summary import accuracy_summary

    accuracy_summary(a.runs, a.dataset, a.out)


def cmd_embed(a: argparse.Namespace) -> None:
    from rra.embed import embed_run

    _threads(a.threads)
    include_input = {"auto": None, "true": True, "false": False}[a.input]
    embed_run(a.run_dir, a.split_dir, a.probe, a.out, scales=a.scales, batch_size=a.batch_size,
              device=a.device, include_input=include_input, weights=a.weights or None)


def cmd_knn(a: argparse.Namespace) -> None:
    from rra.knn import build_graphs

    _threads(a.threads)
    p = dict(a.params)
    build_graphs(a.embed_dir, a.out, k=p.pop("k"), distance=a.distance, backend=a.backend,
                 nnts_k=p.pop("nnts_k", []), recall_k=p.pop("recall_k", []), options=p)


def cmd_metrics(a: argparse.Namespace) -> None:
    from rra.metrics.tables import run_tables

    _threads(a.threads)
    p = a.params
    run_tables(a.embed_dir, a.knn_dir, a.out, ks=p["k"], alphas=p["nntp_alpha"], run=a.run,
               tables=p.get("tables"), nntp_ks=p.get("nntp_k") or None,
               bootstrap=p.get("bootstrap"))


def cmd_dynamics(a: argparse.Namespace) -> None:
    from rra.metrics.dynamics import dynamics_table

    _threads(a.threads)
    s = a.settings
    dynamics_table({int(e): d for e, d in a.knn_dirs.items()}, a.out, ks=s["k"], tau=s["tau"],
                   scales=s["scales"], run=a.run, labels=a.labels,
                   bootstrap=s.get("bootstrap"))


def cmd_placement(a: argparse.Namespace) -> None:
    from rra.metrics.placement import placement_stage

    _threads(a.threads)
    placement_stage(a.reference, a.heldout, a.out, ks=a.settings["k"], distance=a.distance,
                    run=a.run, device=a.device, bootstrap=a.settings.get("bootstrap"))


def cmd_layers(a: argparse.Namespace) -> None:
    from rra.layers.stage import layer_run

    _threads(a.threads)
    include_input = {"auto": None, "true": True, "false": False}[a.input]
    layer_run(a.analysis, a.run_dir, a.data_dir, a.probe, a.out, settings=a.settings,
              run=a.run, train_path=a.train, device=a.device, include_input=include_input)


def cmd_e2_guideline(a: argparse.Namespace) -> None:
    from rra.io import read_json
    from rra.metrics.hyperparams import e2_guideline

    s = a.settings
    e2_guideline(read_json(a.inputs)["metrics"], a.out, reference=s["reference"], k=s["k"],
                 scale=s["scale"])


def cmd_report(a: argparse.Namespace) -> None:
    from rra.report import build_report

    build_report(a.inputs, a.out, config=a.config)


#: help of ``--debug``, on the main parser and on every subcommand
DEBUG_HELP = "print the traceback of an error (also: environment RRA_DEBUG=1)"

def _stage(sub: argparse._SubParsersAction, name: str, fn: Callable[[argparse.Namespace], None],
           help: str) -> argparse.ArgumentParser:
    """One subcommand running ``fn``, with the options every stage has (--threads, --debug)."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(fn=fn)
    p.add_argument("--threads", type=int, default=None,
                   help="threads of every pool (torch, OpenMP, BLAS, numba): the job's share")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return p


def _add_data_stages(sub: argparse._SubParsersAction) -> None:
    """prepare, probe: the dataset's splits and the probe sets."""
    p = _stage(sub, "prepare", cmd_prepare, "prepare a dataset's splits as versionable arrays")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir", default="")
    p.add_argument("--options", type=_json, default={})
    p.add_argument("--val-per-class", type=int, default=0,
                   help="carve a held-out split 'val' of this many rows per class from train")
    p.add_argument("--val-seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--probe-check", type=_json, default=None,
                   help="JSON list of rra.config.probe_requirements: after reading the files, "
                        "check every probe's n_per_class and k against the splits' class counts "
                        "before the stage completes (the workflow passes the config's)")

    p = _stage(sub, "probe", cmd_probe, "select the probe set (n per class, seeded)")
    p.add_argument("--split-dir", required=True)
    p.add_argument("--n-per-class", type=_n_per_class, required=True, help="an integer or 'all'")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)


def _add_model_stages(sub: argparse._SubParsersAction) -> None:
    """train, embed: one model of the grid and its embeddings of a probe set."""
    p = _stage(sub, "train", cmd_train, "train one model of the grid")
    p.add_argument("--spec", type=_json, required=True)
    p.add_argument("--data", required=True, help="prepared dataset directory")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--device", default="auto")
    p.add_argument("--attention-kwargs-file", default="",
                   help="JSON whose 'scales' are merged into the spec's attention_kwargs "
                        "(the stac-auto scales written by `rra stac-scales`)")
    p.add_argument("--on-spec-change", choices=["error", "restart"], default="error",
                   help="a run directory holding another spec's checkpoints: stop (default) or "
                        "discard them and train from scratch (the workflow's choice)")

    p = _stage(sub, "embed", cmd_embed, "dump every hook's embeddings of the probe set")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--split-dir", required=True)
    p.add_argument("--probe", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--scales", type=_json, required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--input", choices=["auto", "true", "false"], default="auto",
                   help="embed the model's normalised input as hook 'input' (position 0): "
                        "auto = the model's analyse_input attribute (the rule passes the "
                        "resolved embed.input)")
    p.add_argument("--weights", default="",
                   help="embed with this weights file of the run instead of its model.pt "
                        "(a kept epoch, epochs/epoch-NNN.pt: E10)")


def _add_analysis_stages(sub: argparse._SubParsersAction) -> None:
    """knn, metrics, placement, layers: the analyses of one trained run."""
    p = _stage(sub, "knn", cmd_knn, "build one kNN graph per embedding")
    p.add_argument("--embed-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--distance", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--params", type=_json, required=True)

    p = _stage(sub, "metrics", cmd_metrics, "compute the metric tables of one run")
    p.add_argument("--embed-dir", required=True)
    p.add_argument("--knn-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--params", type=_json, required=True)
    p.add_argument("--run", type=_json, required=True, help="run identity columns")

    p = _stage(sub, "dynamics", cmd_dynamics,
               "representation dynamics (E10): NNTS between kept epochs, settling epochs")
    p.add_argument("--knn-dirs", type=_json, required=True,
                   help="JSON {epoch: kNN folder of that epoch's graphs}; the largest is final")
    p.add_argument("--out", required=True)
    p.add_argument("--settings", type=_json, required=True,
                   help="{k, tau, scales, bootstrap} (rra.config.dynamics_params)")
    p.add_argument("--labels", default=None,
                   help="the probe's labels.npy (the final model's embed folder): the "
                        "bootstrap's strata; without it the rows are resampled unstratified")
    p.add_argument("--run", type=_json, required=True, help="run identity columns")

    p = _stage(sub, "placement", cmd_placement,
               "held-out placement (E11): held-out embeddings in a training probe's kNN models")
    p.add_argument("--reference", required=True,
                   help="the run's embed folder of the reference (training) probe")
    p.add_argument("--heldout", required=True,
                   help="the same run's embed folder of the held-out probe (same hooks, scales)")
    p.add_argument("--out", required=True)
    p.add_argument("--distance", choices=["euclidean", "cosine"], default="euclidean")
    p.add_argument("--settings", type=_json, required=True,
                   help='JSON {"k": [...], "bootstrap": {...}} (rra.config.placement_params)')
    p.add_argument("--run", type=_json, required=True,
                   help="run identity columns (probe: the held-out probe)")
    p.add_argument("--device", default="cpu", help="where the kNN products run")

    # no choices from rra.layers.stage here: importing it loads numpy before --threads sizes
    # the thread pools (the stage itself refuses an unknown analysis, naming the known ones)
    p = _stage(sub, "layers", cmd_layers, "one layer analysis of a trained run (E7–E9)")
    p.add_argument("--analysis", required=True,
                   help="translation | patterns | margins | saliency | fragmentation")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--data-dir", required=True, help="prepared dataset directory (its splits)")
    p.add_argument("--probe", required=True,
                   help="the probe set's .npy (its sidecar names the split)")
    p.add_argument("--train", default=None,
                   help="the training subset's probe .npy (patterns: trees; margins: PCA)")
    p.add_argument("--out", required=True)
    p.add_argument("--settings", type=_json, required=True,
                   help="the analysis's settings (rra.config.layer_params)")
    p.add_argument("--run", type=_json, required=True, help="run identity columns")
    p.add_argument("--device", default="auto")
    p.add_argument("--input", choices=["auto", "true", "false"], default="auto",
                   help="the model's normalised input as hook 'input' (position 0)")


def _add_model_choice_stages(sub: argparse._SubParsersAction) -> None:
    """stac-scales, cost: the stac-auto scales and every model's parameters and FLOPs."""
    p = _stage(sub, "stac-scales", cmd_stac_scales,
               "choose the stac-auto scales per stage from a baseline's ClassRepSim table")
    p.add_argument("--classrepsim", required=True, help="the baseline's classrepsim.parquet")
    p.add_argument("--run-dir", required=True, help="the baseline's run directory (model.pt)")
    p.add_argument("--criterion", choices=["agreement", "jaccard"], required=True)
    p.add_argument("--tau", type=float, required=True, help="threshold of criterion jaccard")
    p.add_argument("--delta", type=float, required=True, help="tolerance of criterion agreement")
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--max-flops-ratio", type=float, default=None,
                   help="FLOPs budget of the STAC model over the baseline")
    p.add_argument("--attention-kwargs", type=_json, default={},
                   help="the other stac arguments (mode), for the FLOPs of each choice")
    p.add_argument("--out", required=True, help="JSON file to write")

    p = _stage(sub, "cost", cmd_cost, "parameters and FLOPs of every (model, attention) of the grid")
    p.add_argument("--dataset", required=True, help="input size from this dataset")
    p.add_argument("--variants", type=_json, required=True,
                   help="JSON list of {model, model_kwargs, attention, module, attention_kwargs"
                        "[, attention_kwargs_file]}")
    p.add_argument("--out", required=True, help="table stem (writes .parquet and .csv)")


def _add_study_stages(sub: argparse._SubParsersAction) -> None:
    """summary, e2-guideline, report: the study's tables and the report."""
    p = _stage(sub, "summary", cmd_summary, "collect every run's metrics.json into one table")
    p.add_argument("--dataset", required=True)
    p.add_argument("--runs", type=_json, required=True,
                   help="JSON list of {model, attention, augmentation, seed, metrics}")
    p.add_argument("--out", required=True, help="table stem (writes .parquet and .csv)")

    p = _stage(sub, "e2-guideline", cmd_e2_guideline,
               "E2: the summary measures across analysis settings, and the guideline table")
    p.add_argument("--inputs", required=True,
                   help='JSON file {"metrics": [metric manifests of the runs analysed twice or '
                        'more]}')
    p.add_argument("--settings", type=_json, required=True,
                   help="JSON {reference: {probe, distance, backend}, k, scale}")
    p.add_argument("--out", required=True, help="output folder (tables and manifest)")

    p = _stage(sub, "report", cmd_report, "build the Altair figures and reports/index.html")
    p.add_argument("--inputs", required=True,
                   help='JSON file {"results_dir": ..., kind: [files]}: what the report reads '
                        "(rra.report.inputs)")
    p.add_argument("--out", required=True, help="reports directory")
    p.add_argument("--config", type=_json, default=None, help="the study config (recorded per figure)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m rra``: one subcommand per stage, in pipeline order. Building it
    imports no stage (no numpy, torch or numba before ``--threads`` sizes the pools)."""
    parser = argparse.ArgumentParser(prog="rra", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="stage", required=True)
    for add_stages in (_add_data_stages, _add_model_stages, _add_analysis_stages,
                       _add_model_choice_stages, _add_study_stages):
        add_stages(sub)
    return parser


def short_openmp_spin() -> None:
    """``GOMP_SPINCOUNT=10000`` before torch is imported, unless the environment sets
    ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``. Speed only. [ours]

    Between parallel regions torch's OpenMP threads (GNU libgomp) spin up to 300,000 times by
    default before they sleep. On idle dedicated cores that pays; on cores shared with other
    work (this project's two) a spinning thread burns the time slice its partner needs. One
    epoch of LeNet-5 on 10,000 MNIST images at 2 threads, with two busy processes on the two
    cores: 8.0–18.5 s by default, 3.0–4.8 s with 10,000 spins, 2.9–3.7 s with
    ``OMP_WAIT_POLICY=PASSIVE``; with the cores nearly free: 1.1–1.3 s, 1.0–1.2 s and 1.6–2.0 s.
    The thread count, and with it every result, is unchanged (bit-identical weights).
    libgomp reads the variable when torch loads, so this does nothing once torch is imported.
    """
    if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def error_line(stage: str, err: BaseException) -> tuple[str, int]:
    """``(one line for stderr, exit status)`` of an exception that ended ``stage``."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.strerror}: {err.filename}"
        if isinstance(err, (PermissionError, FileExistsError, NotADirectoryError,
                            IsADirectoryError)):
            text += (" (cannot write or read there: check the paths given to this stage, e.g. "
                     "--out, and their permissions)")
    else:
        text = str(err) or type(err).__name__
    text = " ".join(text.split())  # one line, whatever the message held
    if isinstance(err, USER_ERRORS):
        return f"rra {stage}: error: {text}", 2
    return (f"rra {stage}: internal error: {type(err).__name__}: {text} (rerun with --debug or "
            "RRA_DEBUG=1 for the traceback, and report it)"), 1


def main(argv: list[str] | None = None) -> int:
    """Run one stage; any exception is one line on stderr and exit status 2 (user error) or 1
    (internal error), the traceback only with ``--debug`` / ``RRA_DEBUG=1``."""
    short_openmp_spin()
    args = build_parser().parse_args(argv)
    try:
        if args.threads is not None:
            use_threads(args.threads)
        from rra.device import device_report, gpu_slots

        with gpu_slots():  # a job that uses CUDA holds a GPU slot while it runs (rra/device.py)
            args.fn(args)
            if args.threads is not None:
                print(f"rra {args.stage}: {thread_report()}", file=sys.stderr)
            if device_report() is not None:
                print(f"rra {args.stage}: {device_report()}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"rra {args.stage}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug or os.environ.get("RRA_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        line, status = error_line(args.stage, err)
        print(line, file=sys.stderr)
        return status
    return 0
