"""Hydra launcher plugin: a Hydra sweep's jobs on grail-cluster's backends, resumable.

``python my_app.py -m hydra/launcher=grail_slurm a=1,2,3 b=x,y`` submits each batch of jobs as one
SLURM array (``grail_local``: one process per job on this machine, at most ``max_parallel`` at
once) and records every job in a ledger under ``hydra.launcher.state_dir``
(``${hydra.sweep.dir}/.grail``): ``ledger.jsonl``, ``payloads/``, ``results/``, ``logs/``.

Resume (hydra #1407, #3328: the submitit launcher cannot). A job is its number in the sweep plus a
key: the SHA-256 of the app's composed config (without ``hydra``), the job's overrides and the code
(``code_key``, default ``tree``): the task function's source file and every module of the same
project its imports reach (source digests, :mod:`grail_cluster.core.code_digest`), plus the git commit
of the checkout holding the task and a digest of its uncommitted changes to tracked files. Running
the same command again with the same ``hydra.sweep.dir`` returns the jobs whose result says done
under the same key without running them, waits on (``wait=false``: reports) the ones still queued
or running, and submits the failed, lost, never-submitted and changed ones. ``resume=false`` (or
removing ``<sweep dir>/.grail``) submits every job again. Not seen by the key: data files the task
reads, modules imported dynamically or from installed packages, and code edited while the jobs
of a sweep are still queued (a job imports its modules when it starts).

Crossing into the job: pickle in, JSON out.

- In: Hydra hands a launcher an in-process task function (a closure, in Hydra's own launcher test
  suite), so it must be serialised. Like hydra_submitit_launcher we cloudpickle it with the Hydra
  context, the sweep config and ``Singleton.get_state()``: one payload file per submission, mode
  0600. The project never unpickles untrusted data, so a job loads only the payload whose SHA-256
  equals the digest the launcher wrote into that job's own command line (the sbatch script, the
  local driver's argv); the file is read once and hashed before ``pickle.loads`` sees the bytes,
  and a missing or changed payload is refused (exit 3, a ``refused`` result). The trust root is the
  job script: whoever can edit it can run anything in the job anyway.
- Out: no pickle. The job writes ``results/<submission>/<index>.json`` (temporary file + rename):
  its status; the return value when it survives a JSON round trip unchanged, else its type name
  and ``repr`` (returned as :class:`ReturnRepr`); on failure the exception's type, text and
  traceback (raised here as :class:`JobFailedError` when Hydra reads ``return_value``); and the
  job's config and Hydra config as YAML, from which the ``JobReturn`` is rebuilt. Hydra's launcher
  test suites return only JSON values (100, "foo"), so nothing more is needed; an object that must
  come back exactly belongs in a file the task writes to its output directory.

State machine of a job in the ledger (the launcher alone writes it; jobs write only their result)::

    (none) -> submitted -> done | failed | lost      (failed/lost/none -> submitted, attempt + 1)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from grail_cluster.core.errors import ConfigError, GrailError
from grail_cluster.launchers.hydra_job import read_result, result_file

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.jsonl"
LOCK_FILE = "launcher.lock"
JOB_MODULE = "grail_cluster.launchers.hydra_job"
# Scheduler queries back off from POLL_FIRST_S to POLL_MAX_S; result files (a stat each, no
# scheduler load) are looked at every RESULT_TICK_S growing to RESULT_TICK_MAX_S.
POLL_FIRST_S = 0.5
POLL_MAX_S = 5.0
RESULT_TICK_S = 0.05
RESULT_TICK_MAX_S = 0.5
# Refreshes a job may be absent from the scheduler without a result before it counts as lost: the
# result is renamed into place before the job exits, the second look covers a slow shared filesystem.
GONE_REFRESHES = 2
# sbatch options the launcher sets itself; additional_parameters may not set them.
# hydra.launcher.code_key: what code a reused result must have come from (see code_identity).
CODE_KEYS = ("tree", "source", "off")
RESUME_HELP = """\
resume (hydra.launcher.resume=true, the default): running the same sweep again (same
hydra.sweep.dir) returns a job's recorded result only if none of these changed since it ran:
  - the app's composed config (without hydra) or the job's overrides
  - the task function's source file, or a module of the same project its imports reach
    (sha256 of each file; the project is the task's git checkout, else its directory)
  - the git commit of that checkout, or its uncommitted changes to tracked files
    (a digest of `git diff HEAD`; untracked files do not count)
hydra.launcher.code_key=source compares the source files only; code_key=off no code at all.
Not seen: data files outside git, dynamic imports, installed packages.
Force a re-run: hydra.launcher.resume=false, or a new hydra.sweep.dir (or remove <sweep dir>/.grail).
"""
_OWN_SBATCH = {"array": "array_parallelism", "job-name": "name", "time": "time", "partition": "partition",
               "cpus-per-task": "cpus_per_task", "mem": "mem_gb", "nodes": "nodes", "ntasks": None,
               "output": None, "error": None, "chdir": None}


# ----------------------------------------------------------------------------- errors; what launch() returns

# User-facing errors are also CompactHydraExceptions: Hydra prints those as their message alone,
# without its own stack frames around them.


class LauncherConfigError(ConfigError, CompactHydraException):
    """A hydra.launcher option is wrong (raised before anything is submitted)."""


class LauncherError(GrailError, CompactHydraException):
    """The launcher could not do what was asked (sbatch refused, sweep locked, payload unpicklable)."""


class JobFailedError(GrailError, CompactHydraException):
    """A job of the sweep failed (or ended without a result). Raised when its
    ``JobReturn.return_value`` is read, as Hydra's sweeper does for every job; the job's exception
    comes back as text (type, message, traceback), not as a pickled object."""

    def __init__(self, num: int, overrides: Sequence[str], error: dict[str, Any], logs: str | None):
        self.num = num
        self.error_type = error.get("type", "unknown")
        self.error_message = error.get("message", "")
        self.remote_traceback = error.get("traceback", "")
        what = " ".join(overrides) or "no overrides"
        text = f"job #{num} ({what}) failed: {self.error_type}: {self.error_message}"
        if self.remote_traceback:
            text += "\n" + self.remote_traceback.rstrip()
        if logs:
            text += f"\n  logs: {logs}"
        super().__init__(text, fix="fix the cause, then run the same command again (same hydra.sweep.dir): "
                                   "jobs already done are returned from the ledger, not rerun")


@dataclass(frozen=True)
class ReturnRepr:
    """A job's return value that JSON cannot carry back unchanged: its type name and repr."""

    type_name: str
    text: str

    def __repr__(self) -> str:
        return f"ReturnRepr({self.type_name}: {self.text})"


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


# ----------------------------------------------------------------------------- the ledger


class SweepLedger:
    """``ledger.jsonl``: one JSON line per event, appended only; a job's record is its last line.

    Each line goes out in one ``write`` on an O_APPEND descriptor and is fsynced; a line cut short
    by a crash is skipped when reading. ``locked()`` keeps two launchers off one sweep."""

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
        with open(self.state_dir / LOCK_FILE, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LauncherError("another grail launcher is running this sweep right now",
                                    path=self.state_dir,
                                    fix="wait for it to return, or give this sweep its own "
                                        "hydra.sweep.dir") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


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


# ----------------------------------------------------------------------------- the launchers


@dataclass
class SweepJob:
    num: int
    overrides: list[str]
    key: str
    record: dict[str, Any] | None = field(default=None, repr=False)


class GrailLauncher(Launcher):
    """What both backends share: options, the ledger, resume, payload, waiting, JobReturns."""

    backend = "abstract"

    def __init__(self, **params: Any) -> None:
        self.params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                       for k, v in params.items()}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.code: dict[str, Any] | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.check_params()

    # ------------------------------------------------------------------ options

    def check_params(self) -> None:
        p = self.params
        if not str(p.get("state_dir") or "").strip():
            raise LauncherConfigError("hydra.launcher.state_dir is empty",
                                      fix="leave the default (${hydra.sweep.dir}/.grail) or give a directory")
        if p.get("code_key", "tree") not in CODE_KEYS:
            raise LauncherConfigError(f"hydra.launcher.code_key={p.get('code_key')}: must be one of "
                                      f"{', '.join(CODE_KEYS)}",
                                      fix="leave the default (tree), or give source or off")
        python = p.get("python")
        if python is not None and not shutil.which(python):  # a path or a name on PATH
            raise LauncherConfigError(f"hydra.launcher.python={python}: no such executable",
                                      fix="give a Python interpreter that has grail-cluster installed, "
                                          "or null for this one")
        try:
            import cloudpickle  # noqa: F401
        except ImportError:
            raise LauncherConfigError(f"hydra/launcher=grail_{self.backend} needs cloudpickle to hand the "
                                      "task function to its jobs",
                                      fix="pip install cloudpickle (grail-cluster[slurm] has it)") from None

    def code_key(self) -> str:
        return str(self.params.get("code_key") or "tree")

    def python(self) -> str:
        return self.params.get("python") or sys.executable

    def state_dir(self) -> Path:
        return Path(os.path.abspath(str(self.params["state_dir"])))

    # ------------------------------------------------------------------ launch

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        state = self.state_dir()
        state.mkdir(parents=True, exist_ok=True)
        ledger = SweepLedger(state)
        base = config_key(self.config)
        self.code = code_identity(self.task_function, self.code_key())
        jobs = [SweepJob(initial_job_idx + i, list(o), job_key(base, o)) for i, o in enumerate(job_overrides)]
        log.info(f"grail_{self.backend}: {len(jobs)} jobs, sweep dir {sweep_dir}, launcher state {state}")
        with ledger.locked():
            done, waiting, to_submit = self.reconcile(jobs, ledger)
            for job in to_submit:
                log.info(f"\t#{job.num} : {' '.join(filter_overrides(job.overrides))}")
            if to_submit:
                submitted = self.submit(to_submit, state)
                ledger.append(list(submitted.values()))
                waiting.update(submitted)
            if not self.params["wait"]:
                self.report_pending(waiting, state)
                return [self.job_return(j, done[j.num]) if j.num in done
                        else self.pending_return(j, waiting[j.num]) for j in jobs]
            done.update(self.wait(waiting, ledger))
            records = ledger.records()
        return [self.job_return(job, done[job.num], records.get(job.num)) for job in jobs]

    def reconcile(self, jobs: list[SweepJob], ledger: SweepLedger
                  ) -> tuple[dict[int, dict], dict[int, dict], list[SweepJob]]:
        """Split the batch into done (result file says completed), still in the scheduler, to submit."""
        current = ledger.records()
        done: dict[int, dict] = {}
        waiting: dict[int, dict] = {}
        to_submit: list[SweepJob] = []
        unsettled: list[SweepJob] = []
        events = []
        changed: Counter[str] = Counter()
        for job in jobs:
            job.record = rec = current.get(job.num)
            why = code_change(rec.get("code"), self.code, self.code_key()) if rec is not None else None
            if why and rec.get("key") == job.key and self.params["resume"] and rec.get("result"):
                changed[why] += 1
            if not self.params["resume"] or rec is None or rec.get("key") != job.key or not rec.get("result") \
                    or why:
                to_submit.append(job)
                continue
            result = read_result(ledger.state_dir / rec["result"])
            if result is not None and rec["state"] == "submitted":
                events.append(settled_event(rec, result))
            if result is not None and result["status"] == "completed":
                done[job.num] = result
            elif result is None and rec["state"] == "submitted":
                unsettled.append(job)
            else:
                to_submit.append(job)
        if unsettled:
            alive = self.alive([j.record for j in unsettled if j.record])
            for job in unsettled:
                assert job.record is not None
                result = read_result(ledger.state_dir / job.record["result"])  # it may have ended meanwhile
                if result is not None:
                    events.append(settled_event(job.record, result))
                if result is not None and result["status"] == "completed":
                    done[job.num] = result
                elif result is None and job.record["sched_id"] in alive:
                    waiting[job.num] = job.record
                else:
                    to_submit.append(job)
        ledger.append(events)
        to_submit.sort(key=lambda j: j.num)
        for why, n in sorted(changed.items()):
            log.warning(f"grail_{self.backend}: {n} job(s) of this sweep ran under other code ({why}): "
                        f"run again, not reused (code_key={self.code_key()}; now: {describe_code(self.code)})")
        if current and self.params["resume"]:
            log.info(f"grail_{self.backend}: resuming: {len(done)} done (returned from the ledger, not "
                     f"rerun), {len(waiting)} still queued or running, {len(to_submit)} to submit")
        return done, waiting, to_submit

    # ------------------------------------------------------------------ submission

    def write_payload(self, jobs: list[SweepJob], state: Path) -> tuple[str, Path, str]:
        """Pickle what the jobs need (see the module docstring for why and how it is trusted)."""
        import cloudpickle

        sub = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        payload = {"version": 1, "hydra_context": self.hydra_context, "task_function": self.task_function,
                   "config": self.config, "singleton_state": Singleton.get_state(),
                   "jobs": [{"num": j.num, "overrides": j.overrides} for j in jobs]}
        try:
            data = cloudpickle.dumps(payload)
        except Exception as exc:
            raise LauncherError(f"the task function or Hydra's state cannot be serialised for the jobs: "
                                f"{exc}",
                                fix="define the task function at module level and keep open files, locks and "
                                    "clients out of its closure") from None
        for sub_dir in ("payloads", f"results/{sub}", f"logs/{sub}"):
            (state / sub_dir).mkdir(parents=True, exist_ok=True)
        path = state / "payloads" / f"{sub}.pkl"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return sub, path, hashlib.sha256(data).hexdigest()

    def job_argv(self, command: str, payload: Path, digest: str, state: Path, sub: str) -> list[str]:
        argv = [self.python(), "-m", JOB_MODULE, command, "--payload", str(payload), "--sha256", digest,
                "--result-dir", str(state / "results" / sub)]
        app_dir = sys.path[0] if sys.path and sys.path[0] else ""
        if app_dir and os.path.isdir(app_dir):
            # The app's own directory, so a task function pickled by reference (an importable module
            # beside the script) imports in the job as it did here.
            argv += ["--path", os.path.abspath(app_dir)]
        return argv

    def record(self, job: SweepJob, sub: str, index: int, sched_id: str, **extra: Any) -> dict[str, Any]:
        attempt = int(job.record.get("attempt", 0)) + 1 if job.record else 1
        return {"t": time.time(), "num": job.num, "key": job.key, "overrides": job.overrides,
                "code": self.code,
                "state": "submitted", "attempt": attempt, "backend": self.backend, "sub": sub, "index": index,
                "sched_id": sched_id, "result": str(result_file(f"results/{sub}", index)), **extra}

    # ------------------------------------------------------------------ waiting

    def wait(self, waiting: dict[int, dict], ledger: SweepLedger) -> dict[int, dict]:
        """Until every waited job has a result. Result files are looked at often (a stat each);
        the scheduler is asked at most once per refresh for all the jobs left, backing off from
        POLL_FIRST_S to POLL_MAX_S; a job it no longer lists without a result is lost."""
        results: dict[int, dict] = {}
        gone: Counter[int] = Counter()
        tick, delay, refreshes, t0 = RESULT_TICK_S, POLL_FIRST_S, 0, time.monotonic()
        next_query = t0 + delay
        state = ledger.state_dir
        try:
            while True:
                events = []
                for num, rec in list(waiting.items()):
                    result = read_result(state / rec["result"])
                    if result is not None:
                        results[num] = result
                        events.append(settled_event(rec, result))
                        del waiting[num]
                ledger.append(events)
                if not waiting:
                    break
                time.sleep(tick)
                tick = min(tick * 1.2, RESULT_TICK_MAX_S)
                if time.monotonic() < next_query:
                    continue
                refreshes += 1
                delay = min(delay * 1.5, POLL_MAX_S)
                next_query = time.monotonic() + delay
                try:
                    alive = self.alive(list(waiting.values()))
                except GrailError as exc:  # slurmctld busy or restarting: a long wait outlives that
                    log.warning(f"grail_{self.backend}: could not ask the scheduler ({exc.problem}); "
                                "retrying")
                    continue
                lost = []
                for num, rec in waiting.items():
                    if rec["sched_id"] in alive:
                        gone.pop(num, None)
                        continue
                    gone[num] += 1
                    if gone[num] >= GONE_REFRESHES and read_result(state / rec["result"]) is None:
                        lost.append(rec)
                if lost:
                    self.settle_lost(lost, waiting, results, ledger)
        except KeyboardInterrupt:
            self.interrupted(waiting)
            raise
        log.info(f"grail_{self.backend}: all jobs ended after {time.monotonic() - t0:.1f} s "
                 f"({refreshes} scheduler refreshes)")
        return results

    def settle_lost(self, lost: list[dict], waiting: dict[int, dict], results: dict[int, dict],
                    ledger: SweepLedger) -> None:
        why = self.ended(lost)
        for rec in lost:
            result = {"status": "lost", "overrides": rec["overrides"],
                      "error": {"type": "JobLost", "traceback": "", "message":
                                f"{self.backend} job {rec['sched_id']} ended without writing a result "
                                f"({why.get(rec['sched_id'], 'no longer known to the scheduler')})"}}
            results[rec["num"]] = result
            ledger.append([settled_event(rec, result)])
            del waiting[rec["num"]]

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
            ret.return_value = JobFailedError(job.num, job.overrides, result.get("error") or {},
                                              self.logs_of(rec or {}))
        return ret

    def pending_return(self, job: SweepJob, rec: dict[str, Any]) -> JobReturn:
        ret = PendingJobReturn(overrides=job.overrides, status=JobStatus.UNKNOWN)
        ret.return_value = SubmittedJob(job.num, tuple(job.overrides), rec["sched_id"],
                                        str(self.state_dir() / rec["result"]), str(self.state_dir()))
        return ret

    def report_pending(self, waiting: dict[int, dict], state: Path) -> None:
        if not waiting:
            return
        ids = sorted({rec["sched_id"].split("_")[0] for rec in waiting.values()})
        where = ("SLURM array " if self.backend == "slurm" else "local driver pid ") + ", ".join(ids)
        print(f"grail_{self.backend}: {len(waiting)} jobs queued or running ({where}); not waiting for them "
              f"(hydra.launcher.wait=false).\n"
              f"  results: {state}/results/<submission>/<index>.json    logs: {state}/logs/\n"
              f"  status:  python -m grail_cluster.launchers.hydra_launcher {state}\n"
              f"  collect: run the same command again (same hydra.sweep.dir): finished jobs are returned "
              f"from the ledger, running ones waited on", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ per backend

    def submit(self, jobs: list[SweepJob], state: Path) -> dict[int, dict]:
        raise NotImplementedError

    def alive(self, records: list[dict]) -> set[str]:
        """Scheduler ids among ``records`` still queued or running (at most one scheduler call)."""
        raise NotImplementedError

    def ended(self, records: list[dict]) -> dict[str, str]:
        """How jobs that vanished without a result ended, as the scheduler tells it."""
        return {}

    def logs_of(self, rec: dict[str, Any]) -> str | None:
        return str(self.state_dir() / rec["logs"]) + ".{out,err}" if rec.get("logs") else None

    def interrupted(self, waiting: dict[int, dict]) -> None:
        pass


class GrailLocalLauncher(GrailLauncher):
    """Each job in its own process on this machine, at most ``max_parallel`` at once, through a
    small driver process (so ``wait=false`` can return while the queue goes on)."""

    backend = "local"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._drivers: list[subprocess.Popen] = []

    def check_params(self) -> None:
        super().check_params()
        mp = self.params.get("max_parallel")
        if mp is not None and int(mp) < 1:
            raise LauncherConfigError(f"hydra.launcher.max_parallel={mp}: must be at least 1",
                                      fix="give the number of jobs to run at once, or null for one per CPU")

    def max_parallel(self) -> int:
        mp = self.params.get("max_parallel")
        if mp:
            return int(mp)
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def submit(self, jobs: list[SweepJob], state: Path) -> dict[int, dict]:
        sub, payload, digest = self.write_payload(jobs, state)
        argv = self.job_argv("drive", payload, digest, state, sub) + [
            "--count", str(len(jobs)), "--max-parallel", str(self.max_parallel()),
            "--log-dir", str(state / "logs" / sub), "--python", self.python()]
        with open(state / "logs" / sub / "driver.log", "ab") as driver_log:
            # Its own session: it outlives the launcher with wait=false, and Ctrl-C while waiting
            # stops exactly it and its jobs (interrupted()).
            proc = subprocess.Popen(argv, cwd=os.getcwd(), stdin=subprocess.DEVNULL, stdout=driver_log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._drivers.append(proc)
        log.info(f"grail_local: {len(jobs)} jobs started by driver pid {proc.pid} "
                 f"(at most {self.max_parallel()} at once)")
        return {job.num: self.record(job, sub, i, f"{proc.pid}_{i}", driver=proc.pid, payload=str(payload),
                                     logs=f"logs/{sub}/{i}")
                for i, job in enumerate(jobs)}

    def alive(self, records: list[dict]) -> set[str]:
        live = {pid for pid in {rec.get("driver") for rec in records} if isinstance(pid, int)
                and driver_running(pid, next(r["payload"] for r in records if r.get("driver") == pid))}
        return {rec["sched_id"] for rec in records if rec.get("driver") in live}

    def ended(self, records: list[dict]) -> dict[str, str]:
        return {rec["sched_id"]: f"its local driver process {rec.get('driver')} is gone" for rec in records}

    def wait(self, waiting: dict[int, dict], ledger: SweepLedger) -> dict[int, dict]:
        try:
            return super().wait(waiting, ledger)
        finally:
            for proc in self._drivers:  # reap the drivers this launcher started
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)

    def interrupted(self, waiting: dict[int, dict]) -> None:
        for proc in self._drivers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        print("grail_local: interrupted; the local jobs were stopped. Run the same command again to resume: "
              "finished jobs are not rerun.", file=sys.stderr, flush=True)


class GrailSlurmLauncher(GrailLauncher):
    """All jobs of a batch in one SLURM array (chunked only above MaxArraySize), submitted through
    grail-cluster's submitit-based SLURM backend; one ``squeue`` per refresh while waiting."""

    backend = "slurm"

    def check_params(self) -> None:
        super().check_params()
        p = self.params
        for key, low in (("time", 1), ("array_parallelism", 1), ("cpus_per_task", 1), ("gpus_per_node", 0)):
            if p.get(key) is not None and int(p[key]) < low:
                nullable = " (or null to leave it to SLURM)" if key in ("cpus_per_task", "gpus_per_node") \
                    else ""
                raise LauncherConfigError(f"hydra.launcher.{key}={p[key]}: must be at least {low}",
                                          fix=f"set hydra.launcher.{key} to a value >= {low}{nullable}")
        if p.get("mem_gb") is not None and float(p["mem_gb"]) <= 0:
            raise LauncherConfigError(f"hydra.launcher.mem_gb={p['mem_gb']}: must be positive",
                                      fix="give the memory per job in GB, or null for the partition's "
                                          "default")
        if int(p.get("nodes", 1)) != 1:
            raise LauncherConfigError(f"hydra.launcher.nodes={p['nodes']}: grail_slurm runs each Hydra job "
                                      "as one process on one node",
                                      fix="drop the override (multi-node training: grail-cluster run, or "
                                          "hydra/launcher=submitit_slurm)")
        if not str(p.get("name") or "").strip():
            raise LauncherConfigError("hydra.launcher.name is empty",
                                      fix="leave the default (${hydra.job.name}) or give a name")
        setup = p.get("setup") or []
        if not isinstance(setup, list) or not all(isinstance(s, str) for s in setup):
            raise LauncherConfigError(f"hydra.launcher.setup={setup!r}: must be a list of shell lines",
                                      fix="e.g. 'hydra.launcher.setup=[\"module load cuda\"]'")
        for key, value in (p.get("additional_parameters") or {}).items():
            check_sbatch_option(str(key), value, gpus_set=p.get("gpus_per_node") is not None)
        if not shutil.which("sbatch"):
            raise LauncherConfigError("hydra/launcher=grail_slurm: `sbatch` not found: this machine has no "
                                      "SLURM client",
                                      fix="run on a SLURM login node, or use hydra/launcher=grail_local")

    def render_script(self, command: str) -> str:
        return render_sbatch(self.params, command)

    def submit(self, jobs: list[SweepJob], state: Path) -> dict[int, dict]:
        from grail_cluster.backends.slurm import SlurmBackend, _executor_class

        sub, payload, digest = self.write_payload(jobs, state)
        backend = SlurmBackend()
        size = max(1, backend.max_array_size() - 1)  # task ids run 0 .. MaxArraySize-1
        chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        parallel = max(1, int(self.params["array_parallelism"]) // len(chunks))
        executor = _executor_class()(state / "sbatch")
        (state / "sbatch").mkdir(exist_ok=True)
        logs = state / "logs" / sub
        records: dict[int, dict] = {}
        for c, chunk in enumerate(chunks):
            offset = c * size
            argv = self.job_argv("run", payload, digest, state, sub) + ["--index-offset", str(offset)]
            command = shlex.join(argv) + (' --index "$SLURM_ARRAY_TASK_ID"'
                                          ' --job-id "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"')
            array = f"0-{len(chunk) - 1}%{min(len(chunk), parallel)}"
            flags = [f"--job-name={self.params['name']}", f"--array={array}", f"--output={logs}/%A_%a.out",
                     f"--error={logs}/%A_%a.err", f"--chdir={os.getcwd()}"]
            try:
                array_id = executor.sbatch(self.render_script(command), flags)
            except Exception as exc:  # submitit wraps sbatch's message
                lines = str(exc).strip().splitlines()
                raise LauncherError(f"sbatch refused the array for this sweep: {lines[-1] if lines else exc}",
                                    fix="check hydra.launcher.partition, time, cpus_per_task, mem_gb, "
                                        "gpus_per_node and additional_parameters against `sinfo`/your "
                                        "account") from None
            log.info(f"grail_slurm: {len(chunk)} jobs submitted as SLURM array {array_id} (--array={array})")
            for task, job in enumerate(chunk):
                records[job.num] = self.record(job, sub, offset + task, f"{array_id}_{task}",
                                               logs=f"logs/{sub}/{array_id}_{task}")
        return records

    def alive(self, records: list[dict]) -> set[str]:
        from grail_cluster.backends.slurm import SlurmBackend

        arrays = {rec["sched_id"].split("_")[0] for rec in records}
        live = SlurmBackend().live_states([SimpleNamespace(job_id=a) for a in sorted(arrays)])
        return {f"{base}_{task}" for base, task in live}

    def ended(self, records: list[dict]) -> dict[str, str]:
        from grail_cluster.backends.slurm import SlurmBackend

        final = SlurmBackend().final_states({rec["sched_id"].split("_")[0] for rec in records})
        return {f"{base}_{task}": f"SLURM state {info.sched_state}, exit code {info.exit_code}"
                for (base, task), info in final.items()}

    def interrupted(self, waiting: dict[int, dict]) -> None:
        ids = sorted({rec["sched_id"].split("_")[0] for rec in waiting.values()})
        print(f"grail_slurm: interrupted; the SLURM jobs keep running ({', '.join(ids)}). Run the same "
              f"command again (same hydra.sweep.dir) to collect their results, or `scancel {' '.join(ids)}`.",
              file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- helpers


def config_key(config: DictConfig) -> str:
    """Digest of the app's composed config without ``hydra``: a job whose app config changed
    since it ran is not taken as done (launcher options such as the partition may change)."""
    body = OmegaConf.to_container(config, resolve=False, throw_on_missing=False)
    assert isinstance(body, dict)
    body.pop("hydra", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def job_key(config_digest: str, overrides: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([config_digest, list(overrides)]).encode()).hexdigest()[:32]


def code_identity(task_function: Any, mode: str) -> dict[str, Any] | None:
    """The code a job runs, recorded with it and compared on resume (:func:`code_change`): the
    task's sources (its module and the project modules it imports) and the git commit and
    uncommitted tracked changes of the checkout holding it. None with ``code_key=off``."""
    if mode == "off":
        return None
    from grail_cluster.core.code_digest import git_state, task_sources

    if task_function is None:
        out: dict[str, Any] = {"task": None, "sources": None}
    else:
        out = {"task": None, "sources": task_sources(task_function)}
        out["task"] = out["sources"].pop("task")
    root = (out["sources"] or {}).get("root")
    out["git"] = git_state(root) if root else None
    return out


def code_change(recorded: dict[str, Any] | None, now: dict[str, Any] | None, mode: str) -> str | None:
    """Why a recorded result is not of the code running now (``hydra.launcher.code_key``), or None.
    ``tree``: task, source digests, commit and uncommitted changes must match; ``source``: task and
    source digests; ``off``: nothing is compared. A record without code (written with
    code_key=off or by an older launcher) is of unknown code, so not reused unless off."""
    if mode == "off":
        return None
    if not isinstance(recorded, dict) or not recorded or now is None:  # a hand-edited ledger line too
        return "the recorded result has no code identity"

    def part(code: dict[str, Any], key: str) -> dict[str, Any]:
        value = code.get(key)
        return value if isinstance(value, dict) else {}

    if recorded.get("task") != now.get("task"):
        return f"task function {recorded.get('task')} -> {now.get('task')}"
    if part(recorded, "sources").get("sha256") != part(now, "sources").get("sha256"):
        return "the source of the task or of a module it imports changed"
    if mode == "tree":
        old, new = part(recorded, "git"), part(now, "git")
        if old.get("commit") != new.get("commit"):
            return f"git commit {str(old.get('commit'))[:12]} -> {str(new.get('commit'))[:12]}"
        if old.get("diff_sha256") != new.get("diff_sha256"):
            return "the checkout's uncommitted changes to tracked files changed"
    return None


def describe_code(code: dict[str, Any] | None) -> str:
    if not code:
        return "code_key=off"
    src = code.get("sources") or {}
    text = f"task {code.get('task')}, {src.get('files', 0)} source file(s) {str(src.get('sha256'))[:12]}"
    git = code.get("git")
    if git:
        text += f", commit {git['commit'][:12]}" + (f" + uncommitted changes {git['diff_sha256'][:12]}"
                                                    if git.get("dirty") else " (clean)")
    return text


def decode_value(encoded: dict[str, Any]) -> Any:
    if "json" in encoded:
        return encoded["json"]
    return ReturnRepr(str(encoded.get("type")), str(encoded.get("repr")))


def check_sbatch_option(key: str, value: Any, *, gpus_set: bool) -> None:
    name = key.replace("_", "-")
    where = f"hydra.launcher.additional_parameters.{key}"
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", name):
        raise LauncherConfigError(f"{where}: {key!r} is not an sbatch option name",
                                  fix="use the long option without dashes, e.g. "
                                      "additional_parameters.account=lab")
    if name in _OWN_SBATCH or (name == "gres" and gpus_set):
        own = _OWN_SBATCH.get(name, "gpus_per_node")
        raise LauncherConfigError(f"{where}: the launcher sets --{name} itself",
                                  fix=f"use hydra.launcher.{own}" if own
                                  else "drop it: the launcher manages it per sweep")
    if "\n" in str(value):
        raise LauncherConfigError(f"{where}: the value contains a newline", fix="give a one-line value")


def render_sbatch(p: dict[str, Any], command: str) -> str:
    """The batch script: resources and setup lines from the options, then the job entry. What
    differs per submission (array, name, log paths, working dir) is on the sbatch command line."""
    from grail_cluster.backends.slurm import slurm_mem, slurm_time

    lines = ["#!/bin/bash", "# grail-cluster Hydra launcher (hydra/launcher=grail_slurm): one job of a sweep",
             "#SBATCH --nodes=1", "#SBATCH --ntasks=1", f"#SBATCH --time={slurm_time(int(p['time']))}"]
    if p.get("partition"):
        lines.append(f"#SBATCH --partition={p['partition']}")
    if p.get("cpus_per_task"):
        lines.append(f"#SBATCH --cpus-per-task={int(p['cpus_per_task'])}")
    if p.get("mem_gb"):
        lines.append(f"#SBATCH --mem={slurm_mem(float(p['mem_gb']))}")
    if p.get("gpus_per_node"):
        lines.append(f"#SBATCH --gres=gpu:{int(p['gpus_per_node'])}")
    for key, value in sorted((p.get("additional_parameters") or {}).items()):
        name = str(key).replace("_", "-")
        if value is True:
            lines.append(f"#SBATCH --{name}")
        elif value is not None and value is not False:
            lines.append(f"#SBATCH --{name}={value}")
    lines += list(p.get("setup") or [])
    lines.append(f"exec {command}")
    return "\n".join(lines) + "\n"


def driver_running(pid: int, payload: str) -> bool:
    """The local driver ``pid`` is alive, not a zombie, and still ours (its argv names our payload:
    pids get reused)."""
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        if Path("/proc/self").exists():
            return False
        try:  # no procfs (macOS): existence only
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and payload.encode() in cmdline


# ----------------------------------------------------------------------------- status command


def sweep_status(state_dir: Path) -> dict[int, dict[str, Any]]:
    """Every job of a sweep as its ledger and result files tell it, without asking the scheduler:
    ``state`` is done / failed / lost / refused from a result, else ``submitted`` (queued or running,
    or gone without a result: the next run of the sweep finds out)."""
    out: dict[int, dict[str, Any]] = {}
    for num, rec in sorted(SweepLedger(state_dir).records().items()):
        result = read_result(state_dir / rec["result"]) if rec.get("result") else None
        state = rec["state"]
        if result is not None:
            state = {"completed": "done"}.get(result["status"], result["status"])
        out[num] = {"state": state, "overrides": rec.get("overrides", []), "attempt": rec.get("attempt"),
                    "scheduler_id": rec.get("sched_id"),
                    "result": str(state_dir / rec["result"]) if rec.get("result") else None,
                    "return": (result or {}).get("return", rec.get("return")),
                    "error": (result or {}).get("error", rec.get("error"))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grail_cluster.launchers.hydra_launcher",
                                     description="The jobs of a sweep run with "
                                                 "hydra/launcher=grail_local|grail_slurm",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=RESUME_HELP)
    parser.add_argument("state_dir",
                        help="the sweep's launcher state folder (<hydra.sweep.dir>/.grail by default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    state = Path(args.state_dir)
    if not (state / LEDGER_FILE).exists() and (state / ".grail" / LEDGER_FILE).exists():
        state = state / ".grail"  # the sweep dir was given
    if not (state / LEDGER_FILE).exists():
        print(f"{state}: no {LEDGER_FILE} here (give <hydra.sweep.dir>/.grail)", file=sys.stderr)
        return 2
    jobs = sweep_status(state)
    if args.json:
        print(json.dumps({str(k): v for k, v in jobs.items()}, indent=1, default=str))
        return 0
    for num, job in jobs.items():
        detail = job["return"] if job["state"] == "done" else (job["error"] or {}).get("message", "")
        print(f"#{num:<5} {job['state']:<10} {job['scheduler_id'] or '':<14} {' '.join(job['overrides'])}  "
              f"{json.dumps(detail, default=str)[:100]}")
    counts = Counter(job["state"] for job in jobs.values())
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
