"""``select-top``: the k best checkpoints of a SONIC training run (contracts §5.1).

Eval rows (``eval_step`` + ``eval/success/success_rate`` + tiebreak metrics) come from one of:

- the online W&B API (``--run`` / ``--group``; ``wandb.Api()``, injectable as ``api=``),
- offline W&B run dirs (``--wandb_dir``: ``offline-run-*/run-<id>.wandb``), read with a small reader of
  the W&B transaction log (leveldb-log framing around ``wandb_internal_pb2.Record`` protobufs, the
  wandb package's own schema) so no server, no ``wandb sync`` and no ``wandb leet`` binary is needed;
  ``reader="leet"`` uses ``wandb leet inspect --json`` instead,
- the SONIC experiment dir itself (``--experiment_dir``): its TensorBoard event files (TB step = eval
  step) and the eval watcher's ``eval/<step:06d>/train/metrics_eval.json`` (which win over TB).

Ranking (§5.1): keep rows with a success rate, an ``eval_step`` and SR >= ``min_sr``; sort SR desc,
then ``mpjpe_l`` asc (``obj_pos_error`` with ``hoi``; missing = +inf); first row per ``eval_step``;
take the top k. Checkpoints are ``model_step_{step:0{pad}d}.pt`` in the experiment dir; when the
experiment dir is known every selected checkpoint must exist there (a missing one is a DataError).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import EXIT_OK, ConfigError, DataError
from grail_cluster.tools.data.experiment_logs import EXP_FIX, experiment_rows
from grail_cluster.tools.data.io import require_dir
from grail_cluster.tools.data.select_rank import (
    MPJPE_L,
    OBJ_POS,
    SOURCE,
    check_rows,
    eval_rows,
    rank_rows,
    require_checkpoints,
    require_enough,
)
from grail_cluster.tools.data.wandb_offline import OfflineRun, find_offline_runs, log_file, read_offline_run
from grail_cluster.tools.data.wandb_online import online_history, online_source, run_path, wandb_api

DEFAULT_ENTITY = "nv-gear"
DEFAULT_PROJECT = "TRL_G1_Track"



# ----------------------------------------------------------------------------- select_top


def _choose_offline(runs: list[OfflineRun], run: str | None, group: str | None, where: Path) -> OfflineRun:
    pool = runs
    if run is not None:
        rid = run.rsplit("/", 1)[-1]
        pool = [r for r in runs if r.id == rid]
        if not pool:
            raise DataError(f"no offline W&B run with id {rid!r}", path=where,
                            fix=f"ids here: {', '.join(sorted(r.id for r in runs))}")
    elif group is not None:
        pool = [r for r in runs if r.group == group]
        if not pool:
            raise DataError(f"no offline W&B run in group {group!r}", path=where,
                            fix=f"groups here: {', '.join(sorted({r.group or '(none)' for r in runs}))}")
    # most eval rows; ties prefer a finished run, then the latest dir
    return max(enumerate(pool), key=lambda ir: (len(eval_rows(ir[1].history)), ir[1].finished, ir[0]))[1]


def select_top(source: str | Path | None = None, k: int = 5, hoi: bool = False, min_sr: float = 0.0,
               step_pad: int = 6, *, run: str | None = None, group: str | None = None,
               experiment_dir: str | Path | None = None, wandb_dir: str | Path | None = None,
               entity: str = DEFAULT_ENTITY, project: str = DEFAULT_PROJECT, samples: int = 5000,
               api: Any = None, check_files: bool = True, reader: str = "protobuf",
               allow_fewer: bool = False) -> dict[str, Any]:
    """The §5.1 top-k JSON (plus ``checkpoint_path`` and ``warnings``) for one training run.

    ``source`` is a SONIC experiment dir (same as ``experiment_dir``). With ``wandb_dir`` rows come from
    offline W&B runs there (``run``/``group`` pick one); else ``run``/``group`` use the online API
    (``api``, default ``wandb.Api()``); else the experiment dir's TensorBoard and watcher files.
    Fewer than ``k`` rankable steps is a DataError unless ``allow_fewer``.
    """
    if source is not None:
        if experiment_dir is not None and Path(source) != Path(experiment_dir):
            raise ConfigError("give the experiment dir once (source or experiment_dir)")
        experiment_dir = source
    if run is not None and group is not None:
        raise ConfigError("--run and --group exclude each other")
    if wandb_dir is None and run is None and group is None and experiment_dir is None:
        raise ConfigError("nothing to read", fix="pass --run, --group, --experiment_dir or --wandb_dir")
    if k < 1:
        raise ConfigError(f"--k must be >= 1 (got {k})")
    if step_pad < 0:
        raise ConfigError(f"--step_pad must be >= 0 (got {step_pad})")

    run_id = run_name = grp = None
    notes: list[str] = []
    if experiment_dir is not None:
        require_dir(Path(experiment_dir), "experiment dir", EXP_FIX)
    if wandb_dir is not None:
        where = Path(wandb_dir)
        offline = [read_offline_run(p, reader) for p in find_offline_runs(where)]
        meta_run = _meta_run_id(experiment_dir) if experiment_dir is not None else None
        if run is None and group is None and meta_run and meta_run not in {r.id for r in offline}:
            raise DataError(f"meta.yaml names W&B run {meta_run!r} for this experiment; no offline run with that id "
                            f"is under {where}", path=Path(experiment_dir) / "meta.yaml",
                            fix=f"pass the W&B dir that holds run-{meta_run}.wandb (ids under {where}: "
                                f"{', '.join(sorted(r.id for r in offline))}), or the experiment dir of those runs")
        chosen = _choose_offline(offline, run or (meta_run if group is None else None), group, where)
        rows, source_where = chosen.history, log_file(chosen.run_dir)
        notes += chosen.notes
        run_id = "/".join(x for x in (chosen.entity, chosen.project, chosen.id) if x)
        run_name, grp = chosen.name or None, chosen.group or None
        cfg_dir, wb_id = _config_dir(chosen.config), chosen.id
    elif run is not None or group is not None:
        online, rows = online_source(api, run, group, entity, project, samples)
        run_id, run_name = run_path(online), getattr(online, "name", None)
        source_where = run_id
        grp = getattr(online, "group", None)
        cfg_dir, wb_id = _config_dir(dict(getattr(online, "config", None) or {})), getattr(online, "id", None)
    else:
        rows = experiment_rows(experiment_dir, notes)
        source_where, cfg_dir, wb_id = experiment_dir, None, None
    if experiment_dir is not None and (wandb_dir is not None or run is not None or group is not None):
        _check_run_is_experiments(Path(experiment_dir), wb_id, cfg_dir, notes)
    exp = Path(experiment_dir) if experiment_dir is not None else (Path(cfg_dir) if cfg_dir else None)

    check_rows(rows, source_where, notes)
    top = rank_rows(rows, k=k, hoi=hoi, min_sr=min_sr, step_pad=step_pad)
    require_enough(top, rows, k=k, min_sr=min_sr, where=exp or source_where, allow_fewer=allow_fewer)
    exp_abs = Path(os.path.abspath(exp)) if exp is not None else None
    for entry in top:
        entry["checkpoint_path"] = str(exp_abs / entry["checkpoint"]) if exp_abs else None
    if exp_abs is None:
        notes.append("the experiment dir is unknown (not given, not in the W&B run's config): the checkpoint files "
                     "were not checked; pass --experiment_dir")
    if exp_abs is not None and check_files:
        require_checkpoints(top, path=exp_abs,
                             fix="check --step_pad (0 = unpadded names) and that the experiment dir is the run's; "
                                 "or pass explicit select.checkpoints=[...]")
    return {
        "run": run_id, "run_name": run_name, "group": grp,
        "experiment_dir": str(exp_abs) if exp_abs else None,
        "k": k, "min_sr": min_sr, "step_pad": step_pad, "hoi": hoi,
        "tiebreak_key": OBJ_POS if hoi else MPJPE_L,
        "top": top,
        "warnings": notes,
    }


def _meta_run_id(experiment_dir: str | Path) -> str | None:
    from grail_cluster.sonic.experiment import read_meta

    meta = read_meta(experiment_dir)  # garbage meta.yaml: a DataError naming it
    value = (meta or {}).get("wandb_run")
    return str(value) if value else None


def _check_run_is_experiments(exp: Path, wb_id: str | None, logged_dir: str | None, notes: list[str]) -> None:
    """The W&B rows must be this experiment's: steps of another run would map onto this dir's checkpoints
    (every run saves model_step_000500.pt ...) and select the wrong files with exit 0."""
    meta_run = _meta_run_id(exp)
    if meta_run and wb_id and meta_run != wb_id:
        raise DataError(f"meta.yaml names W&B run {meta_run!r} for this experiment, but the rows come from run "
                        f"{wb_id!r}", path=exp / "meta.yaml",
                        fix=f"pass --run {meta_run} (the experiment's own run), or the experiment dir that run wrote")
    if logged_dir:
        if Path(logged_dir).name != exp.resolve().name:
            raise DataError(f"the W&B run logged experiment_dir {logged_dir}, not this one", path=exp,
                            fix="pass the experiment dir the run wrote (--experiment_dir), or the run of this one")
        if os.path.abspath(logged_dir) != str(exp.resolve()):
            notes.append(f"the W&B run logged experiment_dir {logged_dir}; using {exp.resolve()} (same name, another "
                         "place: a copy?)")
    elif not meta_run:
        notes.append(f"{exp}: neither meta.yaml nor the W&B run's config ties the run to this experiment dir; "
                     "check that they belong together")



# ----------------------------------------------------------------------------- across a sweep


def _config_dir(config: dict[str, Any]) -> str | None:
    value = config.get("experiment_dir") or config.get("experiment_save_dir")
    if isinstance(value, dict):  # W&B config values may be {"value": ...}
        value = value.get("value")
    return str(value) if value else None


def group_sources(group: str, *, wandb_dirs: list[str | Path] | None = None, api: Any = None,
                  entity: str = DEFAULT_ENTITY, project: str = DEFAULT_PROJECT, samples: int = 5000,
                  reader: str = "protobuf") -> list[dict[str, Any]]:
    """Every W&B run of ``group`` (offline run dirs under ``wandb_dirs``, else the online API) as a
    source for :func:`select_across`."""
    if wandb_dirs:
        runs = [read_offline_run(p, reader) for d in wandb_dirs for p in find_offline_runs(d)]
        pool = [r for r in runs if r.group == group]
        if not pool:
            raise DataError(f"no offline W&B run in group {group!r}", path=", ".join(str(d) for d in wandb_dirs),
                            fix=f"groups here: {', '.join(sorted({r.group or '(none)' for r in runs}))}")
        return [{"run": "/".join(x for x in (r.entity, r.project, r.id) if x), "run_name": r.name or None,
                 "experiment_dir": _config_dir(r.config), "rows": r.history, "where": str(log_file(r.run_dir)),
                 "notes": r.notes} for r in pool]
    api = wandb_api(api)
    try:
        runs = list(api.runs(f"{entity}/{project}", filters={"group": group}))
        sources = [{"run": run_path(r), "run_name": getattr(r, "name", None),
                    "experiment_dir": _config_dir(dict(getattr(r, "config", None) or {})),
                    "rows": online_history(r, samples)} for r in runs]
    except Exception as exc:  # noqa: BLE001 - wandb.errors.CommError and friends
        raise DataError(f"W&B API request failed: {exc}", fix="check --group, --entity, --project and the network") from exc
    if not sources:
        raise DataError(f"no W&B runs in group {group!r} of {entity}/{project}", fix="check --group, --entity and --project")
    return sources


def select_across(*, experiment_dirs: list[str | Path] | None = None, sources: list[dict[str, Any]] | None = None,
                  group: str | None = None, k: int = 5, hoi: bool = False, min_sr: float = 0.0, step_pad: int = 6,
                  check_files: bool = True, allow_fewer: bool = False) -> dict[str, Any]:
    """The top k checkpoints over several training runs (a sweep's points), ranked together by §5.1.

    Each ``top`` entry also names its run and its own ``experiment_dir``; the output is otherwise
    the single-run JSON, with ``experiment_dir`` set only when every entry shares one, and ``runs``
    listing what was read. Rows are first-per-step within each experiment dir (or W&B run).
    """
    if k < 1:
        raise ConfigError(f"--k must be >= 1 (got {k})")
    notes: list[str] = []
    sources = list(sources or []) + [{"run": None, "run_name": Path(d).name, "experiment_dir": str(d),
                                      "rows": experiment_rows(d, notes), "where": str(d)} for d in experiment_dirs or []]
    if not sources:
        raise ConfigError("nothing to rank", fix="pass experiment dirs or W&B runs of the group")
    for src in sources:
        notes += src.get("notes") or []
        check_rows(src["rows"], src.get("where") or src.get("experiment_dir") or src.get("run"), notes)
    tagged = [{**row, SOURCE: i} for i, src in enumerate(sources) for row in src["rows"]]
    # A W&B run restarted under a new id writes the same experiment dir: count its steps once.
    same_dir: dict[str, int] = {}
    for i, src in enumerate(sources):
        if src.get("experiment_dir"):
            same_dir.setdefault(os.path.abspath(src["experiment_dir"]), i)
    for row in tagged:
        src = sources[row[SOURCE]]
        if src.get("experiment_dir"):
            row[SOURCE] = same_dir[os.path.abspath(src["experiment_dir"])]
    top = rank_rows(tagged, k=k, hoi=hoi, min_sr=min_sr, step_pad=step_pad)
    require_enough(top, tagged, k=k, min_sr=min_sr, allow_fewer=allow_fewer,
                    where=", ".join(str(s.get("experiment_dir") or s.get("run")) for s in sources)[:500])
    for entry in top:
        src = sources[entry.pop(SOURCE)]
        exp = os.path.abspath(src["experiment_dir"]) if src.get("experiment_dir") else None
        entry.update(run=src.get("run"), run_name=src.get("run_name"), experiment_dir=exp,
                     checkpoint_path=os.path.join(exp, entry["checkpoint"]) if exp else None)
    if any(e["experiment_dir"] is None for e in top):
        notes.append("some selected runs logged no experiment dir: their checkpoint files were not checked")
    if check_files:
        require_checkpoints(top, path=None,
                             fix="check --step_pad and that each run's experiment dir is reachable from here")
    dirs = {e["experiment_dir"] for e in top}
    return {
        "run": None, "run_name": None, "group": group,
        "experiment_dir": dirs.pop() if len(dirs) == 1 else None,
        "k": k, "min_sr": min_sr, "step_pad": step_pad, "hoi": hoi,
        "tiebreak_key": OBJ_POS if hoi else MPJPE_L,
        "runs": [{"run": s.get("run"), "run_name": s.get("run_name"), "experiment_dir": s.get("experiment_dir"),
                  "eval_rows": len(eval_rows(s["rows"]))} for s in sources],
        "top": top,
        "warnings": notes,
    }


def write_json_atomic(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- CLI


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _print_table(result: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from grail_cluster.core.console import make_console

    across = "runs" in result
    where = f"group {result['group']}, {len(result['runs'])} runs" if across else result["run"] or result["experiment_dir"]
    table = Table(title=escape(f"top {len(result['top'])} checkpoints ({where})"))
    for col in ("rank", *(("run",) if across else ()), "eval_step", "checkpoint", "SR", "mpjpe_l", "mpjpe_g",
                "obj_pos_error"):
        table.add_column(col)
    for e in result["top"]:
        run = (e.get("run_name") or e.get("run") or "-",) if across else ()
        table.add_row(str(e["rank"]), *map(escape, run), str(e["eval_step"]), escape(e["checkpoint"]),
                      _fmt(e["success_rate"], ".4f"),
                      _fmt(e["mpjpe_l"], ".2f"), _fmt(e["mpjpe_g"], ".2f"), _fmt(e["obj_pos_error"], ".4f"))
    make_console(stderr=True).print(table)  # in a log: one row per line, nothing folded


def _run_dir_of(group: str) -> Path | None:
    """A grail-cluster run dir (or run id under ./runs) named by --group, else None."""
    for cand in (Path(group), Path("runs") / group):
        if (cand / "plan.json").is_file():
            return cand
    return None


def _across_group(args: argparse.Namespace) -> dict[str, Any]:
    opts = {"k": args.k, "hoi": args.hoi, "min_sr": args.min_sr, "step_pad": args.step_pad,
            "check_files": not args.no_check_files, "allow_fewer": args.allow_fewer}
    run_dir = None if args.wandb_dir else _run_dir_of(args.group)
    if run_dir is not None:
        from grail_cluster.core.plan import read_plan

        plan = read_plan(run_dir)
        dirs = [p["experiment_dir"] for p in plan.train["points"]] if plan.is_sweep else [plan.paths["experiment_dir"]]
        return select_across(experiment_dirs=dirs, group=plan.run_id, **opts)
    sources = group_sources(args.group, wandb_dirs=args.wandb_dir, entity=args.entity, project=args.project,
                            samples=args.samples)
    return select_across(sources=sources, group=args.group, **opts)


def cmd_select_top(args: argparse.Namespace) -> int:
    if args.group and not args.best_run:
        result = _across_group(args)
    else:
        if args.wandb_dir and len(args.wandb_dir) > 1:
            raise ConfigError("several --wandb_dir are read together only with --group (ranking across its runs)")
        result = select_top(run=args.run, group=args.group, experiment_dir=args.experiment_dir,
                            wandb_dir=args.wandb_dir[0] if args.wandb_dir else None,
                            entity=args.entity, project=args.project, k=args.k, hoi=args.hoi, min_sr=args.min_sr,
                            step_pad=args.step_pad, samples=args.samples, check_files=not args.no_check_files,
                            allow_fewer=args.allow_fewer)
    if args.out:
        write_json_atomic(args.out, result)
    for note in result["warnings"]:  # on stderr even with --json: a script's log keeps them
        sys.stderr.write(f"warning: {note}\n")
    sys.stdout.write(json.dumps(result, indent=1) + "\n")
    if not args.json:
        _print_table(result)
    return EXIT_OK


def register(subparsers: Any) -> argparse.ArgumentParser:
    desc = ("Rank a training run's eval results (W&B online, offline W&B run dirs, or the experiment dir's "
            "TensorBoard events and eval/<step>/train/metrics_eval.json) and print the top-k checkpoints as "
            "JSON on stdout (a table on stderr).")
    p = subparsers.add_parser("select-top", help="the k best checkpoints of a training run", description=desc)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="W&B run: entity/project/id or id")
    src.add_argument("--group", help="a sweep: rank checkpoints across every run of this W&B group (online, or "
                                     "offline with --wandb_dir), or across every point of a grail-cluster sweep "
                                     "run dir / run id (its experiment dirs' own logs)")
    src.add_argument("--experiment_dir", help="SONIC experiment dir (TensorBoard events + watcher metrics)")
    p.add_argument("--entity", default=DEFAULT_ENTITY)
    p.add_argument("--project", default=DEFAULT_PROJECT)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--hoi", action="store_true", help="tiebreak on eval/all/obj_pos_error instead of mpjpe_l")
    p.add_argument("--min_sr", type=float, default=0.0)
    p.add_argument("--step_pad", type=int, default=6, help="model_step_{step:0<pad>d}.pt; 0 = unpadded")
    p.add_argument("--out", help="also write the JSON here (atomically)")
    p.add_argument("--samples", type=int, default=5000, help="W&B history samples")
    p.add_argument("--wandb_dir", action="append",
                   help="read offline W&B run dirs here (wandb.init dir=..., SONIC: /tmp; a sweep's run dir finds "
                        "each point's); repeatable with --group")
    p.add_argument("--best_run", action="store_true",
                   help="with --group: GRAIL's behaviour, rank only the group's run with the most eval rows")
    p.add_argument("--no_check_files", action="store_true",
                   help="do not require the selected checkpoints to exist (experiment dir on another machine)")
    p.add_argument("--allow_fewer", action="store_true",
                   help="write the top list even when fewer than --k steps qualify (default: an error, exit 1)")
    p.add_argument("--json", action="store_true", help="JSON only (no table on stderr)")
    p.set_defaults(func=cmd_select_top)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m grail_cluster.tools.data.select_top``: the same command, standalone."""
    from grail_cluster.core.standalone import run_tool

    return run_tool(register, "select-top", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

