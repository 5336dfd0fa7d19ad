"""One-line failure signatures from a job's logs: what a person would grep for first."""

from __future__ import annotations

import re
from pathlib import Path

from grail_cluster.core.states import ShardState

TAIL_BYTES = 64 * 1024

JOB_PYTHON = "job.python cannot import grail_cluster"
JOB_PYTHON_FIX = "job.python=/path/to/python-with-grail-cluster"

SLICE_MISMATCH = "slice mismatch"

ENOSPC = "ENOSPC (no space left on device)"
EDQUOT = "EDQUOT (disk quota exceeded)"

# Ordered: the first that matches names the failure.
PATTERNS = [
    # The in-job slice audit stopped SONIC: what it took is not what plan.json gave the rank/shard.
    (SLICE_MISMATCH, re.compile(r"^\[grail\] slice mismatch: ", re.M)),
    # The job template's own check, or a bare `python -m grail_cluster.entry` on an interpreter without
    # grail-cluster (ModuleNotFoundError's wording, quoted or not, and `-m`'s "finding module specification").
    (JOB_PYTHON, re.compile(r"cannot import grail_cluster|No module named '?grail_cluster\b")),
    # A full file system or quota (OSError's strerror, errno, or the data steps' own message): the fix is
    # room on the disk, not a code change; the last error line names the path.
    (ENOSPC, re.compile(r"No space left on device|\bENOSPC\b|\[Errno 28\]", re.I)),
    (EDQUOT, re.compile(r"Disk quota exceeded|\bEDQUOT\b|\[Errno 122\]", re.I)),
    ("OOM", re.compile(r"CUDA out of memory|OutOfMemoryError|oom[-_]kill|Out Of Memory|MemoryError|Killed process", re.I)),
    # bash reporting that a child died of SIGKILL (OOM killer, kill -9, cgroup limit)
    ("killed by signal 9 (SIGKILL)", re.compile(r"line \d+:\s+\d+ Killed\b")),
    ("NCCL timeout", re.compile(r"NCCL.*(timeout|timed out|Watchdog caught collective)", re.I)),
    ("CUDA error", re.compile(r"CUDA error|cudaError|CUBLAS_STATUS|device-side assert", re.I)),
    ("TIMEOUT", re.compile(r"DUE TO TIME LIMIT|TIME LIMIT", re.I)),
    ("NODE_FAIL", re.compile(r"NODE_FAIL|DUE TO NODE FAILURE", re.I)),
    ("PREEMPTED", re.compile(r"DUE TO PREEMPTION", re.I)),
    ("CANCELLED", re.compile(r"\bCANCELLED AT\b", re.I)),
]
_EXCEPTION = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*)$")
_GRAIL_ERROR = re.compile(r"^error: (.*)$")


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def signature(paths: list[Path], state: str | None = None) -> str | None:
    """The failure's one-line signature from the given log files (stderr first), or None."""
    text = "\n".join(_tail(p) for p in paths)
    for name, pattern in PATTERNS:
        if pattern.search(text):
            if name == SLICE_MISMATCH:  # the audit's own line names rank, planned vs taken and T
                line = next(ln for ln in reversed(text.splitlines()) if pattern.search(ln))
                return line.strip().removeprefix("[grail] ")[:400]
            if name == JOB_PYTHON:
                line = next(ln for ln in reversed(text.splitlines()) if pattern.search(ln))
                return f"{JOB_PYTHON} ({line.strip()[:160]}); fix: {JOB_PYTHON_FIX}"
            last = last_error_line(text)
            terse = name in ("TIMEOUT", "CANCELLED") or name.startswith("killed")
            return f"{name}: {last}" if last and not terse else name
    last = last_error_line(text)
    if last:
        return last
    if state == ShardState.TIMEOUT:
        return "TIMEOUT"
    if state == ShardState.NODE_FAIL:
        return "NODE_FAIL"
    return None


def last_error_line(text: str) -> str | None:
    for line in reversed(text.splitlines()):
        m = _EXCEPTION.match(line) or _GRAIL_ERROR.match(line)
        if m:
            return m.group(1).strip()[:200]
    return None


def exit_signature(exit_code: str | int | None) -> str | None:
    """SLURM's "code:signal" (or a shell's 128+N) as words, for failures whose logs say nothing."""
    if exit_code is None:
        return None
    code, _, sig = str(exit_code).partition(":")
    try:
        code_i, sig_i = int(code), int(sig or 0)
    except ValueError:
        return None
    if sig_i:
        return f"killed by signal {sig_i}" + (" (SIGKILL: OOM killer or kill -9?)" if sig_i == 9 else "")
    if code_i > 128:
        return f"killed by signal {code_i - 128}" + (" (SIGKILL: OOM killer or kill -9?)" if code_i == 137 else "")
    if code_i:
        return f"exit code {code_i}"
    return None
