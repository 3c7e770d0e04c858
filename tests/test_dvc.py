"""DVC and Snakemake agree: `dvc repro` runs the study, `dvc status` and `snakemake -n` report the
same state before and after a config edit, and a local remote round-trips the artifacts."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from projects import BIN, copy_checkout, small_study, sh  # noqa: E402  (tests/ helper)

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of this checkout as its own git repo, whose default config is the small study."""
    return copy_checkout(tmp_path / "proj", small_study())


def test_dvc_and_snakemake_agree(project, tmp_path):
    dvc = str(BIN / "dvc")
    sh(project, dvc, "repro")
    assert (project / "results/mnist5k/lenet5-none-none-s0/model.pt").is_file()
    assert "up to date" in sh(project, dvc, "status")
    assert "Nothing to be done" in sh(project, str(BIN / "snakemake"), "-n")
    assert (project / "reports/index.html").is_file()
    shown = sh(project, dvc, "metrics", "show")
    assert "lenet5-none-none-s0.eval_acc" in shown, shown

    cfg = yaml.safe_load((project / "config/config.yaml").read_text())
    cfg["knn"]["k"] = [3, 6]
    (project / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    status = sh(project, dvc, "status")
    assert "changed deps" in status and "config/config.yaml" in status
    plan = sh(project, str(BIN / "snakemake"), "-n")
    assert "train" not in plan.split("Job stats:")[1].split("total")[0]
    out = sh(project, dvc, "repro")
    assert "rule train" not in out and "rule knn" in out
    assert "up to date" in sh(project, dvc, "status")

    # reports/metrics.json is a git-tracked DVC metric: a training change shows in `dvc metrics diff`
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "study")
    cfg["training"]["lr"] = 0.01
    (project / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    out = sh(project, dvc, "repro")
    assert "rule train" in out
    diff = sh(project, dvc, "metrics", "diff")
    assert "lenet5-none-none-s0.eval_acc" in diff, diff

    store = tmp_path / "store"
    sh(project, dvc, "remote", "add", "-d", "local", str(store))
    sh(project, dvc, "push")
    model = project / "results/mnist5k/lenet5-none-none-s0/model.pt"
    digest = model.read_bytes()
    shutil.rmtree(project / "results")
    shutil.rmtree(project / ".dvc/cache")
    sh(project, dvc, "pull")
    assert model.read_bytes() == digest
