"""Success markers: a stage index is done when its ``_SUCCESS.json`` exists and validates.

Outputs are written to a temp path and renamed into place before the marker is written, so a
marker never points at half-written files. The marker lists what was written with sizes and
hashes, so a later check can tell an intact output from one that changed or vanished.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

MARKER = "_SUCCESS.json"


def marker_path(run_dir: str | Path, stage: str, index: int) -> Path:
    return Path(run_dir) / "markers" / stage / str(index) / MARKER


def file_digest(path: str | Path, *, full: bool = True) -> str:
    """sha256 of the file; for big checkpoints (``full=False``) of the first and last MiB plus size."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        if full or size <= 2 << 20:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(fh.read(1 << 20))
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
            h.update(str(size).encode())
    return h.hexdigest()


def write_marker(run_dir: str | Path, stage: str, index: int, plan_hash: str, outputs: dict[str, Any]) -> Path:
    path = marker_path(run_dir, stage, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"stage": stage, "index": index, "plan_hash": plan_hash, "finished_at": time.time(),
               "attempt": int(os.environ.get("GRAIL_ATTEMPT", "0")), "outputs": outputs}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".success.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def read_marker(run_dir: str | Path, stage: str, index: int) -> dict[str, Any] | None:
    try:
        with open(marker_path(run_dir, stage, index)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def validate_marker(run_dir: str | Path, stage: str, index: int, plan_hash: str | None = None, *,
                    deep: bool = False) -> bool:
    """A marker counts when it is for this plan and every output it lists is still there, with the
    recorded size (and hash, with ``deep``). Relative output paths are relative to the run dir."""
    marker = read_marker(run_dir, stage, index)
    if marker is None or (plan_hash and marker.get("plan_hash") != plan_hash):
        return False
    for rel, info in (marker.get("outputs") or {}).items():
        path = Path(rel) if os.path.isabs(rel) else Path(run_dir) / rel
        try:
            if path.stat().st_size != info.get("size"):
                return False
        except OSError:
            return False
        if deep:
            if "sha256" in info and file_digest(path) != info["sha256"]:
                return False
            if "sha256_head_tail" in info and file_digest(path, full=False) != info["sha256_head_tail"]:
                return False
    return True
