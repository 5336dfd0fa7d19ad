"""SLURM's queue and accounting lines as data: squeue/sacct rows, job and array task ids, durations,
and SLURM's job states as task states. Pure parsing: nothing here calls the scheduler.

Every parser skips what is not one allocation of a job (job steps, heterogeneous components,
truncated or foreign lines) instead of failing: squeue and sacct list other users' jobs too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from grail_cluster.core.ledger import JobRow
from grail_cluster.core.states import JobState

_J = JobState
# SLURM job states -> task states (COMPLETED is settled by the marker: done or missing-output).
STATE_MAP = {
    "PENDING": _J.PENDING, "REQUEUED": _J.PENDING, "REQUEUE_HOLD": _J.PENDING, "REQUEUE_FED": _J.PENDING,
    "CONFIGURING": _J.PENDING, "SUSPENDED": _J.PENDING, "RESIZING": _J.PENDING, "PREEMPTED": _J.PENDING,
    "RUNNING": _J.RUNNING, "COMPLETING": _J.RUNNING, "STAGE_OUT": _J.RUNNING, "SIGNALING": _J.RUNNING,
    "COMPLETED": _J.COMPLETED, "FAILED": _J.FAILED, "BOOT_FAIL": _J.FAILED, "DEADLINE": _J.TIMEOUT,
    "CANCELLED": _J.CANCELLED, "REVOKED": _J.CANCELLED, "TIMEOUT": _J.TIMEOUT, "NODE_FAIL": _J.NODE_FAIL,
    "OUT_OF_MEMORY": _J.OUT_OF_MEMORY, "SPECIAL_EXIT": _J.FAILED,
}


def parse_duration(text: str) -> float | None:
    """SLURM's [D-]HH:MM:SS / MM:SS.mmm to seconds; None for anything else."""
    if not text or text in ("INVALID", "UNLIMITED", "Partition_Limit"):
        return None
    try:
        days = 0
        if "-" in text:
            d, text = text.split("-", 1)
            days = int(d)
        parts = [float(p) for p in text.split(":")]
        if len(parts) > 3:
            return None
        while len(parts) < 3:
            parts.insert(0, 0.0)
    except ValueError:
        return None
    h, m, s = parts
    return days * 86400 + h * 3600 + m * 60 + s


def expand_task_ids(spec: str) -> list[int]:
    """``[0-3,7%4]`` or ``5`` -> task ids."""
    spec = spec.strip("[]").split("%", 1)[0]
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


# The name goes last in both formats: another user's job name may hold the separator.
QUEUE_FORMAT = "%i|%T|%M|%N|%r|%j"
ACCT_FIELDS = "JobID,State,ExitCode,Elapsed,NodeList,JobName"
# The ledger keeps a job whose id the scheduler handed to a later job of this run under
# ``<id>~<n>`` (core/ledger.record_job); the scheduler's id is the part before it.
RETIRED = "~"
_JOB_ID = re.compile(r"(\d+)(?:_(\d+|\[[\d,%-]+\]))?")


def sched_id(job_id: str) -> str:
    """The scheduler's id of a ledger job (a retired ``<id>~<n>`` key names the same scheduler id)."""
    return job_id.split(RETIRED, 1)[0]


@dataclass(frozen=True)
class Row:
    """One squeue or sacct line: an allocation (a job, an array task, or a compressed range of
    pending array tasks) as the scheduler lists it."""

    job_id: str  # the array job's id, without the task
    tasks: tuple[int | None, ...]  # array task ids, (None,) for a plain job
    name: str
    state: str  # SLURM's word ("CANCELLED by 0" -> "CANCELLED")
    exit_code: str | None
    elapsed: float | None
    node: str | None
    reason: str = ""  # squeue's %r: why a pending job waits (sacct rows: empty)

    @property
    def held(self) -> bool:
        """Pending with a hold that only a release ends (``JobHeldAdmin``, ``launch failed requeued
        held`` after a controller crash or a launch failure): it would wait forever."""
        return self.state in ("PENDING", "REQUEUE_HOLD") and "held" in self.reason.lower()


def split_job_id(text: str) -> tuple[str, tuple[int | None, ...]] | None:
    """``123``, ``123_4``, ``123_[0-3,7%2]`` -> (id, task ids); None for job steps (``123.batch``),
    heterogeneous components (``123+0``) and anything else that is not one allocation."""
    m = _JOB_ID.fullmatch(text.strip())
    if not m:
        return None
    if m.group(2) is None:
        return m.group(1), (None,)
    try:
        tasks = tuple(expand_task_ids(m.group(2)))
    except ValueError:
        return None
    return (m.group(1), tasks) if tasks else None


def _node(text: str) -> str | None:
    text = text.strip()
    return None if text in ("", "None assigned") or text.startswith("(") else text


def parse_queue(text: str) -> list[Row]:
    """squeue ``-o QUEUE_FORMAT`` lines; lines that are not one allocation are skipped."""
    rows = []
    for line in text.splitlines():
        parts = line.split("|", 5)
        if len(parts) < 6 or (ids := split_job_id(parts[0])) is None:
            continue
        state = (parts[1].split() or [""])[0]
        rows.append(Row(ids[0], ids[1], parts[5].strip(), state, None, parse_duration(parts[2].strip()), _node(parts[3]),
                        parts[4].strip()))
    return rows


def parse_accounting(text: str) -> list[Row]:
    """sacct ``-P -o ACCT_FIELDS`` lines; job steps and foreign lines are skipped."""
    rows = []
    for line in text.splitlines():
        parts = line.split("|", 5)
        if len(parts) < 6 or (ids := split_job_id(parts[0])) is None:
            continue
        state = (parts[1].split() or [""])[0]  # "CANCELLED by 0"
        rows.append(Row(ids[0], ids[1], parts[5].strip(), state, parts[2].strip() or None,
                        parse_duration(parts[3].strip()), _node(parts[4])))
    return rows


def task_keys(job: JobRow) -> list[int | None]:
    """The array task ids of a ledger job's shards (None for a plain job)."""
    return [i - job.index_offset for i in job.indices] if job.array_spec else [None]
