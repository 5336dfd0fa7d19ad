"""``grail-cluster demo``: the whole lifecycle on one machine with the embedded reference tracker.

Generates the demo library (``grail-cluster demo-data``), then runs train -> select -> eval (shards)
-> render -> export -> merge -> web with ``trainer=reference`` on the local executor (progress bars)
or, unchanged, on SLURM (``cluster=slurm``), and ends with the real success rate computed by the
simulation, the merged library and the command that serves the viewer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from grail_cluster.cli.common import err, out, plan_from_overrides, run_command
from grail_cluster.cli.runs import ledger_errors, watch
from grail_cluster.core.errors import EXIT_OK, EXIT_PROBLEMS, DataError
from grail_cluster.core.run_dir import load_run

LIBRARY = "demo_pickup"
# Small enough for 2 cores in minutes; several shards and two checkpoints so every DAG edge is used.
DEFAULTS = ("trainer=reference", "pipeline=pnp_table", "eval.num_shards=3", "select.k=2",
            "render.resolution=320x240", "render.lod_mm=10",
            "render.camera_offset=[1.5,-1.5,1.0]")


def demo_overrides(out: Path, extra: list[str]) -> list[str]:
    lib = out / "data" / f"{LIBRARY}_ha"
    return [f"data.motion_lib={lib}", f"run.root={out / 'runs'}", f"job.python={sys.executable}",
            *DEFAULTS, *extra]


def ensure_library(out: Path, motions: int, seed: int, console) -> Path:
    from grail_cluster.tools.data.demo_library import cmd_demo_data

    lib = out / "data" / f"{LIBRARY}_ha"
    if (lib / "robot").is_dir():
        console.print(f"demo library: {lib} (exists; delete {out / 'data'} to regenerate)")
        return lib
    import contextlib

    # `demo-data`'s own defaults: a share of untrackable motions makes the success rate a real figure.
    args = argparse.Namespace(out=str(out / "data"), motions=motions, seed=seed, name=LIBRARY, scene="table",
                              untrackable=0.25, force=False, json=False)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the demo's own result (--json)
        code = run_command(cmd_demo_data, args)
    if code != 0:
        raise DataError("generating the demo library failed", path=out / "data")
    return lib


def summary(plan) -> dict[str, Any]:
    """Per checkpoint: evaluated, succeeded and the real success rate from the eval shards' metrics
    (as `summarize` and `status` count them), the exported count and the merged library."""
    from grail_cluster.runs.headline import run_headlines

    steps = []
    for h in run_headlines(plan):
        steps.append({"step": h["step"], "merged": h["merged"], "evaluated": h["evaluated"],
                      "succeeded": h["succeeded"], "success_rate": h["success_rate"], "exported": h["exported"],
                      "shards_ok": h["shards_ok"], "num_shards": h["num_shards"], "partial": h["partial"],
                      "headline": h})
    return {"run_dir": plan.run_dir, "web": plan.paths["web_dir"], "checkpoints": steps,
            "serve": f"grail-cluster serve {plan.paths['web_dir']}"}


def cmd_demo(args: argparse.Namespace) -> int:
    from grail_cluster.core.plan import submitted_plan_hash, write_plan

    t0 = time.time()
    root = Path(args.out).resolve()
    ensure_library(root, args.motions, args.seed, err)
    overrides = demo_overrides(root, list(args.overrides))
    plan = plan_from_overrides(overrides)
    recorded = submitted_plan_hash(plan.run_dir)
    if recorded and recorded != plan.plan_hash:  # an earlier demo with other settings: keep it, start anew
        plan = plan_from_overrides([*overrides, f"run.id={plan.run_id}-{plan.plan_hash[:6]}"])
    write_plan(plan)
    from grail_cluster.runs.job_files import render_files, write_files

    write_files(render_files(plan), Path(plan.paths["specs_dir"]) / plan.backend)
    err.print(f"run {plan.run_id}: {', '.join(f'{s.name} x{s.size}' for s in plan.stages)} on cluster={plan.backend}")
    if recorded == plan.plan_hash:  # this very demo ran before: report it (resubmit repairs a failed one)
        err.print(f"run {plan.run_id} ran before with these settings; its status: grail-cluster status {plan.run_dir}")
        code = EXIT_OK
    elif plan.backend == "local":
        from grail_cluster.runs.foreground import run_foreground

        code = run_foreground(plan, console=err)
    else:
        from grail_cluster.runs.control import submit_run

        submit_run(plan)
        with ledger_errors(plan.run_dir):
            code = watch(load_run(plan.run_dir), interval=2.0)
    if code != EXIT_OK:
        err.print(f"[red]the demo run did not finish cleanly[/]: grail-cluster status {plan.run_dir}")
        return EXIT_PROBLEMS
    result = summary(plan)
    result["seconds"] = round(time.time() - t0, 1)
    if args.json:
        out.print_json(json.dumps(result))
        return EXIT_OK
    from rich.markup import escape

    from grail_cluster.tools.data.headline import headline_text

    for c in result["checkpoints"]:
        out.print(escape(f"checkpoint {headline_text(c['headline'])}; merged library {c['merged']}"), highlight=False)
    out.print(f"done in {result['seconds']:.0f} s; view it with:  {result['serve']}")
    return EXIT_OK


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole lifecycle on this machine with the CPU reference tracker",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. cluster=slurm train.iterations=50")
    p.add_argument("--out", default="demo", help="demo folder (library in data/, runs in runs/); default ./demo")
    p.add_argument("--motions", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)
