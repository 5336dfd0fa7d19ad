"""What the viewer shows of each motion from the library itself: object class, allow-listed meta, frames.

The meta fields are cached per meta file (size, mtime) in the user cache dir; pickles are read only
through :mod:`grail_cluster.core.safe_pickle`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from grail_cluster.core import safe_pickle
from grail_cluster.core.errors import GrailError

META_KEYS = ("object_name", "table_pos", "table_quat", "table_size")
FRAME_KEYS = ("joint_pos", "dof_pos", "poses", "qpos", "body_pos", "root_trans_offset")



META_CACHE_VERSION = 1
PARALLEL_THRESHOLD = 5000  # uncached meta pickles above which a process pool pays off (pool start ~0.3 s)



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

