"""Refresh the ledger from markers and the scheduler: the one way backend task states become shard
states.

A refresh costs O(1) scheduler calls whatever the shard count: one ``squeue`` for everything still
queued or running, and one ``sacct`` only for jobs that left the queue without a valid marker.
Markers decide "done"; a task the scheduler calls COMPLETED without a marker is ``missing-output``.

"Done" must stay true: every refresh re-checks each done shard's marker and the outputs it lists
(a stat each, no scheduler call; ``verify`` re-hashes them), and a shard whose evidence is gone or
changed becomes ``missing-output`` with the file named, for ``resubmit`` to repair.

A job the scheduler lost (a controller crash: its id vanished or now names another job) leaves its
not-done shards ``lost``, with the backend's reason as signature. A scheduler that does not answer
(:class:`SchedulerUnreachable`) changes nothing the scheduler would have had to confirm: the ledger
keeps its last known states, whose time is kept in the ledger's meta ``states_as_of``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from grail_cluster.backends.base import Backend, SchedulerUnreachable, attempt_logs
from grail_cluster.core.ledger import JobRow, Ledger
from grail_cluster.core.markers import marker_problem, validate_marker
from grail_cluster.core.plan import RunPlan
from grail_cluster.core.signatures import exit_signature, signature
from grail_cluster.core.states import ACTIVE, JobState, ShardState

OWNED_BY_DRIVER = "owned-by-driver"  # reconcile's answer while another process writes the ledger
STATES_AS_OF = "states_as_of"  # ledger meta: when the scheduler last answered a refresh (epoch seconds)


def log_paths(plan: RunPlan, backend: Backend, stage: str, idx: int, attempt: int,
              job: JobRow | None = None) -> list[Path]:
    """The job script's per-attempt logs first, then the scheduler's own files (which catch what
    happened before the script's first line or after it was killed, e.g. the time-limit message)."""
    return attempt_logs(plan.run_dir, stage, idx, attempt) + backend.log_paths(plan, stage, idx, attempt, job)


def output_roots(plan: RunPlan) -> list[str]:
    """Where a marker's absolute outputs may lie: the run dir and the experiment dir(s)."""
    roots = [plan.run_dir, plan.paths["experiment_dir"]]
    if plan.is_sweep:
        roots += [p["experiment_dir"] for p in plan.train["points"]]
    return roots


def recheck_done(plan: RunPlan, ledger: Ledger, *, deep: bool = False) -> list[tuple[str, int, str]]:
    """One pass over the settled shards: a done shard whose marker or outputs are gone or changed
    becomes ``missing-output`` (the signature names the file); a missing-output shard whose marker
    is valid again (files restored) is done. Returns the (stage, index, problem) demoted."""
    roots = output_roots(plan)
    demoted = []
    for s in ledger.shards():
        if s.state == ShardState.DONE:
            problem = marker_problem(plan.run_dir, s.stage, s.idx, plan.marker_hash(s.stage, s.idx), deep=deep, roots=roots)
            if problem:
                ledger.update_shard(s.stage, s.idx, ShardState.MISSING_OUTPUT, signature=f"was done, but {problem}")
                ledger.event("evidence-lost", s.stage, s.idx, s.attempt, problem=problem, deep=deep)
                demoted.append((s.stage, s.idx, problem))
        elif s.state == ShardState.MISSING_OUTPUT and (s.signature or "").startswith("was done, but"):
            # Restored files are re-hashed (few shards): a change only --verify saw keeps its size.
            if marker_problem(plan.run_dir, s.stage, s.idx, plan.marker_hash(s.stage, s.idx), deep=True, roots=roots) is None:
                ledger.update_shard(s.stage, s.idx, ShardState.DONE, signature=None)
                ledger.event("evidence-restored", s.stage, s.idx, s.attempt)
    return demoted


def refresh(plan: RunPlan, ledger: Ledger, backend: Backend, *, verify: bool = False) -> None:
    """Settle what the scheduler finished, then re-check the evidence of everything done.

    :class:`SchedulerUnreachable` is raised after the markers were re-checked (they need no
    scheduler); no shard was moved on the scheduler's word, let alone failed or lost for its silence."""
    try:
        if _settle(plan, ledger, backend) == OWNED_BY_DRIVER:
            return
    except SchedulerUnreachable:
        recheck_done(plan, ledger, deep=verify)
        raise
    recheck_done(plan, ledger, deep=verify)


def states_as_of(ledger: Ledger) -> float | None:
    """When the scheduler last answered a refresh of this ledger (None: never since this version)."""
    value = ledger.meta(STATES_AS_OF)
    return float(value) if isinstance(value, (int, float)) else None


def _settle(plan: RunPlan, ledger: Ledger, backend: Backend) -> str | None:
    unsettled = ledger.jobs(unsettled=True)
    if not unsettled:
        return None
    # local: a dead runner's shards; kubernetes: one snapshot of the run's Jobs and pods, and a
    # driver Job in the cluster that owns the ledger while it runs (then nothing is written here).
    if backend.reconcile(plan, ledger) == OWNED_BY_DRIVER:
        return OWNED_BY_DRIVER
    unsettled = ledger.jobs(unsettled=True)
    if not unsettled:
        return None
    live = backend.live_states(unsettled)
    # One read of every shard row; rows are only written when something changed, so a refresh of a
    # quiet 2,000-shard run is a single query plus the scheduler call.
    shards = {(s.stage, s.idx): s for s in ledger.shards()}
    roots = output_roots(plan)
    unresolved: list[tuple[Any, int, int | None]] = []
    for job in unsettled:
        for idx in job.indices:
            task = idx - job.index_offset if job.array_spec else None
            shard = shards.get((job.stage, idx))
            if shard is None or shard.job_id != job.job_id or shard.state == ShardState.DONE:
                continue  # superseded by a later attempt, or settled
            t = live.get((job.job_id, task))
            if validate_marker(plan.run_dir, job.stage, idx, plan.marker_hash(job.stage, idx), roots=roots):
                ledger.update_shard(job.stage, idx, ShardState.DONE, sched_state=t.sched_state if t else "COMPLETED",
                                    elapsed=t.elapsed if t else shard.elapsed, node=t.node if t else shard.node)
            elif t is not None:
                if (t.state, t.sched_state, t.node) != (shard.state, shard.sched_state, shard.node):
                    ledger.update_shard(job.stage, idx, t.state, sched_state=t.sched_state, elapsed=t.elapsed,
                                        node=t.node)
            elif shard.state in ACTIVE:
                unresolved.append((job, idx, task))
    final = backend.final_states(list({job.job_id: job for job, _, _ in unresolved}.values())) if unresolved else {}
    ledger.set_meta(STATES_AS_OF, time.time())
    for job, idx, task in unresolved:
        t = final.get((job.job_id, task))
        if t is None or t.state in ACTIVE:
            continue  # accounting lags the queue by a second or so; next refresh settles it
        state = ShardState.MISSING_OUTPUT if t.state == JobState.COMPLETED else t.state
        attempt = shards[(job.stage, idx)].attempt
        if state == ShardState.LOST:
            sig = t.why or "the scheduler lost this job"
        else:
            sig = signature(log_paths(plan, backend, job.stage, idx, attempt, job), state) or exit_signature(t.exit_code)
        if state == ShardState.MISSING_OUTPUT:
            sig = "exited 0 but wrote no valid success marker" + (f" ({sig})" if sig else "")
        ledger.update_shard(job.stage, idx, state, sched_state=t.sched_state, exit_code=t.exit_code,
                            elapsed=t.elapsed, node=t.node, signature=sig)
    current = {(s.stage, s.idx): s for s in ledger.shards()}
    for job in unsettled:
        rows = [current.get((job.stage, i)) for i in job.indices]
        if all(s is None or s.job_id != job.job_id or s.state not in ACTIVE for s in rows):
            ledger.settle(job.job_id)
    return None
