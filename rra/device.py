"""Device choice shared by every stage: CUDA when present, CPU otherwise.

GPU slots [ours]: a workflow job (a ``python -m rra`` process: :func:`rra.cli.main` runs the
stage inside :func:`gpu_slots`) that is about to use CUDA first takes a free slot: an exclusive
``flock`` on ``<lock dir>/<GPU UUID>.<slot>.lock``, held until the stage ends or the process
dies (normal exit, error or ``kill -9``: the kernel drops the lock with the process). A GPU has
``RRA_JOBS_PER_GPU`` slots (default 1), so parallel jobs never share a device by accident:
``device: auto`` (or ``cuda``) takes the first free slot, slot 0 of every visible GPU before
slot 1 of any, and makes that GPU the process's current device (``torch.cuda.set_device``);
``cuda:N`` takes a slot of GPU N. When every slot is taken the job waits for one (it says so
in its log). Locks name a GPU by its UUID, so they hold across processes that see different
``CUDA_VISIBLE_DEVICES`` (a Slurm job sees only the GPUs Slurm gave it; a slot there is always
free unless Slurm gave one GPU to several jobs). The lock directory is ``RRA_GPU_LOCK_DIR``,
default ``<tmp>/rra-gpu-slots-<uid>`` (per user and machine; point it at one directory to
coordinate several users). Snakemake's ``--resources gpu=N`` (``profiles/local``) keeps the
scheduler from starting more GPU jobs than there are slots; the locks make the device choice.
Library calls (the Python API, tests) take no slot outside :func:`gpu_slots`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

#: environment: how many jobs may use one GPU at the same time (default 1)
JOBS_PER_GPU_VAR = "RRA_JOBS_PER_GPU"
#: environment: the directory of the slot lock files
LOCK_DIR_VAR = "RRA_GPU_LOCK_DIR"

_slots_enabled = False
_held: dict[int, "GpuSlot"] = {}  # visible index -> the slot this process holds on it
_picked: list[str] = []  # every device pick_device returned in this process (for the job log)


@dataclass(frozen=True)
class GpuSlot:
    """A held slot: the visible device index (``cuda:index``), its identity, the slot number."""

    index: int
    device_id: str
    slot: int
    path: Path
    file: IO = None  # the open lock file; the lock lasts as long as it stays open

    def describe(self, per_device: int) -> str:
        return f"cuda:{self.index} ({self.device_id}), slot {self.slot + 1} of {per_device}, lock {self.path}"


def use_gpu_slots(enabled: bool = True) -> None:
    """Switch GPU slots on (or off) for this process: the next CUDA device :func:`pick_device`
    returns is a held slot (module docstring)."""
    global _slots_enabled
    _slots_enabled = enabled


def release_gpu_slots() -> None:
    """Give back every slot this process holds (closing a lock file drops its lock)."""
    for slot in _held.values():
        slot.file.close()
    _held.clear()


@contextlib.contextmanager
def gpu_slots() -> Iterator[None]:
    """Slots on for the body (one stage run by :func:`rra.cli.main`), its device picks reported
    by :func:`device_report`; on exit the slots are given back and the previous setting
    restored, so a process that runs several stages (tests) never keeps a GPU from the jobs of
    a workflow it starts."""
    previous = _slots_enabled
    _picked.clear()
    use_gpu_slots(True)
    try:
        yield
    finally:
        release_gpu_slots()
        use_gpu_slots(previous)


def jobs_per_gpu() -> int:
    """``RRA_JOBS_PER_GPU`` (default 1): slots per GPU."""
    raw = os.environ.get(JOBS_PER_GPU_VAR, "1").strip() or "1"
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"environment variable {JOBS_PER_GPU_VAR}={raw!r}: must be an integer >= 1 "
                         "(jobs that may share one GPU at the same time)")
    return n


def lock_dir() -> Path:
    """``RRA_GPU_LOCK_DIR``, else ``<tmp>/rra-gpu-slots-<uid>``."""
    env = os.environ.get(LOCK_DIR_VAR)
    return Path(env) if env else Path(tempfile.gettempdir()) / f"rra-gpu-slots-{os.getuid()}"


def _file_name(device_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", device_id) or "gpu"


def claim_gpu_slot(device_ids: Sequence[str], indices: Sequence[int] | None = None, *,
                   per_device: int = 1, directory: Path | None = None, poll: float = 0.5,
                   timeout: float | None = None,
                   say: Callable[[str], None] | None = None) -> GpuSlot:
    """Hold the first free slot of the devices ``indices`` (default: all of ``device_ids``, the
    visible devices' identities in index order), trying slot 0 of each device, then slot 1, …;
    wait (polling every ``poll`` s, up to ``timeout`` s: ``TimeoutError``) while all are taken.
    The slot is held while the returned :class:`GpuSlot`'s file stays open."""
    import fcntl

    if per_device < 1:
        raise ValueError(f"per_device must be >= 1, got {per_device}")
    directory = Path(directory) if directory is not None else lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    indices = list(range(len(device_ids)) if indices is None else indices)
    if not indices:
        raise ValueError("no GPU to take a slot of")
    order = [(slot, i) for slot in range(per_device) for i in indices]
    start, waiting = time.monotonic(), False
    while True:
        for slot, i in order:
            path = directory / f"{_file_name(device_ids[i])}.{slot}.lock"
            f = open(path, "a+")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            return GpuSlot(i, device_ids[i], slot, path, f)
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"no free GPU slot within {timeout} s ({len(order)} slots in {directory})")
        if not waiting and say is not None:
            say(f"all {len(order)} GPU slots taken ({per_device} per GPU, {directory}); waiting for one")
        waiting = True
        time.sleep(poll)


def device_identity(index: int) -> str:
    """A visible CUDA device's physical identity: its UUID where torch reports one."""
    import torch

    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid:
        return f"GPU-{uuid}" if not str(uuid).startswith("GPU-") else str(uuid)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[index] if index < len(visible) else f"cuda{index}"


def _say(text: str) -> None:
    print(f"rra: {text}", file=sys.stderr, flush=True)


def _cuda(index: int | None):
    """The CUDA device to return for ``cuda`` (``index`` None) or ``cuda:index``: with slots on,
    a held slot's device (``cuda``, made current, for an unindexed request)."""
    import torch

    if not _slots_enabled:
        return torch.device("cuda" if index is None else f"cuda:{index}")
    if index is None and _held:
        torch.cuda.set_device(next(iter(_held)))
        return torch.device("cuda")
    if index is not None and index in _held:
        return torch.device(f"cuda:{index}")
    count = torch.cuda.device_count()
    if index is not None and not 0 <= index < count:
        raise ValueError(f"device cuda:{index} requested but {count} CUDA device(s) are visible")
    per = jobs_per_gpu()
    slot = claim_gpu_slot([device_identity(i) for i in range(count)],
                          None if index is None else [index], per_device=per, say=_say)
    _held[slot.index] = slot
    _say(f"GPU slot: {slot.describe(per)}")
    if index is None:
        torch.cuda.set_device(slot.index)
        return torch.device("cuda")
    return torch.device(f"cuda:{index}")


def pick_device(preference: str = "auto"):
    """Return a ``torch.device``: ``auto`` = CUDA if available else CPU; ``cpu``; ``cuda[:N]``.

    Asking for CUDA on a machine without it is an error, not a silent fallback. With GPU slots on
    (:func:`use_gpu_slots`, every workflow job) a CUDA device comes with a held slot.
    """
    import torch

    pref = str(preference).lower()
    if pref == "auto":
        dev = _cuda(None) if torch.cuda.is_available() else torch.device("cpu")
    elif pref == "cpu":
        dev = torch.device("cpu")
    elif pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} requested but CUDA is not available")
        index = pref.partition(":")[2]
        if index and not index.isdigit():
            raise ValueError(f"unknown device {preference!r}: use 'auto', 'cpu' or 'cuda[:N]'")
        dev = _cuda(int(index) if index else None)
    else:
        raise ValueError(f"unknown device {preference!r}: use 'auto', 'cpu' or 'cuda[:N]'")
    if str(dev) not in _picked:
        _picked.append(str(dev))
    return dev


def device_report() -> str | None:
    """One line for a job's log: the devices this process picked and the ``CUDA_VISIBLE_DEVICES``
    it was started with (set by Slurm for a job given GPUs); None when it picked none."""
    if not _picked:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    held = ", ".join(f"cuda:{s.index} slot {s.slot + 1}" for s in _held.values())
    return (f"device: {', '.join(_picked)}" + (f" (held: {held})" if held else "")
            + f"; CUDA_VISIBLE_DEVICES={visible if visible is not None else 'unset'}")
