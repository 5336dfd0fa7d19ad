"""Hydra launcher plugin: a Hydra sweep's jobs on grail-cluster's backends, resumable.

``python my_app.py -m hydra/launcher=grail_slurm a=1,2,3 b=x,y`` submits each batch of jobs as one
SLURM array (``grail_local``: one process per job on this machine, at most ``max_parallel`` at
once) and records every job in a ledger under ``hydra.launcher.state_dir``
(``${hydra.sweep.dir}/.grail``): ``ledger.jsonl``, ``payloads/``, ``results/``, ``logs/``.

This module is the adapter to Hydra's ``Launcher`` interface; the work is done by

- :mod:`~grail_cluster.launchers.hydra_config`: the typed options in Hydra's ConfigStore and their checks;
- :mod:`~grail_cluster.launchers.keys`: a job's key (config, overrides) and the code it ran (resume
  sees code: hydra #1407, #3328: the submitit launcher cannot resume at all);
- :mod:`~grail_cluster.launchers.resume`: done / still running / to submit, and the wait loop;
- :mod:`~grail_cluster.launchers.payloads`: what crosses into a job (a digest-checked pickle) and back (JSON);
- :mod:`~grail_cluster.launchers.submission`: SLURM arrays through grail-cluster's SLURM backend, or
  a local driver process;
- :mod:`~grail_cluster.launchers.ledger` and :mod:`~grail_cluster.launchers.status`: the sweep
  ledger and ``python -m grail_cluster.launchers.hydra_launcher <state_dir>``;
- :mod:`~grail_cluster.launchers.hydra_job`: the job entry.

Running the same command again with the same ``hydra.sweep.dir`` returns the jobs whose result says
done under the same key and code without running them, waits on (``wait=false``: reports) the ones
still queued or running, and submits the failed, lost, never-submitted and changed ones.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from grail_cluster.launchers import resume
from grail_cluster.launchers.errors import JobFailedError
from grail_cluster.launchers.hydra_config import check_options
from grail_cluster.launchers.keys import code_identity, config_key, job_key
from grail_cluster.launchers.ledger import SweepJob, SweepLedger, submitted_event
from grail_cluster.launchers.payloads import decode_value, write_payload
from grail_cluster.launchers.status import main
from grail_cluster.launchers.submission import LocalSubmitter, SlurmSubmitter, Submitter

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
    """What both backends share; ``submitter`` is where the jobs run."""

    submitter: type[Submitter] = Submitter

    def __init__(self, **params: Any) -> None:
        self.params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                       for k, v in params.items()}
        self.backend = self.submitter.backend
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
        ledger = SweepLedger(state)
        submitter = self.submitter(self.params, state)
        code_key = str(self.params.get("code_key") or "tree")
        code = code_identity(self.task_function, code_key)
        base = config_key(self.config)
        jobs = [SweepJob(initial_job_idx + i, list(o), job_key(base, o)) for i, o in enumerate(job_overrides)]
        log.info(f"grail_{self.backend}: {len(jobs)} jobs, sweep dir {sweep_dir}, launcher state {state}")
        with ledger.locked():
            done, waiting, to_submit = resume.reconcile(jobs, ledger, submitter, resume=self.params["resume"],
                                                        code=code, code_key=code_key)
            for job in to_submit:
                log.info(f"\t#{job.num} : {' '.join(filter_overrides(job.overrides))}")
            if to_submit:
                sub, payload, digest = write_payload(state, {
                    "version": 1, "hydra_context": self.hydra_context, "task_function": self.task_function,
                    "config": self.config, "singleton_state": Singleton.get_state(),
                    "jobs": [{"num": j.num, "overrides": j.overrides} for j in to_submit]})
                submitted = {s.job.num: submitted_event(s.job, code=code, backend=self.backend, sub=sub,
                                                        index=s.index, sched_id=s.sched_id, **s.extra)
                             for s in submitter.submit(to_submit, sub, payload, digest)}
                ledger.append(list(submitted.values()))
                waiting.update(submitted)
            if not self.params["wait"]:
                self.report_pending(waiting, state, submitter)
                return [self.job_return(j, done[j.num]) if j.num in done
                        else self.pending_return(j, waiting[j.num]) for j in jobs]
            done.update(resume.wait(waiting, ledger, submitter))
            records = ledger.records()
        return [self.job_return(job, done[job.num], records.get(job.num)) for job in jobs]

    # ------------------------------------------------------------------ JobReturns

    def job_return(self, job: SweepJob, result: dict[str, Any], rec: dict[str, Any] | None = None
                   ) -> JobReturn:
        ret = JobReturn(overrides=result.get("overrides", job.overrides),
                        working_dir=result.get("working_dir"), task_name=result.get("task_name"))
        ret.cfg = OmegaConf.create(result["cfg"]) if result.get("cfg") is not None else None
        ret.hydra_cfg = OmegaConf.create(result["hydra_cfg"]) if result.get("hydra_cfg") is not None else None
        if result["status"] == "completed":
            ret.status = JobStatus.COMPLETED
            ret.return_value = decode_value(result.get("return") or {"json": None})
        else:
            ret.status = JobStatus.FAILED
            logs = str(self.state_dir() / rec["logs"]) + ".{out,err}" if rec and rec.get("logs") else None
            ret.return_value = JobFailedError(job.num, job.overrides, result.get("error") or {}, logs)
        return ret

    def pending_return(self, job: SweepJob, rec: dict[str, Any]) -> JobReturn:
        ret = PendingJobReturn(overrides=job.overrides, status=JobStatus.UNKNOWN)
        ret.return_value = SubmittedJob(job.num, tuple(job.overrides), rec["sched_id"],
                                        str(self.state_dir() / rec["result"]), str(self.state_dir()))
        return ret

    def report_pending(self, waiting: dict[int, dict], state: Path, submitter: Submitter) -> None:
        if not waiting:
            return
        ids = sorted({rec["sched_id"].split("_")[0] for rec in waiting.values()})
        print(f"grail_{self.backend}: {len(waiting)} jobs queued or running ({submitter.ids_are}"
              f"{', '.join(ids)}); not waiting for them (hydra.launcher.wait=false).\n"
              f"  results: {state}/results/<submission>/<index>.json    logs: {state}/logs/\n"
              f"  status:  python -m grail_cluster.launchers.hydra_launcher {state}\n"
              f"  collect: run the same command again (same hydra.sweep.dir): finished jobs are returned "
              f"from the ledger, running ones waited on", file=sys.stderr, flush=True)


class GrailLocalLauncher(GrailLauncher):
    submitter = LocalSubmitter


class GrailSlurmLauncher(GrailLauncher):
    submitter = SlurmSubmitter


if __name__ == "__main__":
    sys.exit(main())
