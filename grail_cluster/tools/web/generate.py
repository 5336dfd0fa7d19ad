"""``web``: a static, self-contained viewer of a motion library (contracts §5.6), for reviewers.

Writes ``index.html``, ``main.js``, ``style.css`` (copied from ``assets/``), ``manifest.json`` and
``vis/<stem>.mp4`` (relative symlinks to the library's videos, or copies with ``copy_videos``).

``manifest.json`` keeps GRAIL's schema -- ``title, source, num_motions, num_with_video,
motions[{name, frames?, video?, meta?{object_name, table_pos, table_quat, table_size}}]`` sorted by
stem -- and adds what a reviewer filters on, per motion: ``object`` (class from the key, else the
meta ``object_name``), ``success``/``terminated``/``terminate_reason``, ``progress``,
``obj_pos_error``, ``obj_ori_error``, ``mpjpe_g``, ``mpjpe_l``, ``step``, ``shard``, ``env_idx`` and
``fps``; ``null`` where unknown. They come from, in order:

1. the library's own ``export_manifest.json`` (``exported_motions``: every listed motion passed the
   export's success test);
2. for a merged library (``.../step_S/merged``), the sibling ``shard_<r>/export_manifest.json``
   files (shard of origin: the lowest rank listing the key, as the merge's first-shard-wins rule)
   and, where it still exists, each shard's ``source_eval_dir/metrics_eval.json``
   (``terminated``, ``terminate_reason``, ``mpjpe_l``);
3. ``metrics_eval.json`` files given explicitly (``--metrics``), e.g. to review a source library
   with its eval results, failures included.

A plain library without any of them gets the GRAIL fields and ``null`` metrics.

Speed (20,000 motions): frames and object names come from the library index cache
(``.grail_index.json``, :func:`grail_cluster.core.library.scan_library`); the allow-listed meta fields
are cached per meta file (size, mtime) in the user cache dir. A warm run lists directories, reads
two JSON caches and writes the site. Pickles are read only through :mod:`grail_cluster.core.safe_pickle`.

Output is never visible half-written: a new site is built in a temp dir next to the output and
renamed into place; an existing one is updated file by file, each through a temp file and a rename,
with ``manifest.json`` consistent with ``vis/`` at every moment (see :func:`publish_site`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from grail_cluster import __version__
from grail_cluster.core import safe_pickle
from grail_cluster.core.errors import EXIT_OK, ConfigError, DataError, GrailError
from grail_cluster.tools.data.io import atomic_dir
from grail_cluster.tools.data.io import finite_or_none as _num

ASSETS = ("index.html", "main.js", "style.css")
MANIFEST = "manifest.json"
EXPORT_MANIFEST = "export_manifest.json"
META_KEYS = ("object_name", "table_pos", "table_quat", "table_size")
FRAME_KEYS = ("joint_pos", "dof_pos", "poses", "qpos", "body_pos", "root_trans_offset")
METRICS = ("progress", "obj_pos_error", "obj_ori_error", "mpjpe_g", "mpjpe_l")
META_CACHE_VERSION = 1
PARALLEL_THRESHOLD = 5000  # uncached meta pickles above which a process pool pays off (pool start ~0.3 s)
_STEP_RE = re.compile(r"^step_(\d+)$")
_SHARD_RE = re.compile(r"^(?:phase1_)?shard_(\d+)$")


def assets_dir() -> Path:
    return Path(__file__).resolve().with_name("assets")


# ----------------------------------------------------------------------------- small helpers




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


def object_class(key: str, object_name: str | None = None) -> str | None:
    """The object class of a motion key, else the meta ``object_name``.

    Release keys ``<scene>__<obj>_<n>__<idx>`` give ``<obj>``; internal keys
    ``<obj>_<n>_jason_...`` give the part before ``_jason_`` minus ``_<n>`` (contracts §1.1).
    """
    parts = key.split("__")
    if len(parts) >= 3 and parts[-1].isdigit():
        name = re.sub(r"_\d+$", "", "__".join(parts[1:-1]))
        if name:
            return name
    if "_jason_" in key:
        name = re.sub(r"_\d+$", "", key.split("_jason_", 1)[0])
        if name:
            return name
    return object_name or None


def _clean_meta(raw: Any) -> dict[str, Any] | None:
    """The allow-listed meta fields as JSON values (arrays become lists of floats)."""
    if not isinstance(raw, dict):
        return None
    out: dict[str, Any] = {}
    for name in META_KEYS:
        if name not in raw or raw[name] is None:
            continue
        value = raw[name]
        if name == "object_name":
            out[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            continue
        try:
            import numpy as np

            arr = np.asarray(value, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            continue
        out[name] = [v if math.isfinite(v) else None for v in arr.tolist()]
    return out


def _inner(obj: Any, key: str) -> dict | None:
    if not isinstance(obj, dict):
        return None
    if len(obj) == 1:
        (only,) = obj.values()
        if isinstance(only, dict):
            return only
    if isinstance(obj.get(key), dict):
        return obj[key]
    return obj


def grail_frames(path: str | Path, key: str) -> int | None:
    """GRAIL's frame count: the length of the first of ``FRAME_KEYS`` in the robot pickle."""
    inner = _inner(safe_pickle.load(path), key)
    if inner is None:
        return None
    for name in FRAME_KEYS:
        arr = inner.get(name)
        if arr is not None and hasattr(arr, "__len__"):
            try:
                return len(arr)
            except TypeError:
                continue
    return None


# ----------------------------------------------------------------------------- meta (cached)


def _read_meta_many(root: str, jobs: list[tuple[str, str]]) -> list[tuple[dict | None, str | None]]:
    out: list[tuple[dict | None, str | None]] = []
    for _key, rel in jobs:
        try:
            out.append((_clean_meta(safe_pickle.load(os.path.join(root, rel))), None))
        except GrailError as exc:
            out.append((None, exc.render()))
    return out


def _meta_cache_path(root: Path) -> Path:
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "grail-cluster" / "web"
    return base / f"{digest}.json"


def _list_meta(root: Path) -> dict[str, tuple[str, list[int]]]:
    """stem -> (relative path, [size, mtime_ns]) of ``meta/*.pkl``."""
    out: dict[str, tuple[str, list[int]]] = {}
    meta = root / "meta"
    if not meta.is_dir():
        return out
    with os.scandir(meta) as it:
        for entry in it:
            if entry.name.endswith(".pkl") and entry.is_file():
                st = entry.stat()
                out.setdefault(entry.name[:-4], ("meta/" + entry.name, [st.st_size, st.st_mtime_ns]))
    return out


def load_meta(root: Path, keys: Sequence[str], *, use_cache: bool = True,
              workers: int | None = None) -> tuple[dict[str, dict | None], dict[str, str], int]:
    """Allow-listed meta per key, errors per key, and how many meta pickles were parsed."""
    listed = _list_meta(root)
    cache_path = _meta_cache_path(root)
    cached: dict[str, Any] = {}
    if use_cache:
        try:
            data = json.loads(cache_path.read_text())
            if data.get("version") == META_CACHE_VERSION and data.get("root") == str(root):
                cached = data.get("motions", {})
        except (OSError, ValueError, AttributeError):
            cached = {}
    metas: dict[str, dict | None] = {}
    errors: dict[str, str] = {}
    new_cache: dict[str, Any] = {}
    todo: list[tuple[str, str]] = []
    for key in keys:
        hit = listed.get(key)
        if hit is None:
            metas[key] = None
            continue
        rel, sig = hit
        c = cached.get(key)
        if c is not None and c.get("sig") == sig and c.get("rel") == rel:
            metas[key] = c.get("meta")
            new_cache[key] = c
        else:
            todo.append((key, rel))
    if todo:
        workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
        if workers > 1 and len(todo) >= PARALLEL_THRESHOLD:
            step = max(256, len(todo) // (workers * 4))
            chunks = [todo[i:i + step] for i in range(0, len(todo), step)]
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = [r for part in pool.map(_read_meta_many, [str(root)] * len(chunks), chunks) for r in part]
        else:
            results = _read_meta_many(str(root), todo)
        for (key, rel), (meta, error) in zip(todo, results, strict=True):
            metas[key] = meta
            if error:
                errors[key] = error
            else:  # errors are not cached: a fixed file is re-read next time
                new_cache[key] = {"rel": rel, "sig": listed[key][1], "meta": meta}
    if use_cache and (todo or len(new_cache) != len(cached)):
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_path.parent, prefix=".web-meta.", suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump({"version": META_CACHE_VERSION, "root": str(root), "motions": new_cache}, fh,
                          separators=(",", ":"))
            os.replace(tmp, cache_path)
        except OSError:
            pass  # a cache is an optimisation only
    return metas, errors, len(todo)


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
    from grail_cluster.runs.headline import library_headline

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


# ----------------------------------------------------------------------------- writing the site


def _check_output(out: Path, lib: Path) -> None:
    if out == lib or lib.is_relative_to(out):
        raise ConfigError("the output dir would replace the motion library", path=out,
                          fix="choose an output dir outside the library, e.g. <library>/../web")
    if out.exists():
        if not out.is_dir():
            raise ConfigError("output exists and is not a directory", path=out, fix="choose another --output")
        if not (out / MANIFEST).exists() and any(out.iterdir()):
            raise ConfigError("output dir is not empty and holds no viewer (manifest.json); refusing to replace it",
                              path=out, fix="choose a new or empty dir, or one a previous `grail-cluster web` wrote")


def _manifest_text(manifest: dict[str, Any], *, indent: int | None = None) -> str:
    # json.dumps encodes in C in one go; json.dump to a file would take the pure-Python path (2x slower).
    return json.dumps(manifest, separators=None if indent else (",", ":"), indent=indent, allow_nan=False,
                      ensure_ascii=False)


def _replace_file(dst: Path, write) -> None:
    """``write(tmp)`` a sibling temp file, then rename it over ``dst`` (readers see old or new, never half)."""
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_text(dst: Path, text: str) -> None:
    _replace_file(dst, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class _VideoPlan:
    """What ``vis/<stem>.mp4`` must be: a relative symlink (its target text) or a copy (source stat)."""

    def __init__(self, videos: dict[str, Path], final: Path, copy_videos: bool):
        self.copy = copy_videos
        self.want: dict[str, tuple[Path, str | None]] = {}
        rel_dirs: dict[Path, str] = {}  # one realpath/relpath per source dir, not per video
        for stem, src in videos.items():
            target = None
            if not copy_videos:
                rel = rel_dirs.get(src.parent)
                if rel is None:
                    rel = rel_dirs[src.parent] = os.path.relpath(os.path.realpath(src.parent), final / "vis")
                target = f"{rel}/{src.name}"
            self.want[f"{stem}.mp4"] = (src, target)

    def make(self, name: str, dst: Path) -> None:
        src, target = self.want[name]
        if target is None:
            shutil.copy2(src, dst)  # copy2 keeps the mtime, so an unchanged copy is recognised next time
        else:
            os.symlink(target, dst)

    def current(self, name: str, entry: os.DirEntry) -> bool:
        src, target = self.want[name]
        try:
            if target is not None:
                return entry.is_symlink() and os.readlink(entry.path) == target
            if entry.is_symlink() or not entry.is_file():
                return False
            a, b = entry.stat(), os.stat(src)
            return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns
        except OSError:
            return False


def write_site(out_dir: Path, manifest: dict[str, Any], videos: dict[str, Path], *,
               copy_videos: bool = False, final_dir: Path | None = None) -> None:
    """Write the viewer into ``out_dir`` (an empty dir). Relative links are computed for
    ``final_dir`` (where ``out_dir`` will be renamed to; a sibling of the same depth)."""
    plan = _VideoPlan(videos, Path(os.path.realpath(final_dir or out_dir)), copy_videos)
    for name in ASSETS:
        shutil.copyfile(assets_dir() / name, out_dir / name)
    vis = out_dir / "vis"
    vis.mkdir()
    for name in plan.want:
        plan.make(name, vis / name)
    (out_dir / MANIFEST).write_text(_manifest_text(manifest), encoding="utf-8")


def publish_site(out: Path, manifest: dict[str, Any], videos: dict[str, Path], *,
                 copy_videos: bool = False) -> dict[str, Any]:
    """Write or update the viewer at ``out``; never visible half-written.

    A new (or empty) ``out`` is built in a temp dir and renamed into place. An existing viewer is
    updated in place, one atomic rename per file, in an order that keeps it consistent for someone
    browsing it meanwhile: missing or changed ``vis/`` entries first, then the assets, then
    ``manifest.json``, and only then the videos the new manifest no longer lists are removed. So a
    re-run on an unchanged library rewrites three assets and one manifest, not 20,000 links.
    """
    vis = out / "vis"
    fresh = not out.exists() or not any(out.iterdir())
    if not fresh and (vis.is_symlink() or (vis.exists() and not vis.is_dir())):
        fresh = True  # never write through a vis/ that is a link to somewhere else
    if fresh:
        with atomic_dir(out) as tmp:
            write_site(tmp, manifest, videos, copy_videos=copy_videos, final_dir=out)
        return {"mode": "new", "videos_written": len(videos), "videos_removed": 0}
    plan = _VideoPlan(videos, Path(os.path.realpath(out)), copy_videos)
    vis.mkdir(exist_ok=True)
    with os.scandir(vis) as it:
        have = {e.name: e for e in it}
    written = 0
    for name in plan.want:
        entry = have.get(name)
        if entry is None or not plan.current(name, entry):
            _replace_file(vis / name, lambda tmp, name=name: plan.make(name, tmp))
            written += 1
    for name in ASSETS:
        _replace_file(out / name, lambda tmp, name=name: shutil.copyfile(assets_dir() / name, tmp))
    _write_text(out / MANIFEST, _manifest_text(manifest))
    removed = 0
    for name, entry in have.items():
        stale_tmp = name.startswith(".") and ".tmp-" in name  # left by an interrupted run
        if name not in plan.want and (name.endswith(".mp4") or stale_tmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
            removed += 1
    return {"mode": "update", "videos_written": written, "videos_removed": removed}


def _output_path(output: str | Path) -> Path:
    out = Path(os.path.abspath(os.path.expanduser(output)))
    return Path(os.path.realpath(out.parent)) / out.name


def generate(motion_lib: str | Path, output: str | Path, *, copy_videos: bool = False, title: str | None = None,
             metrics: Sequence[str | Path] = (), use_cache: bool = True) -> dict[str, Any]:
    """Build (or update) the viewer of ``motion_lib`` at ``output``; return a summary."""
    t_all = time.perf_counter()
    lib = Path(motion_lib).expanduser().resolve()
    out = _output_path(output)
    _check_output(out, lib)
    manifest, videos, stats = build_manifest(lib, title=title, metrics=metrics, use_cache=use_cache)
    t0 = time.perf_counter()
    written = publish_site(out, manifest, videos, copy_videos=copy_videos)
    stats["write_s"] = round(time.perf_counter() - t0, 4)
    return {
        "output": str(out),
        "manifest": str(out / MANIFEST),
        "title": manifest["title"],
        "source": manifest["source"],
        "num_motions": manifest["num_motions"],
        "num_with_video": manifest["num_with_video"],
        "num_success": manifest["num_success"],
        "num_failed": manifest["num_failed"],
        "success_rate": manifest["success_rate"],
        "step": manifest["step"],
        "headline": manifest["headline"],
        "videos": "copy" if copy_videos else "symlink",
        "metrics_sources": manifest["metrics_sources"],
        **written,
        **stats,
        "seconds": round(time.perf_counter() - t_all, 4),
    }


_STEP_DIR = re.compile(r"^(p\d{3,}_)?step_\d{6,}$")


def generate_run_site(web_dir: str | Path, libraries: Sequence[tuple], *,
                      title: str | None = None, copy_videos: bool = False) -> dict[str, Any]:
    """One viewer per checkpoint step, ``web_dir/step_<S:06d>/`` (``(step, library)``; a third item
    names the dir instead, e.g. ``p001_step_<S>`` for a sweep's winners), plus a small index page
    (``index.html`` linking them, ``manifest.json`` listing them). Each viewer is published as
    :func:`publish_site` does, then the index files are replaced, then viewers of steps no longer
    listed are removed."""
    web = _output_path(web_dir)
    for _, lib, *_ in libraries:
        _check_output(web, Path(lib).resolve())
    built = []
    for step, lib, *named in libraries:
        name = named[0] if named else f"step_{int(step):06d}"
        manifest, videos, stats = build_manifest(lib, title=f"{title or 'GRAIL'} · step {int(step)}")
        if manifest["step"] is None:
            manifest["step"] = int(step)
            for m in manifest["motions"]:
                m["step"] = m["step"] if m["step"] is not None else int(step)
        built.append((name, int(step), manifest, videos, stats))
    sites = [_site_row(name, step, man) for name, step, man, _, _ in built]
    index = {"title": title or "GRAIL", "kind": "sites", "generator": f"grail-cluster {__version__}",
             "num_motions": sum(s["num_motions"] for s in sites), "num_with_video": sum(s["num_with_video"] for s in sites),
             "sites": sites}
    web.mkdir(parents=True, exist_ok=True)
    for name, _, manifest, videos, stats in built:
        if (web / name).exists():
            _check_output(web / name, Path(manifest["source"]))
        stats.update(publish_site(web / name, manifest, videos, copy_videos=copy_videos))
    _replace_file(web / "style.css", lambda tmp: shutil.copyfile(assets_dir() / "style.css", tmp))
    _write_text(web / "index.html", _sites_page(index))
    _write_text(web / MANIFEST, _manifest_text(index, indent=1))
    keep = {name for name, *_ in built}
    for old in web.iterdir():
        if _STEP_DIR.match(old.name) and old.name not in keep and (old / MANIFEST).is_file() and not old.is_symlink():
            shutil.rmtree(old)
    return {"output": str(web), "manifest": str(web / MANIFEST), "sites": sites,
            "stats": {name: stats for name, _, _, _, stats in built}}


def _site_row(name: str, step: int, man: dict[str, Any]) -> dict[str, Any]:
    """One checkpoint of the index: the headline numbers (eval metrics of every shard), then the library."""
    h = man.get("headline") or {}
    return {"step": step, "path": f"{name}/", "num_motions": man["num_motions"],
            "num_with_video": man["num_with_video"], "source": man["source"],
            "evaluated": h.get("evaluated"), "succeeded": h.get("succeeded"), "success_rate": h.get("success_rate"),
            "exported": h.get("exported"), "num_shards": h.get("num_shards"), "shards_ok": h.get("shards_ok"),
            "partial": h.get("partial", True), "headline": man.get("headline")}


def _sites_page(index: dict[str, Any]) -> str:
    """A static page linking the per-step viewers (every value escaped)."""
    from grail_cluster.runs.headline import headline_text, partial_text

    e = html.escape
    rows = []
    for s in index["sites"]:
        h = s["headline"]
        if h is None:
            cells = '<td colspan="4">no eval metrics found (not an exported library)</td>'
        else:
            rate = "–" if h["success_rate"] is None else f"{100 * h['success_rate']:.1f}%"
            note = partial_text(h)
            cells = (f'<td class="num">{h["evaluated"]}</td><td class="num">{h["succeeded"]}</td>'
                     f'<td class="num rate">{e(rate)}' + (f'<br><strong class="partial">{e(note)}</strong>' if note else "")
                     + f'</td><td class="num">{"–" if h["exported"] is None else h["exported"]}</td>')
        title = e(headline_text(h)) if h else ""
        rows.append(f'<tr title="{title}"><td><a href="{e(s["path"])}index.html">step {s["step"]}</a></td>{cells}'
                    f'<td class="num">{s["num_with_video"]}</td><td class="path">{e(s["source"])}</td></tr>')
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'self'; script-src 'none'\">"
        f"<title>{e(index['title'])}</title><link rel=\"stylesheet\" href=\"style.css\"></head>\n"
        f"<body class=\"sites\"><header class=\"bar\"><h1>{e(index['title'])}</h1>"
        f"<span class=\"counts\">{len(index['sites'])} checkpoint(s), {index['num_motions']} motions in their libraries"
        "</span></header>\n"
        "<main class=\"sites-main\"><table class=\"meta\"><thead><tr><th>checkpoint</th><th>evaluated</th>"
        "<th>succeeded</th><th>success rate (eval, all shards)</th><th>exported</th><th>with video</th>"
        "<th>library</th></tr></thead><tbody>\n"
        + "\n".join(rows) + "\n</tbody></table></main></body></html>\n"
    )


# ----------------------------------------------------------------------------- CLI


def _cmd_web(args: argparse.Namespace) -> int:
    summary = generate(args.motion_lib, args.output, copy_videos=args.copy_videos, title=args.title,
                       metrics=args.metrics or (), use_cache=not args.no_cache)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        return EXIT_OK
    from grail_cluster.runs.headline import headline_text

    print(f"wrote {summary['output']}: {summary['num_motions']} motions, {summary['num_with_video']} with video "
          f"({summary['videos']}), in {summary['seconds']:.2f} s "
          f"(index {summary['index_cache']}, {summary['meta_parsed']} meta parsed)")
    if summary["headline"] is not None:  # the checkpoint's eval, not the library's own (all-success) count
        print(f"checkpoint {headline_text(summary['headline'])}")
    elif summary["success_rate"] is not None:
        known = summary["num_success"] + summary["num_failed"]
        print(f"motions with a result in this library: {summary['num_success']}/{known} succeeded "
              f"= {100 * summary['success_rate']:.1f}%")
    for w in summary["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if summary.get("error_motions"):
        # Shown in the viewer with their error, and named here: nothing is dropped silently.
        bad = summary["error_motions"]
        print(f"warning: {len(bad)} motion(s) have unreadable or refused files (listed in the viewer with the error):",
              file=sys.stderr)
        for row in bad[:20]:
            print(f"  {row['motion']}: {row['error']}", file=sys.stderr)
        if len(bad) > 20:
            print(f"  … {len(bad) - 20} more; `grail-cluster doctor` names each file with its fix", file=sys.stderr)
    print(f"view it: grail-cluster serve {summary['output']}")
    return EXIT_OK


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``web`` subcommand (sets ``func``)."""
    p = subparsers.add_parser(
        "web", help="write the static web viewer of a motion library (manifest.json + vis/ links)",
        description="Write index.html, main.js, style.css, manifest.json and vis/<stem>.mp4 (relative symlinks, "
                    "or copies) for a motion library (GRAIL generate_manifest), with per-motion success and error "
                    "metrics from export_manifest.json / metrics_eval.json where present. A new output is built in a "
                    "temp dir and renamed; an existing viewer is updated file by file (atomic renames, unchanged "
                    "links kept). View it with `grail-cluster serve OUTPUT`.")
    p.add_argument("--motion_lib", "--motion-lib", dest="motion_lib", required=True,
                   help="library root holding robot/ (optional vis/, meta/, export_manifest.json)")
    p.add_argument("--output", required=True, help="site directory (created, or replaced if it holds a viewer)")
    p.add_argument("--copy_videos", "--copy-videos", dest="copy_videos", action="store_true",
                   help="copy the videos instead of linking them (a self-contained site)")
    p.add_argument("--title", help="page title (default: the library's directory name)")
    p.add_argument("--metrics", action="append", metavar="METRICS_EVAL",
                   help="a metrics_eval.json (or eval shard dir) whose per-motion results to show; repeatable")
    p.add_argument("--no-cache", action="store_true", help="re-read every pickle (ignore the index and meta caches)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(func=_cmd_web)
    return p
