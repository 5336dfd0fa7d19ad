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
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import EXIT_OK, ConfigError, DataError, GrailError
from grail_cluster.tools.data.io import finite_or_none as _num

SR = "eval/success/success_rate"
MPJPE_L = "eval/all/mpjpe_l"
MPJPE_G = "eval/all/mpjpe_g"
OBJ_POS = "eval/all/obj_pos_error"
EVAL_STEP = "eval_step"
SOURCE = "_source"  # which run of a sweep a row came from (select_across); not in the output
DEFAULT_ENTITY = "nv-gear"
DEFAULT_PROJECT = "TRL_G1_Track"


# ----------------------------------------------------------------------------- ranking




def checkpoint_name(step: int, step_pad: int = 6) -> str:
    return f"model_step_{step:0{step_pad}d}.pt" if step_pad > 0 else f"model_step_{step}.pt"


def eval_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that have a success rate and an eval step (the ones that count as eval rows)."""
    return [r for r in rows if _num(r.get(SR)) is not None and _num(r.get(EVAL_STEP)) is not None]


def rank_rows(rows: Iterable[dict[str, Any]], *, k: int = 5, hoi: bool = False, min_sr: float = 0.0,
              step_pad: int = 6) -> list[dict[str, Any]]:
    """§5.1 ranking of history rows into ``top`` entries (without paths)."""
    tiebreak = OBJ_POS if hoi else MPJPE_L
    kept = [r for r in eval_rows(rows) if _num(r[SR]) >= min_sr]

    def key(r: dict[str, Any]) -> tuple[float, float]:
        tb = _num(r.get(tiebreak))
        return (-_num(r[SR]), math.inf if tb is None else tb)

    kept.sort(key=key)  # stable: equal rows keep history order
    seen: set[tuple[Any, int]] = set()
    top: list[dict[str, Any]] = []
    for r in kept:
        step = int(round(_num(r[EVAL_STEP])))
        # First row per eval step of each run: across a sweep two points may log the same step.
        if (r.get(SOURCE), step) in seen:
            continue
        seen.add((r.get(SOURCE), step))
        top.append({
            "rank": len(top) + 1,
            "eval_step": step,
            "checkpoint": checkpoint_name(step, step_pad),
            "success_rate": _num(r[SR]),
            "mpjpe_l": _num(r.get(MPJPE_L)),
            "mpjpe_g": _num(r.get(MPJPE_G)),
            "obj_pos_error": _num(r.get(OBJ_POS)),
            **({SOURCE: r[SOURCE]} if SOURCE in r else {}),
        })
        if len(top) >= k:
            break
    return top


# ----------------------------------------------------------------------------- offline W&B

_LOG_HEADER = b":W&B"
_BLOCK = 32768
_REC_HEADER = 7  # crc32 (4) + length (2) + type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_WANDB_CORRUPT_FIX = ("the file is corrupt: copy it again from where the run wrote it, or rank from the experiment "
                      "dir (--experiment_dir: TensorBoard events and eval/<step>/train/metrics_eval.json)")


def _note_torn(notes: list[str] | None, path: Path, pos: int, size: int) -> None:
    if notes is not None:
        notes.append(f"{path}: ends in a torn record at byte {pos} of {size} (a run still writing, or killed "
                     "mid-write); the records before it were read")


def _wandb_records(path: Path, notes: list[str] | None = None) -> Iterator[bytes]:
    """Payloads of a ``.wandb`` transaction log (leveldb log framing, 32 KiB blocks, 7-byte file header).

    A torn tail (a run still writing, or killed) ends the iteration with a note; a wrong file header, a
    record that cannot fit its block or a bad checksum is a DataError."""
    data = path.read_bytes()
    if not data:
        raise DataError("empty W&B transaction log (the run died before it wrote a record)", path=path,
                        fix="remove this run dir, or rank from the experiment dir (--experiment_dir)")
    if len(data) < 7 or data[:4] != _LOG_HEADER:
        raise DataError("not a W&B transaction log (bad header)", path=path,
                        fix="pass the offline-run-* dir that wandb wrote (it holds run-<id>.wandb)")
    pos, pending = 7, b""
    while pos + _REC_HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _REC_HEADER:  # zero padding at the end of a block
            pos += left_in_block
            continue
        crc, length, rtype = struct.unpack_from("<IHB", data, pos)
        start = pos + _REC_HEADER
        if length > left_in_block - _REC_HEADER:  # a fragment never crosses its block: the header is damaged
            raise DataError(f"W&B log record at byte {pos} claims {length} bytes, more than its block holds",
                            path=path, fix=_WANDB_CORRUPT_FIX)
        chunk = data[start:start + length]
        if len(chunk) < length:
            _note_torn(notes, path, pos, len(data))
            return
        if rtype == 0 and length == 0:
            pos += left_in_block  # padding
            continue
        if zlib.crc32(chunk, zlib.crc32(bytes([rtype]))) & 0xFFFFFFFF != crc:
            raise DataError(f"W&B log checksum mismatch at byte {pos}", path=path, fix=_WANDB_CORRUPT_FIX)
        pos = start + length
        if rtype == _FULL:
            yield chunk
        elif rtype == _FIRST:
            pending = chunk
        elif rtype == _MIDDLE:
            pending += chunk
        elif rtype == _LAST:
            yield pending + chunk
            pending = b""
    if pending or data[pos:].strip(b"\0"):  # a record begun but not finished
        _note_torn(notes, path, pos, len(data))


def _history_item_value(item: Any) -> Any:
    field = item.WhichOneof("value") if _has_value_oneof(item) else None
    if field in ("number", "integer", "boolean", "text"):
        return getattr(item, field)
    if field == "none":
        return None
    raw = item.json if field == "json" else item.value_json
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _has_value_oneof(item: Any) -> bool:
    return any(o.name == "value" for o in item.DESCRIPTOR.oneofs)


def _item_key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


class OfflineRun:
    """What one offline run dir holds: id, name, group, config, history rows."""

    def __init__(self, run_dir: Path, run_id: str, name: str, group: str, config: dict[str, Any],
                 history: list[dict[str, Any]], finished: bool):
        self.run_dir, self.id, self.name, self.group = run_dir, run_id, name, group
        self.config, self.history, self.finished = config, history, finished
        self.project = ""
        self.entity = ""
        self.notes: list[str] = []  # what the reader had to tolerate (a torn tail), for the user


def _log_file(run_dir: Path) -> Path:
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise DataError("no run-<id>.wandb in this W&B run dir", path=run_dir,
                        fix="pass the dir wandb.init(dir=...) used, or one of its wandb/offline-run-* dirs")
    return logs[0]


def read_offline_run(run_dir: str | Path, reader: str = "protobuf") -> OfflineRun:
    """Read an offline W&B run dir (``offline-run-<time>-<id>``) back."""
    run_dir = Path(run_dir)
    log = _log_file(run_dir)
    if reader == "leet":
        return _read_with_leet(run_dir, log)
    try:
        from wandb.proto import wandb_internal_pb2 as pb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("reading offline W&B runs needs the wandb package",
                          fix="pip install 'grail-cluster[wandb]' (or pip install wandb)") from exc
    run = OfflineRun(run_dir, log.stem.removeprefix("run-"), "", "", {}, [], False)
    for payload in _wandb_records(log, run.notes):
        rec = pb.Record()
        try:
            rec.ParseFromString(payload)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
            raise DataError(f"undecodable W&B record ({exc})", path=log,
                            fix="read it with a wandb version at least as new as the writer's") from exc
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.id = r.run_id or run.id
            run.name = r.display_name or run.name
            run.group = r.run_group or run.group
            run.project, run.entity = r.project, r.entity
            _apply_config(run.config, r.config)
        elif kind == "config":
            _apply_config(run.config, rec.config)
        elif kind == "history":
            run.history.append({_item_key(i): _history_item_value(i) for i in rec.history.item})
        elif kind == "exit":
            run.finished = rec.exit.exit_code == 0
    return run


def _apply_config(config: dict[str, Any], cfg: Any) -> None:
    for item in cfg.update:
        key = "/".join(item.nested_key) if item.nested_key else item.key
        try:
            config[key] = json.loads(item.value_json)
        except ValueError:
            config[key] = item.value_json
    for item in cfg.remove:
        config.pop("/".join(item.nested_key) if item.nested_key else item.key, None)


def _read_with_leet(run_dir: Path, log: Path) -> OfflineRun:
    cmd = ["wandb", "leet", "inspect", "--json", str(run_dir)]
    exe = Path(sys.executable).with_name("wandb")
    if exe.exists():
        cmd[0] = str(exe)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"could not run {' '.join(cmd)}: {exc}", fix="install wandb>=0.31 (it ships `wandb leet`)") from exc
    if proc.returncode != 0:
        raise DataError(f"`wandb leet inspect` failed: {proc.stderr.strip()[-500:]}", path=run_dir,
                        fix="check the run dir, or use the default protobuf reader")
    run = OfflineRun(run_dir, log.stem.removeprefix("run-"), "", "", {}, [], False)
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        kind = rec.get("type")
        if kind == "run":
            r = rec["run"]
            run.id = r.get("run_id", run.id)
            run.name = r.get("display_name", run.name)
            run.group = r.get("run_group", run.group)
            run.project, run.entity = r.get("project", ""), r.get("entity", "")
            run.config.update(r.get("config", {}).get("update", {}))
        elif kind == "config":
            run.config.update(rec["config"].get("update", {}))
        elif kind == "history":
            run.history.append(dict(rec["history"].get("item", {})))
        elif kind == "exit":
            run.finished = rec["exit"].get("exit_code", 0) == 0
    return run


def find_offline_runs(wandb_dir: str | Path) -> list[Path]:
    """Run dirs under ``wandb_dir``: itself, ``offline-run-*``/``run-*`` children, or ``wandb/`` children."""
    root = Path(wandb_dir)
    _require_dir(root, "W&B dir", "pass the dir given to wandb.init(dir=...) (SONIC: /tmp), or one of its "
                                  "wandb/offline-run-* dirs")
    if list(root.glob("run-*.wandb")):
        return [root]
    found: list[Path] = []
    for base in (root, root / "wandb"):
        found += [p for p in sorted(base.glob("*run-*")) if p.is_dir() and list(p.glob("run-*.wandb"))]
    if not found:
        # A sweep's run dir: each point's experiment dir holds its own wandb/ (experiments/p000/wandb/...).
        found = sorted({p.parent for p in root.glob("*/*/wandb/*run-*/run-*.wandb")})
    if not found:
        raise DataError("no W&B run dirs (offline-run-*/run-<id>.wandb) here", path=root,
                        fix="pass the dir given to wandb.init(dir=...) (SONIC: /tmp), or its wandb/ subdir")
    return found


# ----------------------------------------------------------------------------- experiment dir


def _tb_rows(exp: Path, notes: list[str] | None = None) -> dict[int, dict[str, Any]]:
    from grail_cluster.sonic.experiment import tensorboard_event_files
    from grail_cluster.tools.data.tfevents import read_scalars

    rows: dict[int, dict[str, Any]] = {}
    for f in tensorboard_event_files(exp):
        # Later files/events overwrite earlier ones of the same step (a restarted run re-logs its steps).
        for step, tag, value in read_scalars(f, {SR, MPJPE_L, MPJPE_G, OBJ_POS}, notes):
            rows.setdefault(step, {EVAL_STEP: step})[tag] = value
    return rows


_WATCHER_FIX = "re-run the eval of this step, or delete the file to ignore the step"


def _watcher_rows(exp: Path) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    eval_dir = exp / "eval"
    if not eval_dir.is_dir():
        return rows
    for step_dir in sorted(eval_dir.iterdir()):
        f = step_dir / "train" / "metrics_eval.json"
        if not (re.fullmatch(r"\d+", step_dir.name) and f.is_file()):
            continue
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"unreadable metrics_eval.json ({exc})", path=f, fix=_WATCHER_FIX) from None
        if not isinstance(data, dict):
            raise DataError(f"metrics_eval.json holds a JSON {type(data).__name__}, not the eval watcher's mapping "
                            f"of {SR}, eval/all/* ...", path=f, fix=_WATCHER_FIX)
        step = int(step_dir.name)
        rows[step] = {EVAL_STEP: step, **{k: data.get(k) for k in (SR, MPJPE_L, MPJPE_G, OBJ_POS) if k in data}}
    return rows


def _require_dir(path: Path, what: str, fix: str) -> None:
    if path.is_dir():
        return
    problem = f"{what} is a file, not a directory" if path.exists() else f"{what} not found"
    raise DataError(problem, path=path, fix=fix)


_EXP_FIX = "pass SONIC's experiment dir (logs_rl/<project>/<experiment>-<timestamp>)"


def experiment_rows(exp: str | Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Eval rows of a SONIC experiment dir: TensorBoard scalars, overridden by the watcher's JSON."""
    exp = Path(exp)
    _require_dir(exp, "experiment dir", _EXP_FIX)
    rows = _tb_rows(exp, notes)
    for step, row in _watcher_rows(exp).items():
        rows.setdefault(step, {EVAL_STEP: step}).update(row)
    return [rows[s] for s in sorted(rows)]


def check_rows(rows: list[dict[str, Any]], where: Any, notes: list[str]) -> None:
    """Refuse values no ranking can use honestly; note the rows that cannot count.

    A success rate outside [0, 1] (a percentage, a count) would outrank every true rate, and an eval
    step that is negative or fractional names no checkpoint: both are refused. A non-finite success
    rate (NaN from an empty eval) is not a result, so such rows are left out, and said so."""
    nonfinite, no_step = [], 0
    for r in rows:
        has_sr, sr, step = SR in r and r[SR] is not None, _num(r.get(SR)), _num(r.get(EVAL_STEP))
        if has_sr and sr is None:
            nonfinite.append(r.get(EVAL_STEP))
            continue
        if sr is None:
            continue
        if step is None:
            no_step += 1
            continue
        if not 0.0 <= sr <= 1.0:
            raise DataError(f"{SR} at eval_step {step:g} is {sr:g}, outside [0, 1]", path=where,
                            fix="log the success rate as a fraction (0.85, not 85); rates out of range cannot be "
                                "ranked against the others")
        if step < 0 or step != int(step):
            raise DataError(f"eval_step {step:g} is not a training step (no model_step_*.pt can have it)",
                            path=where, fix="log eval_step as the checkpoint's training iteration")
    if nonfinite:
        notes.append(f"{where}: {len(nonfinite)} eval row(s) with a non-finite {SR} (NaN/inf, eval_step "
                     f"{', '.join(str(s) for s in nonfinite[:10])}) are not ranked")
    if no_step:
        notes.append(f"{where}: {no_step} row(s) have {SR} but no {EVAL_STEP}; they are not ranked (log "
                     f"{EVAL_STEP} with every eval row)")


# ----------------------------------------------------------------------------- online W&B


def _run_path(run: Any) -> str:
    path = getattr(run, "path", None)
    if isinstance(path, (list, tuple)):
        return "/".join(str(p) for p in path)
    if isinstance(path, str):
        return path
    return "/".join(str(x) for x in (getattr(run, "entity", ""), getattr(run, "project", ""), run.id))


W_STEP = "_step"  # W&B's own row counter: the API puts it (its default x axis) in every history row
_TIEBREAKS = (MPJPE_L, MPJPE_G, OBJ_POS)


def _online_history(run: Any, samples: int) -> list[dict[str, Any]]:
    """Eval rows of an online run: the success rate and eval step, each tiebreak metric joined on ``_step``.

    ``Run.history(keys=[...])`` returns only the rows that hold *every* requested key (wandb/wandb issues
    2266, 1742, 5391; its own ``scan_history`` docstring says so). GRAIL's single five-key query therefore
    finds no rows at all for a run that never logs one metric (a terrain run has no ``obj_pos_error``).
    So the rows that can rank (success rate + eval step) are asked for alone, and each tiebreak metric
    with them in a query of its own; a metric a run never logs is then just missing, as offline."""
    def query(keys: list[str]) -> list[dict[str, Any]]:
        return [dict(r) for r in run.history(samples=samples, pandas=False, keys=keys)]

    def join_key(r: dict[str, Any]) -> Any:
        # Without _step (an API that leaves it out) the eval step is the next best join key.
        return r.get(W_STEP, r.get(EVAL_STEP))

    rows = {join_key(r): r for r in query([SR, EVAL_STEP])}
    for metric in _TIEBREAKS:
        for r in query([SR, EVAL_STEP, metric]):
            if join_key(r) in rows and metric in r:
                rows[join_key(r)][metric] = r[metric]
    return list(rows.values())


def _wandb_api(api: Any) -> Any:
    """The given API object (tests inject a stand-in), else ``wandb.Api()``."""
    if api is not None:
        return api
    try:
        import wandb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("the W&B API needs the wandb package", fix="pip install wandb") from exc
    try:
        return wandb.Api()
    except Exception as exc:  # noqa: BLE001 - wandb raises many kinds (no key, no network)
        raise DataError(f"cannot use the W&B API: {exc}",
                        fix="wandb login, or read offline runs (--wandb_dir), the experiment dir (--experiment_dir) "
                            "or a sweep's run dir (--group RUN_DIR)") from exc


def _require_checkpoints(top: list[dict[str, Any]], *, path: Any, fix: str) -> None:
    """Every selected checkpoint whose path is known must exist, and hold something (an empty file is a save
    that never finished: SONIC writes a temp file and renames it, so a 0-byte name was truncated later)."""
    known = [e["checkpoint_path"] for e in top if e["checkpoint_path"]]
    missing = [c for c in known if not Path(c).is_file()]
    if missing:
        raise DataError(f"{len(missing)} selected checkpoint(s) missing: {', '.join(missing)}", path=path, fix=fix)
    empty = [c for c in known if Path(c).stat().st_size == 0]
    if empty:
        raise DataError(f"{len(empty)} selected checkpoint(s) are empty files: {', '.join(empty)}", path=path,
                        fix="copy the checkpoints again from the training node (a 0-byte .pt is a truncated save)")


def _online_source(api: Any, run: str | None, group: str | None, entity: str, project: str,
                   samples: int) -> tuple[Any, list[dict[str, Any]]]:
    api = _wandb_api(api)
    try:
        if run is not None:
            path = run if "/" in run else f"{entity}/{project}/{run}"
            chosen = api.run(path)
            return chosen, _online_history(chosen, samples)
        runs = list(api.runs(f"{entity}/{project}", filters={"group": group}))
        if not runs:
            raise DataError(f"no W&B runs in group {group!r} of {entity}/{project}",
                            fix="check --group, --entity and --project")
        best = None
        for r in runs:
            hist = _online_history(r, samples)
            score = (len(eval_rows(hist)), getattr(r, "state", "") == "finished")
            if best is None or score > best[0]:
                best = (score, r, hist)
        return best[1], best[2]
    except GrailError:
        raise
    except Exception as exc:  # noqa: BLE001 - wandb.errors.CommError and friends
        raise DataError(f"W&B API request failed: {exc}",
                        fix="check the run/group path and your network, or use --wandb_dir / --experiment_dir") from exc


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
        _require_dir(Path(experiment_dir), "experiment dir", _EXP_FIX)
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
        rows, source_where = chosen.history, _log_file(chosen.run_dir)
        notes += chosen.notes
        run_id = "/".join(x for x in (chosen.entity, chosen.project, chosen.id) if x)
        run_name, grp = chosen.name or None, chosen.group or None
        cfg_dir, wb_id = _config_dir(chosen.config), chosen.id
    elif run is not None or group is not None:
        online, rows = _online_source(api, run, group, entity, project, samples)
        run_id, run_name = _run_path(online), getattr(online, "name", None)
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
    _require_enough(top, rows, k=k, min_sr=min_sr, where=exp or source_where, allow_fewer=allow_fewer)
    exp_abs = Path(os.path.abspath(exp)) if exp is not None else None
    for entry in top:
        entry["checkpoint_path"] = str(exp_abs / entry["checkpoint"]) if exp_abs else None
    if exp_abs is None:
        notes.append("the experiment dir is unknown (not given, not in the W&B run's config): the checkpoint files "
                     "were not checked; pass --experiment_dir")
    if exp_abs is not None and check_files:
        _require_checkpoints(top, path=exp_abs,
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


def _require_enough(top: list[dict[str, Any]], rows: list[dict[str, Any]], *, k: int, min_sr: float, where: Any,
                    allow_fewer: bool) -> None:
    """Fewer qualifying steps than asked for is an answer to a different question: refuse it."""
    if len(top) >= k or (top and allow_fewer):
        return
    n_eval = len(eval_rows(rows))
    n_nonfinite = sum(1 for r in rows if r.get(SR) is not None and _num(r.get(SR)) is None)
    found = (f"{len(rows)} rows, {n_eval} with a finite {SR} and an {EVAL_STEP}, {n_nonfinite} with a non-finite "
             f"(NaN/inf) or non-numeric {SR}, "
             f"{len({round(_num(r[EVAL_STEP])) for r in eval_rows(rows)})} distinct steps")
    if not top:
        raise DataError(f"no eval rows to rank ({found}, min_sr={min_sr})", path=where,
                        fix="wait for the eval watcher to log results, or lower --min_sr")
    raise DataError(f"only {len(top)} checkpoint step(s) qualify, --k asks for {k} ({found}, min_sr={min_sr})",
                    path=where, fix=f"ask for at most {len(top)} (select-top --k {len(top)}; select.k={len(top)} in "
                                    "a plan), lower min_sr, wait for more evals, or pass --allow_fewer to take the "
                                    f"{len(top)} there are")


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
                 "experiment_dir": _config_dir(r.config), "rows": r.history, "where": str(_log_file(r.run_dir)),
                 "notes": r.notes} for r in pool]
    api = _wandb_api(api)
    try:
        runs = list(api.runs(f"{entity}/{project}", filters={"group": group}))
        sources = [{"run": _run_path(r), "run_name": getattr(r, "name", None),
                    "experiment_dir": _config_dir(dict(getattr(r, "config", None) or {})),
                    "rows": _online_history(r, samples)} for r in runs]
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
    _require_enough(top, tagged, k=k, min_sr=min_sr, allow_fewer=allow_fewer,
                    where=", ".join(str(s.get("experiment_dir") or s.get("run")) for s in sources)[:500])
    for entry in top:
        src = sources[entry.pop(SOURCE)]
        exp = os.path.abspath(src["experiment_dir"]) if src.get("experiment_dir") else None
        entry.update(run=src.get("run"), run_name=src.get("run_name"), experiment_dir=exp,
                     checkpoint_path=os.path.join(exp, entry["checkpoint"]) if exp else None)
    if any(e["experiment_dir"] is None for e in top):
        notes.append("some selected runs logged no experiment dir: their checkpoint files were not checked")
    if check_files:
        _require_checkpoints(top, path=None,
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
