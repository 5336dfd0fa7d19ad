"""SLURM: render one sbatch script per stage, submit them through submitit, poll, cancel.

Submission sends the rendered files byte for byte; what differs per submission (array subset or
chunk, offset, attempt, dependencies on job ids that exist only at submit time) goes on the sbatch
command line.

A job is known by its id *and* its name (unique per run, stage, chunk and round): a slurmctld killed
with SIGKILL can lose ids it had already returned and hand them to later jobs, so a queue or
accounting row whose name differs from the ledger job's is another job. A job the scheduler no longer
holds under its name is ``lost`` (see :meth:`SlurmBackend.final_states`). When squeue or sacct does
not answer, :class:`SchedulerUnreachable` is raised and nothing is concluded.
"""

from __future__ import annotations

import getpass
import math
import os
import re
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path

import jinja2

from grail_cluster.backends.base import (
    Capabilities,
    FoundJob,
    FoundRun,
    SchedulerUnreachable,
    TaskInfo,
    TaskStates,
    unsupported,
)
from grail_cluster.backends.groups import name_pattern, plan_groups
from grail_cluster.backends.slurm_rows import (
    ACCT_FIELDS,
    QUEUE_FORMAT,
    RETIRED,
    STATE_MAP,
    Row,
    expand_task_ids,
    parse_accounting,
    parse_duration,
    parse_queue,
    sched_id,
    task_keys,
)
from grail_cluster.core.errors import GrailError
from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.ledger import JobRow
from grail_cluster.core.plan import PLAN_FILE, RunPlan
from grail_cluster.core.settings import SlurmCluster
from grail_cluster.core.states import JobState


def slurm_time(minutes: int) -> str:
    days, rem = divmod(int(minutes), 1440)
    hours, mins = divmod(rem, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"


def slurm_mem(gb: float) -> str:
    return f"{math.ceil(gb)}G" if gb >= 1 else f"{math.ceil(gb * 1024)}M"


def render_script(plan: RunPlan, spec: JobSpec, env: jinja2.Environment) -> str:
    return render_job(plan.settings.cluster, f"{plan.paths['logs_dir']}/{spec.stage}", spec, env)


def render_job(cluster: SlurmCluster, log_dir: str, spec: JobSpec, env: jinja2.Environment) -> str:
    """One sbatch script; also the `doctor --cluster` probe's, so it gets exactly the stages' directives."""
    return env.get_template("slurm/job.sh.j2").render(
        spec=spec, r=spec.resources, cluster=cluster,
        parallelism=int(cluster.array_parallelism or spec.size),
        mem=slurm_mem(spec.resources.mem_gb), time=slurm_time(spec.resources.time_min),
        log_dir=log_dir,
    )


def render(plan: RunPlan, specs: list[JobSpec], env: jinja2.Environment) -> dict[str, str]:
    files = {f"{spec.stage}.sh": render_script(plan, spec, env) for spec in specs}
    files["submit.sh"] = env.get_template("slurm/submit.sh.j2").render(
        plan=plan, specs=specs, log_root=plan.paths["logs_dir"], lines=submission_lines(plan, {spec.stage: spec.array for spec in specs}))
    return files


def submission_lines(plan: RunPlan, arrays: dict[str, bool]) -> list[str]:
    """The sbatch calls `grail-cluster run` makes for this plan, as shell, with ``$JOB_<stage>_<n>``
    for job ids that exist only once submitted (arrays chunked by ``cluster.max_array_size`` if set);
    ``arrays``: which stages are arrays."""
    from grail_cluster.sonic.commands import shell_join

    max_size = plan.settings.cluster.max_array_size
    groups = plan_groups(plan, {st.name: list(range(st.size)) for st in plan.stages}, arrays=arrays,
                         max_array_size=max_size, parallelism=plan.settings.cluster.array_parallelism)
    lines = [] if max_size else ["# arrays are chunked at submit time when the cluster's MaxArraySize is smaller"]
    by_stage: dict[str, list] = {}
    for g in groups:
        by_stage.setdefault(g.stage, []).append(g)
    for g in groups:
        deps = []
        for d in g.depends:
            ups = [u for u in by_stage.get(d.stage, []) if d.chunk is None or u.chunk == d.chunk]
            deps.append(f"{d.kind}:" + ":".join(f"$JOB_{u.stage}_{u.chunk}" for u in ups))
        flags = submit_flags(name=g.name(plan.run_id, 0), array_spec=g.array_spec, dependency=",".join(deps) or None,
                             offset=g.offset, attempt=0)
        lines.append(f"JOB_{g.stage}_{g.chunk}=$(sbatch --parsable {shell_join(flags)} {g.stage}.sh)")
        lines.append(f'echo "{g.stage} {g.chunk}: $JOB_{g.stage}_{g.chunk}"')
    return lines


# ----------------------------------------------------------------------------- partition limits

# One line per node and partition: partition (default marked *), time limit, job size in nodes,
# CPUs, memory (MB), GRES, availability.
SINFO_FORMAT = "%P|%l|%s|%c|%m|%G|%a"


def sinfo_nodes(timeout: float = 20.0) -> tuple[str | None, str | None]:
    """The scheduler's view of every partition's nodes in one ``sinfo`` call: (text, None), or
    (None, why it could not be asked) when no scheduler answers here (a laptop, another cluster)."""
    try:
        proc = subprocess.run(["sinfo", "--noheader", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True,
                              timeout=timeout)
    except FileNotFoundError:
        return None, "no `sinfo` on this machine: partition limits not checked (they are when planning on a login node)"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"`sinfo` did not answer ({type(exc).__name__}): partition limits not checked"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"`sinfo` failed ({last}): partition limits not checked"
    return proc.stdout, None


# ----------------------------------------------------------------------------- submission and polling

def _executor_class():
    import submitit

    class GrailSlurmExecutor(submitit.SlurmExecutor):
        """submitit's SLURM executor with the submission file replaced by our rendered script,
        byte for byte, and our flags (array subset, dependencies, name, offset) on the sbatch line."""

        def __init__(self, folder: Path):
            super().__init__(folder=folder)
            self._script = ""
            self._flags: list[str] = []

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            return self._script

        def _make_submission_command(self, submission_file_path: Path) -> list[str]:
            return ["sbatch", *self._flags, str(submission_file_path)]

        def sbatch(self, script: str, flags: list[str]) -> str:
            self._script, self._flags = script, flags
            return self._submit_command("grail-cluster").job_id

    return GrailSlurmExecutor


# squeue/sacct during a refresh: short, so during an outage a status costs seconds, not minutes (squeue
# itself retries a refused controller for about 9 s before it gives up with "Unable to contact").
QUERY_TIMEOUT_S = 15.0
# A job is never called lost within this many seconds of its submission: accounting hears of a job
# asynchronously. (A job the controller still holds, in any state, is never lost.)
LOST_GRACE_S = 10.0


def _last_error_line(proc: subprocess.CompletedProcess) -> str:
    # sacct prints the connection attempts first and its verdict ("Problem talking to the database")
    # last; squeue prints one line.
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}, no output"


class SlurmBackend:
    """sbatch through submitit; one ``squeue`` per refresh, ``sacct`` only to settle finished jobs
    (and one more ``squeue`` only when accounting cannot account for a job)."""

    name = "slurm"
    capabilities = Capabilities(chunks_arrays=True, cancels_tasks=True, finds_jobs=True)

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.notes: list[str] = []

    def render(self, plan: RunPlan, specs: list[JobSpec], env: jinja2.Environment) -> dict[str, str]:
        return render(plan, specs, env)

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
        self.calls[argv[0]] += 1
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise GrailError(f"`{argv[0]}` not found: this machine has no SLURM client",
                             fix="run on a SLURM login node, or use cluster=local") from None
        except subprocess.TimeoutExpired:
            raise GrailError(f"`{' '.join(argv[:3])} ...` did not answer in 120 s (slurmctld overloaded or down?)",
                             fix="retry later; nothing was changed by this call") from None
        if check and proc.returncode != 0:
            raise GrailError(f"`{' '.join(argv[:4])} ...` failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def _query(self, argv: list[str]) -> str:
        """A read-only squeue/sacct whose answer decides states: any failure or a timeout is
        :class:`SchedulerUnreachable` (an empty answer must never read as "no such job")."""
        self.calls[argv[0]] += 1
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
        except FileNotFoundError:
            raise GrailError(f"`{argv[0]}` not found: this machine has no SLURM client",
                             fix="run on a SLURM login node, or use cluster=local") from None
        except subprocess.TimeoutExpired:
            line = f"`{argv[0]}` did not answer in {QUERY_TIMEOUT_S:.0f} s"
            raise SchedulerUnreachable(f"scheduler unreachable: {line}", first_line=line) from None
        if proc.returncode != 0:
            line = _last_error_line(proc)
            raise SchedulerUnreachable(f"scheduler unreachable: `{argv[0]}` failed: {line}", first_line=line)
        return proc.stdout

    # ------------------------------------------------------------------ cluster facts

    def max_array_size(self) -> int:
        out = self._run(["scontrol", "show", "config"]).stdout
        m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
        return int(m.group(1)) if m else 1001

    # ------------------------------------------------------------------ submit

    def find_by_name(self, names: list[str]) -> dict[str, str]:
        """Jobs already queued under our names (a crashed submitter's), so they are adopted, not doubled."""
        if not names:
            return {}
        # A queue that does not answer is refused (SchedulerUnreachable): read as empty, every job a
        # crashed submitter queued would be submitted twice.
        out = self._query(["squeue", "--me", "-h", "-o", QUEUE_FORMAT, f"--name={','.join(names)}"])
        found: dict[str, str] = {}
        for row in parse_queue(out):
            if row.name in names:
                found.setdefault(row.name, row.job_id)
        return found

    def prepare(self, plan: RunPlan, stages: list[str]) -> None:
        # SLURM opens --output before the script runs, so the log dirs must exist first.
        for stage in set(stages):
            os.makedirs(os.path.join(plan.paths["logs_dir"], stage), exist_ok=True)

    def submit_group(self, plan: RunPlan, group, *, name: str, dependency: str | None, attempt: int,
                     spec_dir: Path) -> str:
        script_path = spec_dir / f"{group.stage}.sh"
        if not script_path.exists():
            raise GrailError("rendered script missing", path=script_path, fix="re-run `grail-cluster run` to render it")
        flags = submit_flags(name=name, array_spec=group.array_spec, dependency=dependency, offset=group.offset,
                             attempt=attempt)
        return self.sbatch(script_path, flags)

    def sbatch(self, script_path: Path, flags: list[str]) -> str:
        """Submit a rendered script byte for byte through submitit; the job id."""
        folder = script_path.parent / ".submitit"
        folder.mkdir(parents=True, exist_ok=True)
        executor = _executor_class()(folder)
        self.calls["sbatch"] += 1
        try:
            return executor.sbatch(script_path.read_text(), flags)
        except Exception as exc:  # submitit wraps sbatch's error text
            text = str(exc).strip().splitlines()
            raise GrailError(f"sbatch refused {script_path.name}: {text[-1] if text else exc}", path=script_path,
                             fix="check the partition/account/qos and resources of this stage") from None

    def start(self, plan: RunPlan, ledger, round_: int) -> None:
        """Nothing to start: SLURM runs the queued jobs by itself."""

    # ------------------------------------------------------------------ poll

    def reconcile(self, plan: RunPlan, ledger) -> None:
        """Nothing to reconcile: the queue and accounting say everything."""

    def live_states(self, jobs: list[JobRow]) -> TaskStates:
        """Queued and running tasks of the given ledger jobs: one ``squeue`` whatever their number.
        A row under a ledger job's id but another name is another job (the id was reused): left out."""
        info: dict[tuple[str, int | None], TaskInfo] = {}
        if not jobs:
            return info
        ours = {(sched_id(j.job_id), j.name): j for j in jobs}
        # %i is "<array job id>_<task>" for array tasks (-r lists pending tasks one by one).
        for row in parse_queue(self._query(["squeue", "--me", "-h", "-r", "-o", QUEUE_FORMAT])):
            job = ours.get((row.job_id, row.name))
            if job is None:
                continue
            if row.held:
                self.notes.append(f"{job.stage} job {row.job_id} ({row.name}) is held by the scheduler "
                                  f"({row.reason}) and will not start until it is released: "
                                  f"`scontrol release {row.job_id}`")
            for t in row.tasks:
                info[(job.job_id, t)] = TaskInfo(STATE_MAP.get(row.state, JobState.PENDING), row.state, None,
                                                 row.elapsed, row.node)
        return info

    def final_states(self, jobs: list[JobRow]) -> TaskStates:
        """How jobs that left the queue ended, from accounting: one ``sacct`` per 200 job ids
        (normally one), rows under each job's own name only.

        A task accounting cannot settle (no row under the job's name, or still pending/running
        there) is asked of the controller with one ``squeue --states=all`` (which also lists jobs
        that ended within MinJobAge): if the controller no longer holds the job under its name,
        and the job is older than ``LOST_GRACE_S``, it is ``lost``: its id now belongs to another
        job, or it vanished (a controller killed before it saved its state). Otherwise the task is
        left out: accounting lags the queue, the next refresh settles it."""
        info: dict[tuple[str, int | None], TaskInfo] = {}
        by_id: dict[str, list[JobRow]] = defaultdict(list)
        for job in jobs:
            by_id[sched_id(job.job_id)].append(job)
        ids = sorted(by_id, key=lambda i: (len(i), i))
        rows: dict[str, list[Row]] = defaultdict(list)
        for start in range(0, len(ids), 200):
            out = self._query(["sacct", "-n", "-P", "-X", "-o", ACCT_FIELDS, "-j", ",".join(ids[start:start + 200])])
            for row in parse_accounting(out):
                if row.job_id in by_id:
                    rows[row.job_id].append(row)
        now = time.time()
        unsure: list[tuple[JobRow, list[int | None], list[Row]]] = []
        for sid, sid_jobs in by_id.items():
            for job in sid_jobs:
                ours = [r for r in rows[sid] if r.name == job.name]
                for r in ours:
                    for t in r.tasks:
                        info[(job.job_id, t)] = TaskInfo(STATE_MAP.get(r.state, JobState.FAILED), r.state, r.exit_code,
                                                         r.elapsed, r.node)
                open_tasks = [t for t in task_keys(job)
                              if (job.job_id, t) not in info or not info[(job.job_id, t)].state.is_terminal()]
                if open_tasks and now - job.submitted_at >= LOST_GRACE_S:
                    unsure.append((job, open_tasks, rows[sid]))
        if unsure:
            held: dict[str, set[str]] = defaultdict(set)
            for row in parse_queue(self._query(["squeue", "--me", "-h", "-r", "--states=all", "-o", QUEUE_FORMAT])):
                held[row.job_id].add(row.name)
            for job, open_tasks, acct in unsure:
                sid = sched_id(job.job_id)
                if job.name in held[sid]:
                    continue  # the controller still holds it: accounting lags
                others = sorted((held[sid] | {r.name for r in acct}) - {job.name})
                mine = [r for r in acct if r.name == job.name]
                if others:
                    sched, why = "ID_REUSED", (f"job id {sid} now belongs to {others[0]}: the scheduler lost this "
                                               "job (controller crash?)")
                elif mine:
                    sched, why = "LOST", (f"job {sid} is {mine[-1].state} in accounting but the controller no longer "
                                          "holds it (controller lost it)")
                else:
                    sched, why = "VANISHED", (f"job {sid} vanished from the scheduler (controller lost it): in neither "
                                              "queue nor accounting")
                for t in open_tasks:
                    info[(job.job_id, t)] = TaskInfo(JobState.LOST, sched, None, None, None, why)
        return info

    # ------------------------------------------------------------------ cancel

    @staticmethod
    def task_id(job: JobRow, index: int) -> str:
        """scancel's id of one shard of a ledger job: ``<array job>_<task>`` (task = index - offset)."""
        return f"{job.job_id}_{index - job.index_offset}" if job.array_spec else job.job_id

    def cancel(self, job_ids: list[str], ledger=None) -> None:
        # A retired key's scheduler id now names another job: never cancel that one.
        job_ids = [j for j in job_ids if RETIRED not in j]
        if job_ids:
            self._run(["scancel", *job_ids], check=False)

    # ------------------------------------------------------------------ logs

    def log_paths(self, plan: RunPlan, stage: str, index: int, attempt: int, job: JobRow | None = None) -> list[Path]:
        """sbatch's --output/--error files of the job (array task) that ran the shard."""
        if job is None:
            return []
        suffix = f"{job.job_id}_{index - job.index_offset}" if job.array_spec else job.job_id
        base = Path(plan.run_dir) / "logs" / stage
        return [base / f"slurm-{suffix}.err", base / f"slurm-{suffix}.out"]

    def pod_logs(self, plan: RunPlan, stage: str, index: int, *, tail: int | None = None) -> list[tuple[str, str]]:
        raise unsupported(self.name, "keeps each shard's output in log files", "read them with `grail-cluster logs`")

    # ------------------------------------------------------------------ a run without its ledger

    def find_run_jobs(self, plan: RunPlan, arrays: Mapping[str, bool]) -> FoundRun:
        """This run's jobs, by name: one ``squeue`` (queued and running tasks, one per line) and one
        ``sacct`` (how the others ended, and the submit line, which carries each chunk's index offset)."""
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
                                                 arrays[m.group(1)], None))
            return job, task

        fields = "JobID,JobName,State,ExitCode,Elapsed,NodeList,SubmitLine"
        argv = ["sacct", "-n", "-P", "-X", "-u", getpass.getuser(), "-S", _since(plan), "-o", fields]
        proc = self._run(argv, check=False)
        if proc.returncode != 0 and "SubmitLine" in (proc.stderr or ""):  # SLURM before 21.08 has no SubmitLine
            fields = fields.rsplit(",", 1)[0]
            proc = self._run(argv[:-1] + [fields], check=False)
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
        # The queue is authoritative for what has not ended (accounting may lag it by seconds); one
        # that does not answer is refused: read as empty, queued jobs would be submitted again.
        out = self._query(["squeue", "--me", "-h", "-r", "-o", "%i|%j|%T|%M|%N|%o"])
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
        self._fill_offsets(plan, arrays, list(jobs.values()))
        return FoundRun(jobs=sorted(jobs.values(), key=lambda j: (j.round, j.stage, j.chunk)))

    def _fill_offsets(self, plan: RunPlan, arrays: Mapping[str, bool], jobs: list[FoundJob]) -> None:
        """Offsets the submit line did not give: none when arrays were never chunked; else a first-round
        chunk's, which the plan determines."""
        missing = [j for j in jobs if j.array and j.offset is None]
        if not missing:
            return
        configured = plan.settings.cluster.max_array_size
        size = int(configured) if configured else self.max_array_size()
        if all(size >= plan.stage(j.stage).size for j in missing):
            for j in missing:
                j.offset = 0
            return
        groups = plan_groups(plan, {st.name: list(range(st.size)) for st in plan.stages}, arrays=arrays,
                             max_array_size=size, parallelism=None)
        first = {(g.stage, g.chunk): g.offset for g in groups}
        for j in missing:
            if j.round == 0:
                j.offset = first.get((j.stage, j.chunk))


def _since(plan: RunPlan) -> str:
    """sacct's -S: jobs can only have been submitted after plan.json was written."""
    mtime = os.stat(Path(plan.run_dir) / PLAN_FILE).st_mtime - 3600
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mtime))


def submit_flags(*, name: str, array_spec: str | None, dependency: str | None, offset: int, attempt: int) -> list[str]:
    flags = [f"--job-name={name}", f"--comment={name}"]
    if array_spec:
        flags.append(f"--array={array_spec}")
    if dependency:
        flags.append(f"--dependency={dependency}")
    flags.append(f"--export=ALL,GRAIL_INDEX_OFFSET={offset},GRAIL_ATTEMPT={attempt}")
    return flags
