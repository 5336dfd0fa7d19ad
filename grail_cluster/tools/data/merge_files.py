"""Placing the merged files (hard links or copies), hashing and counting them, the soundness findings,
and what becomes of a previous merge at the final path."""

from __future__ import annotations

import errno
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grail_cluster.tools.data.io import sha256_file
from grail_cluster.tools.data.merge_scan import (
    MANIFEST,
    Shard,
    stem_key,
)

# Errors that mean "this file system cannot hard-link here": copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}



class Placer:
    """Hard-link (falling back to copies when the file system refuses) or copy files."""

    def __init__(self, link: bool):
        self.link = link
        self.linked = 0
        self.copied = 0

    def place(self, src: Path, dst: Path) -> None:
        if self.link:
            try:
                os.link(src, dst)
                self.linked += 1
                return
            except OSError as exc:
                if exc.errno not in _NO_LINK:
                    raise
                self.link = False  # this file system cannot link: copy the rest
        shutil.copyfile(src, dst)
        self.copied += 1


def hash_all(paths: list[Path]) -> list[str]:
    if not paths:
        return []
    workers = max(1, min(8, os.cpu_count() or 1))
    n_chunks = workers * 4
    chunks = [paths[i::n_chunks] for i in range(n_chunks)]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        results = list(ex.map(lambda ps: [sha256_file(p) for p in ps], chunks))
    out: list[str] = [""] * len(paths)
    for i, res in enumerate(results):
        out[i::n_chunks] = res
    return out


def count_files(rels: list[str]) -> dict[str, int]:
    c = {"robot": 0, "objects": 0, "object_usd": 0, "vis": 0}
    for rel in rels:
        key = stem_key(rel)
        if key is None:
            continue
        top = rel.split("/", 1)[0]
        if top in c:
            c[top] += 1
    return c


UNSOUND_SUFFIX = ".unsound"
SUPERSEDED_SUFFIX = ".superseded"
FIX_RERUN = ("re-run the export of the shard(s) named (`grail-cluster export ...`, or `grail-cluster resubmit "
              "RUN --stage export`), then merge again")


@dataclass
class Findings:
    """Soundness problems, each with the file it is about and how to fix it."""

    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, problem: str, *, path: str | Path | None = None, fix: str = FIX_RERUN) -> None:
        self.items.append({"problem": problem, "path": None if path is None else str(path), "fix": fix})

    def rendered(self) -> list[str]:
        return [f"{f['path']}: {f['problem']}" if f["path"] else f["problem"] for f in self.items]


def pickle_truncated(path: Path) -> bool:
    """An uncompressed pickle (protocol >= 2, as GRAIL's exports and ours write them) ends with the
    STOP opcode; one that does not was cut short. Compressed joblib files cannot be judged this
    cheaply and pass; an empty file never does."""
    try:
        size = path.stat().st_size
        if size == 0:
            return True
        with open(path, "rb") as fh:
            head = fh.read(1)
            fh.seek(size - 1)
            tail = fh.read(1)
    except OSError:
        return True
    return head == b"\x80" and tail != b"."


def input_digests(step_dir: Path, shards: list[Shard]) -> dict[str, str]:
    """sha256 of every shard manifest this merge read: what it was built from."""
    return {f"shard_{s.rank}/{MANIFEST}": sha256_file(s.path / MANIFEST) for s in shards if s.manifest is not None}


def _same_inputs(old_inputs: Any, step_dir: Path) -> bool:
    if not isinstance(old_inputs, dict) or not old_inputs:
        return False
    for rel, digest in old_inputs.items():
        path = step_dir / str(rel)
        try:
            if not path.is_file() or sha256_file(path) != digest:
                return False
        except OSError:
            return False
    return True


def _free_name(path: Path) -> Path:
    n = 1
    cand = path
    while cand.exists():
        n += 1
        cand = path.with_name(f"{path.name}.{n}")
    return cand


def settle_previous(final: Path, step_dir: Path) -> dict[str, Any] | None:
    """An unsound merge is about to be published beside ``final``. A previous ``final`` stays only
    when it is a sound merge of exactly the shard manifests still on disk (then it is still the
    right answer for those shards; this merge differs only in its arguments); anything else is moved
    to ``<final>.superseded`` so nothing at the final path looks like the result of this merge."""
    if not final.exists():
        return None
    try:
        old = json.loads((final / MANIFEST).read_text())
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and old.get("sound") is True and _same_inputs(old.get("inputs"), step_dir):
        return {"path": str(final), "action": "kept",
                "why": "a sound merge of the same shard manifests (byte for byte) as are on disk now"}
    aside = _free_name(final.with_name(final.name + SUPERSEDED_SUFFIX))
    os.replace(final, aside)
    why = ("its shard manifests changed since it was merged" if isinstance(old, dict) and old.get("inputs")
           else "it records no inputs this merge can compare" if isinstance(old, dict) and old.get("sound") is True
           else "it was itself unsound or unreadable")
    return {"path": str(aside), "action": "moved", "why": why}

