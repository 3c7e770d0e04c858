"""Copies of this checkout as projects of their own (git repo, tiny study as the default config)
for the tests that run the whole workflow through DVC or a cluster: tests/test_dvc.py and
tests/test_cluster.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from rra.config import merge

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: what a project needs to run the study (the package itself is installed in the venv)
COPY = ("Snakefile", "dvc.yaml", ".dvcignore", "rules", "rra", "config", "envs", "profiles",
        ".dvc/config", ".gitignore", "reports/README.md")
LENET = {"model": "lenet5", "attention": ["none"], "augmentation": ["none"], "seeds": [0]}


def sh(cwd: Path, *cmd: str, env: dict | None = None) -> str:
    """Run ``cmd`` in ``cwd`` with this venv's tools first on PATH; stdout + stderr, or an
    AssertionError with their tails."""
    base = dict(env or os.environ)
    base.update(PATH=f"{BIN}{os.pathsep}{base['PATH']}", DVC_NO_ANALYTICS="1",
                GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                GIT_COMMITTER_EMAIL="t@t")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=base)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


def small_study() -> dict:
    """The tiny study (config/test.yaml over config/config.yaml) cut to one LeNet-5 training: its
    kNN analyses, and of the layer analyses E7's translation maps only (one layers job, so the
    rule runs; tests/test_workflow.py runs all of E7-E9 and E11's placement)."""
    cfg = merge(yaml.safe_load((ROOT / "config/config.yaml").read_text()),
                yaml.safe_load((ROOT / "config/test.yaml").read_text()))
    cfg["runs"] = [LENET]
    cfg["experiments"]["E7"]["runs"] = [LENET]
    cfg["experiments"]["E8"]["enabled"] = False
    cfg["experiments"]["E9"]["enabled"] = False
    cfg["experiments"]["E11"]["enabled"] = False  # its own runs; tests/test_workflow.py runs it
    return cfg


def copy_checkout(dest: Path, config: dict) -> Path:
    """``dest``: a git repository holding :data:`COPY` of this checkout, with ``config`` as its
    config/config.yaml, committed."""
    for item in COPY:
        src, dst = ROOT / item, dest / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    (dest / "config/config.yaml").write_text(yaml.safe_dump(config))
    sh(dest, "git", "init", "-q")
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-qm", "tiny study")
    return dest
