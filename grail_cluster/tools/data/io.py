"""Small, crash-safe writers shared by the data steps.

Outputs are consumed by later pipeline stages (and by people comparing runs), so a step must never
leave a half-written file or directory behind: everything is written under a temporary name in the
same parent directory and renamed into place only once complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import DataError


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield an empty temp dir next to ``out``; rename it to ``out`` on success, remove it on error.

    An existing ``out`` is replaced only after the new tree is complete. The temp dir lives in the
    same parent so the final rename never crosses filesystems.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# A full file system or an exhausted quota: the user's to fix (free space or write elsewhere), not a bug.
DISK_FULL = {errno.ENOSPC: "no space left on device (ENOSPC, errno 28)",
             errno.EDQUOT: "disk quota exceeded (EDQUOT, errno 122)"}


def raise_if_disk_full(exc: BaseException, final: Path, what: str, then: str) -> None:
    """A full disk or quota while writing ``final`` becomes a DataError naming that path and the fix.

    Call it once the temp tree is removed, so nothing is left at or beside ``final`` that could pass
    for a finished output. ``then`` says what to run once there is room again."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        raise DataError(f"{DISK_FULL[exc.errno]} while writing {what}; the partial output was removed",
                        path=final,
                        fix=f"free space on that file system (`df -h {Path(final).parent}`) or write to another "
                            f"directory, then {then}") from None


@contextlib.contextmanager
def disk_full_errors(final: Path, what: str, then: str) -> Iterator[None]:
    """:func:`raise_if_disk_full` around a write; put it outside :func:`atomic_dir`, which removes the
    temp tree first."""
    try:
        yield
    except OSError as exc:
        raise_if_disk_full(exc, final, what, then)
        raise


def replace_dir(tmp: Path, dest: Path) -> None:
    """Rename the finished tree ``tmp`` to ``dest``, replacing what was there only once it is complete."""
    old = None
    if dest.exists():
        # os.replace cannot overwrite a non-empty directory: move the old one aside first.
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths show up in manifests; store them as plain JSON values.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, indent=1, default=_json_default) + "\n"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON (sorted keys, indent 1) via temp file + rename."""
    _atomic_write_bytes(Path(path), dumps_json(data).encode())


def write_pickle(path: Path, data: Any) -> None:
    """Write ``data`` as an uncompressed pickle (protocol 4) via temp file + rename.

    ``joblib.load``, GRAIL's loader, reads plain pickles, and the C pickler is several times
    faster than joblib's pure-Python one, which dominated export time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            pickle.dump(data, fh, protocol=4)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def finite_or_none(value: Any) -> float | None:
    """A finite float, or None for missing, boolean, non-numeric, NaN or infinite values (JSON has
    no NaN/Infinity, and metrics files write them for empty means)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def require_dir(path: Path, what: str, fix: str) -> None:
    """A missing dir and a file where a dir should be are different mistakes: the error says which."""
    if path.is_dir():
        return
    problem = f"{what} is a file, not a directory" if path.exists() else f"{what} not found"
    raise DataError(problem, path=path, fix=fix)
