"""``grail-cluster``: the command line.

Each command parses its arguments, calls pure planning/rendering code, and prints a rich table for
people or JSON (``--json``) for scripts. Exit codes: 0 ok, 1 problems found (doctor, bad data),
2 bad usage or configuration. User mistakes print one clear message and no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from grail_cluster import __version__
from grail_cluster.core.console import make_console
from grail_cluster.core.errors import EXIT_OK, EXIT_PROBLEMS, ConfigError, GrailError

# Without a terminal (a log, a pipe) these never fold a key or a path: see console.py.
out = make_console()
err = make_console(stderr=True)

OVERRIDES_HELP = (
    "Hydra overrides as SONIC uses them, e.g. pipeline=pnp_table data.motion_lib=/d/pickup_table_ha "
    "data.bps_dir=/d/pickup_table/bps sonic.root=/w/imports/SONIC cluster=slurm eval.num_shards=8 "
    "'++sonic.extra_overrides=[\"++callbacks.model_save.save_frequency=250\"]'. Groups: pipeline={pnp_table, pnp_ground, "
    "advanced_manip_table, advanced_manip_ground, terrain_tracking}, cluster={local, slurm, kubernetes}."
)


# ----------------------------------------------------------------------------- helpers


def _progress_scan(path: str, **kw: Any):
    """Scan with a progress bar on stderr when someone is watching (pickles are parsed only on change)."""
    from grail_cluster.core.library import scan_library

    if not sys.stderr.isatty():
        return scan_library(path, **kw)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("indexing motions"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("index", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return scan_library(path, progress=tick, **kw)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def _pipeline_yaml(name: str | None) -> dict[str, Any]:
    if not name:
        return {}
    import yaml

    from grail_cluster.core.config import config_dir

    path = config_dir() / "pipeline" / f"{name}.yaml"
    if not path.exists():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"unknown pipeline {name!r}", fix=f"choose one of: {', '.join(choices)}")
    return yaml.safe_load(path.read_text()) or {}


def _pipeline_needs(name: str | None) -> tuple[dict[str, str] | None, str | None]:
    data = _pipeline_yaml(name)
    return data.get("needs"), data.get("kind")


DOCTOR_SONIC_KEYS = ("sonic.root", "sonic.train_script", "sonic.eval_script", "train.finetune.checkpoint")


def _parse_kv(items: list[str], allowed: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.lstrip("+")
        if not sep or key not in allowed:
            raise ConfigError(f"unexpected argument {item!r}", fix=f"accepted here: {', '.join(sorted(k + '=...' for k in allowed))}")
        out[key] = value
    return out


# ----------------------------------------------------------------------------- commands


def cmd_index(args: argparse.Namespace) -> int:
    import time

    t0 = time.perf_counter()
    index = _progress_scan(args.motion_lib, layout=args.layout, usd_dir=args.usd_dir, bps_dir=args.bps_dir,
                           use_cache=not args.no_cache)
    from grail_cluster.core.doctor import all_findings, parse_allow

    elapsed = time.perf_counter() - t0
    allow = parse_allow(args.allow)
    findings = all_findings(index, allow)
    n_err = sum(1 for f in findings if f["severity"] == "error")
    code = EXIT_PROBLEMS if n_err else EXIT_OK
    if args.json:
        data = index.to_json()
        data["scan_seconds"] = round(elapsed, 4)
        data["findings"] = findings
        _print_json(data)
        return code
    # Keys, object names and paths are data: escaped, so `[red]x[/]` in a key prints as itself.
    table = Table(title=escape(f"{index.root} ({index.layout}, {len(index.motions)} motions)"))
    table.add_column("motion key", overflow="fold", min_width=20)
    for col in ("frames", "fps", "object", "USD", "BPS", "hands", "contacts", "root_rot"):
        table.add_column(col)
    shown = index.motions if args.all else index.motions[:20]
    for m in shown:
        table.add_row(escape(m.key), str(m.frames), f"{m.fps:g}" if m.fps else "-", escape(m.object_name or "-"),
                      "yes" if m.usd else "[red]no[/]", "yes" if m.bps else "no", "yes" if m.hand_actions else "no",
                      "yes" if m.contacts else "no", m.root_rot)
    out.print(table)
    if len(shown) < len(index.motions):
        out.print(f"… {len(index.motions) - len(shown)} more (--all to list every motion, --json for scripts)")
    out.print(escape(f"index {index.cache} ({index.parsed} parsed) in {elapsed:.3f} s; fingerprint {index.fingerprint()[:16]}"))
    if findings:
        # Never a silent skip: every file the index could not use is named, one line each.
        bad = sorted({(f["motion"], f["file"]) for f in findings})
        err.print(f"[red]{len(bad)} file(s) failed the content checks ({n_err} error(s)):[/]")
        for f in findings[:20]:
            err.print(escape(f"  {f['severity']} {f['check']}: {f['file']}: {f['problem']}"), soft_wrap=True)
        if len(findings) > 20:
            err.print(f"  … {len(findings) - 20} more; `grail-cluster doctor` explains each with its fix")
    return code


def cmd_doctor(args: argparse.Namespace) -> int:
    if getattr(args, "cluster", False):
        from grail_cluster.cli.probe import cmd_probe

        return cmd_probe(args)
    from grail_cluster.core.doctor import diagnose, has_errors, parse_allow, report
    from grail_cluster.sonic.root import sonic_problems

    opts = _parse_kv(args.overrides, {"pipeline", *DOCTOR_SONIC_KEYS})
    pipeline = _pipeline_yaml(opts.get("pipeline"))
    needs, kind = pipeline.get("needs"), pipeline.get("kind")
    layout = args.layout
    if layout == "auto" and kind == "terrain":
        layout = "terrain"
    index = _progress_scan(args.motion_lib, layout=layout, usd_dir=args.usd_dir, bps_dir=args.bps_dir,
                           use_cache=not args.no_cache)
    allow = parse_allow(args.allow)
    problems = diagnose(index, needs, opts.get("pipeline"), allow)
    if "sonic.root" in opts or "train.finetune.checkpoint" in opts:
        # The SONIC checkout too: trainer, evaluator, fine-tune checkpoint, release config.
        problems += sonic_problems(opts.get("sonic.root"), pipeline=pipeline,
                                   finetune=opts.get("train.finetune.checkpoint") or None,
                                   train_script=opts.get("sonic.train_script", "auto"),
                                   eval_script=opts.get("sonic.eval_script", "auto"))
    rep = report(index, problems, allow)
    if args.json:
        _print_json(rep)
    else:
        _print_doctor(rep)
    return EXIT_PROBLEMS if has_errors(problems) else EXIT_OK


def _print_doctor(rep: dict[str, Any]) -> None:
    counts = Table(title=escape(f"motion library {rep['library']} ({rep['layout']})"), show_header=True)
    counts.add_column("what")
    counts.add_column("count / value", justify="right")
    for key, value in rep["counts"].items():
        counts.add_row(f"{key}/ files", str(value))
    counts.add_row("motions", str(rep["num_motions"]))
    counts.add_row("frames (min / max / total)", f"{rep['frames']['min']} / {rep['frames']['max']} / {rep['frames']['total']}")
    counts.add_row("root_rot convention", ", ".join(f"{k}: {v}" for k, v in rep["root_rot"].items()))
    counts.add_row("hand actions", ", ".join(f"{k}: {v}" for k, v in rep["hand_action_kind"].items()))
    counts.add_row("object_usd dir", escape(str(rep["usd_dir"]) + (f" ({rep['usd_dir_note']})" if rep["usd_dir_note"] else "")))
    counts.add_row("bps dir", escape(str(rep["bps_dir"])))
    if rep["layout"] == "terrain":
        counts.add_row("flat_placeholder.usd", str(rep["flat_placeholder"]))
    out.print(counts)
    if not rep["problems"]:
        out.print("[green]no problems found[/]")
        return
    table = Table(title="problems", show_lines=True)
    for col in ("severity", "check", "file", "problem", "fix"):
        table.add_column(col, overflow="fold")
    colour = {"error": "red", "warn": "yellow", "info": "cyan"}
    for p in rep["problems"]:
        table.add_row(f"[{colour[p['severity']]}]{p['severity']}[/]", p["check"], escape(str(p["path"])),
                      escape(str(p["problem"])), escape(str(p["fix"])))
    out.print(table)
    n_err = sum(1 for p in rep["problems"] if p["severity"] == "error")
    out.print(f"[red]{n_err} error(s)[/]" if n_err else "[green]no errors[/]")


def _sweep_configs(overrides: list[str], sweep_file: str | None) -> tuple[list[dict[str, Any]], Any]:
    """Each point's resolved config (Hydra composes every point, as with SONIC's own -m)."""
    from grail_cluster.core import config
    from grail_cluster.core.sweep import check_points, expand

    sweep = expand(overrides, sweep_file)
    points = sweep.points
    if sys.stderr.isatty() and len(points) > 20:
        from rich.progress import track

        points = track(points, description="composing sweep points", console=err, transient=True)
    configs = [config.load(p) for p in points]
    check_points(configs, sweep)
    return configs, sweep


def _plan_from_overrides(overrides: list[str], *, multirun: bool = False, sweep_file: str | None = None):
    from grail_cluster.core import config
    from grail_cluster.core.plan import build_plan
    from grail_cluster.core.provenance import sources

    sweep = None
    if multirun or sweep_file:
        configs, swept = _sweep_configs(overrides, sweep_file)
        c = configs[0]
        sweep = {"configs": configs, "swept": swept.swept}
    else:
        c = config.load(overrides)
    # Terrain pipelines force terrain discovery; HOI pipelines auto-detect so that a terrain root
    # handed to an HOI pipeline is caught as a mismatch instead of half-indexed.
    layout = "terrain" if c["pipeline"]["kind"] == "terrain" else "auto"
    index = _progress_scan(c["data"]["motion_lib"], layout=layout, usd_dir=c["data"].get("object_usd_dir"),
                           bps_dir=c["data"].get("bps_dir"))
    plan = build_plan(c, index, provenance=sources(c, index.bps_dir), sweep=sweep)
    from grail_cluster.core.plan_checks import check_cluster

    # The scheduler's limits (one sinfo call), before anything is written or queued.
    for note in check_cluster(plan):
        err.print(f"note: {escape(note)}", highlight=False)
    return plan


def _plan_args(args: argparse.Namespace):
    return _plan_from_overrides(args.overrides, multirun=args.multirun, sweep_file=args.sweep_file)


def _plan_summary(plan) -> dict[str, Any]:
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


def _print_plan(plan, plan_path: Path | None) -> None:
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

    plan = _plan_args(args)
    path = write_plan(plan)
    if args.json:
        _print_json({**_plan_summary(plan), "plan_file": str(path)})
    else:
        _print_plan(plan, path)
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from grail_cluster.core.plan import write_plan
    from grail_cluster.runs.job_files import render_files, write_files

    plan = _plan_args(args)
    out_dir = Path(args.out)
    files = render_files(plan)
    written = write_files(files, out_dir / plan.backend)
    write_plan(plan, out_dir)
    if args.json:
        _print_json({**_plan_summary(plan), "files": [str(p) for p in written]})
    else:
        _print_plan(plan, None)
        out.print(escape(f"rendered {len(written)} file(s) for cluster={plan.backend} into {out_dir / plan.backend}"))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from grail_cluster.core.plan import write_plan
    from grail_cluster.runs.job_files import render_files, write_files

    plan = _plan_args(args)
    plan_path = write_plan(plan)
    files = render_files(plan)
    spec_dir = Path(plan.paths["specs_dir"]) / plan.backend
    written = write_files(files, spec_dir)
    if args.dry_run:
        if args.json:
            _print_json({**_plan_summary(plan), "plan_file": str(plan_path), "files": [str(p) for p in written]})
            return EXIT_OK
        for rel in sorted(files):
            if rel == "eval_commands.sh":
                continue
            out.rule(f"{spec_dir / rel}")
            out.print(files[rel], markup=False, highlight=False)
        if plan.backend == "slurm":
            out.rule("submission (job ids of dependencies are known only when submitting)")
            from grail_cluster.backends.slurm import submission_lines

            for line in submission_lines(plan):
                out.print(line, markup=False, highlight=False)
        _print_plan(plan, plan_path)
        out.print(escape(f"dry run: nothing submitted; {len(written)} file(s) in {spec_dir}"))
        return EXIT_OK
    from grail_cluster.runs.control import submit_run

    if plan.backend == "local" and not args.detach:
        from grail_cluster.backends.local import run_foreground

        return run_foreground(plan, console=err, json_out=args.json)
    result = submit_run(plan, wait_lock=args.wait)
    if args.json:
        _print_json({**_plan_summary(plan), "plan_file": str(plan_path), "round": result.round, "jobs": result.jobs,
                     "adopted": result.adopted})
        return EXIT_OK
    _print_plan(plan, plan_path)
    table = Table(title=escape(f"queued run {plan.run_id}"))
    for col in ("stage", "job id", "indices", "array", "after"):
        table.add_column(col)
    for j in result.jobs:
        table.add_row(j["stage"], j["job_id"], str(j["indices"]), j["array"] or "-", j["dependency"] or "-")
    out.print(table)
    out.print(escape(f"watch:  grail-cluster watch {plan.run_dir}\nstatus: grail-cluster status {plan.run_dir}\n"
                     f"logs:   grail-cluster logs {plan.run_dir} --stage eval --failed\n"
                     f"repair: grail-cluster resubmit {plan.run_dir}"))
    return EXIT_OK


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from grail_cluster.cli.runs import (
        cmd_cancel,
        cmd_logs,
        cmd_repair_ledger,
        cmd_resubmit,
        cmd_status,
        cmd_watch,
    )

    parser = argparse.ArgumentParser(
        prog="grail-cluster",
        description="Plan, render and submit the GRAIL data lifecycle: train SONIC trackers, select checkpoints, "
                    "evaluate in shards, render, export, merge, publish a web viewer.",
        epilog="Exit codes: 0 ok, 1 problems found, 2 bad usage or configuration.",
    )
    parser.add_argument("--version", action="version", version=f"grail-cluster {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def lib_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("motion_lib", help="library root holding robot/ objects/ meta/ (object_usd/ bps/)")
        p.add_argument("--bps_dir", "--bps-dir", dest="bps_dir", help="BPS dir (default <lib>/bps or the non-_ha sibling's)")
        p.add_argument("--usd_dir", "--usd-dir", dest="usd_dir", help="object USD dir (default <lib>/object_usd or the non-_ha sibling's)")
        p.add_argument("--layout", choices=("auto", "hoi", "terrain"), default="auto")
        p.add_argument("--no-cache", action="store_true", help="re-read every pickle (ignore .grail_index.json)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--allow", action="append", default=[], metavar="CHECK[,CHECK]",
                       help="report these checks as warnings instead of errors, e.g. --allow quat-norm,contact-frames "
                            "(only checks that may be allowed; an unknown name lists them; docs/doctor-checks.md "
                            "says what each one means)")

    p = sub.add_parser("index", help="index a motion library (cached) and list its motions",
                       description="Scan a GRAIL motion library into an index cached in the library "
                                   "(.grail_index.json), keyed by size and mtime of each file.")
    lib_args(p)
    p.add_argument("--all", action="store_true", help="list every motion")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("doctor", help="pre-flight checks of a motion library (exit 1 on errors)",
                       description="The pre-flight checklist: file counts, robot/objects pairing, a USD per key, hand "
                                   "actions and contact labels, BPS basis and embeddings, terrain placeholder. "
                                   "Every problem names the file and the fix.")
    lib_args(p)
    p.add_argument("overrides", nargs="*", metavar="pipeline=NAME",
                   help="check what this pipeline needs (pnp_table, pnp_ground, advanced_manip_table, "
                        "advanced_manip_ground, terrain_tracking); with sonic.root=DIR (and "
                        "train.finetune.checkpoint=FILE|release) also the SONIC checkout")
    p.add_argument("--cluster", action="store_true",
                   help="instead: submit a short probe job with these run overrides (cluster=slurm|local, "
                        "data.motion_lib=..., sonic.root=...; probe.wait=S, probe.gpus=N) and report what a compute "
                        "node sees: interpreter, GPUs, paths, Isaac Lab, W&B credentials; exit 1 on any error")
    p.set_defaults(func=cmd_doctor)

    for name, func, helptext in (
        ("plan", cmd_plan, "compute the run plan (stages, shards, rank slices) into runs/<id>/plan.json"),
        ("render", cmd_render, "write every job script/manifest of the plan for the chosen cluster"),
        ("run", cmd_run, "plan, render and submit; returns once every job is queued (--dry-run: submit nothing)"),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext + ". " + OVERRIDES_HELP)
        p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides (key=value, +key=value, ++key=value)")
        p.add_argument("--json", action="store_true", help="machine-readable summary")
        p.add_argument("-m", "--multirun", action="store_true",
                       help="a sweep: expand comma lists / range() / choice() in the overrides (Hydra's -m) into "
                            "training points, one array, one W&B group; select ranks across every point")
        p.add_argument("--sweep-file", "--sweep_file", dest="sweep_file",
                       help="YAML with params: {key: 'a,b'} (as hydra.sweeper.params) and optional overrides: [...]; "
                            "implies -m")
        if name == "render":
            p.add_argument("--out", required=True, help="directory for the rendered files (<out>/<cluster>/...)")
        if name == "run":
            p.add_argument("--dry-run", action="store_true", help="write and print the job files, submit nothing")
            p.add_argument("--detach", action="store_true", help="cluster=local: run in the background and return")
            p.add_argument("--wait", action="store_true", help="if another submitter holds this run, wait for it")
        p.set_defaults(func=func)

    def run_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("run", help="run dir (runs/<run_id>) or run id")

    p = sub.add_parser("status", help="shards of every stage by state, with failure signatures",
                       description="Refresh from markers and the scheduler (one squeue, sacct only to settle "
                                   "finished jobs) and show each stage's shards by state. Exit 1 if the run "
                                   "finished with failures.")
    run_arg(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-failures", type=int, default=20, help="failures listed per stage")
    p.add_argument("--point", help="a sweep: show only these training points (e.g. 2 or 1,3)")
    p.add_argument("--verify", action="store_true", help="re-hash every done shard's outputs against its marker "
                                                         "(default: a stat each, size only)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watch", help="live progress bars until the run ends")
    run_arg(p)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("logs", help="a shard's logs (per attempt), or the tails of every failed shard")
    run_arg(p)
    p.add_argument("--stage", required=True)
    p.add_argument("--index", type=int)
    p.add_argument("--attempt", type=int, help="default: the latest")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--failed", action="store_true", help="tails of every failed shard of the stage")
    p.add_argument("--lines", "-n", type=int, default=40, help="lines of each log (0 = all)")
    p.add_argument("--pod", action="store_true", help="cluster=kubernetes: the shard's pod log through the API "
                                                      "(`kubectl logs`), also used when no log file exists")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="cancel a run's jobs (of --stage and every stage after it)")
    run_arg(p)
    p.add_argument("--stage")
    p.add_argument("--point", help="a sweep: cancel only these training points (e.g. 2 or 1,3), and the stages "
                                   "after training, which wait on them; `resubmit` resumes them alone")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("resubmit", help="re-run failed or missing shards and what depends on them",
                       description="By default every failed, cancelled, timed-out, node-failed, out-of-memory or "
                                   "missing-output shard of every stage, plus the not-done work that depends on it, "
                                   "as new arrays of only those indices with the attempt bumped. Idempotent.")
    run_arg(p)
    p.add_argument("--stage", help="only these stages (comma list), plus what depends on them")
    p.add_argument("--indices", help="only these indices, e.g. 3,7")
    p.add_argument("--point", help="a sweep: only these training points (e.g. 2 or 1,3), resumed from their own "
                                   "last.pt, plus what depends on them")
    p.add_argument("--states", help="comma list, default failed,cancelled,timeout,node-fail,out-of-memory,missing-output,missing")
    p.add_argument("--dry-run", action="store_true", help="show what would be submitted")
    p.add_argument("--wait", action="store_true", help="if another submitter holds this run, wait for it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_resubmit)

    p = sub.add_parser("repair-ledger", help="rebuild a lost or damaged ledger.sqlite from plan.json, the markers "
                                             "and the scheduler's jobs (found by name)",
                       description="Keeps the damaged file aside (ledger.sqlite.corrupt-<time>) and loses nothing "
                                   "that finished: valid markers are done, queued/running jobs are re-attached, "
                                   "the rest is missing-output for `resubmit`. SLURM and local runs.")
    run_arg(p)
    p.add_argument("--force", action="store_true", help="rebuild even a sound ledger (kept aside as .replaced-<time>)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_repair_ledger)

    # The data lifecycle tools (GRAIL-compatible): each module registers its own subcommand.
    from grail_cluster.cli import demo
    from grail_cluster.tools.data import bps, demo_library, export, merge, select_top, summarize
    from grail_cluster.tools.replay import render as render_replay
    from grail_cluster.tools.web import generate as web_generate
    from grail_cluster.tools.web import serve as web_serve

    for tool in (select_top, export, summarize, merge, bps, demo_library, render_replay, web_generate, web_serve):
        tool.register(sub)
    demo.register(sub)
    from grail_cluster.backends import kubernetes_driver as drive

    drive.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after flags (`doctor LIB --json pipeline=x`): argparse's
    # positional `nargs="*"` stops at the first flag, so gather the stragglers here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args))
    except GrailError as exc:
        err.print("[red]error:[/] " + escape(exc.render()), highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK


def run() -> None:  # pragma: no cover - console entry
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
