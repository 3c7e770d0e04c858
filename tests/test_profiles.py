"""The Snakemake profiles (profiles/slurm, profiles/local): they name only rules that exist, give
the GPU rules a GPU, keep the rules' threads (so a cluster run's outputs equal a local run's,
tests/test_cluster.py), and Snakemake accepts them (dry runs, slow)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROFILES = {name: yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())
            for name in ("slurm", "local")}
GPU_RULES = {"train", "embed", "layers"}  # kNN runs on the CPU (README "On a cluster")


def rule_threads() -> dict[str, int]:
    """Every rule of rules/*.smk with its `threads:` (1 where unset)."""
    rules = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^(?=rule )", smk.read_text())[1:]:
            name = re.match(r"rule (\w+):", block).group(1)
            threads = re.search(r"(?m)^    threads: (\d+)$", block)
            rules[name] = int(threads.group(1)) if threads else 1
    return rules


def test_profiles_name_existing_rules():
    rules = rule_threads()
    assert {"train", "embed", "knn", "metrics", "report"} <= set(rules)
    for name, prof in PROFILES.items():
        for key in ("set-resources", "set-threads"):
            unknown = set(prof.get(key) or {}) - set(rules)
            assert not unknown, f"profiles/{name}: {key} names no rule of rules/*.smk: {unknown}"


def test_slurm_profile_resources():
    prof = PROFILES["slurm"]
    assert prof["executor"] == "slurm" and prof["jobs"] >= 1
    defaults = dict(item.split("=", 1) for item in prof["default-resources"])
    assert int(defaults["mem_mb"]) > 0 and int(defaults["runtime"]) > 0
    res = prof["set-resources"]
    for rule, spec in res.items():
        assert spec["mem_mb"] > 0 and spec["runtime"] > 0, rule
        assert spec.get("gpu", 0) == (1 if rule in GPU_RULES else 0), rule
    # the profile's threads are the rules' own: a cluster run computes what a local run does
    rules = rule_threads()
    drift = {r: (t, rules[r]) for r, t in prof["set-threads"].items() if t != rules[r]}
    assert not drift, f"profiles/slurm set-threads differ from the rules' threads: {drift}"


def test_local_profile_gpu_slots():
    prof = PROFILES["local"]
    assert dict(item.split("=", 1) for item in prof["resources"])["gpu"] == "1"
    assert {r for r, spec in prof["set-resources"].items() if spec.get("gpu")} == GPU_RULES


def test_slurm_plugin_pinned_and_installed():
    lock = dict(line.split("==") for line in (ROOT / "requirements.lock").read_text().split()
                if "==" in line)
    for pkg in ("snakemake-executor-plugin-slurm", "snakemake-executor-plugin-slurm-jobstep"):
        assert metadata.version(pkg) == lock[pkg], pkg
    import snakemake_executor_plugin_slurm  # noqa: F401  (loads with this Snakemake)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["slurm", "local"])
def test_snakemake_accepts_profile(name, tmp_path):
    """A dry run of the tiny study through the profile: Snakemake parses it and plans every job."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
           "--profile", str(ROOT / "profiles" / name), "-n", "--configfile", str(ROOT / "config/test.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train" in proc.stdout and "This was a dry-run" in proc.stdout
