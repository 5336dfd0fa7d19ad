#!/usr/bin/env python
"""The demo's wall time per stage: ``grail-cluster demo`` (local executor, CPU reference tracker)
against running the very same job scripts one after another, the way the lifecycle article's users
run its steps by hand (the peer), in the same process tree, on the same library.

Per stage it prints the jobs, the job-seconds (sum of the jobs' elapsed times from the run ledger)
and the longest job; then the end-to-end wall time of both and the ratio.

    python bench/bench_demo.py                 # 24 motions, the demo's defaults
    python bench/bench_demo.py --motions 8 train.iterations=30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import machine  # noqa: E402


def _stage_times(run_dir: str) -> list[dict]:
    from grail_cluster.core.ledger import Ledger
    from grail_cluster.core.plan import read_plan

    plan = read_plan(run_dir)
    rows = []
    with Ledger(run_dir) as ledger:
        for st in plan.stages:
            elapsed = [a["elapsed"] or 0.0 for i in range(st.size) for a in ledger.attempts(st.name, i)]
            rows.append({"stage": st.name, "jobs": st.size, "job_s": round(sum(elapsed), 1),
                         "longest_s": round(max(elapsed, default=0.0), 1)})
    return rows


def ours(out: Path, motions: int, overrides: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "grail_cluster", "demo", "--out", str(out), "--motions", str(motions),
                           "--json", *overrides], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    return {"wall_s": round(wall, 1), "stages": _stage_times(result["run_dir"]), "result": result}


def peer(out: Path, overrides: list[str]) -> dict:
    """The same plan under another run id, each job script run by hand, one after another."""
    from grail_cluster.cli.common import plan_from_overrides as _plan_from_overrides
    from grail_cluster.cli.demo import demo_overrides
    from grail_cluster.core.plan import write_plan
    from grail_cluster.runs.job_files import render_files, write_files

    plan = _plan_from_overrides(demo_overrides(out, [*overrides, "run.id=peer-sequential"]))
    write_plan(plan)
    spec_dir = Path(plan.paths["specs_dir"]) / "local"
    write_files(render_files(plan), spec_dir)
    t0 = time.perf_counter()
    for st in plan.stages:
        for index in range(st.size):
            env = {**os.environ, "GRAIL_INDEX": str(index)}
            proc = subprocess.run(["bash", str(spec_dir / f"{st.name}.sh")], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"peer: {st.name} {index} failed:\n{proc.stderr[-2000:]}")
    return {"wall_s": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--motions", type=int, default=24)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.environ.get("GRAIL_BENCH_DIR", ".bench"), "bench_demo.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="grail-bench-demo-"))
    ours_r = ours(work, args.motions, args.overrides)
    result = {"machine": machine(), "motions": args.motions, "overrides": args.overrides, "ours": ours_r}
    if not args.no_peer:
        p = peer(work, args.overrides)
        result["peer_sequential"] = p
        result["ratio_peer_over_ours"] = round(p["wall_s"] / ours_r["wall_s"], 2)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
