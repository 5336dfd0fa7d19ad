"""The commands that plan a run: ``plan`` (plan.json), ``render`` (the job files) and ``run`` (plan, render
and submit, or ``--dry-run``); ``-m``/``--sweep-file`` make any of them a sweep."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from grail_cluster.cli.common import err, out, plan_from_overrides, print_json
from grail_cluster.core.errors import EXIT_OK


def plan_args(args: argparse.Namespace):
    return plan_from_overrides(args.overrides, multirun=args.multirun, sweep_file=args.sweep_file)


def plan_summary(plan) -> dict[str, Any]:
    return {
        "run_id": plan.run_id,
        "run_dir": plan.run_dir,
        "plan_hash": plan.plan_hash,
        "pipeline": plan.pipeline["name"],
        "backend": plan.backend,
        "motions": plan.library["num_motions"],
        "stages": [{"name": s.name, "size": s.size, "depends_on": [f"{d.kind}:{d.stage}" for d in s.depends_on]}
                   for s in plan.stages],
        "train": {k: v for k, v in plan.train.items() if k not in ("ranks", "points")},
        "points": [{k: p[k] for k in ("point", "name", "overrides", "experiment_dir", "world_size")}
                   for p in plan.train.get("points", [])],
        "eval": {k: v for k, v in plan.eval.items() if k != "shards"},
        "warnings": plan.warnings,
    }


def print_plan(plan, plan_path: Path | None) -> None:
    table = Table(title=escape(f"run {plan.run_id} ({plan.pipeline['name']}, {plan.library['num_motions']} motions, cluster={plan.backend})"))
    for col in ("stage", "jobs", "after", "nodes x GPUs", "CPUs", "mem", "time"):
        table.add_column(col)
    for s in plan.stages:
        r = s.resources
        table.add_row(s.name, str(s.size), ", ".join(f"{d.kind} {d.stage}" for d in s.depends_on) or "-",
                      f"{r.nodes} x {r.gpus}", str(r.cpus), f"{r.mem_gb:g}G", f"{r.time_min} min")
    out.print(table)
    ev = plan.eval
    out.print(f"eval: {ev['num_checkpoints']} checkpoint(s) x {ev['num_shards']} shard(s), {ev['strategy']}, "
              f"balance {ev['balance']:.3f} (max shard {ev['max_shard_frames']} frames, ideal {ev['ideal_frames']:.0f})")
    if plan.is_sweep:
        points = Table(title=f"sweep: {len(plan.train['points'])} training points in one array, W&B group {plan.run_id}")
        for col in ("point", "overrides", "experiment dir"):
            points.add_column(col, overflow="fold")
        for p in plan.train["points"]:
            points.add_row(p["name"], escape(" ".join(p["overrides"])), escape(p["experiment_dir"]))
        out.print(points)
        out.print(f"select ranks the checkpoints of every point; the top {plan.eval['num_checkpoints']} are "
                  "evaluated, rendered, exported and merged once for the sweep")
    if plan.train.get("ranks"):
        ranks = plan.train["ranks"]
        sizes = [len(r["motion_keys"]) for r in ranks]
        out.print(f"train: {plan.train['world_size']} ranks ({plan.train['slicing']}), {min(sizes)}-{max(sizes)} motions per rank")
    for w in plan.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}")
    if plan_path:
        out.print(escape(f"plan written to {plan_path} (hash {plan.plan_hash[:12]})"))


def cmd_plan(args: argparse.Namespace) -> int:
    from grail_cluster.core.plan import write_plan

    plan = plan_args(args)
    path = write_plan(plan)
    if args.json:
        print_json({**plan_summary(plan), "plan_file": str(path)})
    else:
        print_plan(plan, path)
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from grail_cluster.core.plan import write_plan
    from grail_cluster.runs.job_files import render_files, write_files

    plan = plan_args(args)
    out_dir = Path(args.out)
    files = render_files(plan)
    written = write_files(files, out_dir / plan.backend)
    write_plan(plan, out_dir)
    if args.json:
        print_json({**plan_summary(plan), "files": [str(p) for p in written]})
    else:
        print_plan(plan, None)
        out.print(escape(f"rendered {len(written)} file(s) for cluster={plan.backend} into {out_dir / plan.backend}"))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from grail_cluster.core.plan import write_plan
    from grail_cluster.runs.job_files import render_files, write_files

    plan = plan_args(args)
    plan_path = write_plan(plan)
    files = render_files(plan)
    spec_dir = Path(plan.paths["specs_dir"]) / plan.backend
    written = write_files(files, spec_dir)
    if args.dry_run:
        if args.json:
            print_json({**plan_summary(plan), "plan_file": str(plan_path), "files": [str(p) for p in written]})
            return EXIT_OK
        for rel in sorted(files):
            if rel == "eval_commands.sh":
                continue
            out.rule(f"{spec_dir / rel}")
            out.print(files[rel], markup=False, highlight=False)
        if plan.backend == "slurm":
            out.rule("submission (job ids of dependencies are known only when submitting)")
            from grail_cluster.backends.slurm import submission_lines
            from grail_cluster.stages import registry

            for line in submission_lines(plan, registry.arrays(plan)):
                out.print(line, markup=False, highlight=False)
        print_plan(plan, plan_path)
        out.print(escape(f"dry run: nothing submitted; {len(written)} file(s) in {spec_dir}"))
        return EXIT_OK
    from grail_cluster.runs.control import submit_run

    if plan.backend == "local" and not args.detach:
        from grail_cluster.runs.foreground import run_foreground

        return run_foreground(plan, console=err, json_out=args.json)
    result = submit_run(plan, wait_lock=args.wait)
    if args.json:
        print_json({**plan_summary(plan), "plan_file": str(plan_path), "round": result.round, "jobs": result.jobs,
                     "adopted": result.adopted, "submitted": result.new, "resumed": result.resumed})
        return EXIT_OK
    print_plan(plan, plan_path)
    table = Table(title=escape(f"queued run {plan.run_id}"))
    for col in ("stage", "job id", "indices", "array", "after"):
        table.add_column(col)
    for j in result.jobs:
        table.add_row(j["stage"], j["job_id"], str(j["indices"]), j["array"] or "-", j["dependency"] or "-")
    out.print(table)
    if result.resumed:
        out.print(f"finished an interrupted submission: {result.adopted} job(s) adopted from the scheduler, "
                  f"{result.new} submitted now")
    out.print(escape(f"watch:  grail-cluster watch {plan.run_dir}\nstatus: grail-cluster status {plan.run_dir}\n"
                     f"logs:   grail-cluster logs {plan.run_dir} --stage eval --failed\n"
                     f"repair: grail-cluster resubmit {plan.run_dir}"))
    return EXIT_OK
