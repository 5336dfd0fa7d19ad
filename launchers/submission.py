"""Where a sweep's jobs run: ``grail_slurm`` through grail-cluster's submitit-based SLURM backend
(:class:`grail_cluster.backends.slurm.SlurmBackend`: sbatch, one ``squeue`` per refresh, ``sacct``
for jobs that left the queue), ``grail_local`` through a driver process on this machine. Both run
the job entry ``python -m grail_cluster.launchers.hydra_job``.

A submitter submits one batch and answers, for the launcher's wait loop, which of its jobs are
still queued or running (at most one scheduler call per refresh) and how vanished ones ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from grail_cluster.backends.groups import compress_ranges
from grail_cluster.core.errors import GrailError
from grail_cluster.launchers.errors import LauncherError
from grail_cluster.launchers.ledger import SweepJob

log = logging.getLogger(__name__)

JOB_MODULE = "grail_cluster.launchers.hydra_job"


@dataclass
class Submitted:
    """One job as submitted: its task in the submission, its scheduler id, backend extras."""

    job: SweepJob
    index: int
    sched_id: str
    extra: dict[str, Any] = field(default_factory=dict)


class Submitter:
    backend = "abstract"
    # How report_pending names the scheduler ids of the jobs still running.
    ids_are = ""

    def __init__(self, params: dict[str, Any], state: Path):
        self.params = params
        self.state = state

    def python(self) -> str:
        return self.params.get("python") or sys.executable

    def job_argv(self, command: str, payload: Path, digest: str, sub: str) -> list[str]:
        argv = [self.python(), "-m", JOB_MODULE, command, "--payload", str(payload), "--sha256", digest,
                "--result-dir", str(self.state / "results" / sub)]
        app_dir = sys.path[0] if sys.path and sys.path[0] else ""
        if app_dir and os.path.isdir(app_dir):
            # The app's own directory, so a task function pickled by reference (an importable module
            # beside the script) imports in the job as it did here.
            argv += ["--path", os.path.abspath(app_dir)]
        return argv

    def submit(self, jobs: list[SweepJob], sub: str, payload: Path, digest: str) -> list[Submitted]:
        raise NotImplementedError

    def alive(self, records: list[dict]) -> set[str]:
        """Scheduler ids among ``records`` still queued or running (at most one scheduler call)."""
        raise NotImplementedError

    def ended(self, records: list[dict]) -> dict[str, str]:
        """How jobs that vanished without a result ended, as the scheduler tells it."""
        return {}

    def reap(self) -> None:
        """After waiting: collect the processes this launcher started."""

    def interrupted(self, waiting: dict[int, dict]) -> None:
        """Ctrl-C while waiting."""


# ----------------------------------------------------------------------------- grail_local


class LocalSubmitter(Submitter):
    """Each job in its own process on this machine, at most ``max_parallel`` at once, through a
    small driver process (``hydra_job drive``), so ``wait=false`` can return while the queue goes on."""

    backend = "local"
    ids_are = "local driver pid "

    def __init__(self, params: dict[str, Any], state: Path):
        super().__init__(params, state)
        self._drivers: list[subprocess.Popen] = []

    def max_parallel(self) -> int:
        mp = self.params.get("max_parallel")
        if mp:
            return int(mp)
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def submit(self, jobs: list[SweepJob], sub: str, payload: Path, digest: str) -> list[Submitted]:
        logs = self.state / "logs" / sub
        argv = self.job_argv("drive", payload, digest, sub) + [
            "--count", str(len(jobs)), "--max-parallel", str(self.max_parallel()),
            "--log-dir", str(logs), "--python", self.python()]
        with open(logs / "driver.log", "ab") as driver_log:
            # Its own session: it outlives the launcher with wait=false, and Ctrl-C while waiting
            # stops exactly it and its jobs (interrupted()).
            proc = subprocess.Popen(argv, cwd=os.getcwd(), stdin=subprocess.DEVNULL, stdout=driver_log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._drivers.append(proc)
        log.info(f"grail_local: {len(jobs)} jobs started by driver pid {proc.pid} "
                 f"(at most {self.max_parallel()} at once)")
        return [Submitted(job, i, f"{proc.pid}_{i}", {"driver": proc.pid, "payload": str(payload),
                                                      "logs": f"logs/{sub}/{i}"})
                for i, job in enumerate(jobs)]

    def alive(self, records: list[dict]) -> set[str]:
        live = {pid for pid in {rec.get("driver") for rec in records} if isinstance(pid, int)
                and driver_running(pid, next(r["payload"] for r in records if r.get("driver") == pid))}
        return {rec["sched_id"] for rec in records if rec.get("driver") in live}

    def ended(self, records: list[dict]) -> dict[str, str]:
        return {rec["sched_id"]: f"its local driver process {rec.get('driver')} is gone" for rec in records}

    def reap(self) -> None:
        for proc in self._drivers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def interrupted(self, waiting: dict[int, dict]) -> None:
        for proc in self._drivers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        print("grail_local: interrupted; the local jobs were stopped. Run the same command again to resume: "
              "finished jobs are not rerun.", file=sys.stderr, flush=True)


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


# ----------------------------------------------------------------------------- grail_slurm


class SlurmSubmitter(Submitter):
    """All jobs of a batch in one SLURM array (chunked only above MaxArraySize), submitted byte for
    byte through the SLURM backend's submitit executor; one ``squeue`` per refresh while waiting."""

    backend = "slurm"
    ids_are = "SLURM array "

    def submit(self, jobs: list[SweepJob], sub: str, payload: Path, digest: str) -> list[Submitted]:
        from grail_cluster.backends.slurm import SlurmBackend

        backend = SlurmBackend()
        size = max(1, backend.max_array_size() - 1)  # task ids run 0 .. MaxArraySize-1
        chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        parallel = max(1, int(self.params["array_parallelism"]) // len(chunks))
        scripts = self.state / "sbatch"
        scripts.mkdir(exist_ok=True)
        logs = self.state / "logs" / sub
        out: list[Submitted] = []
        for c, chunk in enumerate(chunks):
            offset = c * size
            argv = self.job_argv("run", payload, digest, sub) + ["--index-offset", str(offset)]
            command = shlex.join(argv) + (' --index "$SLURM_ARRAY_TASK_ID"'
                                          ' --job-id "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"')
            array = f"{compress_ranges(list(range(len(chunk))))}%{min(len(chunk), parallel)}"
            script = scripts / f"{sub}-{c}.sh"
            script.write_text(render_sbatch(self.params, command))
            flags = [f"--job-name={self.params['name']}", f"--array={array}", f"--output={logs}/%A_%a.out",
                     f"--error={logs}/%A_%a.err", f"--chdir={os.getcwd()}"]
            try:
                array_id = backend.sbatch(script, flags)
            except GrailError as exc:  # its fix speaks of a grail-cluster stage
                refusal = exc.problem.removeprefix(f"sbatch refused {script.name}: ")
                raise LauncherError(f"sbatch refused the array for this sweep: {refusal}",
                                    fix="check hydra.launcher.partition, time, cpus_per_task, mem_gb, "
                                        "gpus_per_node and additional_parameters against `sinfo`/your "
                                        "account") from None
            log.info(f"grail_slurm: {len(chunk)} jobs submitted as SLURM array {array_id} (--array={array})")
            out += [Submitted(job, offset + task, f"{array_id}_{task}", {"logs": f"logs/{sub}/{array_id}_{task}"})
                    for task, job in enumerate(chunk)]
        return out

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

