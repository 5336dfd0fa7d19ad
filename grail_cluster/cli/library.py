"""The commands on a motion library: ``index`` (list it, cached) and ``doctor`` (the pre-flight checks)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape
from rich.table import Table

from grail_cluster.cli.common import err, out, print_json, progress_scan
from grail_cluster.core.errors import EXIT_OK, EXIT_PROBLEMS, ConfigError


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


def cmd_index(args: argparse.Namespace) -> int:
    import time

    t0 = time.perf_counter()
    index = progress_scan(args.motion_lib, layout=args.layout, usd_dir=args.usd_dir, bps_dir=args.bps_dir,
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
        print_json(data)
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
    index = progress_scan(args.motion_lib, layout=layout, usd_dir=args.usd_dir, bps_dir=args.bps_dir,
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
        print_json(rep)
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
