"""A throw-away one-machine Slurm cluster for tests, from Debian's slurmctld/slurmd/slurm-client packages.

``SlurmCluster(root).start()`` writes ``slurm.conf`` under ``root`` (auth/none, cred/none, proctrack/linuxproc,
one node named after this host at 127.0.0.1, free ports), runs ``slurmctld -D -i`` and ``slurmd -D`` with
``SLURM_CONF`` pointing at it, and waits until the node is idle. ``stop()`` ends the two daemons by their PIDs.
Clients (``sbatch``, ``squeue``...) need ``cluster.env`` (it sets ``SLURM_CONF``).

``start()`` raises ``SlurmUnavailable`` with the reason (binaries absent, daemons did not come up) so the fixture
can skip with a clear message.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["SlurmCluster", "SlurmUnavailable", "BINARIES"]

BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here; the message says why and how to get it."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _which(name: str) -> str | None:
    # The daemons live in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin")


def _memory_mb() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 2048


class SlurmCluster:
    """One slurmctld plus one slurmd on this machine, configured under ``root``."""

    def __init__(self, root: Path, *, cpus: int | None = None) -> None:
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs: list[subprocess.Popen] = []
        self.bin = {name: _which(name) for name in BINARIES}

    # ------------------------------------------------------------------------------------------- config
    def write_conf(self) -> Path:
        user = getpass.getuser()
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        (self.root / "spool").mkdir(parents=True, exist_ok=True)
        memory = max(512, _memory_mb() - 1024)
        lines = [
            "ClusterName=wsitest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/none",
            "CredType=cred/none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            # Backfill every second, not every 30: a pending array task or dependent job starts as soon as it can
            # (a chain of three echo jobs took 42 s, now 10).
            "SchedulerParameters=bf_interval=1",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "KillWait=5",
            "MinJobAge=600",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'slurmd.log'}",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        return self.conf

    # ------------------------------------------------------------------------------------------- life cycle
    def start(self, timeout: float = 60.0) -> SlurmCluster:
        missing = [name for name, path in self.bin.items() if path is None]
        if missing:
            raise SlurmUnavailable(
                f"Slurm is not installed (missing {', '.join(missing)}); "
                "install it with `apt-get install -y slurmctld slurmd slurm-client`"
            )
        self.write_conf()
        for daemon, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D"])):
            log = (self.root / f"{daemon}.stdout").open("w")
            proc = subprocess.Popen(
                [self.bin[daemon], *args, "-f", str(self.conf)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._procs.append(proc)
            time.sleep(0.5)
        try:
            self._wait_idle(timeout)
        except SlurmUnavailable:
            self.stop()
            raise
        return self

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{proc.args[0]} exited with {proc.returncode}: {self.log_tail()}")
            result = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            state = result.stdout.strip()
            if state.rstrip("*") == "idle":
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"the Slurm node is not idle after {timeout:.0f}s (state {state!r}): {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.is_file():
                parts.append(f"{name}: " + " | ".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "; ".join(parts) or "no logs"

    def stop(self) -> None:
        """Cancel what is left and end the daemons this object started, by PID."""
        if self._procs and all(proc.poll() is None for proc in self._procs):
            self.run("scancel", "--full", "--user", getpass.getuser(), check=False)
        for proc in reversed(self._procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        self._procs.clear()

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------- clients
    def run(self, command: str, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        binary = self.bin.get(command) or _which(command) or command
        return subprocess.run(
            [binary, *args], env=self.env, capture_output=True, text=True, check=check, timeout=timeout
        )

    def wait_all(self, timeout: float = 300) -> None:
        """Wait until the queue is empty."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-o", "%i").stdout.strip():
                return
            time.sleep(1)
        raise TimeoutError(f"Slurm jobs still queued after {timeout:.0f}s: {self.run('squeue').stdout}")

    def job_states(self, job_id: str) -> dict[str, str]:
        """``{job_id[_task]: state}`` from ``scontrol show job`` (kept for ``MinJobAge`` seconds after the end)."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        states = {}
        for line in out.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            key = fields.get("JobId", "")
            if fields.get("ArrayTaskId"):
                key = f"{fields.get('ArrayJobId')}_{fields['ArrayTaskId']}"
            states[key] = fields.get("JobState", "")
        return states
