"""Ranking eval rows into the top k checkpoints (contracts §5.1), and the checks around it.

A row is a dict of W&B/TensorBoard scalars (``eval_step``, ``eval/success/success_rate`` and the
tiebreak metrics), whichever source it came from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import DataError
from grail_cluster.tools.data.io import finite_or_none as _num

SR = "eval/success/success_rate"
MPJPE_L = "eval/all/mpjpe_l"
MPJPE_G = "eval/all/mpjpe_g"
OBJ_POS = "eval/all/obj_pos_error"
EVAL_STEP = "eval_step"
SOURCE = "_source"  # which run of a sweep a row came from (select_across); not in the output



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



def require_checkpoints(top: list[dict[str, Any]], *, path: Any, fix: str) -> None:
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



def require_enough(top: list[dict[str, Any]], rows: list[dict[str, Any]], *, k: int, min_sr: float, where: Any,
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

