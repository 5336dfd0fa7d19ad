"""Success markers: a stage index is done when its ``_SUCCESS.json`` exists and validates.

Outputs are written to a temp path and renamed into place before the marker is written, so a
marker never points at half-written files. The marker lists what was written with sizes and
hashes, so a later check can tell an intact output from one that changed or vanished.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
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


def _slurm_nodes() -> str | None:
    """The job's nodes as SLURM writes them (``gnode[1-2]``) when it has several, else this node: a
    multi-node training writes its marker on machine rank 0 but ran on every node of the list."""
    try:
        several = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1) > 1
    except ValueError:
        several = False
    if several and os.environ.get("SLURM_JOB_NODELIST"):
        return os.environ["SLURM_JOB_NODELIST"]
    return os.environ.get("SLURMD_NODENAME") or None


def write_marker(run_dir: str | Path, stage: str, index: int, plan_hash: str, outputs: dict[str, Any]) -> Path:
    path = marker_path(run_dir, stage, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Where it ran: a shard that finished between two scheduler polls has no node in the ledger otherwise.
    payload = {"stage": stage, "index": index, "plan_hash": plan_hash, "finished_at": time.time(),
               "attempt": int(os.environ.get("GRAIL_ATTEMPT", "0")), "outputs": outputs,
               "host": socket.gethostname(), "node": _slurm_nodes()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".success.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        # A full disk cuts the JSON short: no half-written temp marker is left beside the real one.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_marker(run_dir: str | Path, stage: str, index: int) -> dict[str, Any] | None:
    try:
        with open(marker_path(run_dir, stage, index)) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


@functools.lru_cache(maxsize=64)
def _abs_roots(roots: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(os.path.abspath(r) for r in roots)


def marker_problem(run_dir: str | Path, stage: str, index: int, plan_hash: str | None = None, *,
                   deep: bool = False, roots: list[str | Path] | None = None) -> str | None:
    """Why this index's marker does not (or no longer) prove it done, or None when it does.

    The marker must be a JSON object for this stage, index and plan, and every output it lists must
    still exist with the recorded size (with ``deep``, also the recorded hash). Relative output
    paths are relative to the run dir and may not leave it; with ``roots`` an absolute path must lie
    under one of them (the run's output dirs), so a marker cannot vouch for files elsewhere.
    Plain string paths on purpose: a status refresh runs this for every done shard (10,000 and more)."""
    base = os.path.abspath(run_dir)
    rel_marker = f"markers/{stage}/{index}/{MARKER}"
    try:
        with open(os.path.join(base, rel_marker), "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return f"its success marker {rel_marker} is missing"
    except OSError as exc:
        return f"its success marker {rel_marker} cannot be read ({exc.strerror or exc})"
    try:
        marker = json.loads(raw)
    except ValueError:
        return f"its success marker {rel_marker} is not valid JSON"
    if not isinstance(marker, dict):
        return f"its success marker {rel_marker} is not a JSON object"
    if plan_hash and marker.get("plan_hash") != plan_hash:
        return f"its success marker {rel_marker} is for another plan ({str(marker.get('plan_hash'))[:12]})"
    if marker.get("stage", stage) != stage or marker.get("index", index) != index:
        return f"its success marker {rel_marker} is for {marker.get('stage')} {marker.get('index')} (copied?)"
    outputs = marker.get("outputs") or {}
    if not isinstance(outputs, dict):
        return f"its success marker {rel_marker} lists outputs that are not an object"
    allowed = _abs_roots(tuple(str(r) for r in roots)) if roots else ()
    for rel, info in outputs.items():
        if os.path.isabs(rel):
            full = os.path.normpath(rel)
            if allowed and not _inside(full, allowed):
                return f"its success marker {rel_marker} lists {rel}, outside the run's output dirs"
        else:
            full = os.path.normpath(os.path.join(base, rel))
            if not _inside(full, (base,)):
                return f"its success marker {rel_marker} lists {rel}, outside the run dir"
        if not isinstance(info, dict) or not isinstance(info.get("size"), int):
            return f"its success marker {rel_marker} lists {rel} without a recorded size"
        try:
            size = os.stat(full).st_size
        except OSError:
            return f"output {rel} (listed by {rel_marker}) is missing"
        if size != info["size"]:
            return f"output {rel} is {size} bytes; its marker {rel_marker} recorded {info['size']}"
        if deep:
            try:
                if "sha256" in info and file_digest(full) != info["sha256"]:
                    return f"output {rel} changed content (sha256 differs from its marker {rel_marker})"
                if "sha256_head_tail" in info and file_digest(full, full=False) != info["sha256_head_tail"]:
                    return f"output {rel} changed content (head/tail sha256 differs from its marker {rel_marker})"
            except OSError as exc:
                return f"output {rel} cannot be read ({exc.strerror or exc})"
    return None


def validate_marker(run_dir: str | Path, stage: str, index: int, plan_hash: str | None = None, *,
                    deep: bool = False, roots: list[str | Path] | None = None) -> bool:
    """A marker counts when it is for this plan and every output it lists is still there, with the
    recorded size (and hash, with ``deep``). Relative output paths are relative to the run dir."""
    return marker_problem(run_dir, stage, index, plan_hash, deep=deep, roots=roots) is None


def retire_marker(run_dir: str | Path, stage: str, index: int, round_: int) -> Path | None:
    """Set a done index's marker aside (renamed, never deleted) before it is run again, so neither
    the job (which skips done work) nor a status refresh counts the old evidence."""
    path = marker_path(run_dir, stage, index)
    if not path.exists():
        return None
    target = path.with_name(f"{MARKER}.retired-r{round_}")
    os.replace(path, target)
    return target
