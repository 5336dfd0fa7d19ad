"""Local: the same job bodies as bash scripts plus ``jobs.json``, and the executor that runs them
with a CPU/GPU slot queue (one ``CUDA_VISIBLE_DEVICES`` per GPU slot) in dependency order."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jinja2

from grail_cluster.backends.base import Capabilities, FoundRun, TaskStates, attempt_logs, gate, unsupported
from grail_cluster.core.errors import GrailError
from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.ledger import LEDGER_FILE, JobRow, Ledger
from grail_cluster.core.markers import validate_marker
from grail_cluster.core.plan import RunPlan
from grail_cluster.core.signatures import exit_signature, signature
from grail_cluster.core.states import ACTIVE, ShardState


def render(plan: RunPlan, specs: list[JobSpec], env: jinja2.Environment) -> dict[str, str]:
    template = env.get_template("local/job.sh.j2")
    port = int(plan.settings.train.master_port or 29500)
    files = {f"{spec.stage}.sh": template.render(spec=spec, r=spec.resources, master_port=port) for spec in specs}
    jobs = [
        {
            "stage": spec.stage,
            "script": f"{spec.stage}.sh",
            "size": spec.size,
            "depends_on": [asdict(d) for d in spec.depends_on],
            "cpus": spec.resources.cpus,
            "gpus": spec.resources.gpus,
            "mem_gb": spec.resources.mem_gb,
            "time_min": spec.resources.time_min,
        }
        for spec in specs
    ]
    files["jobs.json"] = json.dumps({"run_id": plan.run_id, "plan_hash": plan.plan_hash, "jobs": jobs}, indent=1) + "\n"
    return files


# ----------------------------------------------------------------------------- the local executor

# What a detached runner runs (``python -m``): also how repair-ledger recognises one among processes.
RUNNER_MODULE = "grail_cluster.backends.local"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


class LocalBackend:
    """Runs the rendered local scripts on this machine through a CPU/GPU slot queue.

    "Submitting" records the jobs in the ledger; a runner process (detached, or in the foreground
    for ``grail-cluster run cluster=local``) then runs them in dependency order and writes each
    shard's state to the ledger. Polling costs no scheduler calls.
    """

    name = "local"
    capabilities = Capabilities(finds_jobs=True)

    def __init__(self, spawn: bool = True) -> None:
        self.spawn = spawn
        self.calls: Counter[str] = Counter()
        self.notes: list[str] = []

    def render(self, plan: RunPlan, specs: list[JobSpec], env: jinja2.Environment) -> dict[str, str]:
        return render(plan, specs, env)

    def prepare(self, plan: RunPlan, stages: list[str]) -> None:
        gpus = len(plan.settings.cluster.gpus or [])
        for stage in set(stages):
            need = plan.stage(stage).resources.gpus
            if need > gpus:
                raise GrailError(f"stage {stage} needs {need} GPU(s) per job but cluster.gpus lists {gpus}",
                                 fix="list this machine's GPU ids (cluster.gpus=[0,1,...]) or lower "
                                     f"{'train.gpus_per_node' if stage == 'train' else f'resources.{stage}.gpus'}")
            os.makedirs(os.path.join(plan.paths["logs_dir"], stage), exist_ok=True)

    def find_by_name(self, names: list[str]) -> dict[str, str]:
        return {}  # nothing runs before start(): a crashed submitter left nothing to adopt

    def find_run_jobs(self, plan: RunPlan, arrays: Mapping[str, bool]) -> FoundRun:
        """No scheduler remembers local jobs: the rounds the runner's log names record."""
        if pid := live_runner(plan):
            raise GrailError(f"a local runner of this run is still running (pid {pid}) and writes its ledger",
                             path=Path(plan.run_dir) / LEDGER_FILE, fix=f"wait for pid {pid} to finish (or end it), then repair")
        return FoundRun(rounds=logged_rounds(plan))

    def max_array_size(self) -> int | None:
        return None

    def submit_group(self, plan: RunPlan, group, *, name: str, dependency: str | None, attempt: int,
                     spec_dir: Path) -> str:
        return f"local-r{attempt}-{group.stage}-{group.chunk}"

    def start(self, plan: RunPlan, ledger: Ledger, round_: int) -> None:
        if not self.spawn:
            return
        log = Path(plan.paths["logs_dir"]) / f"local-runner-r{round_}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            proc = subprocess.Popen([sys.executable, "-m", RUNNER_MODULE, plan.run_dir,
                                     "--round", str(round_)], stdout=fh, stderr=fh, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        ledger.set_meta(f"runner_pid_r{round_}", proc.pid)

    def runner_pids(self, ledger: Ledger) -> list[int]:
        return [ledger.meta(f"runner_pid_r{r}") for r in range(ledger.next_round())
                if ledger.meta(f"runner_pid_r{r}")]

    def reconcile(self, plan: RunPlan, ledger: Ledger) -> None:
        """A runner that died (machine reboot, kill -9) leaves active shards behind: fail them."""
        for job in ledger.jobs(unsettled=True):
            pid = ledger.meta(f"runner_pid_r{job.round}")
            if _alive(pid):
                continue
            for idx in job.indices:
                s = ledger.shard(job.stage, idx)
                if s and s.job_id == job.job_id and s.state in ACTIVE:
                    if validate_marker(plan.run_dir, job.stage, idx, plan.marker_hash(job.stage, idx)):
                        ledger.update_shard(job.stage, idx, ShardState.DONE)
                    else:
                        ledger.update_shard(job.stage, idx, ShardState.FAILED, sched_state="RUNNER_GONE",
                                            signature="the local runner exited before this shard finished")
            ledger.settle(job.job_id)

    def live_states(self, jobs: list[JobRow]) -> TaskStates:
        return {}  # the runner writes each shard's state itself

    def final_states(self, jobs: list[JobRow]) -> TaskStates:
        return {}

    def task_id(self, job: JobRow, index: int) -> str:
        raise unsupported(self.name, "cancels whole jobs only", "cancel the whole stage")

    def cancel(self, job_ids: list[str], ledger: Ledger | None = None) -> None:
        if ledger is None:
            return
        for pid in self.runner_pids(ledger):
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)

    def log_paths(self, plan: RunPlan, stage: str, index: int, attempt: int, job: JobRow | None = None) -> list[Path]:
        return []  # the runner's own capture (local-<job>_<index>.err) is read by the runner only

    def pod_logs(self, plan: RunPlan, stage: str, index: int, *, tail: int | None = None) -> list[tuple[str, str]]:
        raise unsupported(self.name, "keeps no output beside the log files", "read them with `grail-cluster logs`")


def logged_rounds(plan: RunPlan) -> dict[tuple[str, int], int]:
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


def live_runner(plan: RunPlan) -> int | None:
    """A detached local runner of this run still alive (it writes the ledger): its pid."""
    run_dir = os.path.abspath(plan.run_dir)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if RUNNER_MODULE in args and any(os.path.abspath(a) == run_dir for a in args[1:]
                                         if a.startswith("/") or os.sep in a):
            return int(entry.name)
    return None


class Runner:
    """Runs one submission round of a run dir: a slot queue honouring the stage dependencies."""

    def __init__(self, run_dir: str, round_: int, progress=None):
        from grail_cluster.core.plan import read_plan

        self.plan = read_plan(run_dir)
        self.round = round_
        self.progress = progress
        cluster = self.plan.settings.cluster
        self.cpus = int(cluster.cpus or os.cpu_count() or 1)
        self.free_gpus = [str(g) for g in (cluster.gpus or [])]
        self.total_gpus = len(self.free_gpus)
        self.free_cpus = self.cpus
        self.cancelled = False
        self.running: dict[tuple[str, int], tuple[subprocess.Popen, float, int, list[str], str]] = {}

    def _tasks(self, ledger: Ledger) -> dict[tuple[str, int], str]:
        return {(j.stage, i): j.job_id for j in ledger.jobs() if j.round == self.round for i in j.indices}

    def _upstreams(self, stage: str, by_stage: dict[str, dict[int, ShardState]]) -> list[tuple[str, str, Any]]:
        """The gate's view of a stage's dependencies: this round's shards of each upstream stage."""
        return [(dep.kind, dep.stage, by_stage.get(dep.stage, {})) for dep in self.plan.stage(stage).depends_on]

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "cancelled", True))
        spec_dir = Path(self.plan.paths["specs_dir"]) / "local"
        with Ledger(self.plan.run_dir) as ledger:
            tasks = self._tasks(ledger)
            order = [t for st in self.plan.stage_names for t in sorted(tasks) if t[0] == st]
            state: dict[tuple[str, int], ShardState] = {t: ShardState.PENDING for t in order}
            while True:
                if self.cancelled:
                    self._cancel_all(ledger, state)
                    break
                self._reap(ledger, state)
                by_stage: dict[str, dict[int, ShardState]] = {}
                for (st, i), s in state.items():
                    by_stage.setdefault(st, {})[i] = s
                for t in order:
                    if state[t] != ShardState.PENDING:
                        continue
                    verdict = gate(t[1], self._upstreams(t[0], by_stage))
                    if verdict.state == "blocked":
                        # The local analogue of --kill-on-invalid-dep: an upstream failed.
                        state[t] = ShardState.CANCELLED
                        ledger.update_shard(*t, ShardState.CANCELLED, sched_state="DEPENDENCY_FAILED",
                                            signature="an upstream shard failed; resubmit it first")
                    elif verdict.state == "ready":
                        self._start(ledger, spec_dir, t, tasks[t], state)
                    by_stage[t[0]][t[1]] = state[t]  # what later shards of this pass see
                if self.progress:
                    self.progress(state)
                if not any(s in ACTIVE for s in state.values()):
                    break
                time.sleep(0.1)
            for job in {j for j in tasks.values()}:
                ledger.settle(job)
        return 0 if all(s == ShardState.DONE for s in state.values()) else 1

    def _start(self, ledger: Ledger, spec_dir: Path, t: tuple[str, int], job_id: str, state: dict) -> None:
        stage, idx = t
        res = self.plan.stage(stage).resources
        need_cpus = min(res.cpus, self.cpus)
        if res.gpus > self.total_gpus:
            state[t] = ShardState.FAILED
            ledger.update_shard(stage, idx, ShardState.FAILED, sched_state="UNSATISFIABLE",
                                signature=f"needs {res.gpus} GPU(s); cluster.gpus lists {self.total_gpus}")
            return
        if need_cpus > self.free_cpus or res.gpus > len(self.free_gpus):
            return
        gpus = [self.free_gpus.pop(0) for _ in range(res.gpus)]
        self.free_cpus -= need_cpus
        env = {**os.environ, "GRAIL_INDEX": str(idx), "GRAIL_ATTEMPT": str(self.round), "GRAIL_INDEX_OFFSET": "0"}
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        log_base = Path(self.plan.paths["logs_dir"]) / stage / f"local-{job_id}_{idx}"
        with open(f"{log_base}.out", "ab") as out, open(f"{log_base}.err", "ab") as err:
            proc = subprocess.Popen(["bash", str(spec_dir / f"{stage}.sh")], env=env, stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.running[t] = (proc, time.time(), need_cpus, gpus, job_id)
        state[t] = ShardState.RUNNING
        ledger.update_shard(stage, idx, ShardState.RUNNING, sched_state="RUNNING", node="localhost")

    def _reap(self, ledger: Ledger, state: dict) -> None:
        for t, (proc, started, cpus, gpus, job_id) in list(self.running.items()):
            stage, idx = t
            limit = self.plan.stage(stage).resources.time_min * 60
            code = proc.poll()
            timed_out = False
            if code is None and time.time() - started > limit:
                self._kill(proc)
                code, timed_out = proc.wait(), True
            if code is None:
                continue
            del self.running[t]
            self.free_cpus += cpus
            self.free_gpus += gpus
            elapsed = time.time() - started
            exit_code = f"{code}:0" if code >= 0 else f"0:{-code}"
            if timed_out:
                new, sched = ShardState.TIMEOUT, "TIMEOUT"
            elif code == 0:
                ok = validate_marker(self.plan.run_dir, stage, idx, self.plan.marker_hash(stage, idx))
                new, sched = (ShardState.DONE if ok else ShardState.MISSING_OUTPUT), "COMPLETED"
            else:
                new, sched = ShardState.FAILED, "FAILED"
            sig = None
            if new != ShardState.DONE:
                paths = attempt_logs(self.plan.run_dir, stage, idx, self.round) + [
                    Path(self.plan.paths["logs_dir"]) / stage / f"local-{job_id}_{idx}.err"]
                sig = signature(paths, new) or exit_signature(exit_code)
                if new == ShardState.MISSING_OUTPUT:
                    sig = "exited 0 but wrote no valid success marker"
            state[t] = new
            ledger.update_shard(stage, idx, new, sched_state=sched, exit_code=exit_code, elapsed=elapsed, signature=sig)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _cancel_all(self, ledger: Ledger, state: dict) -> None:
        for t, (proc, *_rest) in list(self.running.items()):
            self._kill(proc)
            proc.wait()
            state[t] = ShardState.CANCELLED
            ledger.update_shard(*t, ShardState.CANCELLED, sched_state="CANCELLED", signature="cancelled")
        self.running.clear()
        for t, s in state.items():
            if s == ShardState.PENDING:
                state[t] = ShardState.CANCELLED
                ledger.update_shard(*t, ShardState.CANCELLED, sched_state="CANCELLED",
                                    signature="cancelled before it started")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m grail_cluster.backends.local",
                                     description="the detached local runner of one submission round")
    parser.add_argument("run_dir")
    parser.add_argument("--round", type=int, required=True)
    args = parser.parse_args(argv)
    return Runner(args.run_dir, args.round).run()


if __name__ == "__main__":
    sys.exit(main())
