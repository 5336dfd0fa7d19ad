"""What every backend is to the runs layer: the task model, the ``Backend`` protocol, and the one
dependency gate.

A backend turns a submission group into scheduler work and reports each task's state as a
:class:`TaskInfo`; the ledger refresh (:mod:`grail_cluster.backends.refresh`) decides shard states
from those and the success markers. What a scheduler cannot do is said once, in
:class:`Capabilities`, instead of being probed for.

The gate is the afterok/aftercorr rule in one place: SLURM applies it itself (``--dependency``);
the local runner and the Kubernetes driver ask :func:`gate`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from grail_cluster.core.errors import EXIT_UNREACHABLE, GrailError
from grail_cluster.core.states import ACTIVE, JobState, ShardState

if TYPE_CHECKING:
    import jinja2

    from grail_cluster.backends.groups import Group
    from grail_cluster.core.jobspec import JobSpec
    from grail_cluster.core.ledger import JobRow, Ledger
    from grail_cluster.core.plan import RunPlan


@dataclass(frozen=True)
class TaskInfo:
    """One scheduler task (an array element, a pod index, a local subprocess) as its backend saw it."""

    state: JobState | str
    sched_state: str  # the scheduler's own word (SLURM's state, the pod's reason)
    exit_code: str | None = None
    elapsed: float | None = None
    node: str | None = None
    why: str | None = None  # JobState.LOST: how the scheduler lost the job (the shard's signature)


class SchedulerUnreachable(GrailError):
    """The scheduler's queue or accounting did not answer (controller or accounting daemon down,
    timed out): nothing may be concluded about any job, so the ledger keeps its last known states."""

    exit_code = EXIT_UNREACHABLE

    def __init__(self, problem: str, *, first_line: str):
        self.first_line = first_line  # the scheduler's own words, for a one-line notice
        super().__init__(problem, fix="the ledger keeps its last known states; retry when the scheduler answers "
                                      "(nothing was changed)")


# (ledger job id, array task id or None) -> what the scheduler says of that task
TaskStates = dict[tuple[str, int | None], TaskInfo]


@dataclass
class FoundJob:
    """One job of a run that the scheduler still knows, found by the name submission gave it."""

    job_id: str
    name: str
    stage: str
    chunk: int
    round: int
    array: bool
    offset: int | None
    tasks: dict[int | None, TaskInfo] = field(default_factory=dict)  # task id -> TaskInfo (live or final)

    def index(self, task: int | None) -> int | None:
        if not self.array:
            return 0
        return None if task is None or self.offset is None else task + self.offset


@dataclass
class FoundRun:
    """What a scheduler still knows of one run without its ledger (``repair-ledger`` rebuilds from it)."""

    jobs: list[FoundJob] = field(default_factory=list)  # by (round, stage, chunk): later rounds last
    # Shards the backend ran but whose job it no longer knows (the local runner's log names): the
    # latest round per (stage, index).
    rounds: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass(frozen=True)
class Capabilities:
    """What the runs layer may ask of a backend beyond the common protocol."""

    chunks_arrays: bool = False  # max_array_size(): arrays are cut under the cluster's MaxArraySize
    cancels_tasks: bool = False  # task_id(): one shard of an array job can be cancelled alone
    pod_logs: bool = False  # pod_logs(): the scheduler keeps each shard's output (Kubernetes)
    finds_jobs: bool = False  # find_run_jobs(): a run's jobs can be found without its ledger


@runtime_checkable
class Backend(Protocol):
    """Every call the runs layer (submit, resubmit, cancel, refresh, logs) makes of a backend."""

    name: str
    capabilities: Capabilities
    calls: Counter[str]  # scheduler calls made, by command (status reports them)
    notes: list[str]  # what the last refresh could not write to the ledger, for status to show

    def render(self, plan: RunPlan, specs: list[JobSpec], env: jinja2.Environment) -> dict[str, str]:
        """The backend's files for a plan (pure): {path relative to specs/<backend>/: text}."""

    def prepare(self, plan: RunPlan, stages: list[str]) -> None:
        """Everything that can fail before the ledger records a submission."""

    def find_by_name(self, names: list[str]) -> dict[str, str]:
        """Jobs a crashed submitter already queued under these names: {name: job id}."""

    def find_run_jobs(self, plan: RunPlan, arrays: Mapping[str, bool]) -> FoundRun:
        """What the scheduler still knows of this run's jobs, by the names submission gave them
        (``capabilities.finds_jobs``; ``arrays``: which stages are arrays). A GrailError while the
        backend itself still writes the run's ledger."""

    def max_array_size(self) -> int | None:
        """The cluster's array limit (``capabilities.chunks_arrays``)."""

    def submit_group(self, plan: RunPlan, group: Group, *, name: str, dependency: str | None, attempt: int,
                     spec_dir: Path) -> str:
        """Queue one group; its ledger job id."""

    def start(self, plan: RunPlan, ledger: Ledger, round_: int) -> None:
        """After a round is recorded: start what runs it (a runner process, a driver Job), if anything."""

    def reconcile(self, plan: RunPlan, ledger: Ledger) -> str | None:
        """Settle what only the backend can know, before states are read; ``"owned-by-driver"`` when
        another process writes this ledger and the refresh must not."""

    def live_states(self, jobs: list[JobRow]) -> TaskStates:
        """Queued and running tasks of these ledger jobs (a scheduler job under another name is not
        one of them); :class:`SchedulerUnreachable` when the scheduler does not answer."""

    def final_states(self, jobs: list[JobRow]) -> TaskStates:
        """How the tasks of these ledger jobs, no longer queued, ended; ``JobState.LOST`` (with
        ``why``) for a job the scheduler no longer holds under its name. A task it cannot tell yet
        is left out (the next refresh asks again)."""

    def task_id(self, job: JobRow, index: int) -> str:
        """The id cancel takes for one shard of ``job`` (``capabilities.cancels_tasks``)."""

    def cancel(self, job_ids: list[str], ledger: Ledger | None = None) -> None:
        """Stop these jobs (or tasks)."""

    def log_paths(self, plan: RunPlan, stage: str, index: int, attempt: int, job: JobRow | None = None) -> list[Path]:
        """The scheduler's own files of one shard's attempt (what happened before the job script's
        first line or after it was killed); the job script's logs are not included."""

    def pod_logs(self, plan: RunPlan, stage: str, index: int, *, tail: int | None = None) -> list[tuple[str, str]]:
        """(source, text) of a shard's output kept by the scheduler (``capabilities.pod_logs``)."""


def attempt_logs(run_dir: str | Path, stage: str, index: int, attempt: int) -> list[Path]:
    """The logs the job script writes for one attempt of one shard, stderr first."""
    base = Path(run_dir) / "logs" / stage / str(index)
    return [base / f"{attempt}.err", base / f"{attempt}.out"]


# ----------------------------------------------------------------------------- dependencies


def parse_depends(depends: str | None) -> list[tuple[str, list[str]]]:
    """The ledger's dependency text (``afterok:<job>:<job>,aftercorr:<job>``) as (kind, job ids)."""
    out = []
    for part in filter(None, (depends or "").split(",")):
        kind, *ids = part.split(":")
        out.append((kind, ids))
    return out


def needs(kind: str, index: int, upstream: Collection[int]) -> list[int]:
    """The upstream shards shard ``index`` waits on: aftercorr the same index (if it runs upstream),
    afterok every one."""
    if kind == "aftercorr":
        return [index] if index in upstream else []
    return sorted(upstream)


@dataclass(frozen=True)
class Verdict:
    state: str  # ready | waiting | blocked
    why: str | None = None  # blocked: which upstream shard ended how


READY = Verdict("ready")
WAITING = Verdict("waiting")


def gate(index: int, upstreams: Iterable[tuple[str, str, Mapping[int, str]]]) -> Verdict:
    """May shard ``index`` start? ``upstreams``: one (kind, upstream stage, {upstream index: state})
    per dependency, holding the upstream shards of the same submission round.

    Blocked as soon as a shard it needs ended other than done (the local analogue of SLURM's
    ``--kill-on-invalid-dep``), ready once every one is done, else waiting.
    """
    waiting = False
    for kind, stage, states in upstreams:
        not_done = [(i, states[i]) for i in needs(kind, index, states) if states[i] != ShardState.DONE]
        ended = [(i, s) for i, s in not_done if s not in ACTIVE]
        if ended:
            first, state = ended[0]
            more = f" (and {len(ended) - 1} more)" if len(ended) > 1 else ""
            return Verdict("blocked", f"upstream {stage} {first} is {state}{more}")
        waiting = waiting or bool(not_done)
    return WAITING if waiting else READY


def unsupported(backend: str, what: str, fix: str) -> GrailError:
    """The error a backend raises for a call its capabilities rule out."""
    return GrailError(f"cluster={backend} {what}", fix=fix)
