"""Real success rate of phase-1 evaluations, aggregated over shards (contracts §5.2).

W&B's ``eval/success/success_rate`` is measured on a small subset of motions; the real SR of a
checkpoint is the shard-wide count: every motion of every ``eval/step_*/phase1_shard_*`` shard,
success = not terminated. Missing or unreadable shards are reported per shard, never silently
skipped, since they bias the rate.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import EXIT_OK, EXIT_PROBLEMS, DataError
from grail_cluster.tools.data.io import dumps_json, finite_or_none, write_json

_STEP_RE = re.compile(r"^step_(\d+)$")
_SHARD_RE = re.compile(r"^phase1_shard_(\d+)$")
_MEANS = ("mpjpe_l", "mpjpe_g", "obj_pos_error")


def _read_shard(path: Path, cache: dict[str, Any] | None = None) -> dict:
    """One shard's row; status parse_error when the JSON or its motion lists are unusable.

    The per-motion lists go through export's reader (one strict reading of §4.2 for every tool): a
    ``terminated`` entry that is not a boolean (null, "false", NaN) is an error, never guessed at
    (``bool(None)`` counted a motion as a success, ``bool("false")`` as a failure), and a shard
    without the ``terminated`` list is unreadable, not all-successful.

    ``cache`` (path -> {sig, row}) lets a caller that summarises the same shards on every call
    (``status``) parse a metrics file only when its size or mtime changed."""
    from grail_cluster.tools.data.eval_shard import read_metrics

    def error(text: str) -> dict:
        return {"status": "parse_error", "error": text, "n_motions": 0, "n_success": 0, "shard_sr": None,
                "wandb_sr": None, "keys": []}

    try:
        st = path.stat()
    except OSError as exc:
        return error(f"{type(exc).__name__}: {exc}")
    sig = [st.st_size, st.st_mtime_ns]
    if cache is not None:
        hit = cache.get(str(path))
        if isinstance(hit, dict) and hit.get("sig") == sig and isinstance(hit.get("row"), dict):
            return hit["row"]
    try:
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = None  # read_metrics reads it again and words the error (invalid JSON, not UTF-8)
        table = read_metrics(path, data)
    except DataError as exc:
        row = error(exc.problem)
    except (OSError, ValueError) as exc:
        row = error(f"{type(exc).__name__}: {exc}")
    else:
        row = _shard_row(table, data)
    if cache is not None:
        cache[str(path)] = {"sig": sig, "row": row}
    return row


def _shard_row(table: dict, data: dict) -> dict:
    keys = table["motion_keys"]
    n, n_succ = len(keys), len(keys) - sum(bool(t) for t in table["terminated"])
    row = {"status": "ok", "n_motions": n, "n_success": n_succ, "shard_sr": n_succ / n if n else None,
           "wandb_sr": finite_or_none(data.get("eval/success/success_rate")), "keys": keys}
    for name in _MEANS:
        row[name] = finite_or_none(data.get(f"eval/all/{name}"))
    return row


def _mean(values) -> float | None:
    # Shard scalars are already finite or None (NaN from an empty mean is not a number to average).
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def scan(exp_dir: Path) -> dict[int, dict[int, Path]]:
    """step -> {rank: shard dir} for every ``eval/step_*/phase1_shard_*`` dir."""
    out: dict[int, dict[int, Path]] = {}
    eval_root = exp_dir / "eval"
    for step_dir in sorted(eval_root.iterdir()) if eval_root.is_dir() else []:
        m = _STEP_RE.match(step_dir.name)
        if m and step_dir.is_dir():
            shards = out.setdefault(int(m.group(1)), {})
            for shard in step_dir.iterdir():
                ms = _SHARD_RE.match(shard.name)
                if ms and shard.is_dir():
                    shards[int(ms.group(1))] = shard
    return out


def summarize_step(step: int, shards: dict[int, Path], num_shards: int, cache: dict[str, Any] | None = None) -> dict:
    rows = []
    for rank in range(max(num_shards, max(shards, default=-1) + 1)):
        path = shards.get(rank, None)
        metrics = path / "metrics_eval.json" if path is not None else None
        if metrics is None or not metrics.is_file():
            row = {"status": "missing", "n_motions": 0, "n_success": 0, "shard_sr": None, "wandb_sr": None, "keys": []}
        else:
            row = _read_shard(metrics, cache)
        rows.append({"rank": rank, "path": str(metrics) if metrics is not None else None, **row})
    ok = [r for r in rows if r["status"] == "ok"]
    # A key in two shards (stale shards of another num_shards, a copied dir) is counted twice in the
    # total: the rate is then not over the library's motions. Said per step, never silently summed.
    first_shard: dict[str, int] = {}
    duplicates: dict[str, list[int]] = {}
    for r in ok:
        for k in r["keys"]:
            if k in first_shard:
                duplicates.setdefault(k, [first_shard[k]]).append(r["rank"])
            else:
                first_shard[k] = r["rank"]
    total = sum(r["n_motions"] for r in ok)
    success = sum(r["n_success"] for r in ok)
    out = {
        "step": step,
        "total_motions": total,
        "total_success": success,
        "real_success_rate": success / total if total else None,
        "unique_motions": len({k for r in ok for k in r["keys"]}),
        "num_shards": len(rows),
        "shards_ok": len(ok),
        "shards_missing": sum(r["status"] == "missing" for r in rows),
        "shards_parse_error": sum(r["status"] == "parse_error" for r in rows),
        # A rate over some shards is not the checkpoint's: every reader must say so.
        "partial": len(ok) < len(rows) or not rows,
        "duplicate_motions": len(duplicates),
        "duplicate_examples": {k: v for k, v in sorted(duplicates.items())[:5]},
        "shards": [{k: v for k, v in r.items() if k != "keys" and k not in _MEANS} for r in rows],
    }
    for name in _MEANS:
        out[f"mean_{name}"] = _mean(r.get(name) for r in ok)
    return out


def _rank_key(row: dict, hoi: bool):
    tiebreak = row["mean_obj_pos_error"] if hoi else row["mean_mpjpe_l"]
    sr = row["real_success_rate"]
    return (-(sr if sr is not None else -1.0), tiebreak if tiebreak is not None else float("inf"), row["step"])


def _compare(path: Path, by_step: dict[int, dict]) -> list[dict]:
    try:
        top = json.loads(Path(path).read_text())["top"]
        entries = [(int(t["eval_step"]), t) for t in top]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read the top-k JSON ({exc!r})", path=path,
                        fix="pass the output of select_top_checkpoints (a JSON with `top[{eval_step, ...}]`)") from exc
    rows = []
    for step, t in entries:
        real = by_step.get(step, {}).get("real_success_rate")
        wandb = finite_or_none(t.get("success_rate"))
        rows.append({"wandb_rank": t.get("rank"), "step": step, "checkpoint": t.get("checkpoint"),
                     "wandb_subset_sr": wandb, "real_success_rate": real,
                     "delta": None if real is None or wandb is None else real - wandb,
                     "evaluated": step in by_step})
    return rows


def summarize(exp_dir: str | Path, steps: list[int] | None = None, *, compare: str | Path | None = None,
              hoi: bool = False, missing_shards_fatal: bool = False, num_shards: int = 0) -> dict:
    """Aggregate phase-1 shards per step; see the module docstring. Raises DataError if nothing is found,
    or (with ``missing_shards_fatal``) if any shard is missing or unreadable."""
    exp_dir = Path(exp_dir)
    found = scan(exp_dir)
    if steps:
        found = {s: found.get(s, {}) for s in steps}
    if not found:
        raise DataError("no eval/step_*/phase1_shard_* dirs", path=exp_dir / "eval",
                        fix="run the phase-1 eval first, or point --exp_dir at the experiment dir")
    # Every step is expected to have as many shards as the widest step seen.
    width = max([num_shards] + [max(s, default=-1) + 1 for s in found.values()])
    rows = [summarize_step(step, found[step], width) for step in sorted(found)]
    out = {
        "exp_dir": str(exp_dir),
        "hoi": hoi,
        "tiebreak_key": "obj_pos_error" if hoi else "mpjpe_l",
        "steps": rows,
        "ranked_by_real_sr": [
            {"rank": i + 1, "step": r["step"], "real_success_rate": r["real_success_rate"],
             "total_motions": r["total_motions"], "mean_mpjpe_l": r["mean_mpjpe_l"],
             "mean_obj_pos_error": r["mean_obj_pos_error"]}
            for i, r in enumerate(sorted(rows, key=lambda r: _rank_key(r, hoi)))
        ],
    }
    if compare is not None:
        out["compare"] = _compare(Path(compare), {r["step"]: r for r in rows})
    bad = [f"step {r['step']} shard {s['rank']}: {s['status']} ({s['path'] or 'no shard dir'}"
           + (f": {s['error']}" if s.get("error") else "") + ")"
           for r in rows for s in r["shards"] if s["status"] != "ok"]
    for r in rows:
        paths = {s["rank"]: s["path"] for s in r["shards"]}
        if r["duplicate_motions"]:
            key, ranks = next(iter(r["duplicate_examples"].items()))
            bad.append(f"step {r['step']}: {r['duplicate_motions']} motion key(s) evaluated in more than one shard, "
                       f"counted twice in the total (e.g. {key} in {', '.join(str(paths[x]) for x in ranks)}); "
                       "fix: delete the stale shard dirs and re-run the eval with one num_shards")
    out["problems"] = bad
    if missing_shards_fatal and bad:
        raise DataError("shards missing or unreadable: " + "; ".join(bad), path=exp_dir / "eval",
                        fix="re-run those eval shards (or drop --missing_shards_fatal)")
    return out


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if pct else (f"{v:.4g}" if isinstance(v, float) else str(v))


def print_table(result: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    from grail_cluster.core.console import make_console

    console = make_console()
    table = Table(title=escape(f"phase-1 real success rate: {result['exp_dir']}"))
    for col in ("rank", "step", "real SR", "success/total", "unique", "shards ok/all", "mpjpe_l", "mpjpe_g",
                "obj_pos_error"):
        table.add_column(col, justify="right")
    by_step = {r["step"]: r for r in result["steps"]}
    for ranked in result["ranked_by_real_sr"]:
        r = by_step[ranked["step"]]
        sr = _fmt(r["real_success_rate"], True) + (" PARTIAL" if r["partial"] else "")
        table.add_row(str(ranked["rank"]), str(r["step"]), sr,
                      f"{r['total_success']}/{r['total_motions']}", str(r["unique_motions"]),
                      f"{r['shards_ok']}/{r['num_shards']}", _fmt(r["mean_mpjpe_l"]), _fmt(r["mean_mpjpe_g"]),
                      _fmt(r["mean_obj_pos_error"]))
    console.print(table)
    if "compare" in result:
        cmp_table = Table(title="W&B subset SR vs real SR")
        for col in ("W&B rank", "step", "W&B subset SR", "real SR", "delta"):
            cmp_table.add_column(col, justify="right")
        for c in result["compare"]:
            cmp_table.add_row(_fmt(c["wandb_rank"]), str(c["step"]), _fmt(c["wandb_subset_sr"], True),
                              _fmt(c["real_success_rate"], True), _fmt(c["delta"], True))
        console.print(cmp_table)
    for r in result["steps"]:
        if r["partial"]:
            console.print(f"[yellow]step {r['step']}: PARTIAL[/] real SR over {r['shards_ok']} of {r['num_shards']} "
                          "shards only (the missing or unreadable shards are listed below)")
    for line in result["problems"]:
        console.print(f"[yellow]warning:[/] {escape(line)}")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "summarize", help="real success rate per step over all phase-1 eval shards",
        description="Scan <exp_dir>/eval/step_*/phase1_shard_*/metrics_eval.json and report per step the real "
                    "success rate (all motions of all shards; success = not terminated) beside the W&B subset "
                    "SR of each shard (GRAIL summarize_phase1_sr).")
    p.add_argument("--exp_dir", required=True, help="experiment dir holding eval/step_*/phase1_shard_*")
    p.add_argument("--steps", nargs="+", type=int, help="only these steps")
    p.add_argument("--compare", help="top-k JSON of select_top_checkpoints: W&B SR beside the real SR")
    p.add_argument("--out", help="also write the JSON result here")
    p.add_argument("--missing_shards_fatal", action="store_true", help="exit 1 if any shard is missing/unreadable")
    p.add_argument("--num_shards", type=int, default=0, help="expected shards per step (default: widest step seen)")
    p.add_argument("--hoi", action="store_true", help="tie-break equal SRs by obj_pos_error instead of mpjpe_l")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_summarize)
    return p


def cmd_summarize(args) -> int:
    result = summarize(args.exp_dir, args.steps, compare=args.compare, hoi=args.hoi,
                       missing_shards_fatal=args.missing_shards_fatal, num_shards=args.num_shards)
    if args.out:
        write_json(Path(args.out), result)
    if args.json:
        sys.stdout.write(dumps_json(result))
    else:
        print_table(result)
    return EXIT_PROBLEMS if args.missing_shards_fatal and result["problems"] else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``python -m grail_cluster.tools.data.summarize``: the same command, standalone."""
    from grail_cluster.core.standalone import run_tool

    return run_tool(register, "summarize", argv)


if __name__ == "__main__":
    sys.exit(main())
