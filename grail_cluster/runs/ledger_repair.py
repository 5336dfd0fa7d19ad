"""``grail-cluster repair-ledger RUN``: rebuild a lost or damaged ``ledger.sqlite``.

The ledger is a record, not the truth: plan.json says what the run is, the success markers say what
finished, and the scheduler says what is still queued or how the rest ended. The rebuild asks each of
them once (SLURM: one ``squeue`` and one ``sacct``, matching the job names ``<run_id>:<stage>:<chunk>
[:r<round>]`` that submission gives every job) and loses nothing that finished: a shard with a valid
marker is done, a job still queued or running is re-attached (status and cancel keep working on it),
a job that ended is recorded with its scheduler state, and every other shard is ``missing-output``
for ``resubmit``. The damaged file is renamed aside (``ledger.sqlite.corrupt-<time>``), never deleted.
What is lost with it: earlier attempts' history, events, and failure signatures (logs still hold them).
"""

from __future__ import annotations

import getpass
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grail_cluster.backends import get_backend
from grail_cluster.backends.base import TaskInfo
from grail_cluster.backends.groups import compress_ranges, plan_groups
from grail_cluster.backends.refresh import output_roots
from grail_cluster.core.errors import ConfigError, GrailError
from grail_cluster.core.ledger import LEDGER_FILE, SCHEMA_VERSION, Ledger, submit_lock
from grail_cluster.core.markers import marker_problem, read_marker
from grail_cluster.core.plan import PLAN_FILE, RunPlan
from grail_cluster.core.states import ACTIVE, JobState, ShardState
from grail_cluster.stages import registry


@dataclass
class FoundJob:
    job_id: str
    name: str
    stage: str
    chunk: int
    round: int
    array: bool
    offset: int | None
    tasks: dict[int | None, Any] = field(default_factory=dict)  # task id -> TaskInfo (live or final)

    def index(self, task: int | None) -> int | None:
        if not self.array:
            return 0
        return None if task is None or self.offset is None else task + self.offset


def name_pattern(run_id: str) -> re.Pattern[str]:
    """The names submission gives this run's jobs (submission.Group.name)."""
    return re.compile(rf"^{re.escape(run_id)}:([A-Za-z_]+):(\d+)(?::r(\d+))?$")


def _since(plan: RunPlan) -> str:
    """sacct's -S: jobs can only have been submitted after plan.json was written."""
    mtime = os.stat(Path(plan.run_dir) / PLAN_FILE).st_mtime - 3600
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mtime))


def slurm_jobs(plan: RunPlan, backend: Any) -> list[FoundJob]:
    """This run's jobs, by name: one ``squeue`` (queued and running tasks, one per line) and one
    ``sacct`` (how the others ended, and the submit line, which carries each chunk's index offset)."""
    from grail_cluster.backends.slurm import STATE_MAP, expand_task_ids, parse_duration

    pattern = name_pattern(plan.run_id)
    jobs: dict[str, FoundJob] = {}
    # Run ids repeat across run roots (and test sessions): a job is this run's only if its script
    # lies under this run dir's specs/ (the submit line and squeue's command both show the path).
    specs = os.path.join(os.path.abspath(plan.paths["specs_dir"]), "")

    def job_of(jid: str, name: str) -> tuple[FoundJob, int | None] | None:
        m = pattern.match(name.strip())
        if not m or m.group(1) not in plan.stage_names:
            return None
        base, _, task = jid.strip().partition("_")
        job = jobs.setdefault(base, FoundJob(base, name.strip(), m.group(1), int(m.group(2)), int(m.group(3) or 0),
                                             registry.get(m.group(1)).is_array(plan.stage(m.group(1)).size), None))
        return job, task

    fields = "JobID,JobName,State,ExitCode,Elapsed,NodeList,SubmitLine"
    argv = ["sacct", "-n", "-P", "-X", "-u", getpass.getuser(), "-S", _since(plan), "-o", fields]
    proc = backend._run(argv, check=False)
    if proc.returncode != 0 and "SubmitLine" in (proc.stderr or ""):  # SLURM before 21.08 has no SubmitLine
        fields = fields.rsplit(",", 1)[0]
        proc = backend._run(argv[:-1] + [fields], check=False)
    if proc.returncode != 0:
        raise GrailError(f"`sacct` failed: {proc.stderr.strip() or proc.stdout.strip()}",
                         fix="repair-ledger needs SLURM accounting to find the run's jobs; retry when slurmdbd answers")
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 6:
            continue
        jid, name, state, exit_code, elapsed, node = parts[:6]
        if not pattern.match(name.strip()):
            continue
        if "SubmitLine" in fields and specs not in "|".join(parts[6:]):
            continue
        found = job_of(jid, name)
        if found is None:
            continue
        submit_line = "|".join(parts[6:])
        job, task = found
        if job.offset is None and (m := re.search(r"GRAIL_INDEX_OFFSET=(\d+)", submit_line)):
            job.offset = int(m.group(1))
        word = state.split()[0] if state else "PENDING"
        info = TaskInfo(STATE_MAP.get(word, JobState.FAILED), word, exit_code, parse_duration(elapsed),
                        None if node in ("", "None assigned") else node)
        for t in (expand_task_ids(task) if task else [None]):
            job.tasks[t] = info
    # The queue is authoritative for what has not ended (accounting may lag it by seconds).
    out = backend._run(["squeue", "--me", "-h", "-r", "-o", "%i|%j|%T|%M|%N|%o"], check=False).stdout
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 6:
            continue
        jid, name, state, elapsed, node = parts[:5]
        if not pattern.match(name.strip()) or not "|".join(parts[5:]).startswith(specs):
            continue
        found = job_of(jid, name)
        if found is None:
            continue
        job, task = found
        info = TaskInfo(STATE_MAP.get(state, JobState.PENDING), state, None, parse_duration(elapsed), node or None)
        for t in (expand_task_ids(task) if task else [None]):
            job.tasks[t] = info
    _fill_offsets(plan, backend, list(jobs.values()))
    return sorted(jobs.values(), key=lambda j: (j.round, j.stage, j.chunk))


def _fill_offsets(plan: RunPlan, backend: Any, jobs: list[FoundJob]) -> None:
    """Offsets the submit line did not give: none when arrays were never chunked; else a first-round
    chunk's, which the plan determines."""
    missing = [j for j in jobs if j.array and j.offset is None]
    if not missing:
        return
    configured = plan.config["cluster"].get("max_array_size")
    size = int(configured) if configured else backend.max_array_size()
    if all(size >= plan.stage(j.stage).size for j in missing):
        for j in missing:
            j.offset = 0
        return
    groups = plan_groups(plan, {st.name: list(range(st.size)) for st in plan.stages}, arrays=registry.arrays(plan),
                         max_array_size=size, parallelism=None)
    first = {(g.stage, g.chunk): g.offset for g in groups}
    for j in missing:
        if j.round == 0:
            j.offset = first.get((j.stage, j.chunk))


def local_rounds(plan: RunPlan) -> dict[tuple[str, int], int]:
    """The local executor's own records: each task's log file is named after its job
    (``logs/<stage>/local-local-r<round>-<stage>-<chunk>_<index>.out``); the latest round per shard."""
    pattern = re.compile(r"^local-local-r(\d+)-([A-Za-z_]+)-(\d+)_(\d+)\.out$")
    latest: dict[tuple[str, int], int] = {}
    logs = Path(plan.paths["logs_dir"])
    for st in plan.stage_names:
        folder = logs / st
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            m = pattern.match(entry.name)
            if m and m.group(2) == st:
                key = (st, int(m.group(4)))
                latest[key] = max(latest.get(key, -1), int(m.group(1)))
    return latest


def live_local_runner(plan: RunPlan) -> int | None:
    """A detached local runner of this run still alive (it writes the ledger): its pid."""
    run_dir = os.path.abspath(plan.run_dir)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if "grail_cluster.backends.local" in args and any(os.path.abspath(a) == run_dir for a in args[1:]
                                                           if a.startswith("/") or os.sep in a):
            return int(entry.name)
    return None


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
    if plan.backend not in ("slurm", "local"):
        raise ConfigError(f"repair-ledger rebuilds SLURM and local runs; this run uses cluster={plan.backend}",
                          fix="for Kubernetes, the in-cluster driver's ledger is the record: see docs/kubernetes.md")
    with submit_lock(run_dir):
        problem = ledger_sound(plan)
        if problem is None and not force:
            return {"repaired": False, "reason": "the ledger is sound; nothing to repair (--force rebuilds it anyway)"}
        if plan.backend == "local" and (pid := live_local_runner(plan)):
            raise GrailError(f"a local runner of this run is still running (pid {pid}) and writes its ledger",
                             path=run_dir / LEDGER_FILE, fix=f"wait for pid {pid} to finish (or end it), then repair")
        backend = get_backend(plan.backend)
        found = slurm_jobs(plan, backend) if plan.backend == "slurm" else []
        local = local_rounds(plan) if plan.backend == "local" else {}
        aside = set_aside(run_dir, "corrupt" if problem else "replaced")
        summary = _rebuild(plan, found, local)
        summary.update(repaired=True, problem=problem, kept_aside=str(aside) if aside else None,
                       scheduler_calls=dict(getattr(backend, "calls", {})))
        return summary


def _rebuild(plan: RunPlan, found: list[FoundJob], local: dict[tuple[str, int], int]) -> dict[str, Any]:
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
        floor = max([j.round + 1 for j in found] + [r + 1 for r in local.values()] + [0])
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
                elif (st.name, idx) in local:
                    state, sig = ShardState.MISSING_OUTPUT, f"ledger rebuilt: ran in round {local[(st.name, idx)]}, but {problem}"
                    attempt = local[(st.name, idx)]
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
