"""Hydra launcher plugin: a Hydra sweep's jobs on grail-cluster's backends, resumable.

``python my_app.py -m hydra/launcher=grail_slurm a=1,2,3 b=x,y`` sends each batch of jobs as one
SLURM array (``grail_local``: the local runner's slot queue, at most ``max_parallel`` at once)
through the same plan, backends, ledger and success markers as ``grail-cluster run``: the state dir
``hydra.launcher.state_dir`` (``${hydra.sweep.dir}/.grail``) is a run dir (:mod:`~grail_cluster.launchers.sweep`).

This module is the adapter to Hydra's ``Launcher`` interface: it splits a batch into done, still
running and to submit, submits a round, waits, and rebuilds the ``JobReturn``s. Running the same
command again with the same ``hydra.sweep.dir`` returns the jobs done under the same key and code
without running them, waits on (``wait=false``: reports) the ones still queued or running, and
submits the failed, lost, never-submitted and changed ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from grail_cluster.backends import get_backend
from grail_cluster.backends.refresh import refresh
from grail_cluster.core.errors import GrailError
from grail_cluster.core.ledger import Ledger, submit_lock
from grail_cluster.core.markers import retire_marker
from grail_cluster.core.plan import RunPlan, write_plan
from grail_cluster.core.states import ACTIVE, ShardState
from grail_cluster.launchers import sweep
from grail_cluster.launchers.errors import JobFailedError, LauncherError
from grail_cluster.launchers.hydra_config import check_options
from grail_cluster.launchers.hydra_job import STAGE
from grail_cluster.launchers.keys import code_change, code_identity, config_key, describe_code, job_key
from grail_cluster.launchers.payloads import decode_value, write_payload
from grail_cluster.launchers.sweep import main, sweep_plan
from grail_cluster.runs.control import submit_indices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubmittedJob:
    """Where a job that had not ended when the launcher returned will leave its result."""

    num: int
    overrides: tuple[str, ...]
    scheduler_id: str
    result_path: str
    state_dir: str


class PendingJobReturn(JobReturn):
    """The JobReturn of a job still queued or running when the launcher returned (``wait=false``):
    status UNKNOWN and ``return_value`` a :class:`SubmittedJob`. Hydra's own JobReturn asserts on
    an UNKNOWN ``return_value``, and Hydra's sweeper reads every job's return value."""

    @property
    def return_value(self) -> Any:
        if self.status == JobStatus.UNKNOWN:
            return self._return_value
        return JobReturn.return_value.fget(self)  # type: ignore[attr-defined]

    @return_value.setter
    def return_value(self, value: Any) -> None:
        self._return_value = value


class GrailLauncher(Launcher):
    """What both backends share; ``backend`` is where the jobs run (``grail_cluster.backends``)."""

    backend = "abstract"

    def __init__(self, **params: Any) -> None:
        self.params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                       for k, v in params.items()}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        check_options(self.params, self.backend)

    def state_dir(self) -> Path:
        return Path(os.path.abspath(str(self.params["state_dir"])))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        state = self.state_dir()
        state.mkdir(parents=True, exist_ok=True)
        code_key = str(self.params.get("code_key") or "tree")
        code = code_identity(self.task_function, code_key)
        base = config_key(self.config)
        jobs = {initial_job_idx + i: (list(o), job_key(base, o)) for i, o in enumerate(job_overrides)}
        log.info(f"grail_{self.backend}: {len(jobs)} jobs, sweep dir {sweep_dir}, launcher state {state}")
        backend = get_backend(self.backend)
        with locked(state), Ledger(state) as ledger:
            old = sweep.previous_plan(state)
            if old is not None and old.backend != self.backend:  # the same sweep dir, the other launcher
                refresh(old, ledger, get_backend(old.backend))
                # One backend's refresh cannot read the other's job ids: switch only once they settled.
                active = [s.idx for s in ledger.shards() if s.state in ACTIVE]
                if active:
                    raise LauncherError(
                        f"{len(active)} job(s) of this sweep are still queued or running under grail_{old.backend}",
                        path=state, fix=f"wait for them (re-run with hydra/launcher=grail_{old.backend}) or cancel "
                                        f"them, then switch to grail_{self.backend}")
            plan = sweep_plan(state, self.backend, self.params, jobs, code, old)
            write_plan(plan)
            refresh(plan, ledger, backend)
            old_keys = old.pipeline["marker_keys"][STAGE] if old else []
            gone = sweep.vanished(plan, ledger, backend, jobs)
            done, waiting, to_submit = self.reconcile(ledger, jobs, old_keys, code, code_key, gone)
            if to_submit:
                waiting.update(self.submit(plan, ledger, backend, {n: jobs[n] for n in to_submit}, code))
            if not self.params["wait"]:
                self.report_pending(ledger, waiting, state)
                sched = sweep.scheduler_ids(ledger, waiting)
                return [self.job_return(n, o, done[n]) if n in done else self.pending_return(n, o, waiting[n], sched[n])
                        for n, (o, _) in jobs.items()]
            try:
                done.update(sweep.wait(plan, ledger, backend, waiting))
            except KeyboardInterrupt:
                self.interrupted(ledger, backend, waiting)
                raise
        return [self.job_return(n, o, done[n]) for n, (o, _) in jobs.items()]

    def reconcile(self, ledger: Ledger, jobs: dict[int, tuple[list[str], str]], old_keys: list, code: Any,
                  code_key: str, gone: set[int]) -> tuple[dict[int, dict], dict[int, int], list[int]]:
        """Split the batch: done (a valid marker under the same key, of the same code), still queued
        or running under the same key ({num: round}), to submit."""
        shards = {s.idx: s for s in ledger.shards(STAGE)}
        done: dict[int, dict] = {}
        waiting: dict[int, int] = {}
        to_submit: list[int] = []
        changed: Counter[str] = Counter()
        resume = self.params["resume"]
        for num, (_, key) in jobs.items():
            s = shards.get(num)
            same_key = num < len(old_keys) and old_keys[num] == key
            why = code_change(ledger.meta(f"code_r{s.attempt}"), code, code_key) if s else None
            result = sweep.read_result(sweep.result_path(self.state_dir(), s.attempt, num)) if s else None
            if not resume or s is None:
                to_submit.append(num)
            elif (s.state == ShardState.DONE or num in gone) and result is not None and not why \
                    and result["status"] == "completed":
                done[num] = result
            elif s.state in ACTIVE and same_key and num not in gone:
                waiting[num] = s.attempt
            else:
                to_submit.append(num)
                if why and s.state == ShardState.DONE:
                    changed[why] += 1
        name = f"grail_{self.backend}"
        for why, n in sorted(changed.items()):
            log.warning(f"{name}: {n} job(s) of this sweep ran under other code ({why}): "
                        f"run again, not reused (code_key={code_key}; now: {describe_code(code)})")
        if shards and resume:
            log.info(f"{name}: resuming: {len(done)} done (returned from the ledger, not "
                     f"rerun), {len(waiting)} still queued or running, {len(to_submit)} to submit")
        return done, waiting, to_submit

    def submit(self, plan: RunPlan, ledger: Ledger, backend: Any, jobs: dict[int, tuple[list[str], str]],
               code: Any) -> dict[int, int]:
        """One round: its payload, the job script (every round's payload digest), the array."""
        state = self.state_dir()
        for num, (overrides, _) in jobs.items():
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        round_ = ledger.next_round()
        digest = write_payload(state, round_, {
            "version": 2, "hydra_context": self.hydra_context, "task_function": self.task_function,
            "config": self.config, "singleton_state": Singleton.get_state(),
            "jobs": {n: {"num": n, "overrides": o, "key": k} for n, (o, k) in jobs.items()}})
        digests = {**ledger.meta("payload_sha256", {}), str(round_): digest}
        ledger.set_meta("payload_sha256", digests)
        ledger.set_meta(f"code_r{round_}", code)
        sweep.write_specs(plan, backend, sweep.job_spec(plan, self.params, digests))
        for num in jobs:  # a done job run again (resume=false, other code): its old evidence goes aside
            retire_marker(state, STAGE, num, round_)
        try:
            submit_indices(plan, ledger, backend, {STAGE: sorted(jobs)}, round_, arrays={STAGE: True})
        except GrailError as exc:
            if not exc.problem.startswith("sbatch refused"):
                raise
            refusal = exc.problem.split(": ", 1)[-1]
            raise LauncherError(f"sbatch refused the array for this sweep: {refusal}",
                                fix="check hydra.launcher.partition, time, cpus_per_task, mem_gb, "
                                    "gpus_per_node and additional_parameters against `sinfo`/your "
                                    "account") from None
        ids = sweep.array_ids(ledger, jobs)
        log.info(f"grail_{self.backend}: {len(jobs)} jobs submitted as {', '.join(ids)}")
        return dict.fromkeys(jobs, round_)

    # ------------------------------------------------------------------ JobReturns

    def job_return(self, num: int, overrides: list[str], result: dict[str, Any]) -> JobReturn:
        ret = JobReturn(overrides=result.get("overrides", overrides),
                        working_dir=result.get("working_dir"), task_name=result.get("task_name"))
        ret.cfg = OmegaConf.create(result["cfg"]) if result.get("cfg") is not None else None
        ret.hydra_cfg = OmegaConf.create(result["hydra_cfg"]) if result.get("hydra_cfg") is not None else None
        if result["status"] == "completed":
            ret.status = JobStatus.COMPLETED
            ret.return_value = decode_value(result.get("return") or {"json": None})
        else:
            ret.status = JobStatus.FAILED
            logs = f"{self.state_dir()}/logs/{STAGE}/{num}/*.{{out,err}}"
            ret.return_value = JobFailedError(num, overrides, result.get("error") or {}, logs)
        return ret

    def pending_return(self, num: int, overrides: list[str], round_: int, sched: str | None) -> JobReturn:
        ret = PendingJobReturn(overrides=overrides, status=JobStatus.UNKNOWN)
        ret.return_value = SubmittedJob(num, tuple(overrides), sched or "?",
                                        str(sweep.result_path(self.state_dir(), round_, num)), str(self.state_dir()))
        return ret

    def report_pending(self, ledger: Ledger, waiting: dict[int, int], state: Path) -> None:
        if not waiting:
            return
        ids = sweep.array_ids(ledger, waiting)
        print(f"grail_{self.backend}: {len(waiting)} jobs queued or running ({', '.join(ids)}); not waiting for "
              f"them (hydra.launcher.wait=false).\n"
              f"  results: {state}/results/r<round>/<num>.json    logs: {state}/logs/{STAGE}/\n"
              f"  status:  python -m grail_cluster.launchers.hydra_launcher {state}\n"
              f"  collect: run the same command again (same hydra.sweep.dir): finished jobs are returned "
              f"from the ledger, running ones waited on", file=sys.stderr, flush=True)

    def interrupted(self, ledger: Ledger, backend: Any, waiting: dict[int, int]) -> None:
        if self.backend == "local":
            backend.cancel([], ledger=ledger)
            print("grail_local: interrupted; the local jobs were stopped. Run the same command again to resume: "
                  "finished jobs are not rerun.", file=sys.stderr, flush=True)
            return
        ids = sweep.array_ids(ledger, waiting)
        print(f"grail_slurm: interrupted; the SLURM jobs keep running ({', '.join(ids)}). Run the same "
              f"command again (same hydra.sweep.dir) to collect their results, or `scancel {' '.join(ids)}`.",
              file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked(state: Path) -> Iterator[None]:
    """One launcher per sweep: the run's submit lock."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(submit_lock(state))
        except GrailError:  # its fix speaks of grail-cluster run's --wait
            raise LauncherError("another grail launcher is running this sweep right now", path=state,
                                fix="wait for it to return, or give this sweep its own hydra.sweep.dir") from None
        yield


class GrailLocalLauncher(GrailLauncher):
    backend = "local"


class GrailSlurmLauncher(GrailLauncher):
    backend = "slurm"


if __name__ == "__main__":
    sys.exit(main())
