"""A Hydra sweep's launcher state dir is a run dir: ``plan.json`` (one array stage, ``hydra``, one
index per Hydra job number), ``specs/<backend>/hydra.sh`` rendered by the backend's own templates,
``ledger.sqlite``, ``markers/``, ``logs/``, plus what only a Hydra job needs: ``payloads/r<round>.pkl``
and ``results/r<round>/<num>.json``.

Submission, the local slot queue, SLURM arrays, refresh and cancel are ``grail-cluster run``'s own
(:mod:`grail_cluster.runs.control`, :mod:`grail_cluster.backends`). A job is done when its success
marker is valid under its key (config and overrides) and the round it ran in recorded the same code
(``hydra.launcher.code_key``): the marker's hash field carries the key, so a changed key reruns that
job alone. Words the launcher shows: done, failed, refused (from the job's result), lost (ended
without a result), submitted (queued or running).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from grail_cluster import __version__
from grail_cluster.backends.base import Backend
from grail_cluster.backends.refresh import refresh
from grail_cluster.core.errors import GrailError
from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.ledger import LEDGER_FILE, Ledger
from grail_cluster.core.plan import (
    PLAN_FILE,
    PLAN_VERSION,
    Resources,
    RunPlan,
    StagePlan,
    content_hash,
    read_plan,
)
from grail_cluster.core.states import ACTIVE, ShardState
from grail_cluster.launchers.hydra_job import STAGE
from grail_cluster.launchers.keys import RESUME_HELP
from grail_cluster.launchers.payloads import read_result, result_file
from grail_cluster.runs.job_files import template_env, write_files

log = logging.getLogger(__name__)

# Scheduler refreshes back off from POLL_FIRST_S to POLL_MAX_S; result files (a stat each) are looked
# at every RESULT_TICK_S growing to RESULT_TICK_MAX_S. A job absent from the scheduler without a result
# for GONE_REFRESHES refreshes is lost (the second look covers a slow shared filesystem).
POLL_FIRST_S, POLL_MAX_S = 0.5, 5.0
RESULT_TICK_S, RESULT_TICK_MAX_S = 0.05, 0.5
GONE_REFRESHES = 2
LOCAL_TIME_MIN = 10 * 365 * 24 * 60  # grail_local has no wall-clock limit


def result_path(state: Path, round_: int, num: int) -> Path:
    return result_file(state / "results" / f"r{round_}", num)


# ----------------------------------------------------------------------------- the plan and the job script


def previous_plan(state: Path) -> RunPlan | None:
    return read_plan(state) if (state / PLAN_FILE).exists() else None


def sweep_plan(state: Path, backend: str, params: dict[str, Any], jobs: dict[int, tuple[list[str], str]],
               code: dict[str, Any] | None, old: RunPlan | None = None) -> RunPlan:
    """The sweep's plan: the jobs of the previous plan (earlier batches), ``jobs`` ({num: (overrides,
    key)}) replacing theirs."""
    keys: list[str | None] = []
    overrides: list[list[str] | None] = []
    if old is not None:
        keys, overrides = list(old.pipeline["marker_keys"][STAGE]), list(old.config["sweep"]["overrides"])
    size = max([len(keys), *(n + 1 for n in jobs)])
    keys += [None] * (size - len(keys))
    overrides += [None] * (size - len(overrides))
    for num, (ovr, key) in jobs.items():
        keys[num], overrides[num] = key, list(ovr)
    if backend == "local":
        mp = params.get("max_parallel")
        cpus = int(mp) if mp else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        cluster: dict[str, Any] = {"backend": "local", "cpus": cpus, "gpus": []}
        resources = Resources(1, 0, 1, 0.0, LOCAL_TIME_MIN)
    else:
        extra = [f"--{str(k).replace('_', '-')}" + ("" if v is True else f"={v}")
                 for k, v in sorted((params.get("additional_parameters") or {}).items())
                 if v is not None and v is not False]
        cluster = {"backend": "slurm", "partition": params.get("partition"), "account": None, "qos": None, "constraint": None,
                   "exclude": None, "gpu_directive": "gres", "signal": "", "extra_directives": extra,
                   "array_parallelism": int(params["array_parallelism"])}
        resources = Resources(1, int(params.get("gpus_per_node") or 0), int(params.get("cpus_per_task") or 0),
                              float(params.get("mem_gb") or 0), int(params["time"]))
    name = str(params.get("name") or "hydra")
    plan = RunPlan(
        version=PLAN_VERSION, run_id=f"{name}-{hashlib.sha256(str(state).encode()).hexdigest()[:8]}",
        run_dir=str(state), grail_cluster_version=__version__,
        pipeline={"name": "hydra-sweep", "marker_keys": {STAGE: keys}}, backend=backend, library={},
        paths={"logs_dir": str(state / "logs"), "specs_dir": str(state / "specs"), "experiment_dir": str(state)},
        stages=[StagePlan(STAGE, size, [], resources)], train={}, eval={},
        config={"cluster": cluster, "job": {"python": params.get("python") or sys.executable}, "train": {},
                "sweep": {"overrides": overrides, "code_key": params.get("code_key")}},
        provenance={"code": code})
    plan.plan_hash = content_hash(plan.to_json())
    return plan


def job_spec(plan: RunPlan, params: dict[str, Any], digests: dict[str, str]) -> JobSpec:
    """The one job of the sweep's stage. The payload digest of every round is in the script itself
    (the trust root: the job loads only a payload with its round's digest), so a re-rendered script
    still serves the rounds queued before it."""
    python = plan.config["job"]["python"]
    body = ['case "$GRAIL_ATTEMPT" in']
    body += [f"  {r}) GRAIL_PAYLOAD_SHA256={d} ;;" for r, d in sorted(digests.items(), key=lambda kv: int(kv[0]))]
    body += ['  *) echo "no payload digest for attempt $GRAIL_ATTEMPT" >&2; exit 3 ;;', "esac"]
    command = (f"exec {shlex.quote(python)} -m grail_cluster.launchers.hydra_job run --run-dir \"$GRAIL_RUN_DIR\""
               ' --payload "$GRAIL_RUN_DIR/payloads/r$GRAIL_ATTEMPT.pkl" --sha256 "$GRAIL_PAYLOAD_SHA256"'
               ' --result-dir "$GRAIL_RUN_DIR/results/r$GRAIL_ATTEMPT" --index "$GRAIL_INDEX"'
               ' --job-id "${SLURM_ARRAY_JOB_ID:-r$GRAIL_ATTEMPT}_${SLURM_ARRAY_TASK_ID:-$GRAIL_INDEX}"')
    app_dir = sys.path[0] if sys.path and sys.path[0] else ""
    if app_dir and os.path.isdir(app_dir):
        # The app's own directory, so a task function pickled by reference (an importable module
        # beside the script) imports in the job as it did here.
        command += f" --path {shlex.quote(os.path.abspath(app_dir))}"
    setup = list(params.get("setup") or [])
    if plan.backend == "local":  # the local runner hands out GPU slots; a Hydra job sees the launcher's GPUs
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        setup.insert(0, "unset CUDA_VISIBLE_DEVICES" if gpus is None
                     else f"export CUDA_VISIBLE_DEVICES={shlex.quote(gpus)}")
    st = plan.stage(STAGE)
    return JobSpec(run_id=plan.run_id, stage=STAGE, size=st.size, array=True, resources=st.resources, depends_on=[],
                   workdir=os.getcwd(), run_dir=plan.run_dir, plan_hash=plan.plan_hash, setup=setup,
                   body=[*body, command], comment="jobs of a Hydra sweep (hydra/launcher=grail_*)",
                   python="")  # no separate interpreter check: the body's first command is the grail one


def render_sbatch(params: dict[str, Any], command: str) -> str:
    """The sbatch script of a sweep with these options, ``command`` as its job body (the backend's template)."""
    from grail_cluster.backends.slurm import render_script

    plan = sweep_plan(Path("/nonexistent-sweep"), "slurm", {"array_parallelism": 1, **params}, {0: ([], "")}, None)
    spec = job_spec(plan, params, {})
    spec.body = [f"exec {command}"]
    return render_script(plan, spec, template_env())


def write_specs(plan: RunPlan, backend: Backend, spec: JobSpec) -> None:
    write_files(backend.render(plan, [spec], template_env()), Path(plan.paths["specs_dir"]) / backend.name)


# ----------------------------------------------------------------------------- waiting


def vanished(plan: RunPlan, ledger: Ledger, backend: Backend, nums: Any) -> set[int]:
    """Jobs the refreshed ledger still calls active that the scheduler no longer lists: they ended
    (accounting lags the queue by a second or so, so the refresh could not settle them yet). One
    ``squeue``, only when a re-run finds active jobs. The local runner writes its shards' states
    itself (and the refresh fails a dead runner's), so there the ledger is the truth."""
    active = [s for s in ledger.shards(STAGE) if s.idx in nums and s.state in ACTIVE]
    if backend.name == "local" or not active:
        return set()
    jobs = {j.job_id: j for j in ledger.jobs(unsettled=True)}
    live = backend.live_states([jobs[i] for i in {s.job_id for s in active} if i in jobs])
    return {s.idx for s in active
            if s.job_id not in jobs or (s.job_id, s.idx - jobs[s.job_id].index_offset) not in live}


def lost_result(shard: Any, backend: str, sched_id: str) -> dict[str, Any]:
    why = ", ".join(filter(None, [shard.sched_state, shard.signature])) or "no longer known to the scheduler"
    return {"status": "lost", "error": {"type": "JobLost", "traceback": "",
                                        "message": f"{backend} job {sched_id} ended without writing a result ({why})"}}


def scheduler_ids(ledger: Ledger, nums: Any) -> dict[int, str | None]:
    """{job number: its scheduler id (``<array>_<task>``)} of these jobs' latest attempts, from one
    read of the ledger's jobs."""
    jobs = {j.job_id: j for j in ledger.jobs()}
    out: dict[int, str | None] = {}
    for num in nums:
        shard = ledger.shard(STAGE, num)
        job = jobs.get(shard.job_id) if shard else None
        out[num] = f"{job.job_id}_{num - job.index_offset}" if job else (shard.job_id if shard else None)
    return out


def array_ids(ledger: Ledger, nums: Any) -> list[str]:
    """The scheduler arrays these jobs' latest attempts belong to, for messages."""
    return sorted({sid.rsplit("_", 1)[0] for sid in scheduler_ids(ledger, nums).values() if sid})


def wait(plan: RunPlan, ledger: Ledger, backend: Backend, waiting: dict[int, int]) -> dict[int, dict]:
    """Until every waited job ({num: round}) has a result. Result files are looked at often; the
    ledger is refreshed (one scheduler call for all jobs) at most once per backed-off interval."""
    state = Path(plan.run_dir)
    results: dict[int, dict] = {}
    gone: Counter[int] = Counter()
    tick, delay, refreshes, t0 = RESULT_TICK_S, POLL_FIRST_S, 0, time.monotonic()
    next_query = t0 + delay
    while True:
        for num, round_ in list(waiting.items()):
            if (result := read_result(result_path(state, round_, num))) is not None:
                results[num] = result
                del waiting[num]
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
            refresh(plan, ledger, backend)
        except GrailError as exc:  # slurmctld busy or restarting: a long wait outlives that
            log.warning(f"grail_{backend.name}: could not ask the scheduler ({exc.problem}); retrying")
            continue
        for num, round_ in list(waiting.items()):
            shard = ledger.shard(STAGE, num)
            if shard is None or (shard.attempt == round_ and shard.state in ACTIVE):
                gone.pop(num, None)
                continue
            gone[num] += 1
            if gone[num] >= GONE_REFRESHES and read_result(result_path(state, round_, num)) is None:
                results[num] = lost_result(shard, backend.name, scheduler_ids(ledger, [num])[num] or "?")
                del waiting[num]
    log.info(f"grail_{backend.name}: all jobs ended after {time.monotonic() - t0:.1f} s ({refreshes} refreshes)")
    return results


# ----------------------------------------------------------------------------- status


def sweep_status(state_dir: Path) -> dict[int, dict[str, Any]]:
    """Every submitted job of a sweep, from its ledger and result files, without asking the
    scheduler: ``state`` done / failed / refused from a result; lost: ended without one; else
    submitted (queued or running as of the last refresh)."""
    state_dir = Path(state_dir)
    plan = read_plan(state_dir, verify=False)
    out: dict[int, dict[str, Any]] = {}
    with Ledger(state_dir, create=False) as ledger:
        shards = sorted(ledger.shards(STAGE), key=lambda s: s.idx)
        sched = scheduler_ids(ledger, [s.idx for s in shards])
        for shard in shards:
            path = result_path(state_dir, shard.attempt, shard.idx)
            result = read_result(path)
            if result is not None:
                word = {"completed": "done"}.get(result["status"], result["status"])
            else:
                word = "submitted" if shard.state in ACTIVE else "lost"
            error = (result or {}).get("error")
            if result is None and shard.state not in (*ACTIVE, ShardState.DONE):
                error = lost_result(shard, plan.backend, "")["error"]
            out[shard.idx] = {"state": word, "overrides": plan.config["sweep"]["overrides"][shard.idx] or [],
                              "attempt": len(ledger.attempts(STAGE, shard.idx)),
                              "scheduler_id": sched[shard.idx], "result": str(path),
                              "return": (result or {}).get("return"), "error": error}
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
