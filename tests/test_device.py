"""GPU slots (rra/device.py): a job that uses CUDA holds a slot of one GPU, so parallel jobs never
share a device by accident. No GPU here: the slots are tested with named devices and, for
pick_device, a stand-in for torch.cuda; the CPU path is the real one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from rra import device as rd

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch, tmp_path):
    """Each test starts with slots off, nothing held, and its own lock directory."""
    monkeypatch.setattr(rd, "_slots_enabled", False)
    monkeypatch.setattr(rd, "_held", {})
    monkeypatch.setattr(rd, "_picked", [])
    monkeypatch.setenv(rd.LOCK_DIR_VAR, str(tmp_path / "locks"))
    monkeypatch.delenv(rd.JOBS_PER_GPU_VAR, raising=False)
    yield


IDS = ["GPU-aaaa", "GPU-bbbb"]


def test_one_job_per_gpu_then_wait(tmp_path):
    a = rd.claim_gpu_slot(IDS)
    b = rd.claim_gpu_slot(IDS)
    assert (a.index, a.slot, b.index, b.slot) == (0, 0, 1, 0)
    with pytest.raises(TimeoutError):
        rd.claim_gpu_slot(IDS, poll=0.05, timeout=0.2)  # both GPUs taken
    a.file.close()  # the job on GPU 0 ends
    c = rd.claim_gpu_slot(IDS, poll=0.05, timeout=1)
    assert (c.index, c.slot) == (0, 0)
    assert c.path.name == "GPU-aaaa.0.lock"


def test_slots_per_gpu_spread_over_gpus_first():
    held = [rd.claim_gpu_slot(IDS, per_device=2) for _ in range(4)]
    assert [(s.index, s.slot) for s in held] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    with pytest.raises(TimeoutError):
        rd.claim_gpu_slot(IDS, per_device=2, poll=0.05, timeout=0.2)


def test_explicit_device_waits_for_its_own_slot():
    held = rd.claim_gpu_slot(IDS, [1])  # held while referenced (the file stays open)
    with pytest.raises(TimeoutError):
        rd.claim_gpu_slot(IDS, [1], poll=0.05, timeout=0.2)  # GPU 0 is free, but N = 1 was asked
    assert rd.claim_gpu_slot(IDS, [0]).index == 0
    assert held.index == 1


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from rra.device import claim_gpu_slot
    slot = claim_gpu_slot({ids!r})
    print(slot.index, flush=True)
    time.sleep(600)
""")


def test_slot_of_another_process_is_taken_until_it_dies(tmp_path):
    """A slot held by another process (another Snakemake job) is skipped; when that process
    is killed (even with SIGKILL) its slot is free again."""
    code = HOLDER.format(root=str(ROOT), ids=IDS)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        mine = rd.claim_gpu_slot(IDS)
        assert mine.index == 1
        mine.file.close()
        with pytest.raises(TimeoutError):
            rd.claim_gpu_slot(IDS, [0], poll=0.05, timeout=0.3)
    finally:
        holder.kill()
        holder.wait()
    assert rd.claim_gpu_slot(IDS, [0], poll=0.05, timeout=2).index == 0


def test_jobs_per_gpu_setting(monkeypatch):
    assert rd.jobs_per_gpu() == 1
    monkeypatch.setenv(rd.JOBS_PER_GPU_VAR, "3")
    assert rd.jobs_per_gpu() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(rd.JOBS_PER_GPU_VAR, bad)
        with pytest.raises(ValueError, match="RRA_JOBS_PER_GPU"):
            rd.jobs_per_gpu()


def test_cpu_path_takes_no_slot(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: pick_device('auto') is CUDA here")
    rd.use_gpu_slots()
    assert rd.pick_device("auto") == torch.device("cpu")
    assert rd.pick_device("cpu") == torch.device("cpu")
    assert not (tmp_path / "locks").exists()
    assert rd.device_report().startswith("device: cpu; CUDA_VISIBLE_DEVICES=")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        rd.pick_device("cuda:0")


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as a 2-GPU machine would show it (UUIDs, device count, current device)."""
    import torch

    calls = {"set_device": []}
    uuids = ["aaaa", "bbbb"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid=uuids[i]))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls["set_device"].append(i))
    return calls


def test_pick_device_holds_a_free_gpu(fake_cuda, tmp_path, capsys):
    """With slots on, `auto` takes the first free GPU (here GPU 0 is held by another job) and
    makes it current, so `cuda` tensors of this job land there; later picks reuse the slot."""
    import torch

    other = rd.claim_gpu_slot(["GPU-aaaa", "GPU-bbbb"], directory=tmp_path / "locks")
    assert other.index == 0
    rd.use_gpu_slots()
    assert rd.pick_device("auto") == torch.device("cuda")
    assert fake_cuda["set_device"] == [1]
    assert rd.pick_device("cuda") == torch.device("cuda")  # same slot, no second lock
    assert list(rd._held) == [1] and (tmp_path / "locks" / "GPU-bbbb.0.lock").is_file()
    assert "GPU slot: cuda:1 (GPU-bbbb), slot 1 of 1" in capsys.readouterr().err
    assert rd.device_report().startswith("device: cuda (held: cuda:1 slot 1)")


def test_pick_device_without_slots_is_unchanged(fake_cuda, tmp_path):
    """Library use (slots off): the plain choice, no lock files."""
    import torch

    assert rd.pick_device("auto") == torch.device("cuda")
    assert rd.pick_device("cuda:1") == torch.device("cuda:1")
    assert fake_cuda["set_device"] == [] and not (tmp_path / "locks").exists()
    with pytest.raises(ValueError, match="unknown device"):
        rd.pick_device("tpu")


def test_explicit_cuda_index_is_checked(fake_cuda):
    rd.use_gpu_slots()
    with pytest.raises(ValueError, match="2 CUDA device"):
        rd.pick_device("cuda:2")
    import torch

    assert rd.pick_device("cuda:1") == torch.device("cuda:1")
    assert list(rd._held) == [1]


def test_gpu_slots_scope_releases_and_restores(fake_cuda, tmp_path):
    """rra.cli.main runs a stage inside gpu_slots(): the slot is held during the stage and
    given back after it, so a process running several stages (a test session) never keeps a
    GPU from the jobs of a workflow it starts."""
    with rd.gpu_slots():
        rd.pick_device("auto")
        assert list(rd._held) == [0]
        with pytest.raises(TimeoutError):  # another job cannot take GPU 0 meanwhile
            rd.claim_gpu_slot(["GPU-aaaa"], directory=tmp_path / "locks", poll=0.05, timeout=0.2)
        assert "held: cuda:0 slot 1" in rd.device_report()
    assert rd._held == {} and rd._slots_enabled is False
    rd.claim_gpu_slot(["GPU-aaaa"], directory=tmp_path / "locks", timeout=0)
