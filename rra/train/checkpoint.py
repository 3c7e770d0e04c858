"""Epoch checkpoints, the final ``model.pt``, and loading a trained model back.

Layout of a run directory (docs/design.md, artifact table):

- ``checkpoints/epoch-{e:03d}.pt``: ``{"format", "epoch", "spec", "model", "optimizer",
  "scheduler", "log"}`` — state_dicts on the CPU, the validated spec, the per-epoch log so far.
  By default only the newest :data:`KEEP_CHECKPOINTS` are kept (two, so that a newest file
  damaged by a crash still leaves one to resume from).
- ``model.pt``: ``{"format", "state_dict", "spec", "model_args"}``; ``model_args`` are the
  keyword arguments of ``rra.models.build_model`` that rebuild the network.
- ``epochs/epoch-{e:03d}.pt``: the weights after epoch e (0: the initialisation) of every epoch
  the spec's ``keep_epochs`` lists, in ``model.pt``'s format plus ``"epoch"``: kept for the
  representation dynamics (E10), never deleted by the resume logic, never read by training.

Everything is written through ``rra.io.atomic_path`` and loads with
``torch.load(weights_only=True)`` (plain containers, numbers, strings and tensors only).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from rra.io import PathLike, atomic_path, sha256_file

CHECKPOINT_FORMAT = "rra.train.checkpoint/1"
MODEL_FORMAT = "rra.train.model/1"
KEEP_CHECKPOINTS = 2
_EPOCH_FILE = re.compile(r"^epoch-(\d{3,})\.pt$")
_CHECKPOINT_KEYS = ("format", "epoch", "spec", "model", "optimizer", "scheduler", "log")


def checkpoint_path(run_dir: PathLike, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"epoch-{epoch:03d}.pt"


def list_checkpoints(run_dir: PathLike) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``checkpoints/epoch-NNN.pt``, newest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return sorted(found, reverse=True)


def kept_epoch_path(run_dir: PathLike, epoch: int) -> Path:
    """``run_dir/epochs/epoch-{epoch:03d}.pt``: the kept weights after ``epoch``."""
    return Path(run_dir) / "epochs" / f"epoch-{int(epoch):03d}.pt"


def list_kept_epochs(run_dir: PathLike) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``epochs/epoch-NNN.pt``, oldest first."""
    folder = Path(run_dir) / "epochs"
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir()
                  if (m := _EPOCH_FILE.match(p.name)))


def remove_stale_temporaries(run_dir: PathLike) -> list[Path]:
    """Delete temporary files that a killed run left (``.epoch-003.pt.XXXX.tmp``, ``.model.pt…``).

    Only names of this stage's own artifacts are touched; a run directory has one writer.
    """
    run_dir = Path(run_dir)
    gone = []
    for folder, stems in ((run_dir / "checkpoints", ("epoch-",)), (run_dir / "epochs", ("epoch-",)),
                          (run_dir, ("model.pt", "metrics.json", "train_log.json"))):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.endswith(".tmp") and any(p.name.startswith("." + s) for s in stems):
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


def _save(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` atomically, through a file handle: given a path, torch names the zip's
    inner folder after the (random) temporary file, so equal contents would hash differently."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)


def _cpu_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}


def save_checkpoint(run_dir: PathLike, epoch: int, spec: dict, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, log: list[dict],
                    keep: int | None = KEEP_CHECKPOINTS) -> Path:
    """Write ``checkpoints/epoch-{epoch:03d}.pt`` atomically, then keep only the newest ``keep``
    checkpoints (``None`` keeps all)."""
    path = checkpoint_path(run_dir, epoch)
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "spec": spec,
        "model": _cpu_state(model.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "log": log,
    }
    _save(state, path)
    if keep is not None:
        for _, old in list_checkpoints(run_dir)[max(1, int(keep)):]:
            old.unlink(missing_ok=True)
    return path


def spec_mismatch(stored: dict, spec: dict) -> list[str]:
    """Keys whose values differ between a stored spec and the current one."""
    absent = "<absent>"
    keys = set(stored) | set(spec)
    return sorted(k for k in keys if stored.get(k, absent) != spec.get(k, absent))


class SpecMismatch(ValueError):
    """A run directory holds a checkpoint or model of another training spec."""

    def __init__(self, path: Path, detail: str, run_dir: Path):
        super().__init__(f"{path} was written for a different training spec ({detail}); "
                         f"delete the run directory {run_dir} to train it from scratch")
        self.path, self.detail = path, detail


def mismatch_error(path: Path, stored: dict, spec: dict, run_dir: Path) -> SpecMismatch:
    keys = spec_mismatch(stored, spec)
    detail = ", ".join(f"{k}: {stored.get(k, '<absent>')!r} -> {spec.get(k, '<absent>')!r}"
                       for k in keys)
    return SpecMismatch(Path(path), detail, Path(run_dir))


def discard_run(run_dir: PathLike) -> None:
    """Remove a run's checkpoints and final files (before retraining it under a new spec)."""
    run_dir = Path(run_dir)
    for _, path in list_checkpoints(run_dir) + list_kept_epochs(run_dir):
        path.unlink(missing_ok=True)
    for name in ("model.pt", "metrics.json", "train_log.json"):
        (run_dir / name).unlink(missing_ok=True)


def load_resume_checkpoint(run_dir: PathLike, spec: dict) -> dict[str, Any] | None:
    """The newest checkpoint of ``run_dir`` that loads cleanly, or ``None`` if there is none.

    A checkpoint that fails to load (truncated, corrupt, missing keys) is skipped with a
    warning and the previous one is tried. The first that loads must carry ``spec``: a
    different spec is a ``ValueError`` telling the user to delete the run directory.
    """
    run_dir = Path(run_dir)
    for epoch, path in list_checkpoints(run_dir):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing = [k for k in _CHECKPOINT_KEYS if k not in state]
            if missing:
                raise ValueError(f"missing keys {missing}")
            if state["format"] != CHECKPOINT_FORMAT:
                raise ValueError(f"format {state['format']!r}, expected {CHECKPOINT_FORMAT!r}")
            if state["epoch"] != epoch or len(state["log"]) != epoch:
                raise ValueError(f"holds epoch {state['epoch']} with {len(state['log'])} log "
                                 f"entries, but its name says epoch {epoch}")
        except Exception as err:  # noqa: BLE001 - any failure to read means "not usable"
            warnings.warn(f"skipping unreadable checkpoint {path}: {err}; trying an older one",
                          RuntimeWarning, stacklevel=2)
            continue
        if state["spec"] != spec:
            raise mismatch_error(path, state["spec"], spec, run_dir)
        return state
    return None


def save_model(run_dir: PathLike, model: torch.nn.Module, spec: dict,
               model_args: dict[str, Any]) -> Path:
    """Write ``model.pt``: final weights (CPU), the spec and the ``build_model`` arguments."""
    path = Path(run_dir) / "model.pt"
    state = {"format": MODEL_FORMAT, "state_dict": _cpu_state(model.state_dict()),
             "spec": spec, "model_args": model_args}
    _save(state, path)
    return path


def save_kept_epoch(run_dir: PathLike, epoch: int, model: torch.nn.Module, spec: dict,
                    model_args: dict[str, Any]) -> Path:
    """Write ``epochs/epoch-{epoch:03d}.pt`` atomically: the weights after ``epoch`` (CPU) in
    ``model.pt``'s format, with ``"epoch"``."""
    path = kept_epoch_path(run_dir, epoch)
    state = {"format": MODEL_FORMAT, "state_dict": _cpu_state(model.state_dict()),
             "spec": spec, "model_args": model_args, "epoch": int(epoch)}
    _save(state, path)
    return path


def read_model_file(run_dir: PathLike) -> dict[str, Any]:
    """Load ``run_dir/model.pt`` with ``weights_only=True``; clear errors if missing or damaged.

    ``run_dir`` may also name a weights file itself: ``model.pt`` or a kept
    ``epochs/epoch-NNN.pt`` (the same format)."""
    path = Path(run_dir)
    path = path if path.suffix == ".pt" else path / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path} "
                                "(has `rra train` finished for this run?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"cannot read {path}: {err}") from err
    missing = [k for k in ("format", "state_dict", "spec", "model_args") if k not in state]
    if missing or state["format"] != MODEL_FORMAT:
        raise ValueError(f"{path} is not an rra model file (missing {missing}, "
                         f"format {state.get('format')!r})")
    return state


def build_from_args(model_args: dict[str, Any]) -> torch.nn.Module:
    """``rra.models.build_model`` called with the arguments stored in ``model.pt``."""
    from rra.models import build_model

    return build_model(model_args["name"], in_channels=model_args["in_channels"],
                       num_classes=model_args["num_classes"], image_size=model_args["image_size"],
                       attention=model_args["attention"],
                       attention_kwargs=model_args["attention_kwargs"], **model_args["kwargs"])


def load_trained(run_dir: PathLike, device: Any = "cpu") -> torch.nn.Module:
    """Rebuild the trained network of ``run_dir`` from ``model.pt``, in eval mode on ``device``
    (``run_dir`` may name the weights file itself, e.g. a kept ``epochs/epoch-NNN.pt``)."""
    from rra.device import pick_device

    state = read_model_file(run_dir)
    model = build_from_args(state["model_args"])
    model.load_state_dict(state["state_dict"], strict=True)
    dev = device if isinstance(device, torch.device) else pick_device(str(device))
    return model.to(dev).eval()


def checkpoint_sha256(run_dir: PathLike) -> str:
    """SHA-256 of ``run_dir/model.pt`` (what downstream artifacts record as the checkpoint hash)."""
    path = Path(run_dir) / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}")
    return sha256_file(path)
