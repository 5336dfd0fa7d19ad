"""Eval rows from a SONIC experiment dir's own logs: TensorBoard events and the eval watcher's JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import DataError
from grail_cluster.tools.data.io import require_dir
from grail_cluster.tools.data.select_rank import (
    EVAL_STEP,
    MPJPE_G,
    MPJPE_L,
    OBJ_POS,
    SR,
)


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



EXP_FIX = "pass SONIC's experiment dir (logs_rl/<project>/<experiment>-<timestamp>)"


def experiment_rows(exp: str | Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Eval rows of a SONIC experiment dir: TensorBoard scalars, overridden by the watcher's JSON."""
    exp = Path(exp)
    require_dir(exp, "experiment dir", EXP_FIX)
    rows = _tb_rows(exp, notes)
    for step, row in _watcher_rows(exp).items():
        rows.setdefault(step, {EVAL_STEP: step}).update(row)
    return [rows[s] for s in sorted(rows)]

