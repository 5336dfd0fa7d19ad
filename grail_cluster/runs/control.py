"""Submit, resubmit and cancel a planned run: the only module that changes scheduler state.

Every call holds the run's submit lock (one submitter per run dir), records each submission in the
ledger right after the scheduler accepts it, and before submitting looks for jobs already queued
under the same names, so a submitter that crashed half-way is reconciled, not doubled.

A round being submitted is marked open in the ledger (meta ``open_round``: its number and selection)
until its last job is recorded; ``run`` (round 0) and ``resubmit`` (any round) finish an open round
first, adopting what the scheduler already has under the round's names and submitting the rest.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grail_cluster.backends import get_backend
from grail_cluster.backends.base import Backend
from grail_cluster.backends.groups import Group, plan_groups
from grail_cluster.backends.refresh import output_roots, refresh
from grail_cluster.core.errors import GrailError
from grail_cluster.core.ledger import Ledger, submit_lock
from grail_cluster.core.markers import retire_marker, validate_marker
from grail_cluster.core.plan import RunPlan
from grail_cluster.core.states import ACTIVE, FAILED, ShardState
from grail_cluster.runs.submission import consumers, downstream_closure
from grail_cluster.stages import registry

OPEN_ROUND = "open_round"
# Test hook, read at the submission edge only (tests/test_submitter_faults.py): with
# GRAIL_TEST_KILL_AFTER_SUBMITS=N this process SIGKILLs itself right after the N-th accepted
# submission, before its ledger write (GRAIL_TEST_KILL_AT=sbatch, the default: the hard case, a job
# the ledger never heard of) or right after it (GRAIL_TEST_KILL_AT=ledger).
KILL_AFTER_ENV, KILL_AT_ENV = "GRAIL_TEST_KILL_AFTER_SUBMITS", "GRAIL_TEST_KILL_AT"
_accepted = 0


def _test_kill_hook(moment: str) -> None:
    if (limit := os.environ.get(KILL_AFTER_ENV)) and _accepted == int(limit) \
            and os.environ.get(KILL_AT_ENV, "sbatch") == moment:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Submitted:
    round: int
    jobs: list[dict[str, Any]]
    adopted: int = 0
    resumed: bool = False  # this call finished a round an interrupted submitter had started

    @property
    def new(self) -> int:
        return sum(1 for j in self.jobs if j.get("how") == "submitted")


def _dependency(group: Group, round_jobs: dict[str, list[tuple[Group, str]]]) -> str | None:
    parts = []
    for dep in group.depends:
        ups = round_jobs.get(dep.stage, [])
        if dep.kind == "aftercorr":
            ids = [jid for g, jid in ups if g.chunk == dep.chunk]
        else:
            ids = [jid for _, jid in ups]
        if ids:
            parts.append(f"{dep.kind}:" + ":".join(ids))
    return ",".join(parts) or None


def _known_to_scheduler(plan: RunPlan, backend: Backend, names: list[str], arrays: dict[str, bool], *,
                        lookup: str) -> dict[str, str]:
    """{name: job id} of this run's jobs the scheduler already has under these names.

    ``lookup`` "full", for the stages of a run: ``find_run_jobs`` (queue and accounting, only jobs
    whose script lies under this run dir) is asked first: ``find_by_name`` sees only the queue, so a
    job the dead submitter queued that has already ended would be submitted again, and it matches any
    run root's job of the same run id. ``find_by_name`` is the fallback when the fuller query cannot
    answer (accounting down; a live local runner). "queue", for a Hydra batch: one ``squeue``, as
    its launcher always did (a sweep's refresh budget allows no accounting call per batch)."""
    if not names:
        return {}
    if lookup == "full" and backend.capabilities.finds_jobs:
        try:
            found = backend.find_run_jobs(plan, arrays)
        except GrailError:
            found = None
        if found is not None:
            ids: dict[str, list[str]] = {}
            for job in found.jobs:
                if job.name in names:
                    ids.setdefault(job.name, []).append(job.job_id)
            # Two jobs of one name only exist if something outside grail-cluster submitted one: the
            # newest is the one later stages must wait on.
            return {name: max(v, key=lambda jid: (len(jid), jid)) for name, v in ids.items()}
    return backend.find_by_name(names)


def _submit_groups(plan: RunPlan, ledger: Ledger, backend: Backend, groups: list[Group], round_: int,
                   arrays: dict[str, bool], *, lookup: str) -> Submitted:
    global _accepted
    spec_dir = Path(plan.paths["specs_dir"]) / backend.name
    names = [g.name(plan.run_id, round_) for g in groups]
    existing = {j.name: j.job_id for j in ledger.jobs()}
    queued = _known_to_scheduler(plan, backend, [n for n in names if n not in existing], arrays, lookup=lookup)
    round_jobs: dict[str, list[tuple[Group, str]]] = {}
    jobs, adopted = [], 0
    backend.prepare(plan, [g.stage for g in groups])
    for group, name in zip(groups, names, strict=True):
        dependency = _dependency(group, round_jobs)
        if name in existing:
            job_id, how = existing[name], "recorded"
        else:
            if name in queued:
                job_id, how = queued[name], "adopted"
                adopted += 1
                ledger.event("adopted", group.stage, None, round_, job_id=job_id, name=name)
            else:
                job_id, how = backend.submit_group(plan, group, name=name, dependency=dependency, attempt=round_,
                                                   spec_dir=spec_dir), "submitted"
                _accepted += 1
                _test_kill_hook("sbatch")
            ledger.record_job(job_id=job_id, backend=backend.name, stage=group.stage, chunk=group.chunk,
                              round=round_, name=name, indices=group.indices, index_offset=group.offset,
                              array_spec=group.array_spec, depends=dependency)
            if how == "submitted":
                _test_kill_hook("ledger")
        round_jobs.setdefault(group.stage, []).append((group, job_id))
        jobs.append({"stage": group.stage, "job_id": job_id, "name": name, "indices": len(group.indices),
                     "array": group.array_spec, "dependency": dependency, "how": how})
    backend.start(plan, ledger, round_)
    return Submitted(round_, jobs, adopted)


def _submit_round(plan: RunPlan, ledger: Ledger, backend: Backend, selected: dict[str, list[int]], round_: int,
                  *, resumed: bool = False) -> Submitted:
    """Submit (or finish submitting) one round of the registry's stages, open in the ledger until its
    last job is recorded, so that a submitter killed half-way leaves a round the next one finishes."""
    arrays = registry.arrays(plan)
    groups = plan_groups(plan, selected, arrays=arrays, max_array_size=_max_array_size(backend, ledger, plan),
                         parallelism=_parallelism(plan))
    ledger.set_meta(OPEN_ROUND, {"round": round_, "selected": selected})
    result = _submit_groups(plan, ledger, backend, groups, round_, arrays, lookup="full")
    ledger.set_meta(OPEN_ROUND, None)
    result.resumed = resumed
    return result


def _open_round(ledger: Ledger) -> tuple[int, dict[str, list[int]]] | None:
    value = ledger.meta(OPEN_ROUND)
    if not value:
        return None
    return int(value["round"]), {k: [int(i) for i in v] for k, v in value["selected"].items()}


def submit_run(plan: RunPlan, *, wait_lock: bool = False, backend: Backend | None = None) -> Submitted:
    """Submit every stage of a freshly planned run; refuses if this run was submitted before."""
    backend = backend or get_backend(plan.backend)
    with submit_lock(plan.run_dir, wait=wait_lock), Ledger(plan.run_dir) as ledger:
        recorded = ledger.meta("plan_hash")
        if recorded and recorded != plan.plan_hash:
            raise GrailError(f"run {plan.run_id} was submitted with another plan ({recorded[:12]})", path=plan.run_dir,
                             fix="start a fresh run with run.id=<new id>; a run dir holds one plan")
        ledger.set_meta("plan_hash", plan.plan_hash)
        ledger.set_meta("backend", plan.backend)
        selected = {st.name: list(range(st.size)) for st in plan.stages}
        open_round = _open_round(ledger)
        recorded = {j.name for j in ledger.jobs()}
        # A ledger written before rounds were marked open shows an interrupted first round by the
        # names it lacks.
        unmarked = not open_round and recorded and not recorded.issuperset(
            g.name(plan.run_id, 0) for g in plan_groups(plan, selected, arrays=registry.arrays(plan),
                                                        max_array_size=_max_array_size(backend, ledger, plan),
                                                        parallelism=_parallelism(plan)))
        if (open_round and open_round[0] == 0) or unmarked:
            # A submitter of this run died half-way: what it queued is kept (by name), the rest is sent.
            return _submit_round(plan, ledger, backend, selected, 0, resumed=True)
        if open_round or recorded:
            raise GrailError(f"run {plan.run_id} was already submitted", path=plan.run_dir,
                             fix=f"see `grail-cluster status {plan.run_dir}`; repair with `grail-cluster resubmit`, "
                                 "or start a fresh run with run.id=<new id>")
        return _submit_round(plan, ledger, backend, selected, 0)


def submit_indices(plan: RunPlan, ledger: Ledger, backend: Backend, selected: dict[str, list[int]], round_: int, *,
                   arrays: dict[str, bool]) -> Submitted:
    """Submit these indices of each stage as round ``round_`` under a submit lock the caller holds:
    how the Hydra launcher sends one batch of a sweep (its stage is not in the stage registry)."""
    groups = plan_groups(plan, selected, arrays=arrays, max_array_size=_max_array_size(backend, ledger, plan),
                         parallelism=_parallelism(plan))
    return _submit_groups(plan, ledger, backend, groups, round_, arrays, lookup="queue")


def _max_array_size(backend: Backend, ledger: Ledger, plan: RunPlan | None = None) -> int | None:
    """``cluster.max_array_size`` if set, else read once per run (``scontrol show config``) and kept
    in the ledger."""
    if not backend.capabilities.chunks_arrays:
        return None
    # Only cluster=slurm has the key; a backend that chunks arrays may still run another cluster's plan (tests).
    configured = getattr(plan.settings.cluster, "max_array_size", None) if plan else None
    if configured:
        return int(configured)
    value = ledger.meta("max_array_size")
    if value is None:
        value = backend.max_array_size()
        ledger.set_meta("max_array_size", value)
    return int(value)


def _parallelism(plan: RunPlan) -> int | None:
    value = getattr(plan.settings.cluster, "array_parallelism", None)  # slurm and kubernetes have it, local not
    return int(value) if value else None


def select_for_resubmit(plan: RunPlan, ledger: Ledger, *, stages: list[str] | None, indices: list[int] | None,
                        states: list[str]) -> dict[str, set[int]]:
    """The chosen shards, the not-done work that waits on them, and the done work that consumed their
    outputs (a shard whose evidence vanished is re-run, so what was made from it is stale too)."""
    shards = {(s.stage, s.idx): s for s in ledger.shards()}
    roots = output_roots(plan)
    not_done: dict[str, set[int]] = {}
    seeds: dict[str, set[int]] = {}
    for st in plan.stages:
        for idx in range(st.size):
            s = shards.get((st.name, idx))
            state = s.state if s else ShardState.UNSUBMITTED
            if state != ShardState.DONE:
                not_done.setdefault(st.name, set()).add(idx)
            if stages and st.name not in stages:
                continue
            if indices is not None and idx not in indices:
                continue
            if state in states or (state == ShardState.UNSUBMITTED and "missing" in states):
                seeds.setdefault(st.name, set()).add(idx)
    # A shard whose marker is valid is done, whatever the scheduler said: never run it again. Valid by
    # hash, not only by size: a shard that `status --verify` found changed keeps its size.
    selected = {st: {i for i in idx if not validate_marker(plan.run_dir, st, i, plan.plan_hash, roots=roots,
                                                           deep=True)}
                for st, idx in downstream_closure(plan, seeds, not_done).items()}
    real_seeds = {st: idx & selected.get(st, set()) for st, idx in seeds.items()}
    for st, idx in consumers(plan, {k: v for k, v in real_seeds.items() if v}).items():
        selected.setdefault(st, set()).update(idx)
    return {k: v for k, v in selected.items() if v}


def resubmit(plan: RunPlan, *, stages: list[str] | None = None, indices: list[int] | None = None,
             states: list[str] | None = None, wait_lock: bool = False, dry_run: bool = False) -> Submitted:
    """Re-run the chosen failed shards and everything that depends on them, as new arrays of only
    those indices, with the attempt bumped. Idempotent: a second call finds them queued."""
    states = states or [*FAILED, "missing"]
    backend = get_backend(plan.backend)
    with submit_lock(plan.run_dir, wait=wait_lock), Ledger(plan.run_dir, create=False) as ledger:
        refresh(plan, ledger, backend)
        if open_round := _open_round(ledger):
            # An earlier submitter (run or resubmit) died half-way through this round: finish it,
            # adopting what it queued; its shards still pending are its own, not a reason to refuse.
            round_, selected = open_round
            if dry_run:
                return Submitted(round_, [{"stage": st, "indices": idx, "array": None, "name": None}
                                          for st, idx in selected.items()], resumed=True)
            ledger.event("resume-round", attempt=round_, selected=selected)
            return _submit_round(plan, ledger, backend, selected, round_, resumed=True)
        active = [s for s in ledger.shards() if s.state in ACTIVE]
        if active and not dry_run:
            first = active[0]
            raise GrailError(f"{len(active)} shard(s) are still pending or running (e.g. {first.stage} {first.idx})",
                             fix="wait until the run settles (`grail-cluster watch`), or cancel it first")
        selected = select_for_resubmit(plan, ledger, stages=stages, indices=indices, states=states)
        round_ = ledger.next_round()
        groups = plan_groups(plan, {k: sorted(v) for k, v in selected.items()}, arrays=registry.arrays(plan),
                             max_array_size=_max_array_size(backend, ledger, plan), parallelism=_parallelism(plan))
        if dry_run or not groups:
            return Submitted(round_, [{"stage": g.stage, "indices": g.indices, "array": g.array_spec,
                                       "name": g.name(plan.run_id, round_)} for g in groups])
        # Every re-run shard's old marker (a consumer's valid one, a changed shard's stale one) is set
        # aside (renamed) so the job does not skip it as done and no refresh counts it while it waits.
        for st, idx in selected.items():
            for i in idx:
                if old := retire_marker(plan.run_dir, st, i, round_):
                    row = ledger.shard(st, i)
                    ledger.event("marker-retired", st, i, row.attempt if row else None, path=str(old))
        ledger.event("resubmit", attempt=round_, selected={k: sorted(v) for k, v in selected.items()})
        return _submit_round(plan, ledger, backend, {k: sorted(v) for k, v in selected.items()}, round_)


def cancel(plan: RunPlan, *, stage: str | None = None, indices: list[int] | None = None) -> list[str]:
    """Cancel the run's queued/running jobs (of ``stage`` and every stage after it).

    With ``indices`` only those tasks of ``stage`` (a sweep's points: ``stage="train"``) are cancelled,
    plus every job of the later stages, which wait on them and could never start.
    """
    backend = get_backend(plan.backend)
    names = plan.stage_names
    if stage and stage not in names:
        raise GrailError(f"no stage {stage!r} in this run", fix=f"choose one of {', '.join(names)}")
    if indices is not None and not stage:
        raise GrailError("cancelling single indices needs the stage they belong to")
    wanted = set(names[names.index(stage):]) if stage else set(names)
    with Ledger(plan.run_dir, create=False) as ledger:
        refresh(plan, ledger, backend)
        jobs = [j for j in ledger.jobs(unsettled=True) if j.stage in wanted]
        if indices is None:
            ids = [j.job_id for j in jobs]
        else:
            bad = [i for i in indices if not 0 <= i < plan.stage(stage).size]
            if bad:
                raise GrailError(f"{stage} has no index {bad[0]} (0..{plan.stage(stage).size - 1})")
            if not backend.capabilities.cancels_tasks:
                raise GrailError(f"cluster={plan.backend} cancels whole jobs only",
                                 fix=f"cancel the whole stage (--stage {stage}), or use cluster=slurm")
            ids = [backend.task_id(j, i) for j in jobs if j.stage == stage for i in indices if i in j.indices]
            ids += [j.job_id for j in jobs if j.stage != stage]
        backend.cancel(ids, ledger=ledger)
        ledger.event("cancel", stage, job_ids=ids, indices=indices)
        return ids
