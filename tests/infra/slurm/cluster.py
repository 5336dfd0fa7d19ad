"""Helpers for tests that use the real single-node Slurm cluster of ``up.sh`` (stdlib only).

    from tests.infra.slurm.cluster import ensure_slurm, slurm_is_up, scontrol_config

    ensure_slurm()                    # start it if it is down (installs packages if missing)
    ensure_slurm(max_array_size=4)    # make sure MaxArraySize is 4 (restarts slurmctld+slurmd)

The shell scripts next to this file do the work; see ``up.sh --help``. The cluster's settings
come from the environment (``GRAIL_SLURM_*``), so a restart with another ``max_array_size``
re-renders the rest of the config from the same environment.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
UP_SH = HERE / "up.sh"
DOWN_SH = HERE / "down.sh"
RESTART_SH = HERE / "restart.sh"

#: compact node states (``sinfo -o %t``) in which the node accepts and runs jobs
USABLE_NODE_STATES = frozenset({"idle", "mix", "alloc", "comp"})

__all__ = [
    "DOWN_SH",
    "RESTART_SH",
    "UP_SH",
    "ensure_slurm",
    "node_state",
    "scontrol_config",
    "slurm_is_up",
    "state_dir",
    "stop_slurm",
]


def state_dir() -> Path:
    """The state dir the scripts use (configs, MariaDB data, spool, logs, pid files)."""
    explicit = os.environ.get("GRAIL_SLURM_STATE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("TMPDIR") or "/tmp") / "grail-slurm"


def _slurm_conf_path() -> Path:
    return Path(os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf")


def _controller_address() -> tuple[str, int] | None:
    """(host, port) of slurmctld from slurm.conf, or None if there is no readable slurm.conf."""
    try:
        text = _slurm_conf_path().read_text()
    except OSError:
        return None
    host, port = "localhost", 6817
    for line in text.splitlines():
        key, sep, value = line.split("#", 1)[0].partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            continue
        if key in ("slurmctldhost", "controlmachine") and host == "localhost":
            # "name(addr)" -> addr; first SlurmctldHost line is the primary
            host = value.split("(", 1)[1].rstrip(")") if "(" in value else value
        elif key == "slurmctldport":
            port = int(value.split("-", 1)[0])
    return host, port


def _controller_listening(timeout: float = 1.0) -> bool:
    """Cheap pre-check: sinfo against a stopped slurmctld retries for several seconds."""
    address = _controller_address()
    if address is None:
        return False
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def node_state(timeout: float = 5.0) -> str | None:
    """``sinfo -h -n localhost -o %t`` (e.g. ``idle``), or None if Slurm does not answer."""
    if shutil.which("sinfo") is None or not _controller_listening():
        return None
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-n", "localhost", "-o", "%t"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    lines = proc.stdout.split()
    return lines[0] if lines else None


def slurm_is_up() -> bool:
    """True if slurmctld answers and node ``localhost`` can run jobs."""
    return node_state() in USABLE_NODE_STATES


def scontrol_config() -> dict[str, str]:
    """``scontrol show config`` as a dict (``{"MaxArraySize": "1001", ...}``).

    Raises RuntimeError if scontrol fails. For keys that appear in several sections, the first
    occurrence wins.
    """
    try:
        proc = subprocess.run(
            ["scontrol", "show", "config"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"scontrol show config failed: {exc}") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"scontrol show config failed (rc {proc.returncode}): {proc.stderr.strip()}")
    config: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key or " " in key:
            continue
        config.setdefault(key, value.strip())
    return config


def _run_script(script: Path, args: list[str], env: dict[str, str], timeout: float) -> str:
    try:
        proc = subprocess.run(
            ["bash", str(script), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        raise RuntimeError(f"{script.name} timed out after {timeout:.0f}s:\n{_tail(out or '')}") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed (rc {proc.returncode}):\n{_tail(proc.stdout)}")
    return proc.stdout


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


def ensure_slurm(max_array_size: int | None = None, timeout: float = 600.0) -> None:
    """Makes sure the local cluster is up (and, if given, runs with this MaxArraySize).

    - cluster up and ``max_array_size`` None or already in effect: returns at once;
    - cluster up with another MaxArraySize: runs ``restart.sh`` (slurmctld + slurmd restart;
      running jobs survive);
    - cluster down: runs ``up.sh`` (a cold start installs the Debian packages if missing).

    Raises RuntimeError with the tail of the script's output (which includes the tail of the
    failing daemon's log) on failure.
    """
    env = dict(os.environ)
    wanted: str | None = None
    if max_array_size is not None:
        if int(max_array_size) < 1:
            raise ValueError(f"max_array_size must be >= 1, got {max_array_size}")
        wanted = str(int(max_array_size))
        env["GRAIL_SLURM_MAX_ARRAY_SIZE"] = wanted

    if slurm_is_up():
        if wanted is None:
            return
        try:
            current = scontrol_config().get("MaxArraySize")
        except RuntimeError:
            current = None
        if current == wanted:
            return
        output = _run_script(RESTART_SH, [], env, timeout)
    else:
        output = _run_script(UP_SH, [], env, timeout)

    if not slurm_is_up():
        raise RuntimeError(f"Slurm is not up after the set-up script:\n{_tail(output)}")
    if wanted is not None:
        current = scontrol_config().get("MaxArraySize")
        if current != wanted:
            raise RuntimeError(f"MaxArraySize is {current!r}, wanted {wanted}:\n{_tail(output)}")


def stop_slurm(purge: bool = False, timeout: float = 300.0) -> None:
    """Runs ``down.sh`` (``--purge`` also deletes the state dir and accounting history)."""
    _run_script(DOWN_SH, ["--purge"] if purge else [], dict(os.environ), timeout)
