"""Reading an eval shard: ``metrics_eval.json``, the success test, the rollouts' trajectories and videos.

Shared by the exporter, the replay renderer and ``summarize`` (contracts §4.1-4.3).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from grail_cluster.core import safe_pickle
from grail_cluster.core.errors import DataError
from grail_cluster.tools.data import g1

TRAJ_SUBDIRS = ("", "trajectories", "export_render", "render_results")
VIDEO_SUBDIRS = ("", "vis", "videos", "render_results", "export_render", "trajectories")



DEFAULT_FPS = 25.0



def find_metrics(eval_dir: Path) -> Path:
    for cand in (eval_dir / "metrics_eval.json", eval_dir / "threshold_eval" / "metrics_eval.json"):
        if cand.is_file():
            return cand
    raise DataError("no metrics_eval.json (nor threshold_eval/metrics_eval.json)", path=eval_dir,
                    fix="point --eval_dir at a finished eval shard dir (eval/step_S/phase1_shard_i)")


METRIC_COLUMNS = ("terminated", "progress", "obj_pos_error", "obj_ori_error", "mpjpe_g", "mpjpe_l")


def read_metrics(path: Path, data: Any = None) -> dict[str, list]:
    """The per-motion parallel lists of ``eval/all_metrics_dict`` (validated).

    ``terminated`` is required: it is the success test itself, and every writer (SONIC's evaluator,
    the ``prepare_vis_shard`` stub) has it; reading its absence as "nothing terminated" would export
    every motion as a success. Another absent column takes its default (``progress`` 1.0: SONIC
    forces progress to 1 for a motion that did not terminate, contracts §4.2; the others None). A column
    that is present must have one entry per motion key, of the right type (numbers may be null or
    NaN: :func:`judge` decides what a non-finite value means).
    """
    fix = "re-run the eval shard; eval/all_metrics_dict holds parallel per-motion lists (contracts §4.2)"
    try:
        if data is None:  # a caller that needs the top-level scalars too parses the file once and passes it
            data = json.loads(path.read_text())
        table = data["eval/all_metrics_dict"]
        keys = table["motion_keys"]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read metrics_eval.json ({exc})", path=path, fix=fix) from None
    except ValueError as exc:
        raise DataError(f"malformed metrics_eval.json (invalid JSON: {exc})", path=path, fix=fix) from None
    except (KeyError, TypeError) as exc:
        raise DataError(f"malformed metrics_eval.json (no {exc!s} in eval/all_metrics_dict)", path=path, fix=fix) from None
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise DataError("malformed metrics_eval.json: eval/all_metrics_dict.motion_keys must be a list of "
                        "non-empty strings", path=path, fix=fix)
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise DataError(f"eval/all_metrics_dict.motion_keys lists {len(dup)} key(s) twice (e.g. {dup[0]!r})",
                        path=path, fix=fix)
    n = len(keys)
    out: dict[str, list] = {"motion_keys": list(keys)}
    for name, default in (("terminated", False), ("progress", 1.0), ("obj_pos_error", None),
                          ("obj_ori_error", None), ("mpjpe_g", None), ("mpjpe_l", None)):
        col = table.get(name)
        if col is None and name == "terminated":
            raise DataError("malformed metrics_eval.json: eval/all_metrics_dict has no `terminated` list, so no "
                            "motion's success can be told", path=path, fix=fix)
        if col is None:
            col = [default] * n
        if not isinstance(col, list) or len(col) != n:
            raise DataError(f"eval/all_metrics_dict.{name} has {len(col) if isinstance(col, list) else '?'} "
                            f"entries for {n} motion_keys", path=path, fix=fix)
        for i, v in enumerate(col):
            # bool("false") is True: a terminated flag that is not a JSON boolean is not guessed at.
            bad = (not isinstance(v, bool) and v not in (0, 1)) if name == "terminated" else (
                v is not None and (isinstance(v, bool) or not isinstance(v, int | float)))
            if bad:
                want = "a boolean" if name == "terminated" else "a number or null"
                raise DataError(f"eval/all_metrics_dict.{name}[{i}] (motion {keys[i]!r}) is {v!r}, not {want}",
                                path=path, fix=fix)
        out[name] = col
    # Not a per-motion column: which columns took their default (recorded in the manifest).
    out["absent_columns"] = [name for name in METRIC_COLUMNS if table.get(name) is None]
    return out


def judge(row: dict, min_progress: float, obj_pos_threshold: float | None) -> tuple[bool, str | None]:
    """(success, rejection reason). A reason means the metrics cannot show success either way.

    The rule: a terminated motion failed. Otherwise ``progress`` must be a finite number >= min_progress
    (NaN or null cannot be shown to reach it, so such a motion is rejected, never exported), and with
    a threshold ``obj_pos_error`` must be a finite number <= it (NaN or null: rejected).
    """
    if bool(row["terminated"]):
        return False, None
    progress = row["progress"]
    if progress is None or not math.isfinite(float(progress)):
        return False, f"progress is {_show(progress)}: it cannot be shown to be >= min_progress {min_progress}"
    if float(progress) < min_progress:
        return False, None
    if obj_pos_threshold is not None:
        err = row["obj_pos_error"]
        if err is None or not math.isfinite(float(err)):
            return False, (f"obj_pos_error is {_show(err)}: it cannot be shown to be <= --obj_pos_threshold "
                           f"{obj_pos_threshold}")
        return float(err) <= obj_pos_threshold, None
    return True, None


def _show(v: Any) -> str:
    return "missing (null)" if v is None else repr(float(v))


def find_trajectory(eval_dir: Path, key: str, env_idx: int) -> Path | None:
    """``<key>.trajectory.pkl`` first, then the recorder's ``{env_idx:06d}`` form (§4.1)."""
    for name in (f"{key}.trajectory.pkl", f"{env_idx:06d}.trajectory.pkl"):
        for sub in TRAJ_SUBDIRS:
            cand = eval_dir / sub / name
            if cand.is_file():
                return cand
    return None


def find_video(eval_dir: Path, key: str, env_idx: int) -> Path | None:
    for name in (f"{key}.mp4", f"{env_idx:06d}.mp4"):
        for sub in VIDEO_SUBDIRS:
            cand = eval_dir / sub / name
            if cand.is_file():
                return cand
    return None


def _array(traj: dict, name: str, path: Path, shape_tail: tuple, frames: int | None) -> np.ndarray:
    arr = traj.get(name)
    try:
        arr = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1 + len(shape_tail) or any(
            want is not None and got != want for got, want in zip(arr.shape[1:], shape_tail, strict=True)):
        raise DataError(f"trajectory field {name!r} is missing or has the wrong shape", path=path,
                        fix=f"expected ({'F'},{','.join(str(s) if s else 'J' for s in shape_tail)})")
    if frames is not None and len(arr) != frames:
        raise DataError(f"trajectory field {name!r} has {len(arr)} frames, dof_pos has {frames}", path=path)
    return arr


def load_trajectory(path: Path) -> dict:
    traj = safe_pickle.load(path)
    if not isinstance(traj, dict):
        raise DataError("trajectory pickle is not a dict", path=path)
    fmt = traj.get("quat_format", "wxyz")
    if fmt != "wxyz":
        raise DataError(f"unsupported quat_format {fmt!r} (the recorder writes wxyz)", path=path)
    dof = _array(traj, "dof_pos", path, (None,), None)
    if dof.shape[1] < g1.NUM_BODY_DOF or len(dof) == 0:
        raise DataError(f"dof_pos has {dof.shape[1]} joints and {len(dof)} frames; need >= 29 joints", path=path)
    F = len(dof)
    fps = traj.get("fps")
    if fps is None:
        fps = DEFAULT_FPS  # the recorder's rate (contracts §4.3) when a trajectory does not say
    elif isinstance(fps, bool) or not isinstance(fps, int | float | np.integer | np.floating):
        raise DataError(f"trajectory fps is {fps!r}, not a number", path=path,
                        fix="re-record the trajectory (the recorder writes fps = 25.0)")
    out = {"dof_pos": dof, "fps": float(fps),
           "root_pos_w": _array(traj, "root_pos_w", path, (3,), F),
           "root_quat_w": _array(traj, "root_quat_w", path, (4,), F)}
    for name, tail in (("object_pos_w", (3,)), ("object_quat_w", (4,)), ("table_pos_w", (3,)), ("table_quat_w", (4,))):
        out[name] = None if traj.get(name) is None else _array(traj, name, path, tail, F)
    return out


TRAJECTORY_ARRAYS = ("dof_pos", "root_pos_w", "root_quat_w", "object_pos_w", "object_quat_w", "table_pos_w",
                     "table_quat_w")


def _count_bad(arr: np.ndarray) -> str | None:
    """``"3 NaN, 1 Inf (first at frame 7)"`` for an array with non-finite values, else None."""
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
    first = int(np.argwhere(bad)[0][0]) if arr.ndim else 0
    return f"{n_nan} NaN, {n_inf} Inf (first at frame {first})"


def trajectory_defects(traj: dict) -> list[str]:
    """Why a (well-formed) trajectory cannot be exported: non-finite values, zero-length quaternions,
    a non-positive or non-finite fps. Empty when it is fine."""
    out = []
    fps = traj["fps"]
    if not math.isfinite(fps) or fps <= 0:
        out.append(f"fps is {fps!r}; it must be a finite number > 0")
    for name in TRAJECTORY_ARRAYS:
        arr = traj.get(name)
        if arr is None:
            continue
        bad = _count_bad(arr)
        if bad:
            out.append(f"trajectory {name} holds {bad}")
        elif name.endswith("quat_w") and (np.linalg.norm(arr, axis=-1) < 1e-6).any():
            first = int(np.argmax(np.linalg.norm(arr, axis=-1) < 1e-6))
            out.append(f"trajectory {name} has a zero-length quaternion (first at frame {first})")
    return out


def output_defects(entries: dict[str, Any]) -> list[str]:
    """Non-finite numbers anywhere in what would be written (``{"robot": {...}, ...}``), by field."""
    out: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, np.ndarray):
            if value.dtype.kind in "fc":
                bad = _count_bad(value)
                if bad:
                    out.append(f"{where} holds {bad}")
            elif value.dtype.kind == "O":
                walk(list(value.reshape(-1)), where)
        elif isinstance(value, float | np.floating) and not math.isfinite(float(value)):
            out.append(f"{where} is {float(value)!r}")

    for name, entry in entries.items():
        walk(entry, name)
    return out

