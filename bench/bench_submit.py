#!/usr/bin/env python
"""Benchmark submission of N trivial shards to the local SLURM cluster: ours against two peers, one run.

Contenders (each submits N tasks that write one small file; each counts its scheduler calls
through PATH-prepended wrappers of ``sbatch``, ``squeue``, ``sacct``, ``scontrol`` and ``scancel``
that log every invocation and then run the real binary):

- **ours**: ``grail-cluster run <overrides> cluster=slurm rehearsal.enabled=true --json`` on a
  generated library (``eval.num_shards=N``, ``select.k=1``, render and web off). It returns once
  every job of the run is queued. Timed from process start to return;
- **submitit**: a child Python process that builds ``submitit.AutoExecutor`` and calls
  ``executor.map_array(fn, range(N))`` (``slurm_array_parallelism=256``). Timed from process
  start to return (and ``map_array`` alone); then one forced status refresh of all N jobs;
- **hydra**: a generated ``@hydra.main`` app run as ``python app.py -m x=range(0,N)
  hydra/launcher=submitit_slurm ...``. It blocks until every job has ended, so two figures:
  until all N tasks are visible to the scheduler, and until the launcher returns (bounded by
  ``--hydra-wait``; on expiry the launcher is stopped and how far it got is reported).

"Visible" is measured the same way for every contender: a thread reads the sbatch wrapper's log
for job ids and polls the real ``squeue -r -t all -j <ids>`` every 50 ms; the figure is the first
poll that shows the contender's N shard tasks (for ours: its eval array). Ours and submitit are
repeated ``--repeat`` times, interleaved, and their jobs are cancelled (``scancel <their ids>``,
never anything else) right after each measurement, except the last ours run: ``grail-cluster
status <run_dir> --json`` is refreshed on it while its jobs are queued, then on a fresh 10-shard
run, counting scheduler calls per refresh. Hydra runs last, alone.

The cluster is shared: before each contender the bench waits (untimed) until MaxArraySize >= N
(a test may restart slurmctld with a small one) and MaxJobCount has room for its tasks (cancelled
tasks keep a record for MinJobAge), records other users' queued jobs, and retries a failed run once.
Ours gets resource overrides (``OURS_FIT``) because the default stage requests do not fit the node.

    python bench/bench_submit.py               # 1,000 shards
    python bench/bench_submit.py --quick       # 100 shards
    python bench/bench_submit.py --skip-ours   # the peers only

Results go to ``${GRAIL_BENCH_DIR:-.bench}/bench_submit.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tests.libgen` and `tests.conftest` live in the repo, not the package

from bench.machine import machine, mark_dataset, reuse_dataset  # noqa: E402

WRAPPED = ("sbatch", "squeue", "sacct", "scontrol", "scancel")
POLL_S = 0.05
WAIT_FOR_ROOM_S = 330.0  # MinJobAge (300 s here) frees the records of cancelled tasks
# The default per-stage resources (train 64 CPUs / 480 GiB, eval 1 GPU / 16 CPUs / 64 GiB) do not fit
# the one local node, so sbatch refuses them. Rehearsal tasks get what a peer's task gets: 1 CPU, no
# GPU (train keeps 1 GRES GPU: a run has at least one rank), 1 GiB.
OURS_FIT = ("train.gpus_per_node=1", "resources.train.cpus=1", "resources.train.mem=1",
            *(f"resources.{st}.{k}={v}" for st in ("select", "eval", "export", "merge")
              for k, v in (("gpus", 0), ("cpus", 1), ("mem", 1))))
PARALLELISM = 256


# ----------------------------------------------------------------------------- helpers


def real_binaries() -> dict[str, str]:
    """Absolute paths of the real SLURM clients (the wrappers exec these, the bench calls them)."""
    found = {}
    for name in WRAPPED:
        path = shutil.which(name)
        if not path:
            raise SystemExit(f"bench_submit: `{name}` not found; start the cluster with tests/infra/slurm/up.sh")
        found[name] = os.path.realpath(path)
    return found


def write_wrappers(bin_dir: Path, real: dict[str, str]) -> None:
    """One wrapper per client: log `<name> <t_start> <t_end> <rc> <in_job> <stdout> <args>` and run it.

    Calls made inside a SLURM job (SLURM_JOB_ID set: the job inherited the submitter's PATH) are
    logged with in_job=1 and not counted as the submitter's."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, path in real.items():
        script = f"""#!/bin/bash
# bench_submit wrapper: log this call, run the real {name}, pass its output and exit code through.
t0=$(date +%s.%N)
out=$({path} "$@")
rc=$?
[ -n "$out" ] && printf '%s\\n' "$out"
if [ -n "$GRAIL_BENCH_CALL_LOG" ]; then
    first=$(printf '%s' "$out" | head -c 200 | tr '\\n\\t' '  ')
    printf '%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' {name} "$t0" "$(date +%s.%N)" "$rc" "${{SLURM_JOB_ID:+1}}" \\
        "$([ "{name}" = sbatch ] && printf '%s' "$first")" "$(printf '%s ' "$@" | tr '\\n\\t' '  ')" \\
        >> "$GRAIL_BENCH_CALL_LOG"
fi
exit $rc
"""
        target = bin_dir / name
        target.write_text(script)
        target.chmod(0o755)


def read_calls(log: Path) -> list[dict[str, Any]]:
    calls = []
    if not log.exists():
        return calls
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 7:
            continue
        name, t0, t1, rc, in_job, out, args = parts[:7]
        calls.append({"name": name, "t0": float(t0), "t1": float(t1), "rc": int(rc), "in_job": in_job == "1",
                      "out": out, "args": args.strip()})
    return calls


def count_calls(calls: list[dict[str, Any]]) -> dict[str, int]:
    c = Counter(x["name"] for x in calls if not x["in_job"])
    return {name: c.get(name, 0) for name in WRAPPED}


def sbatch_ids(calls: list[dict[str, Any]]) -> list[str]:
    ids = []
    for x in calls:
        if x["name"] == "sbatch" and x["rc"] == 0:
            m = re.search(r"(\d+)", x["out"])
            if m:
                ids.append(m.group(1))
    return ids


class Cluster:
    """The real clients, called directly (never through the wrappers), for polling and clean-up."""

    def __init__(self, real: dict[str, str]):
        self.real = real

    def squeue_rows(self, ids: list[str], states: str = "all") -> list[str]:
        if not ids:
            return []
        proc = subprocess.run([self.real["squeue"], "-h", "-r", "-t", states, "-j", ",".join(ids), "-o", "%i|%T"],
                              capture_output=True, text=True)
        return [line for line in proc.stdout.splitlines() if line.strip()]

    def all_jobs(self) -> list[str]:
        """Pending/running/completing jobs of everyone (array remainders as one line)."""
        proc = subprocess.run([self.real["squeue"], "-h", "-o", "%i|%T|%j"], capture_output=True, text=True)
        return [line for line in proc.stdout.splitlines() if line.strip()]

    def records(self) -> int:
        """Job records slurmctld holds (finished and cancelled ones stay MinJobAge s): MaxJobCount counts these."""
        proc = subprocess.run([self.real["squeue"], "-h", "-r", "-t", "all", "-o", "%i"], capture_output=True, text=True)
        return sum(1 for line in proc.stdout.splitlines() if line.strip())

    def config(self) -> dict[str, str]:
        out = subprocess.run([self.real["scontrol"], "show", "config"], capture_output=True, text=True).stdout
        return {m.group(1): m.group(2).strip() for m in re.finditer(r"^(\w+)\s*=\s*(.*)$", out, re.M)}

    def wait_until_fit(self, array: int, tasks: int, max_wait_s: float) -> dict[str, Any]:
        """Wait until an array of `array` tasks is accepted, MaxArraySize >= array (another user may
        have restarted slurmctld with a small one), and MaxJobCount has room for `tasks` more records."""
        t0 = time.perf_counter()
        while True:
            conf = self.config()
            max_array = int(conf.get("MaxArraySize", "0") or 0)
            max_jobs = int(conf.get("MaxJobCount", "10000") or 10000)
            records = self.records()
            ok = max_array >= array and records + tasks + 200 <= max_jobs
            waited = time.perf_counter() - t0
            if ok or waited > max_wait_s:
                return {"ok": ok, "waited_s": round(waited, 1), "max_array_size": max_array,
                        "max_job_count": max_jobs, "records": records}
            time.sleep(5)

    def cancel(self, ids: list[str], wait_s: float = 90.0) -> float:
        """scancel these job ids (never anything else); wait until none is pending/running/completing."""
        if not ids:
            return 0.0
        t0 = time.perf_counter()
        subprocess.run([self.real["scancel"], *ids], capture_output=True, text=True)
        while time.perf_counter() - t0 < wait_s:
            if not self.squeue_rows(ids, "PD,R,CG,CF,S"):
                break
            time.sleep(0.25)
        return time.perf_counter() - t0

    def sacct_states(self, ids: list[str]) -> Counter[str]:
        if not ids:
            return Counter()
        proc = subprocess.run([self.real["sacct"], "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ids)],
                              capture_output=True, text=True)
        states: Counter[str] = Counter()
        for line in proc.stdout.splitlines():
            jid, _, state = line.partition("|")
            if not state:
                continue
            n = 1
            m = re.search(r"_\[(.+)\]$", jid)
            if m:  # a pending remainder such as 123_[40-999%256]
                n = sum(int(b) - int(a) + 1 for a, _, b in
                        (p.split("%")[0].partition("-") for p in m.group(1).split(",")) if a and b) or 1
            states[state.split()[0]] += n
        return states


class VisibilityPoller(threading.Thread):
    """Polls the real squeue for the job ids the sbatch wrapper has logged so far; records (t, rows)."""

    def __init__(self, cluster: Cluster, log: Path, t_origin: float, target: int | None = None):
        super().__init__(daemon=True)
        self.cluster, self.log, self.t_origin, self.target = cluster, log, t_origin, target
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            ids = sbatch_ids(read_calls(self.log))
            if ids:
                per_job = Counter(row.split("|")[0].split("_")[0] for row in self.cluster.squeue_rows(ids))
                self.samples.append((time.time() - self.t_origin, dict(per_job)))
                if self.target and sum(per_job.values()) >= self.target:
                    return  # seen them all: stop, so that polling does not compete with a blocking launcher
            self._halt.wait(POLL_S)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def first_at_least(self, n: int, job_id: str | None = None) -> float | None:
        """First poll showing >= n tasks (of job_id, or of all the contender's jobs)."""
        def count(rows: dict[str, int]) -> int:
            return rows.get(job_id, 0) if job_id else sum(rows.values())
        return next((t for t, rows in self.samples if count(rows) >= n), None)


def env_with(bin_dir: Path, log: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["GRAIL_BENCH_CALL_LOG"] = str(log)
    env.pop("SLURM_JOB_ID", None)
    env.update(extra or {})
    return env


def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rel_calls(calls: list[dict[str, Any]], t_origin: float) -> dict[str, Any]:
    sb = [x for x in calls if x["name"] == "sbatch" and not x["in_job"]]
    return {
        "first_sbatch_start_s": min(x["t0"] for x in sb) - t_origin if sb else None,
        "last_sbatch_end_s": max(x["t1"] for x in sb) - t_origin if sb else None,
        "sbatch_s": [round(x["t1"] - x["t0"], 4) for x in sb],
    }


def run_contender(name: str, argv: list[str], *, cluster: Cluster, bin_dir: Path, log: Path, cwd: Path,
                  expect_tasks: int | None, timeout_s: float, extra_env: dict[str, str] | None = None,
                  keep_jobs: bool = False, room: int | None = None, array: int = 1) -> dict[str, Any]:
    """Run one submitter as a child process with the wrappers on PATH; time it; cancel its jobs."""
    log.unlink(missing_ok=True)
    fit = cluster.wait_until_fit(array, room or expect_tasks or 1, WAIT_FOR_ROOM_S)
    if not fit["ok"]:
        print(f"    warning: the cluster has no room for {room or expect_tasks} more tasks after "
              f"{fit['waited_s']} s ({fit}); running anyway", flush=True)
    elif fit["waited_s"] > 1:
        print(f"    (waited {fit['waited_s']} s for room: {fit})", flush=True)
    foreign = len(cluster.all_jobs())  # others' jobs (e.g. a test suite) share the node: recorded, not hidden
    t_origin = time.time()
    poller = VisibilityPoller(cluster, log, t_origin, expect_tasks)
    poller.start()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env_with(bin_dir, log, extra_env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[tuple[float, str]] = []  # (seconds since start, stdout line): when each line arrived
    err_chunks: list[str] = []
    readers = [threading.Thread(target=lambda: lines.extend((time.perf_counter() - t0, ln) for ln in proc.stdout),
                                daemon=True),
               threading.Thread(target=lambda: err_chunks.extend(proc.stderr), daemon=True)]
    for th in readers:
        th.start()
    def stop_child() -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        stop_child()
    except BaseException:  # interrupted: stop the child (its own session) and cancel what it queued
        stop_child()
        poller.stop()
        cluster.cancel(sbatch_ids(read_calls(log)), wait_s=30)
        raise
    wall = time.perf_counter() - t0
    for th in readers:
        th.join(timeout=10)
    stdout, stderr = "".join(ln for _, ln in lines), "".join(err_chunks)
    time.sleep(0.3)  # one or two more polls after return
    calls = read_calls(log)
    ids = sbatch_ids(calls)
    final_rows = len(cluster.squeue_rows(ids))
    poller.stop()
    target = expect_tasks if expect_tasks is not None else final_rows
    visible = poller.first_at_least(target) if target else None
    res_extra = {"visible_all_s": poller.first_at_least(final_rows) if final_rows else None,
                 "_poller": poller}
    res: dict[str, Any] = {
        "contender": name,
        "argv": argv,
        "rc": proc.returncode,
        "timed_out": timed_out,
        "wall_s": wall,
        "visible_s": visible,
        "visible_target_tasks": target,
        "tasks_seen": final_rows,
        "calls": count_calls(calls),
        "in_job_calls": sum(1 for x in calls if x["in_job"]),
        "job_ids": ids,
        **rel_calls(calls, t_origin),
        "stdout": stdout,
        "stdout_times": [(round(t, 4), ln[:120]) for t, ln in lines if ln.lstrip().startswith("{\"phase\"")],
        "stderr_tail": stderr[-4000:],
        "foreign_jobs_at_start": foreign,
        "cluster_at_start": fit,
        "polls": len(poller.samples),
        **res_extra,
    }
    if not keep_jobs:
        res["states_at_cancel"] = dict(cluster.sacct_states(ids))
        res["cancel_s"] = cluster.cancel(ids)
    return res


# ----------------------------------------------------------------------------- inputs


def ensure_library(bench_dir: Path, n: int) -> tuple[Path, dict[str, Any]]:
    from tests.libgen import make_library

    root = bench_dir / f"submit-lib{n}"
    want = {"motions": n, "fast": True, "generator": "tests.libgen.make_library", "variant": "retarget"}
    have = reuse_dataset(root, want)
    if have is not None:
        return root, have
    t0 = time.perf_counter()
    make_library(root, n, fast=True)
    info = {**want, "generate_s": round(time.perf_counter() - t0, 2)}
    mark_dataset(root, info)
    return root, {**info, "reused": False}


SUBMITIT_CHILD = '''\
"""bench_submit peer (a): submitit map_array of a trivial function (written by bench/bench_submit.py)."""
import json
import os
import sys
import time

t_start = time.time()
import submitit  # noqa: E402

t_import = time.time()
folder, out, n, log2 = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]


def work(i, out):
    with open(os.path.join(out, f"{i}.txt"), "w") as fh:
        fh.write(f"{i}\\n")
    return i


executor = submitit.AutoExecutor(folder=folder)
executor.update_parameters(slurm_partition="debug", timeout_min=5, slurm_array_parallelism=%(par)d,
                           name="bench-submitit")
t0 = time.time()
jobs = executor.map_array(work, range(n), [out] * n)
t1 = time.time()
print(json.dumps({"phase": "queued", "map_array_s": t1 - t0, "import_s": t_import - t_start,
                  "to_return_s": t1 - t_start, "jobs": len(jobs), "job_id": jobs[0].job_id}), flush=True)
# One status refresh of all n jobs, the way submitit does it (the watcher is shared per class).
os.environ["GRAIL_BENCH_CALL_LOG"] = log2
t2 = time.time()
jobs[0].watcher.update()
t3 = time.time()
states = {}
for j in jobs:
    s = j.watcher.get_state(j.job_id, mode="cache")
    states[s] = states.get(s, 0) + 1
print(json.dumps({"phase": "refresh", "refresh_s": t3 - t2, "states": states,
                  "watcher_calls": jobs[0].watcher.num_calls}), flush=True)
'''

HYDRA_APP = '''\
"""bench_submit peer (b): a trivial Hydra app swept through hydra-submitit-launcher (written by bench/bench_submit.py)."""
import os

import hydra


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg) -> int:
    with open(os.path.join(cfg.out, f"{cfg.x}.txt"), "w") as fh:
        fh.write(f"{cfg.x}\\n")
    return int(cfg.x)


if __name__ == "__main__":
    main()
'''

HYDRA_CONFIG = """\
defaults:
  - override hydra/launcher: submitit_slurm
  - _self_

x: 0
out: ???
"""


# ----------------------------------------------------------------------------- contenders


def ours_argv(lib: Path, sonic: Path, run_root: Path, n: int) -> list[str]:
    exe = Path(sys.executable).with_name("grail-cluster")
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "grail_cluster"]
    return [*head, "run", "pipeline=advanced_manip_table", f"data.motion_lib={lib}", f"sonic.root={sonic}",
            f"run.root={run_root}", f"eval.num_shards={n}", "select.k=1", "render.enabled=false",
            "web.enabled=false", "cluster=slurm", "rehearsal.enabled=true", f"job.python={sys.executable}",
            *OURS_FIT, "--json"]


def status_argv(run_dir: str) -> list[str]:
    exe = Path(sys.executable).with_name("grail-cluster")
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "grail_cluster"]
    return [*head, "status", run_dir, "--json"]


def parse_json_tail(text: str) -> Any:
    """The JSON document on stdout (whole), or the last JSON line."""
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def ledger_jobs(run_dir: str | None) -> int | None:
    if not run_dir:
        return None
    path = Path(run_dir) / "ledger.sqlite"
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
    finally:
        db.close()


def bench_ours(ctx: dict[str, Any], n: int, tag: str, keep_jobs: bool = False) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"ours-{tag}.", dir=ctx["work"]))
    res = run_contender("ours", ours_argv(ctx["lib"], ctx["sonic"], work / "runs", n), cluster=ctx["cluster"],
                        bin_dir=ctx["bin"], log=work / "calls.tsv", cwd=work, expect_tasks=None,
                        timeout_s=300, keep_jobs=keep_jobs, room=2 * n + 3, array=n)  # eval + export arrays, 3 singles
    out = parse_json_tail(res["stdout"]) or {}
    run_dir = out.get("run_dir") if isinstance(out, dict) else None
    if not run_dir:
        found = sorted((work / "runs").glob("*/ledger.sqlite"))
        run_dir = str(found[0].parent) if found else None
    res["run_dir"] = run_dir
    res["ledger_jobs"] = ledger_jobs(run_dir)
    jobs = out.get("jobs", []) if isinstance(out, dict) else []
    eval_ids = [j["job_id"] for j in jobs if isinstance(j, dict) and j.get("stage") == "eval"]
    res["eval_job_ids"] = eval_ids
    if len(eval_ids) == 1:  # the N eval shards, comparable to a peer's N tasks
        res["visible_s"] = res["_poller"].first_at_least(n, eval_ids[0])
        res["visible_target_tasks"] = n
    res["stages_queued"] = {j.get("stage"): j.get("array") for j in jobs if isinstance(j, dict)}
    res.pop("_poller")
    res["shards"] = n
    res["returned_s"] = res["wall_s"]
    res["stdout"] = res["stdout"][-2000:]
    return res


def bench_submitit(ctx: dict[str, Any], n: int, tag: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"submitit-{tag}.", dir=ctx["work"]))
    (work / "out").mkdir()
    script = work / "peer_submitit.py"
    script.write_text(SUBMITIT_CHILD % {"par": PARALLELISM})
    argv = [sys.executable, str(script), str(work / "submitit" / "%j"), str(work / "out"), str(n),
            str(work / "refresh_calls.tsv")]
    res = run_contender("submitit", argv, cluster=ctx["cluster"], bin_dir=ctx["bin"], log=work / "calls.tsv",
                        cwd=work, expect_tasks=n, timeout_s=300, array=n)
    phases = {}
    for line in res["stdout"].splitlines():
        try:
            d = json.loads(line)
            phases[d.pop("phase")] = d
        except (ValueError, KeyError, AttributeError):
            continue
    res["child"] = phases
    res.pop("_poller")
    # The child goes on to time one status refresh after map_array; "to return" ends at its "queued" line.
    queued_at = [t for t, ln in res["stdout_times"] if '"queued"' in ln]
    res["returned_s"] = queued_at[0] if queued_at else None
    res["refresh_calls"] = count_calls(read_calls(work / "refresh_calls.tsv"))
    res["stdout"] = res["stdout"][-2000:]
    res["shards"] = n
    return res


def bench_hydra(ctx: dict[str, Any], n: int, wait_s: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="hydra.", dir=ctx["work"]))
    (work / "out").mkdir()
    app_dir = work / "app"
    app_dir.mkdir()
    (app_dir / "app.py").write_text(HYDRA_APP)
    (app_dir / "config.yaml").write_text(HYDRA_CONFIG)
    argv = [sys.executable, str(app_dir / "app.py"), "-m", f"x=range(0,{n})", f"out={work / 'out'}",
            "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=5",
            f"hydra.launcher.array_parallelism={PARALLELISM}", f"hydra.sweep.dir={work / 'sweep'}"]
    res = run_contender("hydra", argv, cluster=ctx["cluster"], bin_dir=ctx["bin"], log=work / "calls.tsv",
                        cwd=work, expect_tasks=n, timeout_s=wait_s, array=n)
    res.pop("_poller")
    res["files_written"] = sum(1 for _ in (work / "out").glob("*.txt"))
    res["returned"] = not res["timed_out"] and res["rc"] == 0
    res["returned_s"] = res["wall_s"] if res["returned"] else None
    res["sacct_calls_while_blocking"] = res["calls"]["sacct"]
    res["stdout"] = res["stdout"][-2000:]
    res["shards"] = n
    return res


def bench_status(ctx: dict[str, Any], sizes: list[int], refreshes: int,
                 kept: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Refresh `status --json` a few times on an ours run per size whose jobs are still queued (the
    last timed run for N, a new one otherwise); then cancel that run. Largest size first, so that a
    smaller run's `squeue --me` does not list the larger run's tasks."""
    rows = []
    for n in sorted(sizes, reverse=True):
        sub = (kept or {}).get(n) or bench_ours(ctx, n, f"status{n}", keep_jobs=True)
        entry: dict[str, Any] = {"shards": n, "submit_rc": sub["rc"], "run_dir": sub["run_dir"],
                                 "job_ids": sub["job_ids"], "tasks": sub["tasks_seen"], "refreshes": []}
        try:
            if sub["rc"] != 0 or not sub["run_dir"]:
                entry["error"] = sub["stderr_tail"][-1000:]
                rows.append(entry)
                continue
            for i in range(refreshes):
                log = Path(sub["run_dir"]).parent.parent / f"status_calls_{i}.tsv"
                log.unlink(missing_ok=True)
                t0 = time.perf_counter()
                proc = subprocess.run(status_argv(sub["run_dir"]), env=env_with(ctx["bin"], log),
                                      capture_output=True, text=True, timeout=120)
                dt = time.perf_counter() - t0
                entry["refreshes"].append({"rc": proc.returncode, "wall_s": dt, "calls": count_calls(read_calls(log)),
                                           "stdout_bytes": len(proc.stdout), "stderr_tail": proc.stderr[-500:]})
            ok = [r for r in entry["refreshes"] if r["rc"] == 0]
            entry["calls_per_refresh"] = {k: statistics.mean(r["calls"][k] for r in ok) for k in WRAPPED} if ok else None
            entry["median_wall_s"] = med([r["wall_s"] for r in ok])
        finally:
            entry["cancel_s"] = ctx["cluster"].cancel(sub["job_ids"])
        rows.append(entry)
    return sorted(rows, key=lambda r: r["shards"])


def ours_ready(ctx: dict[str, Any]) -> tuple[bool, str]:
    """`run` submits (no --dry-run needed) and a `status` command exists."""
    exe = status_argv("x")[:-3]
    helps = {}
    for sub in ("run", "status"):
        proc = subprocess.run([*exe, sub, "--help"], capture_output=True, text=True)
        helps[sub] = proc
    if helps["status"].returncode != 0:
        return False, "`grail-cluster status` does not exist yet"
    probe = bench_ours(ctx, 2, "probe")
    if probe["rc"] != 0 or not probe["job_ids"]:
        return False, f"`grail-cluster run` did not submit (rc {probe['rc']}): {probe['stderr_tail'][-400:].strip()}"
    return True, "ok"


# ----------------------------------------------------------------------------- main


def fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or a == 0:
        return "-"
    r = a / b
    return f"{r:.2f}x ({r:.2f} times as long)" if r >= 1 else f"{r:.4f}x ({1 / r:.0f} times faster)"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=1000, help="tasks per contender (default 1000)")
    ap.add_argument("--quick", action="store_true", help="100 shards")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of ours and submitit, interleaved (default 2: with 1,000 shards, 2 runs of each plus "
                         "hydra and status leave ~7,000 job records, under the default MaxJobCount of 10,000)")
    ap.add_argument("--skip-ours", action="store_true", help="peers only (grail-cluster run/status not measured)")
    ap.add_argument("--skip-hydra", action="store_true", help="leave out the Hydra launcher")
    ap.add_argument("--hydra-wait", type=float, default=540.0,
                    help="seconds to let the blocking Hydra launcher run before stopping it (default 540)")
    ap.add_argument("--status-refreshes", type=int, default=3, help="status calls per size (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (job folders, logs, call logs)")
    args = ap.parse_args(argv)
    n = 100 if args.quick else args.shards
    if n < 1 or args.repeat < 1:
        ap.error("--shards and --repeat must be >= 1")

    # SIGTERM unwinds like Ctrl-C, so that every contender's jobs are cancelled on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    bench_dir = Path(os.environ.get("GRAIL_BENCH_DIR", ".bench")).expanduser().resolve()
    bench_dir.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(bench_dir / "xdg-cache")
    t_start = time.perf_counter()

    real = real_binaries()
    cluster = Cluster(real)
    # Another user of the cluster (a test suite) may have it restarted with a small MaxArraySize.
    start_fit = cluster.wait_until_fit(n, 1, WAIT_FOR_ROOM_S)
    conf = {k: cluster.config().get(k) for k in
            ("MaxArraySize", "MaxJobCount", "SchedulerParameters", "MinJobAge", "SLURM_VERSION")}
    node = subprocess.run([real["scontrol"], "show", "node", "-o"], capture_output=True, text=True).stdout
    cpus = re.search(r"CPUTot=(\d+)", node)
    foreign = cluster.all_jobs()
    if foreign:
        print(f"warning: {len(foreign)} job(s) of others already queued; they share the cluster with this run",
              flush=True)

    work = Path(tempfile.mkdtemp(prefix="submit.", dir=bench_dir))
    ctx: dict[str, Any] = {"work": work, "bin": work / "bin", "cluster": cluster}
    write_wrappers(ctx["bin"], real)
    from tests.conftest import make_sonic_root

    lib, lib_info = ensure_library(bench_dir, n)
    ctx["lib"], ctx["sonic"] = lib, make_sonic_root(work / "SONIC")
    import hydra_plugins.hydra_submitit_launcher as hsl  # noqa: F401  (fail early if the plugin is missing)
    import submitit

    versions = {"submitit": submitit.__version__}
    try:
        from importlib.metadata import version

        versions["hydra-core"] = version("hydra-core")
        versions["hydra-submitit-launcher"] = version("hydra-submitit-launcher")
        versions["grail-cluster"] = version("grail-cluster")
    except Exception:  # noqa: BLE001
        pass

    ready, why = (False, "--skip-ours") if args.skip_ours else ours_ready(ctx)
    print(f"ours: {'measured' if ready else 'NOT measured: ' + why}", flush=True)

    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "submitit": []}
    kept: dict[int, dict[str, Any]] = {}
    failed: dict[str, list[dict[str, Any]]] = {"ours": [], "submitit": []}
    try:
        for r in range(args.repeat):
            # Alternate the order; the last run of all is ours, whose jobs stay queued for the status figure.
            order = ("submitit", "ours") if (args.repeat - 1 - r) % 2 == 0 else ("ours", "submitit")
            for who in order:
                if who == "ours" and not ready:
                    continue
                print(f"[{r + 1}/{args.repeat}] {who}: {n} shards ...", flush=True)
                last = r == args.repeat - 1 and who == "ours"
                for attempt in range(2):  # one retry: another user may restart slurmctld mid-submission
                    tag = f"{r}" if attempt == 0 else f"{r}-retry"
                    res = (bench_ours(ctx, n, tag, keep_jobs=last) if who == "ours"
                           else bench_submitit(ctx, n, tag))
                    if res["rc"] == 0:
                        break
                    failed[who].append(res)
                    print(f"    failed (rc {res['rc']}): {res['stderr_tail'].strip().splitlines()[-1:]}; retrying once",
                          flush=True)
                if last and res["rc"] == 0:
                    kept[n] = res
                runs[who].append(res)
                print(f"    rc {res['rc']}, returned in {fmt(res['returned_s'])} s, {res['tasks_seen']} tasks visible "
                      f"at {fmt(res['visible_s'])} s, calls {res['calls']}", flush=True)
                if res["rc"] != 0:
                    print(textwrap.indent(res["stderr_tail"][-1500:], "    | "), flush=True)
        status = []
        if ready:
            print(f"status polling at 10 and {n} shards ...", flush=True)
            status = bench_status(ctx, sorted({min(10, n), n}), args.status_refreshes, kept)
        hydra = None
        if not args.skip_hydra:
            print(f"hydra: {n} shards (blocks until every job ends; stopped after {args.hydra_wait:.0f} s) ...",
                  flush=True)
            hydra = bench_hydra(ctx, n, args.hydra_wait)
            print(f"    rc {hydra['rc']}, {'returned' if hydra['returned'] else 'did NOT return'} after "
                  f"{hydra['wall_s']:.1f} s, all {n} visible at {fmt(hydra['visible_s'])} s, "
                  f"{hydra['files_written']} files written, calls {hydra['calls']}", flush=True)
    finally:
        leftovers = [j for res in runs["ours"] + runs["submitit"] for j in res.get("job_ids", [])]
        leftovers += [j for res in kept.values() for j in res.get("job_ids", [])]
        leftovers += [j for rs in failed.values() for res in rs for j in res.get("job_ids", [])]
        cluster.cancel(leftovers, wait_s=30)  # a no-op unless something was interrupted
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def agg(rs: list[dict[str, Any]]) -> dict[str, Any]:
        ok = [x for x in rs if x["rc"] == 0]
        return {
            "runs": len(rs), "ok": len(ok),
            "returned_s": [x["returned_s"] for x in rs],
            "returned_median_s": med([x["returned_s"] for x in ok]),
            "visible_median_s": med([x["visible_s"] for x in ok]),
            "sbatch_calls": sorted({x["calls"]["sbatch"] for x in ok}),
            "calls": ok[0]["calls"] if ok else None,
        }

    summary = {"ours": agg(runs["ours"]), "submitit": agg(runs["submitit"])}
    if runs["submitit"]:
        ch = [x["child"].get("queued", {}) for x in runs["submitit"] if x["rc"] == 0]
        summary["submitit"]["map_array_median_s"] = med([c.get("map_array_s") for c in ch])
        summary["submitit"]["import_median_s"] = med([c.get("import_s") for c in ch])
        ref = [x for x in runs["submitit"] if x["rc"] == 0]
        summary["submitit"]["refresh_calls"] = ref[0]["refresh_calls"] if ref else None
        summary["submitit"]["refresh_median_s"] = med([x["child"].get("refresh", {}).get("refresh_s") for x in ref])
    if runs["ours"]:
        okr = [x for x in runs["ours"] if x["rc"] == 0]
        summary["ours"]["visible_all_median_s"] = med([x["visible_all_s"] for x in okr])
        summary["ours"]["tasks_queued"] = okr[0]["tasks_seen"] if okr else None
        summary["ours"]["stages_queued"] = okr[0]["stages_queued"] if okr else None
        summary["ours"]["ledger_jobs"] = sorted({x["ledger_jobs"] for x in runs["ours"] if x["rc"] == 0},
                                                key=lambda v: -1 if v is None else v)

    def r(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    o_, s_ = summary["ours"], summary["submitit"]
    summary["ratios"] = {
        "ours_over_submitit_return": r(o_.get("returned_median_s"), s_.get("returned_median_s")),
        "ours_over_submitit_visible": r(o_.get("visible_median_s"), s_.get("visible_median_s")),
        "ours_over_hydra_visible": r(o_.get("visible_median_s"), (hydra or {}).get("visible_s")),
        "ours_over_hydra_return": r(o_.get("returned_median_s"), (hydra or {}).get("returned_s")),
    }
    result = {
        "command": "python bench/bench_submit.py" + (" --quick" if args.quick else "")
                   + (f" --shards {n}" if not args.quick and n != 1000 else "")
                   + (f" --repeat {args.repeat}" if args.repeat != 2 else "")
                   + (" --skip-ours" if args.skip_ours else "") + (" --skip-hydra" if args.skip_hydra else ""),
        "shards": n,
        "machine": machine(),
        "slurm": {**conf, "node_cpus": int(cpus.group(1)) if cpus else None, "foreign_jobs_at_start": len(foreign),
                  "wait_at_start": start_fit,
                  "at_end": {k: cluster.config().get(k) for k in ("MaxArraySize", "MaxJobCount")}},
        "versions": versions,
        "library": {**lib_info, "root": str(lib)},
        "ours_measured": ready,
        "ours_not_measured_because": None if ready else why,
        "summary": summary,
        "runs": runs,
        "failed_runs": failed,
        "foreign_jobs_seen": max([x.get("foreign_jobs_at_start", 0) for x in runs["ours"] + runs["submitit"]
                                  + ([hydra] if hydra else [])] or [0]),
        "status": status,
        "hydra": hydra,
        "wall_s": time.perf_counter() - t_start,
    }
    out = bench_dir / "bench_submit.json"
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")

    # ------------------------------------------------------------------ table
    o, s = summary["ours"], summary["submitit"]
    print()
    print(f"bench_submit: {n} shards on local SLURM ({conf.get('SLURM_VERSION')}, {result['slurm']['node_cpus']} "
          f"advertised CPUs, {result['machine']['cpus']} real); medians of {args.repeat} runs (hydra: 1)")
    print(f"{'contender':<34}{'to return':>11}{'all visible':>13}{'sbatch':>8}  other calls")

    def other(calls: dict[str, int] | None) -> str:
        if not calls:
            return "-"
        return ", ".join(f"{k} {v}" for k, v in calls.items() if k != "sbatch" and v) or "none"

    if ready:
        print(f"{'ours: grail-cluster run':<34}{fmt(o['returned_median_s']):>10}s{fmt(o['visible_median_s']):>12}s"
              f"{'/'.join(map(str, o['sbatch_calls'])):>8}  {other(o['calls'])}")
    if ready:
        print(f"{'  ours: every task of the DAG':<34}{'':>11}{fmt(o['visible_all_median_s']):>12}s"
              f"   ({o['tasks_queued']} tasks: {o['stages_queued']})")
    print(f"{'submitit: process':<34}{fmt(s['returned_median_s']):>10}s{fmt(s['visible_median_s']):>12}s"
          f"{'/'.join(map(str, s['sbatch_calls'])):>8}  {other(s['calls'])}")
    print(f"{'submitit: map_array only':<34}{fmt(s.get('map_array_median_s')):>10}s")
    if hydra:
        ret = fmt(hydra["wall_s"]) if hydra["returned"] else ">" + fmt(hydra["wall_s"], 0)
        print(f"{'hydra submitit launcher':<34}{ret:>10}s{fmt(hydra['visible_s']):>12}s"
              f"{hydra['calls']['sbatch']:>8}  {other(hydra['calls'])}"
              + ("" if hydra["returned"] else f"  (stopped: did not return in {args.hydra_wait:.0f} s)"))
        print(f"{'  hydra: until its sbatch starts':<34}{fmt(hydra['first_sbatch_start_s']):>10}s"
              f"   (sweeper + launcher work before submitting; {hydra['files_written']} of {n} tasks done)")
    if ready:
        print()
        print(f"ours vs submitit (process): to return {ratio(o['returned_median_s'], s['returned_median_s'])}, "
              f"visible {ratio(o['visible_median_s'], s['visible_median_s'])}")
        if hydra:
            print(f"ours vs hydra: visible {ratio(o['visible_median_s'], hydra['visible_s'])}, "
                  f"to return {ratio(o['returned_median_s'], hydra['returned_s'])} "
                  "(hydra returns when every job has ended; ours and submitit when they are queued)")
        for st in status:
            print(f"status --json at {st['shards']:>5} shards: {st.get('calls_per_refresh')} per refresh, "
                  f"median {fmt(st.get('median_wall_s'))} s")
    if s.get("refresh_calls"):
        print(f"submitit refresh of all {n} jobs: {other(s['refresh_calls'])}, {fmt(s.get('refresh_median_s'), 3)} s")
    if not ready:
        print(f"ours NOT measured: {why}")
    if result["foreign_jobs_seen"]:
        print(f"warning: up to {result['foreign_jobs_seen']} jobs of others were queued when a contender started; "
              "they shared the node's CPUs with this run")
    if any(failed.values()):
        print(f"failed and retried: { {k: len(v) for k, v in failed.items()} } (see failed_runs in the JSON)")
    print(f"wall {result['wall_s']:.0f} s; written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
