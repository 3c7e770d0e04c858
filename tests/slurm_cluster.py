"""A one-node Slurm cluster on this machine, for tests of the SLURM executor profile.

munged, slurmctld and slurmd run in the foreground as children of the test process, with every
file (munge key and socket, slurm.conf, gres.conf, state, spool, logs, pid files) under one
temporary directory and ports picked free: nothing of the machine's own configuration is read
or changed, and :meth:`LocalSlurm.stop` ends exactly the processes :meth:`LocalSlurm.start`
started. Needs root (slurmd starts jobs as their user) and Debian's ``slurmctld``, ``slurmd``,
``slurm-client`` and ``munge`` packages (:func:`ensure_packages` installs them with apt-get).

The cluster: one node with the machine's CPUs and memory (``slurmd -C``), one default partition,
no accounting database (``accounting_storage/none``: job states come from ``squeue``, kept for
``MinJobAge`` = 600 s after a job ends), no cgroups (``proctrack/linuxproc``, ``task/none``),
and ``gpus`` fake GPUs: gres ``gpu`` backed by character devices ``nvidia0``, ``nvidia1``, …
(device numbers of ``/dev/null``) in the temporary directory,
so Slurm allocates GPUs by id and sets ``CUDA_VISIBLE_DEVICES`` in a job exactly as on a GPU
node, while the job itself finds no CUDA and runs on the CPU.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

#: the Debian packages that provide the daemons and client commands
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "munged")
#: client commands run through a wrapper that names this cluster's slurm.conf
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel", "sacct", "sacctmgr", "sshare")
NODE = "rranode"
PARTITION = "rra"


def missing_commands() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [c for c in COMMANDS if shutil.which(c, path=path) is None]


def ensure_packages() -> str | None:
    """Install the Slurm and munge packages when missing; return why not, or None when present."""
    if not missing_commands():
        return None
    if os.geteuid() != 0:
        return f"Slurm commands {missing_commands()} missing and not root (apt-get needs root)"
    if shutil.which("apt-get") is None:
        return f"Slurm commands {missing_commands()} missing and no apt-get on this machine"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(install, capture_output=True, text=True, env=env)
    if proc.returncode != 0:  # stale package lists: update once, then retry
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env)
        proc = subprocess.run(install, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or missing_commands():
        return (f"apt-get install {' '.join(PACKAGES)} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


class LocalSlurm:
    """One slurmctld and one slurmd (node :data:`NODE`) on localhost, files under ``root``."""

    def __init__(self, root: Path, gpus: int = 2):
        self.root = Path(root)
        self.gpus = gpus
        self.procs: list[subprocess.Popen] = []
        self.conf = self.root / "slurm.conf"
        self.bin = self.root / "bin"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf),
                        PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")

    # -- files ------------------------------------------------------------------------------
    def _node_line(self) -> str:
        """This machine's CPUs and memory as slurmd sees them (``slurmd -C``), as node NODE."""
        out = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True,
                             check=True).stdout
        line = next(l for l in out.splitlines() if l.startswith("NodeName="))
        fields = dict(f.split("=", 1) for f in line.split())
        fields["NodeName"] = NODE
        fields["RealMemory"] = str(int(fields["RealMemory"]) - 512)  # headroom for the OS
        return " ".join(f"{k}={v}" for k, v in fields.items())

    def _write_files(self) -> None:
        r = self.root
        for d in ("munge", "state", "spool", "log", "dev"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        for i in range(self.gpus):  # character devices (slurmd checks), same numbers as /dev/null
            dev = r / "dev" / f"nvidia{i}"
            if not dev.exists():
                os.mknod(dev, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        host = socket.gethostname()
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        lines = [
            "ClusterName=rratest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r}/munge/munge.socket",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU_Memory",
            "SchedulerType=sched/backfill",
            "MinJobAge=600",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "KillWait=5",
            *(["GresTypes=gpu"] if self.gpus else []),
            f"{self._node_line()}{gres} NodeHostname={host} NodeAddr=127.0.0.1 State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        if self.gpus:
            (r / "gres.conf").write_text(
                "AutoDetect=off\n"
                f"NodeName={NODE} Name=gpu File={r}/dev/nvidia[0-{self.gpus - 1}]\n")

    def _write_wrappers(self) -> None:
        """Client commands that read this cluster's slurm.conf. The SLURM_CONF variable alone is
        not enough: the executor's job step drops every SLURM_* variable before it calls `srun`
        (a real cluster's config sits at the default path, so there that is harmless)."""
        self.bin.mkdir(parents=True, exist_ok=True)
        for name in CLIENTS:
            real = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
            if real is None:
                continue
            w = self.bin / name
            w.write_text(f"#!/bin/sh\nSLURM_CONF={self.conf} exec {real} \"$@\"\n")
            w.chmod(0o755)

    # -- processes --------------------------------------------------------------------------
    def _spawn(self, *cmd: str, log: str) -> subprocess.Popen:
        out = open(self.root / "log" / log, "ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                stdin=subprocess.DEVNULL)
        out.close()
        self.procs.append(proc)
        return proc

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, check=check)

    def _wait(self, what: str, ready, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited ({p.returncode}) while waiting for "
                                       f"{what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            parts.append(f"== {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def start(self) -> "LocalSlurm":
        self._write_files()
        self._write_wrappers()
        r = self.root
        sock = r / "munge" / "munge.socket"
        self._spawn(_sbin("munged"), "--foreground", "--force", f"--socket={sock}",
                    f"--key-file={r}/munge/munge.key", f"--log-file={r}/log/munged.log",
                    f"--pid-file={r}/munge/munged.pid", f"--seed-file={r}/munge/munged.seed",
                    log="munged.out")
        self._wait("munged", sock.exists)
        self._spawn(_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf), log="slurmctld.out")
        self._wait("slurmctld", lambda: self.run("scontrol", "ping", check=False).returncode == 0)
        self._spawn(_sbin("slurmd"), "-D", "-N", NODE, "-f", str(self.conf), log="slurmd.out")

        def idle() -> bool:
            out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()
            return bool(out) and all(s.rstrip("*") in ("idle", "mixed", "allocated") for s in out)

        self._wait("node " + NODE + " idle", idle)
        return self

    def stop(self) -> None:
        """Cancel the jobs, then end slurmd, slurmctld and munged (the processes started here)."""
        if any(p.poll() is None for p in self.procs):
            self.run("scancel", "--full", "-p", PARTITION, check=False)
            end = time.monotonic() + 20
            while time.monotonic() < end:
                q = self.run("squeue", "-h", "-t", "PD,R,CG", "-o", "%i", check=False)
                if q.returncode != 0 or not q.stdout.strip():
                    break
                time.sleep(0.5)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.procs.clear()
