"""``grail-cluster repair-ledger RUN``: rebuild a lost or damaged ``ledger.sqlite``.

The ledger is a record, not the truth: plan.json says what the run is, the success markers say what
finished, and the scheduler says what is still queued or how the rest ended. The rebuild asks each of
them once (the scheduler through its backend's ``find_run_jobs``, by the job names ``<run_id>:<stage>:
<chunk>[:r<round>]`` that submission gives every job) and loses nothing that finished: a shard with a valid
marker is done, a job still queued or running is re-attached (status and cancel keep working on it),
a job that ended is recorded with its scheduler state, and every other shard is ``missing-output``
for ``resubmit``. The damaged file is renamed aside (``ledger.sqlite.corrupt-<time>``), never deleted.
What is lost with it: earlier attempts' history, events, and failure signatures (logs still hold them).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from grail_cluster.backends import get_backend
from grail_cluster.backends.base import FoundJob
from grail_cluster.backends.groups import compress_ranges
from grail_cluster.backends.refresh import output_roots
from grail_cluster.core.errors import ConfigError, GrailError
from grail_cluster.core.ledger import LEDGER_FILE, SCHEMA_VERSION, Ledger, submit_lock
from grail_cluster.core.markers import marker_problem, read_marker
from grail_cluster.core.plan import PLAN_FILE, RunPlan
from grail_cluster.core.states import ACTIVE, JobState, ShardState
from grail_cluster.stages import registry


def ledger_sound(plan: RunPlan) -> str | None:
    """Why the run's ledger cannot be used, or None when it opens and belongs to this plan."""
    try:
        with Ledger(plan.run_dir, create=False) as ledger:
            ledger.check_plan(plan.plan_hash, Path(plan.run_dir) / PLAN_FILE)
    except GrailError as exc:
        return exc.problem
    return None


def set_aside(run_dir: Path, label: str) -> Path | None:
    """Rename the ledger (and its WAL and shared-memory files) to ``ledger.sqlite.<label>-<time>``."""
    path = run_dir / LEDGER_FILE
    if not path.exists() and not path.is_symlink():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir / f"{LEDGER_FILE}.{label}-{stamp}"
    n = 1
    while target.exists():
        target = run_dir / f"{LEDGER_FILE}.{label}-{stamp}.{n}"
        n += 1
    for suffix in ("-wal", "-shm"):
        side = run_dir / f"{LEDGER_FILE}{suffix}"
        if side.exists():
            os.replace(side, f"{target}{suffix}")
    os.replace(path, target)
    return target


def repair(plan: RunPlan, *, force: bool = False) -> dict[str, Any]:
    """Rebuild the ledger; returns what was found (counts, re-attached jobs, where the old file went)."""
    run_dir = Path(plan.run_dir)
    backend = get_backend(plan.backend)
    if not backend.capabilities.finds_jobs:
        raise ConfigError(f"repair-ledger rebuilds SLURM and local runs; this run uses cluster={plan.backend}",
                          fix="for Kubernetes, the in-cluster driver's ledger is the record: see docs/kubernetes.md")
    with submit_lock(run_dir):
        problem = ledger_sound(plan)
        if problem is None and not force:
            return {"repaired": False, "reason": "the ledger is sound; nothing to repair (--force rebuilds it anyway)"}
        found = backend.find_run_jobs(plan, registry.arrays(plan))
        aside = set_aside(run_dir, "corrupt" if problem else "replaced")
        summary = _rebuild(plan, found.jobs, found.rounds)
        summary.update(repaired=True, problem=problem, kept_aside=str(aside) if aside else None,
                       scheduler_calls=dict(backend.calls))
        return summary


def _rebuild(plan: RunPlan, found: list[FoundJob], rounds: dict[tuple[str, int], int]) -> dict[str, Any]:
    """``rounds``: shards that ran in a round whose job no scheduler remembers (the local runner's)."""
    roots = output_roots(plan)
    counts: dict[str, int] = {}
    attached: list[str] = []
    with Ledger(plan.run_dir) as ledger:
        ledger.set_meta("plan_hash", plan.plan_hash)
        ledger.set_meta("backend", plan.backend)
        ledger.set_meta("schema_version", SCHEMA_VERSION)
        covering: dict[tuple[str, int], tuple[FoundJob, int | None]] = {}
        for job in found:  # in round order: a later round's job replaces an earlier one per shard
            indices = sorted({i for t in job.tasks if (i := job.index(t)) is not None and i < plan.stage(job.stage).size})
            if not indices:
                continue
            tasks = sorted(t for t in job.tasks if t is not None)
            ledger.record_job(job_id=job.job_id, backend=plan.backend, stage=job.stage, chunk=job.chunk,
                              round=job.round, name=job.name, indices=indices, index_offset=job.offset or 0,
                              array_spec=compress_ranges(tasks) if job.array else None, depends=None)
            for t in job.tasks:
                i = job.index(t)
                if i is not None and i < plan.stage(job.stage).size:
                    covering[(job.stage, i)] = (job, t)
        floor = max([j.round + 1 for j in found] + [r + 1 for r in rounds.values()] + [0])
        for st in plan.stages:
            for idx in range(st.size):
                marker = read_marker(plan.run_dir, st.name, idx) or {}
                attempt = marker.get("attempt") if isinstance(marker.get("attempt"), int) else 0
                floor = max(floor, attempt + 1)
                job, task = covering.get((st.name, idx), (None, None))
                info = job.tasks.get(task) if job else None
                problem = marker_problem(plan.run_dir, st.name, idx, plan.plan_hash, roots=roots)
                if problem is None:
                    state, sig = ShardState.DONE, None
                elif info is not None and info.state in ACTIVE:
                    state, sig = info.state, None
                    attached.append(f"{job.job_id}_{task}" if task is not None else job.job_id)
                elif info is not None:
                    state = ShardState.MISSING_OUTPUT if info.state == JobState.COMPLETED else info.state
                    sig = f"ledger rebuilt: the scheduler says {info.sched_state} and {problem}"
                elif (st.name, idx) in rounds:
                    state, sig = ShardState.MISSING_OUTPUT, f"ledger rebuilt: ran in round {rounds[(st.name, idx)]}, but {problem}"
                    attempt = rounds[(st.name, idx)]
                else:
                    state, sig = ShardState.MISSING_OUTPUT, f"ledger rebuilt: no scheduler job found and {problem}"
                ledger.restore_shard(st.name, idx, job.round if job else attempt, job.job_id if job else None, state,
                                     sched_state=info.sched_state if info else None,
                                     exit_code=info.exit_code if info else None, node=info.node if info else None,
                                     elapsed=info.elapsed if info else None, signature=sig)
                counts[str(state)] = counts.get(str(state), 0) + 1
        ledger.set_meta("round_floor", floor)
        for job in found:  # earlier attempts keep how they ended, as far as the scheduler remembers
            for t, info in job.tasks.items():
                i = job.index(t)
                if i is not None and covering.get((job.stage, i), (None,))[0] is not job:
                    ledger.db.execute("UPDATE attempts SET state=?, sched_state=?, exit_code=?, elapsed=? "
                                      "WHERE stage=? AND idx=? AND attempt=? AND job_id=?",
                                      (ShardState.MISSING_OUTPUT if info.state == JobState.COMPLETED else info.state,
                                       info.sched_state, info.exit_code, info.elapsed, job.stage, i, job.round,
                                       job.job_id))
        current = {(s.stage, s.idx): s for s in ledger.shards()}
        for job in ledger.jobs():
            if all(current[(job.stage, i)].state not in ACTIVE or current[(job.stage, i)].job_id != job.job_id
                   for i in job.indices if (job.stage, i) in current):
                ledger.settle(job.job_id)
        ledger.event("repaired", counts=counts, jobs=[j.job_id for j in found], attached=attached)
    return {"counts": counts, "jobs_found": [{"job_id": j.job_id, "name": j.name} for j in found],
            "attached": attached, "next_round": floor}
