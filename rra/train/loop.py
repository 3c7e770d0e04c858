"""The training loop: SGD over a prepared dataset, one checkpoint and log entry per epoch.

Recipe (methods.md §5): cross-entropy loss, SGD with momentum (optionally Nesterov) and weight
decay on every parameter, the learning rate of :func:`rra.train.spec.lr_factor` (constant within
an epoch), the augmentation policy named by the spec (:mod:`rra.train.augment`). Inputs are the
stored uint8 N × H × W × C images, augmented, then ``rra.data.normalise``-d with the dataset's
mean/std. Batches are the epoch's permutation cut into ``batch_size`` pieces; a last piece of a
single image is merged into the one before (BatchNorm cannot train on one sample) [ours].

Determinism [ours, implementing "seeded, deterministic on CPU"]:

- ``torch.manual_seed(seed)`` right before the model is built (the initial weights);
- epoch e draws its permutation and its augmentation from a CPU ``torch.Generator`` seeded with
  ``derive_seed(seed, 0, e)`` and reseeds torch's global RNG with ``derive_seed(seed, 1, e)``
  (for stochastic layers), so an epoch depends only on (seed, e) and the state it starts from:
  resuming from a checkpoint needs no saved RNG state and repeats the run bit for bit;
- ``torch.use_deterministic_algorithms(True)`` (``warn_only`` on CUDA, where some backward
  kernels have no deterministic variant), cuDNN benchmark off; both, and torch's global RNG,
  are restored on return. No DataLoader workers: batches are gathered by index from the arrays
  (read into memory up to :data:`IN_MEMORY_BYTES`, memory-mapped beyond).

CPU runs with one seed are bit-identical for a given machine, thread count and torch build;
CUDA runs are reproducible only up to the kernels' own non-determinism.

Artifacts of ``out_dir`` (docs/design.md): ``checkpoints/epoch-NNN.pt`` (see
:mod:`rra.train.checkpoint`), ``epochs/epoch-NNN.pt`` (the weights of the spec's
``keep_epochs``, E10: epoch 0 before the first step, epoch e after its step and before its
checkpoint, so a resumable run has every kept file up to its checkpoint), ``train_log.json``
(rewritten each epoch: ``spec``, ``weight_change_eps``, ``provenance`` and ``epochs``, a list of
``{epoch, lr, train_loss, train_acc, eval_loss, eval_acc, seconds, weight_change: {layer: {l1,
elementwise}}}``), and at the end ``model.pt`` and ``metrics.json``. ``train_loss``/``train_acc``
are running means over the epoch's (augmented) training batches in train mode; ``eval_*`` are
computed after the epoch on the whole eval split in eval mode; ``seconds`` times the training and
evaluation passes.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from rra.io import PathLike, provenance, sha256_file, write_json
from rra.train import checkpoint as ckpt
from rra.train.augment import build_augmentation
from rra.train.spec import (STREAM_EPOCH_DATA, STREAM_EPOCH_TORCH, STREAM_SUBSET, derive_seed,
                            lr_factor, validate_spec)
from rra.train.weight_change import EPS, snapshot, tracked_weights, weight_changes

#: splits up to this size are read from their memory map into RAM once; larger ones are
#: gathered batch by batch from the memory map.
IN_MEMORY_BYTES = 4 << 30

#: glibc malloc settings of :func:`keep_freed_memory`: blocks below this size come from the heap
#: (glibc's largest allowed value on 64-bit), and freed memory is returned to the system only
#: when more than ``MALLOC_TRIM_THRESHOLD`` lies free at the heap's top.
MALLOC_MMAP_THRESHOLD = 32 << 20
MALLOC_TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (<malloc.h>)
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Let the process reuse freed memory across batches instead of returning it to the system.

    Speed only, never the numbers. Every batch allocates and frees the same activation and
    gradient buffers (LeNet-5 at batch 128: ~2.4 MB each, ~10 MB per step). glibc's defaults hand
    blocks of that size back to the kernel on free (its mmap threshold starts at 128 KiB and
    adapts only to what has been freed so far; the heap is trimmed above twice that), so each
    step page-faults its buffers in again: 100,000 to 170,000 minor faults per 10,000 MNIST
    training images, 25–40 % of the epoch's time in the project's VM. With the mmap threshold at
    :data:`MALLOC_MMAP_THRESHOLD` and the trim threshold at :data:`MALLOC_TRIM_THRESHOLD`
    (``mallopt``) the step reuses the heap's pages: no faults after the first batch. Peak memory
    is the same working set; the process keeps it until it exits. [ours]

    Process-wide and permanent (glibc has no way back to its adaptive thresholds). Does nothing
    outside glibc, or when the environment sets malloc's thresholds itself (``MALLOC_*_``,
    ``GLIBC_TUNABLES`` with ``glibc.malloc``). Returns whether the settings were applied.
    """
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _MALLOC_ENV) \
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))


class TrainingDiverged(FloatingPointError, ValueError):
    """The training loss became nan or inf: the learning rate (or the data) is the user's to fix,
    so the CLI reports it in one line with exit status 2 (a ValueError); a FloatingPointError for
    callers that catch that. [ours]"""


@dataclass
class SplitArrays:
    """One split's images (uint8 N × H × W × C, in memory or memory-mapped) and int64 labels."""

    name: str
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_arrays(data_dir: Path, split: str, info: Any) -> SplitArrays:
    """Load ``data_dir/split`` with ``rra.data.load_split`` and check it against ``info``."""
    from rra.data import load_split

    split_dir = Path(data_dir) / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"prepared split {split!r} not found at {split_dir}; dataset "
                                f"{info.name!r} has splits {list(info.splits)} (prepare it with "
                                "`rra prepare` / rra.data.prepare_dataset)")
    data = load_split(split_dir)
    if data.manifest.get("dataset") != info.name:
        raise ValueError(f"{split_dir} holds dataset {data.manifest.get('dataset')!r}, but the "
                         f"training spec says {info.name!r}")
    images, labels = data.images, np.asarray(data.labels, dtype=np.int64)
    if images.dtype != np.uint8 or tuple(images.shape[1:]) != tuple(info.image_shape):
        raise ValueError(f"{split_dir}: images are {images.dtype} {tuple(images.shape)}, expected "
                         f"uint8 N × {' × '.join(map(str, info.image_shape))} for {info.name!r}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{split_dir}: {labels.shape} labels for {images.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise ValueError(f"{split_dir}: labels outside [0, {info.num_classes})")
    if images.nbytes <= IN_MEMORY_BYTES:
        images = np.array(images)  # one sequential read instead of random page faults
    return SplitArrays(split, images, labels)


def stratified_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted row indices: ``per_class`` rows drawn without replacement from every class
    (all rows of a smaller class), with the stream ``derive_seed(seed, 2)`` [ours]."""
    rng = np.random.default_rng(derive_seed(seed, STREAM_SUBSET))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each batch; a final batch of one row joins the previous batch."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator that drives the shuffle and augmentation of ``epoch`` (1-based)."""
    return torch.Generator().manual_seed(derive_seed(seed, STREAM_EPOCH_DATA, epoch))


def _inputs(images: np.ndarray, info: Any, device: torch.device) -> torch.Tensor:
    from rra.data import normalise

    return torch.from_numpy(normalise(images, info)).to(device, non_blocking=True)


def train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: SplitArrays,
                augment: Callable, info: Any, spec: dict, epoch: int, device: torch.device,
                bar: Any = None) -> tuple[float, float]:
    """One pass over ``data`` in the order and augmentation of (seed, epoch); returns the mean
    training loss and accuracy over its batches."""
    g = epoch_generator(spec["seed"], epoch)
    torch.manual_seed(derive_seed(spec["seed"], STREAM_EPOCH_TORCH, epoch))
    order = torch.randperm(len(data), generator=g).numpy()
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start, stop in batch_bounds(len(data), spec["batch_size"]):
        rows = order[start:stop]
        images = augment(torch.from_numpy(data.images[rows]), g).numpy()
        x = _inputs(images, info, device)
        y = torch.from_numpy(data.labels[rows]).to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(rows)
        correct += (logits.detach().argmax(1) == y).sum()
        if bar is not None:
            bar.update(1)
    return loss_sum.item() / len(data), correct.item() / len(data)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: SplitArrays, info: Any, batch_size: int,
             device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) on every row of ``data``."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(data), batch_size):
        x = _inputs(data.images[start:start + batch_size], info, device)
        y = torch.from_numpy(data.labels[start:start + batch_size]).to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / len(data), correct.item() / len(data)


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels and a private copy of torch's global RNG, restored on exit."""
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), cudnn.benchmark,
             cudnn.deterministic)
    cuda = device.type == "cuda"
    if cuda:  # cuBLAS reads this when it initialises; without it matmuls may vary run to run
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    rng_devices = []
    if cuda:
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        torch.use_deterministic_algorithms(True, warn_only=cuda)
        cudnn.benchmark, cudnn.deterministic = False, True
        with torch.random.fork_rng(devices=rng_devices):
            yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.benchmark, cudnn.deterministic = saved[2], saved[3]


def resolve_eval_split(spec: dict, info: Any) -> dict:
    """Fill ``eval_split: null`` with ``test`` if the dataset has it, else ``val``."""
    if spec["eval_split"] is None:
        spec = {**spec, "eval_split": "test" if "test" in info.splits else "val"}
    return spec


def model_args_of(spec: dict, info: Any) -> dict[str, Any]:
    """The ``rra.models.build_model`` arguments of the spec's network for this dataset."""
    return {"name": spec["model"], "in_channels": info.channels, "num_classes": info.num_classes,
            "image_size": info.image_size, "attention": spec["attention"],
            "attention_kwargs": spec["attention_kwargs"], "kwargs": spec["model_kwargs"]}


def train(spec: dict[str, Any], data_dir: PathLike, out_dir: PathLike, device: Any = "auto",
          progress: bool = True, *, keep_checkpoints: int | None = ckpt.KEEP_CHECKPOINTS,
          stop_after_epoch: int | None = None, on_spec_change: str = "error") -> dict[str, Any]:
    """Train the network of ``spec`` on the prepared dataset ``data_dir``; write ``out_dir``.

    ``data_dir`` holds the prepared splits (``{train_split}/``, ``{eval_split}/``). A run that
    finds checkpoints in ``out_dir`` resumes after the newest one that loads (see
    :func:`rra.train.checkpoint.load_resume_checkpoint`). Checkpoints or a ``model.pt`` of
    another spec are an error (``on_spec_change="error"``), or are discarded and the run starts
    from scratch (``"restart"``: what the workflow wants when a config edit changed the run's
    settings; a run interrupted under the same spec still resumes). ``keep_checkpoints``: how many epoch checkpoints to keep (``None``: all).
    ``stop_after_epoch``: train no epoch beyond this one; if that leaves the run unfinished,
    return ``{"complete": False, "epochs_done", "epochs"}`` without writing ``model.pt`` and
    ``metrics.json`` (a time-limited job, or a test of resuming; rerun to continue).
    Returns the final metrics (the contents of ``metrics.json``).
    """
    from rra.data import dataset_info
    from rra.device import pick_device

    spec = validate_spec(spec)
    info = dataset_info(spec["dataset"])
    spec = resolve_eval_split(spec, info)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"prepared dataset directory not found: {data_dir}")
    if stop_after_epoch is not None and stop_after_epoch < 1:
        raise ValueError(f"stop_after_epoch must be at least 1, got {stop_after_epoch}")
    if keep_checkpoints is not None and keep_checkpoints < 1:
        raise ValueError(f"keep_checkpoints must be at least 1 or None, got {keep_checkpoints}")
    dev = pick_device(str(device)) if not isinstance(device, torch.device) else device
    resume = _resume_state(spec, out_dir, on_spec_change)
    train_set, eval_set = _load_splits(data_dir, spec, info)

    keep_freed_memory()
    with deterministic(dev):
        return _run(spec, info, train_set, eval_set, out_dir, dev, progress, resume,
                    keep_checkpoints, stop_after_epoch)


def _resume_state(spec: dict, out_dir: Path, on_spec_change: str) -> dict | None:
    """The checkpoint to resume from (None: start from scratch), after checking that
    ``out_dir`` holds no run of another spec — or discarding it (``on_spec_change="restart"``)."""
    if on_spec_change not in ("error", "restart"):
        raise ValueError(f"on_spec_change must be 'error' or 'restart', got {on_spec_change!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt.remove_stale_temporaries(out_dir)
    try:
        if (out_dir / "model.pt").is_file():
            stored = ckpt.read_model_file(out_dir)["spec"]
            if stored != spec:
                raise ckpt.mismatch_error(out_dir / "model.pt", stored, spec, out_dir)
        resume = ckpt.load_resume_checkpoint(out_dir, spec)
    except ckpt.SpecMismatch as err:
        if on_spec_change == "error":
            raise
        print(f"rra train: {err.path.name} holds another spec ({err.detail}); "
              f"discarding the old run in {out_dir} and training from scratch", file=sys.stderr)
        ckpt.discard_run(out_dir)
        resume = None
    if resume is not None and _missing_kept(out_dir, spec, resume["epoch"]):
        print(f"rra train: kept epochs {_missing_kept(out_dir, spec, resume['epoch'])} of "
              f"{out_dir} are missing (keep_epochs); training from scratch to write them",
              file=sys.stderr)
        ckpt.discard_run(out_dir)
        resume = None
    if resume is not None:
        print(f"rra train: resuming {out_dir} after epoch {resume['epoch']} of {spec['epochs']}",
              file=sys.stderr)
    return resume


def _missing_kept(out_dir: Path, spec: dict, done: int) -> list[int]:
    """The kept epochs (``spec["keep_epochs"]``) up to ``done`` without their file."""
    return [e for e in spec.get("keep_epochs", [])
            if e <= done and not ckpt.kept_epoch_path(out_dir, e).is_file()]


def _load_splits(data_dir: Path, spec: dict, info: Any) -> tuple[SplitArrays, SplitArrays]:
    """The train split (its stratified subset under ``max_train_per_class``) and the eval split."""
    train_set = load_arrays(data_dir, spec["train_split"], info)
    if spec["max_train_per_class"] is not None:
        rows = stratified_subset(train_set.labels, spec["max_train_per_class"], spec["seed"])
        train_set = SplitArrays(train_set.name, train_set.images[rows], train_set.labels[rows])
    return train_set, load_arrays(data_dir, spec["eval_split"], info)


@dataclass
class _Run:
    """One training run's inputs and the state its epochs update (model, optimizer, learning
    rate schedule, the epoch log)."""

    spec: dict
    info: Any
    train_set: SplitArrays
    eval_set: SplitArrays
    out_dir: Path
    dev: torch.device
    model_args: dict[str, Any]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    log: list[dict[str, Any]]
    layers: list[str]


def _run(spec: dict, info: Any, train_set: SplitArrays, eval_set: SplitArrays, out_dir: Path,
         dev: torch.device, progress: bool, resume: dict | None, keep: int | None,
         stop_after_epoch: int | None) -> dict[str, Any]:
    run = _start(spec, info, train_set, eval_set, out_dir, dev, resume)
    stopped = _train_epochs(run, progress, keep, stop_after_epoch)
    return stopped if stopped is not None else _finish(run)


def _start(spec: dict, info: Any, train_set: SplitArrays, eval_set: SplitArrays, out_dir: Path,
           dev: torch.device, resume: dict | None) -> _Run:
    """Build the model from the seed (or load it, the optimizer and the schedule from the
    checkpoint ``resume``)."""
    model_args = model_args_of(spec, info)
    torch.manual_seed(spec["seed"])
    model = ckpt.build_from_args(model_args).to(dev)
    layers = list(tracked_weights(model))
    optimizer = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=spec["momentum"],
                                weight_decay=spec["weight_decay"], nesterov=spec["nesterov"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: lr_factor(spec, t))
    log: list[dict[str, Any]] = []
    if resume is not None:
        try:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"checkpoint of epoch {resume['epoch']} in {out_dir} does not fit "
                             f"the model built from its spec ({err}); delete the run directory "
                             f"{out_dir} to train it from scratch") from err
        log = list(resume["log"])
    elif 0 in spec.get("keep_epochs", []):
        ckpt.save_kept_epoch(out_dir, 0, model, spec, model_args)  # the initialisation
    return _Run(spec, info, train_set, eval_set, out_dir, dev, model_args, model, optimizer,
                scheduler, log, layers)


def _train_epochs(run: _Run, progress: bool, keep: int | None,
                  stop_after_epoch: int | None) -> dict[str, Any] | None:
    """Train the epochs not yet in the log, each followed by its checkpoint and log; the
    incomplete-run record when ``stop_after_epoch`` comes first, else None."""
    from tqdm.auto import tqdm

    spec = run.spec
    augment = build_augmentation(spec["augmentation"], allow_flip=run.info.allow_flip,
                                 pad=spec["pad"])
    epochs, done = spec["epochs"], len(run.log)
    n_batches = len(batch_bounds(len(run.train_set), spec["batch_size"]))
    disable = None if progress else True
    with tqdm(total=epochs, initial=done, desc=f"train {run.out_dir.name}", unit="epoch",
              disable=disable) as ebar:
        for epoch in range(done + 1, epochs + 1):
            if stop_after_epoch is not None and epoch > stop_after_epoch:
                return {"complete": False, "epochs_done": epoch - 1, "epochs": epochs}
            entry = _epoch(run, epoch, augment, n_batches, disable)
            if epoch in spec.get("keep_epochs", []):
                ckpt.save_kept_epoch(run.out_dir, epoch, run.model, spec, run.model_args)
            ckpt.save_checkpoint(run.out_dir, epoch, spec, run.model, run.optimizer,
                                 run.scheduler, run.log, keep)
            write_log(run.out_dir, spec, run.log, run.layers)
            ebar.update(1)
            ebar.set_postfix(loss=f"{entry['train_loss']:.3f}", acc=f"{entry['train_acc']:.3f}",
                             eval_acc=f"{entry['eval_acc']:.3f}")
    return None


def _epoch(run: _Run, epoch: int, augment: Callable, n_batches: int,
           disable: bool | None) -> dict[str, Any]:
    """Train one epoch, evaluate, step the schedule; append the epoch's log entry and return it.
    A non-finite training loss raises :class:`TrainingDiverged`."""
    from tqdm.auto import tqdm

    spec = run.spec
    t0 = time.perf_counter()
    prev = snapshot(run.model)
    lr = run.optimizer.param_groups[0]["lr"]
    with tqdm(total=n_batches, desc=f"epoch {epoch}", unit="batch", leave=False,
              disable=disable) as bbar:
        train_loss, train_acc = train_epoch(run.model, run.optimizer, run.train_set, augment,
                                            run.info, spec, epoch, run.dev, bbar)
    if not math.isfinite(train_loss):
        raise TrainingDiverged(
            f"run {run.out_dir.name}: training diverged, the loss became {train_loss} in epoch "
            f"{epoch} of {spec['epochs']} at lr = {lr:g} (spec lr = {spec['lr']:g}); lower the "
            "learning rate (config key training.lr, or the run's training.lr)")
    changes = weight_changes(prev, run.model)
    eval_loss, eval_acc = evaluate(run.model, run.eval_set, run.info, spec["eval_batch_size"],
                                   run.dev)
    run.scheduler.step()
    entry = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
             "eval_loss": eval_loss, "eval_acc": eval_acc,
             "seconds": time.perf_counter() - t0, "weight_change": changes}
    run.log.append(entry)
    return entry


def _finish(run: _Run) -> dict[str, Any]:
    """Write the log, ``model.pt`` and ``metrics.json`` (the final metrics, returned)."""
    spec, dev, log = run.spec, run.dev, run.log
    write_log(run.out_dir, spec, log, run.layers)  # also when resuming a finished run
    model_path = ckpt.save_model(run.out_dir, run.model, spec, run.model_args)
    last = log[-1]
    metrics = {
        "complete": True,
        "dataset": spec["dataset"],
        "train_split": spec["train_split"], "eval_split": spec["eval_split"],
        "n_train": len(run.train_set), "n_eval": len(run.eval_set),
        "train_loss": last["train_loss"], "train_acc": last["train_acc"],
        "eval_loss": last["eval_loss"], "eval_acc": last["eval_acc"],
        "params": sum(p.numel() for p in run.model.parameters()),
        "epochs": spec["epochs"],
        "seconds": sum(r["seconds"] for r in log),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "model_args": run.model_args,
        "model_sha256": sha256_file(model_path),
        "provenance": provenance(spec, spec["seed"]),
    }
    write_json(run.out_dir / "metrics.json", metrics)
    return metrics


def write_log(out_dir: Path, spec: dict, log: list[dict], layers: list[str]) -> None:
    """Rewrite ``train_log.json`` (atomically) with every epoch so far; ``layers`` keeps the
    module order of the weight-change entries (JSON objects are written with sorted keys)."""
    write_json(out_dir / "train_log.json", {"spec": spec, "weight_change_eps": EPS, "epochs": log,
                                            "weight_change_layers": layers,
                                            "provenance": provenance(spec, spec["seed"])})
