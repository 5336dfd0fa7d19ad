#!/usr/bin/env python
"""Benchmark a Hydra ``-m`` sweep of N points on the local SLURM cluster: time until the command returns
to the prompt, and until every job has finished; our launcher plugin against Hydra's submitit launcher.

Every contender runs the same generated Hydra app over ``x=range(0,N)``; each job does ~``--work-s``
seconds of real CPU work (a SHA-256 chain, calibrated here on one idle core) and returns a small dict.
All ask SLURM for the same thing: partition debug, 1 CPU, 1 GB, 10 minutes, array parallelism 256.

- **grail_slurm**: ``python app.py -m x=range(0,N) hydra/launcher=grail_slurm hydra.launcher.wait=false``.
  It returns once the array is queued. Figures: to return; until all N jobs have finished, found by
  polling the sweep's ledger and result files every 0.25 s (what ``python -m
  grail_cluster.launchers.hydra_launcher <sweep>/.grail`` reads) and checked: N completed results
  with the expected values; until the array has left ``squeue``.
- **grail_slurm_wait** (``--contenders``): the same with ``wait=true``, blocking like Hydra's.
- **submitit_slurm**: ``python app.py -m x=range(0,N) hydra/launcher=submitit_slurm``, which blocks until
  every job has ended: its return time is also its all-finished time.
- **grail_cluster_run** (``--contenders``): ``grail-cluster run -m ... train.seed=range(0,N)``, a
  rehearsal sweep (each training job reads its point's motions, then ~``--work-s`` of
  ``rehearsal.work_seconds``): it plans N points, queues one train array plus select/eval/export/merge,
  and returns; all-finished = N train markers written.
- **submitit_same_work**: Hydra's submitit launcher running the same N training jobs (each job calls the
  in-job entry for point x of an identically planned sweep); it blocks until they end.

Contenders run one after another, never overlapping (they would share the node's CPUs); before each
one the bench waits (untimed) until no job of the previous one is left in ``squeue`` and records how
many jobs of other users are queued (the cluster is shared). ``CONTENDERS`` maps a name to a function
``(SweepContext) -> figures``: a new contender (e.g. ``grail-cluster run -m``) is one function there.

    python bench/bench_sweep.py                        # 100 points, ~1.5 s of work each
    python bench/bench_sweep.py --points 20 --work-s 1 --contenders grail_slurm
    python bench/bench_sweep.py --contenders grail_cluster_run,submitit_same_work

Results go to ``${GRAIL_BENCH_DIR:-.bench}/bench_sweep.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import machine  # noqa: E402
from grail_cluster.core.markers import MARKER  # noqa: E402

SLURM_FIT = {"partition": "debug", "cpus_per_task": 1, "mem_gb": 1, "array_parallelism": 256}
TIME_MIN = 10
POLL_S = 0.25

APP = '''\
"""bench_sweep's Hydra app (written by bench/bench_sweep.py): each job does `rounds` SHA-256 steps."""
import hashlib
import time

import hydra


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg):
    t0 = time.perf_counter()
    h = str(cfg.x).encode()
    for _ in range(cfg.rounds):
        h = hashlib.sha256(h).digest()
    return {"x": cfg.x, "digest": h.hex()[:16], "work_s": round(time.perf_counter() - t0, 3)}


if __name__ == "__main__":
    main()
'''


@dataclass
class SweepContext:
    app: Path  # the app's directory (app.py, config.yaml)
    work: Path  # where each contender gets its own sweep dir
    points: int
    rounds: int
    timeout_s: float
    work_s: float = 1.5

    def argv(self, *overrides: str) -> list[str]:
        return [sys.executable, str(self.app / "app.py"), "-m", f"x=range(0,{self.points})", *overrides]


def expected_digest(x: int, rounds: int) -> str:
    h = str(x).encode()
    for _ in range(rounds):
        h = hashlib.sha256(h).digest()
    return h.hex()[:16]


def calibrate(work_s: float) -> tuple[int, float]:
    """SHA-256 rounds for ~work_s seconds on one idle core (and the rate measured)."""
    n, t0 = 200_000, time.perf_counter()
    h = b"0"
    for _ in range(n):
        h = hashlib.sha256(h).digest()
    rate = n / (time.perf_counter() - t0)
    return int(rate * work_s), rate


def write_app(base: Path, rounds: int) -> Path:
    app = base / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "app.py").write_text(APP)
    (app / "config.yaml").write_text(textwrap.dedent(f"""\
        x: 0
        rounds: {rounds}
        """))
    return app


# ----------------------------------------------------------------------------- the cluster


def squeue_ids(job_ids: list[str]) -> list[str]:
    if not job_ids:
        return []
    # With -j, squeue lists every state (finished tasks stay MinJobAge): ask for the live ones only.
    out = subprocess.run(["squeue", "-h", "-r", "-t", "PD,R,CG,CF,S", "-j", ",".join(job_ids), "-o", "%i"],
                         capture_output=True, text=True)
    return [line for line in out.stdout.split() if line.strip()]


def others_queued() -> int:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
    return len(out.stdout.split())


def wait_gone(job_ids: list[str], timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while squeue_ids(job_ids) and time.monotonic() < deadline:
        time.sleep(1.0)


def timed(argv: list[str], cwd: Path, timeout_s: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    return time.perf_counter() - t0, proc


def check_rc(name: str, proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        raise SystemExit(f"bench_sweep: {name} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def slurm_overrides(time_key: str, **extra: Any) -> list[str]:
    fit = {**SLURM_FIT, time_key: TIME_MIN, **extra}
    return [f"hydra.launcher.{k}={v}" for k, v in fit.items()]


# ----------------------------------------------------------------------------- contenders


def _grail_slurm(ctx: SweepContext, wait: bool) -> dict[str, Any]:
    from grail_cluster.launchers.sweep import sweep_status

    name = "grail_slurm_wait" if wait else "grail_slurm"
    sweep = ctx.work / name
    argv = ctx.argv("hydra/launcher=grail_slurm", *slurm_overrides("time", wait=str(wait).lower()),
                    f"hydra.sweep.dir={sweep}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ctx.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=ctx.timeout_s)
    returned = time.perf_counter() - t0
    check_rc(name, subprocess.CompletedProcess(argv, proc.returncode, out, err))
    state = sweep / ".grail"
    arrays = sorted({j["scheduler_id"].split("_")[0] for j in sweep_status(state).values()})
    all_done = gone = None
    while time.perf_counter() - t0 < ctx.timeout_s and (all_done is None or gone is None):
        jobs = sweep_status(state)
        ended = len(jobs) == ctx.points and all(j["state"] != "submitted" for j in jobs.values())
        if all_done is None and ended:
            all_done = time.perf_counter() - t0
        if gone is None and not squeue_ids(arrays):
            gone = time.perf_counter() - t0
        time.sleep(POLL_S)
    jobs = sweep_status(state)
    ok = sum(1 for n, j in jobs.items() if j["state"] == "done"
             and (j["return"] or {}).get("json", {}).get("digest") == expected_digest(n, ctx.rounds))
    work = [j["return"]["json"]["work_s"] for j in jobs.values() if j["state"] == "done"]
    return {"return_s": returned, "all_done_s": all_done, "left_squeue_s": gone, "jobs_ok": ok,
            "arrays": arrays, "job_work_median_s": sorted(work)[len(work) // 2] if work else None}


def grail_slurm(ctx: SweepContext) -> dict[str, Any]:
    return _grail_slurm(ctx, wait=False)


def grail_slurm_wait(ctx: SweepContext) -> dict[str, Any]:
    return _grail_slurm(ctx, wait=True)


def submitit_slurm(ctx: SweepContext) -> dict[str, Any]:
    sweep = ctx.work / "submitit_slurm"
    argv = ctx.argv("hydra/launcher=submitit_slurm", *slurm_overrides("timeout_min"),
                    f"hydra.sweep.dir={sweep}")
    returned, proc = timed(argv, ctx.work, ctx.timeout_s)
    check_rc("submitit_slurm", proc)
    done = len(list((sweep / ".submitit").glob("*/*_result.pkl")))
    arrays = sorted({p.name.split("_")[0] for p in (sweep / ".submitit").glob("*_*")})
    return {"return_s": returned, "all_done_s": returned, "left_squeue_s": None, "jobs_ok": done,
            "arrays": arrays}


# ----------------------------------------------------------------------------- grail-cluster run -m

PEER_APP = '''\
"""bench_sweep's peer app: each job runs training point `x` of a planned grail-cluster sweep (rehearsal)."""
import hydra


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg):
    from grail_cluster.entry import main as entry

    code = entry(["train", "--run-dir", cfg.run_dir, "--index", str(cfg.x)])
    if code != 0:
        raise SystemExit(code)
    return {"x": cfg.x}


if __name__ == "__main__":
    main()
'''


def _run_overrides(ctx: SweepContext, root: Path, run_root: Path) -> list[str]:
    """A rehearsal sweep of N points: each training job reads its point's motions and does ~work_s
    of work (rehearsal.work_seconds); render/web off so the DAG is train, select, eval, export, merge."""
    return ["-m", "pipeline=advanced_manip_table", "cluster=slurm", f"data.motion_lib={root / 'lib'}",
            f"sonic.root={root / 'SONIC'}", f"run.root={run_root}", f"job.python={sys.executable}",
            "rehearsal.enabled=true", f"rehearsal.work_seconds={ctx.work_s}", "train.gpus_per_node=1",
            "train.device=cpu", "eval.num_shards=2", "select.k=2", "render.enabled=false", "web.enabled=false",
            "cluster.partition=debug", "cluster.array_parallelism=256",
            *(f"resources.{stage}.{key}={value}" for stage in ("train", "select", "eval", "export", "merge")
              for key, value in (("cpus", 1), ("mem", 1), ("time", TIME_MIN))),
            *(f"resources.{stage}.gpus=0" for stage in ("select", "eval", "export", "merge")),
            f"train.seed=range(0,{ctx.points})"]


def _sweep_world(ctx: SweepContext) -> Path:
    root = ctx.work / "grail_run"
    if not (root / "lib").is_dir():
        from tests.conftest import make_sonic_root
        from tests.libgen import make_library

        make_library(root / "lib", 8, fast=True)
        make_sonic_root(root / "SONIC")
    return root


def grail_cluster_run(ctx: SweepContext) -> dict[str, Any]:
    """``grail-cluster run -m`` over N training points: it plans the sweep, queues one train array and
    the downstream stages, and returns; all-finished = every point's train marker written."""
    root = _sweep_world(ctx)
    argv = [sys.executable, "-m", "grail_cluster", "run", *_run_overrides(ctx, root, root / "ours"), "--json"]
    returned, proc = timed(argv, ctx.work, ctx.timeout_s)
    check_rc("grail_cluster_run", proc)
    sub = json.loads(proc.stdout)
    markers = Path(sub["run_dir"]) / "markers" / "train"
    t0 = time.perf_counter() - returned
    all_done = None
    while time.perf_counter() - t0 < ctx.timeout_s:
        if len(list(markers.glob(f"*/{MARKER}"))) >= ctx.points:
            all_done = time.perf_counter() - t0
            break
        time.sleep(POLL_S)
    arrays = [str(j["job_id"]) for j in sub["jobs"]]
    train = [j for j in sub["jobs"] if j["stage"] == "train"]
    subprocess.run([sys.executable, "-m", "grail_cluster", "cancel", sub["run_dir"]], capture_output=True)
    return {"return_s": returned, "all_done_s": all_done, "left_squeue_s": None,
            "jobs_ok": len(list(markers.glob(f"*/{MARKER}"))), "arrays": arrays,
            "train_arrays": [j["array"] for j in train], "sbatch_calls": len(sub["jobs"])}


def submitit_same_work(ctx: SweepContext) -> dict[str, Any]:
    """Hydra's submitit launcher over the same N points, each job the same rehearsal training of point x
    of an identically planned sweep (planned untimed); it blocks until every job has ended."""
    root = _sweep_world(ctx)
    plan = subprocess.run([sys.executable, "-m", "grail_cluster", "plan", *_run_overrides(ctx, root, root / "peer"),
                           "--json"], capture_output=True, text=True)
    check_rc("plan for the peer", plan)
    run_dir = json.loads(plan.stdout)["run_dir"]
    app = ctx.work / "peer_app"
    app.mkdir(exist_ok=True)
    (app / "app.py").write_text(PEER_APP)
    (app / "config.yaml").write_text(f"x: 0\nrun_dir: {run_dir}\n")
    sweep = ctx.work / "submitit_same_work"
    argv = [sys.executable, str(app / "app.py"), "-m", f"x=range(0,{ctx.points})", "hydra/launcher=submitit_slurm",
            *slurm_overrides("timeout_min"), f"hydra.sweep.dir={sweep}"]
    returned, proc = timed(argv, ctx.work, ctx.timeout_s)
    check_rc("submitit_same_work", proc)
    done = len(list((Path(run_dir) / "markers" / "train").glob(f"*/{MARKER}")))
    arrays = sorted({p.name.split("_")[0] for p in (sweep / ".submitit").glob("*_*")})
    return {"return_s": returned, "all_done_s": returned, "left_squeue_s": None, "jobs_ok": done, "arrays": arrays}


CONTENDERS: dict[str, Callable[[SweepContext], dict[str, Any]]] = {
    "grail_slurm": grail_slurm,
    "grail_slurm_wait": grail_slurm_wait,
    "submitit_slurm": submitit_slurm,
    "grail_cluster_run": grail_cluster_run,
    "submitit_same_work": submitit_same_work,
}
DEFAULT = ("grail_slurm", "submitit_slurm")


# ----------------------------------------------------------------------------- main


def fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100, help="sweep points = jobs (default 100)")
    ap.add_argument("--work-s", type=float, default=1.5,
                    help="CPU seconds of work per job on an idle core (default 1.5)")
    ap.add_argument("--contenders", default=",".join(DEFAULT), help=f"comma list of {', '.join(CONTENDERS)}")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per contender before giving up")
    ap.add_argument("--keep", action="store_true", help="keep the sweep dirs")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or args.points < 1:
        ap.error(f"unknown contender(s) {unknown}; known: {', '.join(CONTENDERS)}" if unknown
                 else "--points must be >= 1")
    if not shutil.which("sbatch"):
        raise SystemExit("bench_sweep: no SLURM client; start the cluster with tests/infra/slurm/up.sh")

    bench_dir = Path(os.environ.get("GRAIL_BENCH_DIR", ".bench")).expanduser().resolve()
    bench_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sweep.", dir=bench_dir))
    rounds, rate = calibrate(args.work_s)
    ctx = SweepContext(app=write_app(work, rounds), work=work, points=args.points, rounds=rounds,
                       timeout_s=args.timeout, work_s=args.work_s)
    node = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True).stdout.split()
    node_cpus = next((f.split("=", 1)[1] for f in node if f.startswith("CPUTot=")), "?")
    mach = machine()
    print(f"bench_sweep: {args.points} points x ~{args.work_s} s of work ({rounds} SHA-256 rounds at "
          f"{rate:,.0f}/s on one idle core); local SLURM node with {node_cpus} advertised CPUs, "
          f"{mach['cpus']} real ({mach['cpu_model']})", flush=True)

    results: dict[str, Any] = {}
    previous: list[str] = []
    for name in names:
        wait_gone(previous)
        others = others_queued()
        print(f"{name} ... ({others} jobs of others queued)", flush=True)
        fig = CONTENDERS[name](ctx)
        fig["others_queued_at_start"] = others
        results[name] = fig
        previous = fig.get("arrays") or []
        print(f"    returned after {fig['return_s']:.2f} s; all {args.points} finished at "
              f"{fmt(fig['all_done_s'])} s; {fig['jobs_ok']} results ok", flush=True)
    wait_gone(previous)

    ours, peer = results.get("grail_slurm"), results.get("submitit_slurm")
    summary: dict[str, Any] = {}
    if ours and peer:
        summary = {"return_ratio": peer["return_s"] / ours["return_s"],
                   "all_done_ratio": peer["all_done_s"] / ours["all_done_s"] if ours["all_done_s"] else None}
    run, run_peer = results.get("grail_cluster_run"), results.get("submitit_same_work")
    if run and run_peer:
        summary["run_m_return_ratio"] = run_peer["return_s"] / run["return_s"]
        summary["run_m_all_done_ratio"] = run_peer["all_done_s"] / run["all_done_s"] if run["all_done_s"] else None
    result = {"points": args.points, "work_s": args.work_s, "rounds": rounds, "machine": mach,
              "slurm_node_cpus": node_cpus, "contenders": results, "summary": summary,
              "command": "python bench/bench_sweep.py" + ("" if argv is None else " " + " ".join(argv))}
    out = bench_dir / "bench_sweep.json"
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")

    print()
    print(f"{'contender':<20}{'to return':>11}{'all finished':>14}{'results ok':>12}")
    for name, fig in results.items():
        print(f"{name:<20}{fmt(fig['return_s'], 2):>10}s{fmt(fig['all_done_s']):>13}s{fig['jobs_ok']:>12}")
    if "return_ratio" in summary:
        print(f"to return: submitit_slurm / grail_slurm = {summary['return_ratio']:.1f}x "
              f"({ours['return_s']:.2f} s vs {peer['return_s']:.1f} s: ours returns once queued, submitit "
              "when all have ended)")
        if summary["all_done_ratio"]:
            print(f"all {args.points} finished: submitit_slurm / grail_slurm = "
                  f"{summary['all_done_ratio']:.2f}x "
                  f"({ours['all_done_s']:.1f} s vs {peer['all_done_s']:.1f} s)")
    if summary.get("run_m_return_ratio"):
        print(f"grail-cluster run -m (whole sweep DAG queued) vs submitit on the same training jobs: "
              f"{summary['run_m_return_ratio']:.1f}x to return ({run['return_s']:.2f} s vs "
              f"{run_peer['return_s']:.1f} s); all trained: "
              + (f"{summary['run_m_all_done_ratio']:.2f}x" if summary["run_m_all_done_ratio"] else "-"))
    if any(fig["others_queued_at_start"] for fig in results.values()):
        print("warning: jobs of others were queued when a contender started; they shared the node's CPUs")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
