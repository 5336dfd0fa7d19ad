"""The run-management commands: status, watch, logs, cancel, resubmit, repair-ledger (any backend,
any shell)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from grail_cluster.cli.common import err, out, print_json
from grail_cluster.core.errors import EXIT_OK, EXIT_PROBLEMS, EXIT_UNREACHABLE, ConfigError
from grail_cluster.core.run_dir import load_run, run_path


def _open_ledger(plan):
    """The run's ledger, which must exist, be sound and belong to this plan (never created here)."""
    from grail_cluster.core.ledger import Ledger

    # A run that was only planned (no job files, logs or markers: nothing was ever submitted) has no
    # ledger yet and every shard is unsubmitted; anything else without a ledger lost it.
    run_dir = Path(plan.run_dir)
    planned_only = not any((run_dir / sub).exists() for sub in ("specs", "logs", "markers"))
    ledger = Ledger(plan.run_dir, create=planned_only)
    try:
        ledger.check_plan(plan.plan_hash, Path(plan.run_dir) / "plan.json")
    except BaseException:
        ledger.close()
        raise
    return ledger


@contextlib.contextmanager
def ledger_errors(run: str):
    """An sqlite error reading the ledger mid-command (damage that quick_check did not reach): the
    same clear error as at open, naming the file and repair-ledger."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        from grail_cluster.core.ledger import LEDGER_FILE, ledger_error

        raise ledger_error(run_path(run) / LEDGER_FILE, exc) from None


def ledger_guard(func):
    """:func:`ledger_errors` around a command on ``args.run``."""
    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        with ledger_errors(args.run):
            return func(args)
    return wrapper


def _status_data(plan, refresh_first: bool = True, verify: bool = False) -> dict[str, Any]:
    from grail_cluster.backends import get_backend
    from grail_cluster.backends.base import SchedulerUnreachable
    from grail_cluster.backends.refresh import refresh, states_as_of
    from grail_cluster.core.provenance import read_provenance
    from grail_cluster.runs.status import run_finished, summarise

    backend = get_backend(plan.backend)
    unreachable = None
    with _open_ledger(plan) as ledger:
        if refresh_first:
            try:
                refresh(plan, ledger, backend, verify=verify)
            except SchedulerUnreachable as exc:
                # An outage is no news about any job: show what the ledger last knew, and say so.
                unreachable = exc.first_line
        stages = summarise(plan, ledger)
        points = _sweep_points(plan, ledger) if plan.is_sweep else []
        slices = _slice_audits(plan, ledger)
        as_of = states_as_of(ledger)
    calls = dict(getattr(backend, "calls", {}))
    return {
        "run_id": plan.run_id, "run_dir": plan.run_dir, "backend": plan.backend, "plan_hash": plan.plan_hash,
        "finished": run_finished(stages),
        "ok": run_finished(stages) and all(s.counts.get("done", 0) == s.size for s in stages),
        "stages": [{"name": s.name, "size": s.size, "counts": s.counts, "wall_s": s.wall_s, "failures": s.failures,
                    "nodes": s.nodes} for s in stages],
        "scheduler_calls": calls,
        # reachable: False when squeue/sacct failed or timed out (exit 3); states_as_of: when the
        # scheduler last answered a refresh; calls: scheduler commands this refresh ran.
        "scheduler": {"reachable": unreachable is None, "error": unreachable, "states_as_of": as_of,
                      "calls": sum(calls.values())},
        "provenance": read_provenance(plan.run_dir),
        "notes": list(getattr(backend, "notes", [])),  # e.g. a Kubernetes driver Job that owns the ledger
        "points": points,
        "slices": slices,  # per stage: what SONIC printed of its slices against plan.json (docs/runs.md)
    }


def _slice_audits(plan, ledger) -> dict[str, Any]:
    from grail_cluster.stages.slice_audit import stage_summary

    out = {}
    for stage in ("train", "eval"):
        if stage in plan.stage_names:
            attempts = {s.idx: s.attempt for s in ledger.shards(stage)}
            if summary := stage_summary(plan.run_dir, stage, attempts):
                out[stage] = summary
    return out


def _sweep_points(plan, ledger) -> list[dict[str, Any]]:
    """Per training point: its state, attempts, checkpoints so far and which of them were selected."""
    import json
    import os

    from grail_cluster.sonic.experiment import list_checkpoints

    shards = {s.idx: s for s in ledger.shards("train")}
    try:
        with open(plan.paths["selection"]) as fh:
            top = json.load(fh).get("top") or []
    except (OSError, ValueError):
        top = []
    rows = []
    for p in plan.train["points"]:
        s = shards.get(p["point"])
        steps = [c.step for c in list_checkpoints(p["experiment_dir"]) if c.step is not None]
        exp = os.path.abspath(p["experiment_dir"])
        rows.append({"point": p["point"], "name": p["name"], "overrides": p["overrides"],
                     "experiment_dir": p["experiment_dir"], "state": s.state if s else "unsubmitted",
                     "attempt": s.attempt if s else 0, "job_id": s.job_id if s else None,
                     "checkpoints": len(steps), "latest_step": max(steps) if steps else None,
                     "selected": [{"rank": t.get("rank"), "eval_step": t.get("eval_step")} for t in top
                                  if t.get("experiment_dir") and os.path.abspath(t["experiment_dir"]) == exp]})
    return rows


def _points_table(data: dict[str, Any]) -> Table:
    table = Table(title=f"sweep {data['run_id']}: {len(data['points'])} points (W&B group {data['run_id']})")
    for col in ("point", "overrides", "train", "attempt", "checkpoints", "latest step", "selected"):
        table.add_column(col, overflow="fold")
    for p in data["points"]:
        colour = STATE_COLOURS.get(p["state"], "white")
        selected = ", ".join(f"#{t['rank']} step {t['eval_step']}" for t in p["selected"]) or "-"
        # Short labels: the SONIC keys without their ++train.overrides. carrier.
        label = " ".join(o.lstrip("+").removeprefix("train.overrides.") for o in p["overrides"])
        table.add_row(p["name"], escape(label), f"[{colour}]{p['state']}[/]", str(p["attempt"]),
                      str(p["checkpoints"]), "-" if p["latest_step"] is None else str(p["latest_step"]), selected)
    return table


STATE_COLOURS = {"done": "green", "running": "cyan", "pending": "white", "unsubmitted": "dim",
                 "failed": "red", "cancelled": "yellow", "timeout": "magenta", "node-fail": "red",
                 "out-of-memory": "red", "missing-output": "red", "lost": "red"}


def _node_counts(nodes: dict[Any, str]) -> str:
    """``c1 x3, c2 x2``: where a stage's shards ran (a multi-node job's node list counts as one)."""
    from collections import Counter

    return ", ".join(f"{n} x{c}" if c > 1 else n for n, c in sorted(Counter(nodes.values()).items())) or "-"


def _status_table(data: dict[str, Any]) -> Table:
    table = Table(title=f"run {data['run_id']} ({data['backend']})")
    table.add_column("stage")
    table.add_column("shards", justify="right")
    table.add_column("states")
    table.add_column("wall", justify="right")
    # The local executor runs everything on this machine: a column of `localhost` would say nothing.
    with_nodes = data["backend"] != "local" and any(s.get("nodes") for s in data["stages"])
    if with_nodes:
        table.add_column("nodes", overflow="fold")
    for s in data["stages"]:
        states = "  ".join(f"[{STATE_COLOURS.get(k, 'white')}]{k} {v}[/]" for k, v in sorted(s["counts"].items()))
        wall = f"{s['wall_s']:.0f} s" if s["wall_s"] is not None else "-"
        row = [s["name"], str(s["size"]), states, wall]
        if with_nodes:
            row.append(escape(_node_counts(s.get("nodes") or {})))
        table.add_row(*row)
    return table


def unreachable_notice(data: dict[str, Any]) -> str | None:
    """The one line status and watch print while the scheduler does not answer."""
    sched = data["scheduler"]
    if sched["reachable"]:
        return None
    import time

    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sched["states_as_of"])) if sched["states_as_of"]
            else "the last refresh that reached it")
    return f"scheduler unreachable: {sched['error']}; showing states as of {when}"


@ledger_guard
def cmd_status(args: argparse.Namespace) -> int:
    plan = load_run(args.run)
    only = _points(plan, args.point)
    data = _status_data(plan, verify=getattr(args, "verify", False))
    if only is not None:
        data["points"] = [p for p in data["points"] if p["point"] in only]
    from grail_cluster.runs.headline import evaluated_headlines
    from grail_cluster.tools.data.headline import headline_text

    # What the run found, counted as `summarize` counts it (every eval shard's metrics_eval.json).
    data["results"] = evaluated_headlines(plan)
    if args.json:
        print_json(data)
    else:
        from grail_cluster.core.provenance import summary_line

        out.print(escape(summary_line(data["provenance"])), highlight=False)
        if notice := unreachable_notice(data):
            out.print(f"[yellow]{escape(notice)}[/]", highlight=False)
        out.print(_status_table(data))
        if data["points"]:
            out.print(_points_table(data))
        for note in data["notes"]:
            out.print(escape(note), highlight=False)
        from grail_cluster.stages.slice_audit import summary_line

        for stage, audit in data["slices"].items():
            colour = "red" if audit["mismatches"] else ("green" if audit["matched"] == audit["expected"] else "yellow")
            out.print(f"[{colour}]{escape(summary_line(stage, audit))}[/]")
        for s in data["stages"]:
            for f in s["failures"][: args.max_failures]:
                node = f", node {escape(f['node'])}" if f.get("node") and data["backend"] != "local" else ""
                out.print(f"[red]{s['name']} {f['index']}[/] {f['state']} (attempt {f['attempt']}, job {f['job_id']}"
                          f"{node}): {escape(f['signature'] or 'no signature in the logs')}")
        for h in data["results"]:
            out.print(escape(f"checkpoint {headline_text(h)}"), highlight=False)
        if data["finished"] and not data["ok"]:
            out.print(f"repair: grail-cluster resubmit {plan.run_dir}")
            if any(f["state"] == "missing-output" for s in data["stages"] for f in s["failures"]):
                out.print("  fix: missing-output shards lost or never wrote their success marker/outputs; "
                          "`resubmit` re-runs them and the done work that used them")
            if any(f["state"] == "lost" for s in data["stages"] for f in s["failures"]):
                out.print("  fix: lost shards' jobs are gone from the scheduler (a controller crash); `resubmit` "
                          "queues them again, what finished or is still queued is kept")
    if not data["scheduler"]["reachable"]:
        return EXIT_UNREACHABLE
    if not data["finished"]:
        return EXIT_OK
    return EXIT_OK if data["ok"] else EXIT_PROBLEMS


@ledger_guard
def cmd_watch(args: argparse.Namespace) -> int:
    return watch(load_run(args.run), args.interval)


def watch(plan, interval: float) -> int:
    """Live progress bars of every stage until the run ends; exit 1 if it finished with failures.
    While the scheduler does not answer it keeps polling, one notice line per round."""
    import time

    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    _open_ledger(plan).close()  # a missing or damaged ledger is refused before the live display starts
    progress = Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[states]}"), console=out)
    tasks = {st.name: progress.add_task(st.name, total=st.size, states="") for st in plan.stages}
    with Live(progress, console=out, refresh_per_second=4, transient=False):
        while True:
            data = _status_data(plan)
            if notice := unreachable_notice(data):
                out.print(f"[yellow]{escape(notice)}; still watching (every {interval:g} s)[/]", highlight=False)
            for s in data["stages"]:
                settled = sum(v for k, v in s["counts"].items() if k not in ("pending", "running", "unsubmitted"))
                states = " ".join(f"{k}:{v}" for k, v in sorted(s["counts"].items()) if k != "done")
                progress.update(tasks[s["name"]], completed=settled, states=states)
            if data["finished"]:
                break
            time.sleep(interval)
    out.print(_status_table(data))
    return EXIT_OK if data["ok"] else EXIT_PROBLEMS


@ledger_guard
def cmd_logs(args: argparse.Namespace) -> int:
    import time

    from grail_cluster.backends import get_backend
    from grail_cluster.backends.refresh import log_paths
    from grail_cluster.core.markers import read_marker
    from grail_cluster.core.states import FAILED, ShardState

    plan = load_run(args.run)
    if args.stage not in plan.stage_names:
        raise ConfigError(f"no stage {args.stage!r} in run {plan.run_id}", fix=f"choose one of {', '.join(plan.stage_names)}")
    with _open_ledger(plan) as ledger:
        shards = {s.idx: s for s in ledger.shards(args.stage)}
        jobs = {j.job_id: j for j in ledger.jobs(stage=args.stage)}
    if args.failed:
        indices = sorted(i for i, s in shards.items() if s.state in FAILED)
        if not indices:
            out.print(f"no failed shards in stage {args.stage}")
            return EXIT_OK
    else:
        indices = [args.index if args.index is not None else 0]
    for idx in indices:
        s = shards.get(idx)
        attempt = args.attempt if args.attempt is not None else (s.attempt if s else 0)
        job = jobs.get(s.job_id) if s and s.job_id else None
        paths = [p for p in log_paths(plan, get_backend(plan.backend), args.stage, idx, attempt, job) if p.exists()]
        if get_backend(plan.backend).capabilities.pod_logs and (getattr(args, "pod", False) or not paths):
            # The pod's own log through the API: also what happened before the script's log files existed.
            for pod, text in get_backend(plan.backend).pod_logs(plan, args.stage, idx, tail=args.lines or None):
                out.rule(f"{args.stage} {idx}: pod {pod}")
                out.print(text.rstrip("\n"), markup=False, highlight=False)
            continue
        if not paths:
            err.print(f"{args.stage} {idx} attempt {attempt}: no log files yet ({Path(plan.run_dir) / 'logs' / args.stage / str(idx)})")
            continue
        current = s if s and s.attempt == attempt else None
        # Done between two polls: the job's marker knows its nodes (all of a multi-node training's),
        # where the log's header names only the node that ran the batch script.
        marker = (read_marker(plan.run_dir, args.stage, idx)
                  if current is not None and current.state == ShardState.DONE and not current.node else None)
        where = _ran_on(current, paths, (marker or {}).get("node"))
        for path in paths:
            out.rule(f"{args.stage} {idx} attempt {attempt}{where}: {path}")
            lines = path.read_text(errors="replace").splitlines()
            out.print("\n".join(lines[-args.lines:] if (args.failed or args.lines) else lines), markup=False, highlight=False)
        from grail_cluster.stages.slice_audit import audit_text, read_audits

        for audit in read_audits(plan.run_dir, args.stage, idx, attempt):
            out.print(audit_text(audit), markup=False, highlight=False)
    if args.follow and not args.failed:
        path = Path(plan.run_dir) / "logs" / args.stage / str(indices[0]) / f"{attempt}.out"
        pos = path.stat().st_size if path.exists() else 0
        try:
            while True:
                if path.exists() and path.stat().st_size > pos:
                    with open(path, errors="replace") as fh:
                        fh.seek(pos)
                        sys.stdout.write(fh.read())
                        pos = fh.tell()
                    sys.stdout.flush()
                time.sleep(0.5)
        except KeyboardInterrupt:
            return EXIT_OK
    return EXIT_OK


_RAN_ON = re.compile(r"^\[grail\] \S+ index \d+ attempt \d+ on (\S+)(?: \(slurm node (\S+)\))? at ", re.M)


def _ran_on(shard, paths: list[Path], marker_node: str | None = None) -> str:
    """`` on node N``: the scheduler's word for the latest attempt (the ledger's node), else its success
    marker's, else what the job's own log says of its host (earlier attempts, or a scheduler that kept no node)."""
    if shard is not None and shard.node:
        return f" on node {shard.node}"
    if marker_node:
        return f" on node {marker_node}"
    for path in paths:
        try:
            with open(path, errors="replace") as fh:
                head = fh.read(4096)
        except OSError:
            continue
        if m := _RAN_ON.search(head):
            return f" on node {m.group(2)} (host {m.group(1)})" if m.group(2) else f" on host {m.group(1)}"
    return ""


def _points(plan, spec: str | None) -> list[int] | None:
    """``--point 1,3`` (or p001) -> [1, 3]; only for a sweep's run."""
    if spec is None:
        return None
    if not plan.is_sweep:
        raise ConfigError(f"run {plan.run_id} is not a sweep", fix="--point applies to runs started with `run -m`")
    try:
        points = [int(x.strip().lstrip("p")) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--point takes point numbers like 1,3 or p001, got {spec!r}") from None
    size = len(plan.train["points"])
    bad = [p for p in points if not 0 <= p < size]
    if bad or not points:
        raise ConfigError(f"sweep {plan.run_id} has points 0..{size - 1}, not {spec!r}")
    return points


@ledger_guard
def cmd_cancel(args: argparse.Namespace) -> int:
    from grail_cluster.runs.control import cancel

    plan = load_run(args.run)
    points = _points(plan, args.point)
    if points is not None and args.stage not in (None, "train"):
        raise ConfigError("--point cancels training points; it does not combine with --stage")
    _open_ledger(plan).close()
    ids = cancel(plan, stage="train" if points is not None else args.stage, indices=points)
    if args.json:
        print_json({"cancelled_jobs": ids})
    else:
        out.print(f"cancelled {len(ids)} job(s): {' '.join(ids) or '-'}")
    return EXIT_OK


@ledger_guard
def cmd_resubmit(args: argparse.Namespace) -> int:
    from grail_cluster.runs.control import resubmit

    plan = load_run(args.run)
    indices = [int(x) for x in args.indices.split(",")] if args.indices else None
    states = args.states.split(",") if args.states else None
    stages = args.stage.split(",") if args.stage else None
    points = _points(plan, args.point)
    _open_ledger(plan).close()
    if points is not None:
        if stages or indices:
            raise ConfigError("--point picks training points; it does not combine with --stage/--indices")
        stages, indices = ["train"], points
    for st in stages or []:
        if st not in plan.stage_names:
            raise ConfigError(f"no stage {st!r} in run {plan.run_id}", fix=f"choose from {', '.join(plan.stage_names)}")
    result = resubmit(plan, stages=stages, indices=indices, states=states, wait_lock=args.wait, dry_run=args.dry_run)
    if args.json:
        print_json({"round": result.round, "jobs": result.jobs, "dry_run": args.dry_run, "resumed": result.resumed,
                    "adopted": result.adopted, "submitted": result.new})
        return EXIT_OK
    if result.resumed:
        verb = "would finish" if args.dry_run else "finished"
        out.print(f"{verb} round {result.round}, which an interrupted submitter had started: {result.adopted} job(s) "
                  f"adopted from the scheduler, {result.new} submitted now")
        return EXIT_OK
    if not result.jobs:
        out.print("nothing to resubmit: every selected shard is done or queued")
        return EXIT_OK
    verb = "would submit" if args.dry_run else "submitted"
    for j in result.jobs:
        out.print(f"{verb} {j['stage']}: {j.get('array') or 'single job'} (attempt {result.round})"
                  + (f" as job {j['job_id']}" if j.get("job_id") else ""))
    return EXIT_OK


def cmd_repair_ledger(args: argparse.Namespace) -> int:
    from grail_cluster.runs.ledger_repair import repair

    plan = load_run(args.run)
    result = repair(plan, force=args.force)
    if args.json:
        print_json(result)
        return EXIT_OK
    if not result["repaired"]:
        out.print(result["reason"])
        return EXIT_OK
    if result["problem"]:
        out.print(f"ledger was unusable: {escape(result['problem'])}", highlight=False)
    if result["kept_aside"]:
        out.print(f"kept the old ledger aside: {escape(result['kept_aside'])}", highlight=False)
    counts = "  ".join(f"{k} {v}" for k, v in sorted(result["counts"].items()))
    out.print(f"rebuilt {Path(plan.run_dir) / 'ledger.sqlite'} from plan.json, the markers and "
              f"{len(result['jobs_found'])} scheduler job(s): {counts}", highlight=False)
    if result["attached"]:
        out.print(f"re-attached {len(result['attached'])} queued/running task(s): {' '.join(result['attached'][:20])}")
    out.print(f"next: grail-cluster status {plan.run_dir}; repair what is missing with grail-cluster resubmit "
              f"{plan.run_dir}", highlight=False)
    return EXIT_OK
