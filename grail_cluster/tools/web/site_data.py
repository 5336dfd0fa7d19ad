"""The viewer's ``manifest.json``: every motion of a library with its review metrics (see ``generate``)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grail_cluster import __version__
from grail_cluster.core.errors import DataError, GrailError
from grail_cluster.tools.data.io import finite_or_none as _num
from grail_cluster.tools.web.library_meta import grail_frames, load_meta, object_class

EXPORT_MANIFEST = "export_manifest.json"



METRICS = ("progress", "obj_pos_error", "obj_ori_error", "mpjpe_g", "mpjpe_l")



_STEP_RE = re.compile(r"^step_(\d+)$")
_SHARD_RE = re.compile(r"^(?:phase1_)?shard_(\d+)$")



def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _read_json(path: Path) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read JSON: {exc}", path=path, fix="regenerate this file or remove it") from None



# ----------------------------------------------------------------------------- review metrics


def _number_in_path(path: Path, pattern: re.Pattern) -> int | None:
    """The number of the innermost path part matching ``pattern`` (step_000500, shard_3, ...)."""
    for part in reversed(path.parts):
        m = pattern.match(part)
        if m:
            return int(m.group(1))
    return None


def _step_from_path(path: Path) -> int | None:
    return _number_in_path(path, _STEP_RE)


def _shard_from_path(path: Path) -> int | None:
    return _number_in_path(path, _SHARD_RE)


def eval_rows(path: Path) -> dict[str, dict[str, Any]]:
    """Per-motion rows of a ``metrics_eval.json`` (its ``eval/all_metrics_dict`` parallel lists).

    Tolerant: a column whose length differs from ``motion_keys`` is ignored, not trusted."""
    data = _read_json(path)
    table = data.get("eval/all_metrics_dict") if isinstance(data, dict) else None
    keys = table.get("motion_keys") if isinstance(table, dict) else None
    if not isinstance(keys, list):
        raise DataError("not a metrics_eval.json: no eval/all_metrics_dict.motion_keys list", path=path,
                        fix="pass the metrics_eval.json of a finished eval shard")
    n = len(keys)

    def col(name: str) -> list | None:
        c = table.get(name)
        return c if isinstance(c, list) and len(c) == n else None

    term, reason = col("terminated"), col("terminate_reason")
    cols = {name: col(name) for name in METRICS}
    rows: dict[str, dict[str, Any]] = {}
    for i, key in enumerate(keys):
        row: dict[str, Any] = {"env_idx": i}
        if term is not None:
            row["terminated"] = bool(term[i])
            row["success"] = not row["terminated"]
        if reason is not None and isinstance(reason[i], str):
            row["terminate_reason"] = reason[i]
        for name, c in cols.items():
            if c is not None:
                row[name] = _num(c[i])
        rows[str(key)] = row
    return rows


def _metrics_file(path: Path) -> Path | None:
    """``<dir>/metrics_eval.json`` (or ``threshold_eval/``) for a dir, the path for a file."""
    if path.is_file():
        return path
    for cand in (path / "metrics_eval.json", path / "threshold_eval" / "metrics_eval.json"):
        if cand.is_file():
            return cand
    return None


def _merge_row(rows: dict[str, dict], key: str, new: dict[str, Any], *, fill_only: bool) -> None:
    row = rows.setdefault(key, {})
    for name, value in new.items():
        if value is None:
            continue
        if not fill_only or row.get(name) is None:
            row[name] = value


def collect_metrics(root: Path, extra: Sequence[str | Path] = ()) -> tuple[dict[str, dict], dict[str, Any]]:
    """Per-key review fields and where they came from (see the module docstring)."""
    rows: dict[str, dict] = {}
    info: dict[str, Any] = {"export_manifest": None, "shard_manifests": [], "eval_metrics": [], "step": None,
                            "warnings": []}
    man = _read_json(root / EXPORT_MANIFEST)
    evals: list[tuple[Path, int | None, set[str] | None]] = []  # (metrics file, shard, keys it may fill)
    if isinstance(man, dict) and isinstance(man.get("exported_motions"), list):
        info["export_manifest"] = str(root / EXPORT_MANIFEST)
        info["step"] = _int(man.get("step"))
        for m in man["exported_motions"]:
            if not isinstance(m, dict) or not isinstance(m.get("motion_key"), str):
                continue
            # Listed = exported = it passed the export's success test (not terminated, progress...).
            rows[m["motion_key"]] = {"success": True, "terminated": False, "env_idx": _int(m.get("env_idx")),
                                     **{name: _num(m.get(name)) for name in METRICS}}
        step_dir = root.parent
        if "num_shards" in man or root.name == "merged":
            owned: dict[int, set[str]] = {}
            shards = sorted((int(p.name[6:]), p) for p in step_dir.glob("shard_*")
                            if p.name[6:].isdigit() and (p / EXPORT_MANIFEST).is_file())
            for rank, shard in shards:
                try:
                    sm = _read_json(shard / EXPORT_MANIFEST)
                except DataError as exc:
                    info["warnings"].append(exc.render())
                    continue
                if not isinstance(sm, dict) or not isinstance(sm.get("exported_motions"), list):
                    continue
                info["shard_manifests"].append(str(shard / EXPORT_MANIFEST))
                mine = owned.setdefault(rank, set())
                for m in sm["exported_motions"]:
                    key = m.get("motion_key") if isinstance(m, dict) else None
                    if key in rows and rows[key].get("shard") is None:
                        rows[key]["shard"] = rank  # first shard wins, as in the merge
                        mine.add(key)
                src = sm.get("source_eval_dir")
                metrics = _metrics_file(Path(src)) if isinstance(src, str) else None
                if metrics is not None:
                    evals.append((metrics, rank, mine))
                if info["step"] is None:
                    info["step"] = _int(sm.get("step"))
        else:
            rank = _shard_from_path(root)
            src = man.get("source_eval_dir")
            if rank is None and isinstance(src, str):
                rank = _shard_from_path(Path(src))
            for row in rows.values():
                row["shard"] = rank
            metrics = _metrics_file(Path(src)) if isinstance(src, str) else None
            if metrics is not None:
                evals.append((metrics, rank, set(rows)))
    for item in extra:
        path = Path(item).expanduser().resolve()
        metrics = _metrics_file(path)
        if metrics is None:
            raise DataError("no metrics_eval.json here", path=path,
                            fix="--metrics takes a metrics_eval.json file or an eval shard dir holding one")
        evals.append((metrics, _shard_from_path(metrics.parent), None))
    if info["step"] is None:
        info["step"] = _step_from_path(root)
    for metrics, rank, keys in evals:
        try:
            found = eval_rows(metrics)
        except DataError as exc:
            if keys is None:  # given explicitly: the user wants to know
                raise
            info["warnings"].append(exc.render())
            continue
        info["eval_metrics"].append(str(metrics))
        step = _step_from_path(metrics)
        for key, row in found.items():
            if keys is not None and key not in keys:
                continue
            extra_fields = {"shard": rank, "step": step} if keys is None else {}
            # Export manifests are authoritative for what they hold; eval rows fill the gaps
            # (mpjpe_l, terminate_reason) and, for --metrics, everything else.
            _merge_row(rows, key, {**row, **extra_fields}, fill_only=keys is not None or key in rows)
    return rows, info


# ----------------------------------------------------------------------------- the manifest


def build_manifest(motion_lib: str | Path, *, title: str | None = None, metrics: Sequence[str | Path] = (),
                   use_cache: bool = True) -> tuple[dict[str, Any], dict[str, Path], dict[str, Any]]:
    """(manifest, stem -> video file, stats) of a motion library."""
    from grail_cluster.core.library import scan_library

    root = Path(motion_lib).expanduser().resolve()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    index = scan_library(root, use_cache=use_cache)
    timings["index_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    keys = [m.key for m in index.motions]
    metas, meta_errors, meta_parsed = load_meta(root, keys, use_cache=use_cache)
    timings["meta_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows, info = collect_metrics(root, metrics)
    timings["metrics_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    videos: dict[str, Path] = {}
    vis = root / "vis"
    if vis.is_dir():
        with os.scandir(vis) as it:
            for entry in it:
                if entry.name.endswith(".mp4") and entry.is_file():  # is_file follows links: no dangling ones
                    videos[entry.name[:-4]] = Path(entry.path)

    timings["videos_s"] = time.perf_counter() - t0

    lib_step = info["step"]
    motions: list[dict[str, Any]] = []
    n_success = n_failed = 0
    frames_read = 0
    for rec in index.motions:
        key = rec.key
        m: dict[str, Any] = {"name": key}
        frames = rec.frames
        if frames is None and rec.error is None:
            try:  # the index knows dof/root_trans_offset/pose_aa/root_rot; GRAIL also reads joint_pos & co.
                frames = grail_frames(root / rec.robot, key)
                frames_read += 1
            except GrailError:
                frames = None
        if frames is not None:
            m["frames"] = int(frames)
        if key in videos:
            m["video"] = f"vis/{key}.mp4"
        meta = metas.get(key)
        if meta:
            m["meta"] = meta
        object_name = (meta or {}).get("object_name") or rec.object_name
        row = rows.get(key, {})
        success = row.get("success")
        m.update({
            "object": object_class(key, object_name),
            "success": success,
            "terminated": row.get("terminated"),
            "terminate_reason": row.get("terminate_reason"),
            **{name: row.get(name) for name in METRICS},
            "step": row["step"] if row.get("step") is not None else lib_step,
            "shard": row.get("shard"),
            "env_idx": row.get("env_idx"),
            "fps": _num(rec.fps),
        })
        if rec.error or key in meta_errors:
            m["error"] = rec.error or meta_errors[key]
        n_success += success is True
        n_failed += success is False
        motions.append(m)

    known = n_success + n_failed
    # The run's truth about this checkpoint (eval metrics of every shard), not the library's own
    # counts: a merged library holds only successes, so num_success/num_motions is always 100%.
    from grail_cluster.tools.data.headline import library_headline

    headline = library_headline(root)
    manifest: dict[str, Any] = {
        "title": title or root.name,
        "source": str(root),
        "num_motions": len(motions),
        "num_with_video": sum(1 for m in motions if "video" in m),
        "num_success": n_success,
        "num_failed": n_failed,
        "success_rate": round(n_success / known, 6) if known else None,
        "step": lib_step,
        "headline": headline,
        # Export/merged libraries store meta table_quat (and robot root_rot) as xyzw (contracts §1.9).
        "table_quat_convention": "xyzw" if info["export_manifest"] else "wxyz",
        "metrics_sources": {k: info[k] for k in ("export_manifest", "shard_manifests", "eval_metrics")},
        "generator": f"grail-cluster {__version__}",
        "motions": motions,
    }
    stats = {"index_cache": index.cache, "index_parsed": index.parsed, "meta_parsed": meta_parsed,
             "frames_read": frames_read, "warnings": info["warnings"],
             "errors": sum(1 for m in motions if "error" in m),
             "error_motions": [{"motion": m["name"], "error": m["error"].split("\n")[0]} for m in motions if "error" in m],
             **{k: round(v, 4) for k, v in timings.items()}}
    return manifest, {k: videos[k] for k in (m["name"] for m in motions) if k in videos}, stats

