"""Python handle on the multi-node cluster of ``multi.sh``: the environment its clients need, and
the faults tests inject (a daemon stopped, killed or restarted; a host that loses power)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MULTI_SH = Path(__file__).with_name("multi.sh")


def state_dir() -> Path:
    return Path(os.environ.get("GRAIL_SLURM_MULTI_STATE") or Path(os.environ.get("TMPDIR", "/tmp")) / "grail-slurm-multi")


@dataclass
class MultiNodeCluster:
    """The cluster's clients run in the root namespace with ``env`` (SLURM_CONF); its nodes are
    ``gnode1..gnodeN`` (hosts ``node1..nodeN`` for the fault verbs)."""

    nodes: int = 2
    env: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.env = {"SLURM_CONF": str(state_dir() / "etc" / "slurm.conf")}

    def script(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.run(["bash", str(MULTI_SH), *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"multi.sh {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc.stdout + proc.stderr

    def client(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env}, stdin=subprocess.DEVNULL)

    # -- the controller host
    def kill_slurmctld(self) -> None:
        self.script("kill", "slurmctld")

    def stop_slurmctld(self) -> None:
        self.script("stop", "slurmctld")

    def start_slurmctld(self) -> None:
        self.script("start", "slurmctld")

    def stop_slurmdbd(self) -> None:
        self.script("stop", "slurmdbd")

    def start_slurmdbd(self) -> None:
        self.script("start", "slurmdbd")

    # -- compute hosts (node1..N, Slurm names gnode1..N)
    def kill_host(self, host: str) -> None:
        self.script("kill-host", host)

    def start_slurmd(self, host: str) -> None:
        self.script("start", "slurmd", host)

    def node_states(self) -> dict[str, str]:
        out = self.client("sinfo", "-h", "-N", "-o", "%N %t").stdout
        return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)

    def wait_nodes(self, want: set[str] | None = None, timeout: float = 120) -> dict[str, str]:
        """Until every node is usable (idle/mix/alloc without '*'); the states at the end."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.node_states()
            usable = {n for n, s in states.items() if s in ("idle", "mix", "alloc")}
            if len(usable) >= self.nodes and (want is None or want <= usable):
                return states
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes not usable after {timeout:.0f} s: {states}")
            time.sleep(0.5)

    def answers(self) -> bool:
        try:
            proc = self.client("scontrol", "ping", timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0 and "UP" in proc.stdout

    def heal(self) -> None:
        """Every daemon running, no job left, every node back (around a fault test, pass or fail): a
        controller crash leaves held jobs and a node drained "Duplicate jobid" behind."""
        self.script("up", timeout=300)
        if self.client("squeue", "-h", "-o", "%A").stdout.split():
            self.client("scancel", "--user=root")
            deadline = time.monotonic() + 60
            while self.client("squeue", "-h", "-o", "%A").stdout.split() and time.monotonic() < deadline:
                time.sleep(0.5)
        bad = [n for n, s in self.node_states().items() if s.rstrip("*~#") in ("drain", "drng", "down")]
        if bad:
            self.client("scontrol", "update", f"NodeName={','.join(bad)}", "State=RESUME")
        self.wait_nodes()
