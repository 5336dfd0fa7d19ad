"""The sweep ledger: ``<state_dir>/ledger.jsonl``, one JSON line per event, appended only; a job's
record is its last line. The launcher alone writes it; jobs write only their result file.

Not the run ledger (:mod:`grail_cluster.core.ledger`, sqlite): a Hydra job is keyed by its
overrides, config and code and may be refused or lost, which that schema's (stage, index) shards and
state set do not hold. The one-submitter lock is the run ledger's.

State machine of a job::

    (none) -> submitted -> done | failed | lost      (failed/lost/none -> submitted, attempt + 1)
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import GrailError
from grail_cluster.core.ledger import submit_lock
from grail_cluster.launchers.errors import LauncherError
from grail_cluster.launchers.payloads import result_file

LEDGER_FILE = "ledger.jsonl"


@dataclass
class SweepJob:
    """A job of the batch being launched: its number in the sweep, overrides, key, last record."""

    num: int
    overrides: list[str]
    key: str
    record: dict[str, Any] | None = field(default=None, repr=False)


class SweepLedger:
    """Each line goes out in one ``write`` on an O_APPEND descriptor and is fsynced; a line cut
    short by a crash is skipped when reading. ``locked()`` keeps two launchers off one sweep."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.path = state_dir / LEDGER_FILE

    def records(self) -> dict[int, dict[str, Any]]:
        current: dict[int, dict[str, Any]] = {}
        with contextlib.suppress(FileNotFoundError), open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and isinstance(event.get("num"), int):
                    current[event["num"]] = event
        return current

    def append(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for event in events:
                os.write(fd, (json.dumps(event, sort_keys=True, default=str) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(submit_lock(self.state_dir))
            except GrailError:  # its fix speaks of grail-cluster run's --wait
                raise LauncherError("another grail launcher is running this sweep right now",
                                    path=self.state_dir,
                                    fix="wait for it to return, or give this sweep its own "
                                        "hydra.sweep.dir") from None
            yield


def submitted_event(job: SweepJob, *, code: dict[str, Any] | None, backend: str, sub: str, index: int,
                    sched_id: str, **extra: Any) -> dict[str, Any]:
    """The ledger line of a job handed to the scheduler (attempt + 1 over its last record)."""
    attempt = int(job.record.get("attempt", 0)) + 1 if job.record else 1
    return {"t": time.time(), "num": job.num, "key": job.key, "overrides": job.overrides, "code": code,
            "state": "submitted", "attempt": attempt, "backend": backend, "sub": sub, "index": index,
            "sched_id": sched_id, "result": str(result_file(f"results/{sub}", index)), **extra}


def settled_event(record: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The ledger line saying how a submitted job ended (with its return value or error, short)."""
    status = result.get("status")
    state = "done" if status == "completed" else "lost" if status == "lost" else "failed"
    event = {**record, "t": time.time(), "state": state}
    if state == "done":
        event["return"] = result.get("return")
    else:
        err = result.get("error") or {}
        event["error"] = {"type": err.get("type"), "message": str(err.get("message", ""))[:2000]}
    return event
