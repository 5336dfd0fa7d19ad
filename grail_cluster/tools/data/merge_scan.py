"""What the export shards of one step hold: their files, motion keys and manifests (read, never written)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import ConfigError, DataError

MANIFEST = "export_manifest.json"
SUBDIRS = ("robot", "objects", "meta", "object_usd", "vis")
PLACEHOLDER = "flat_placeholder.usd"
USD_SUFFIXES = (".usd", ".usda")
SHARD_RE = re.compile(r"^shard_(\d+)$")



@dataclass
class Shard:
    rank: int
    path: Path
    status: str = "ok"  # ok | missing | no_manifest | bad_manifest
    error: DataError | None = None
    files: list[str] = field(default_factory=list)  # posix paths relative to the shard
    robot_keys: set[str] = field(default_factory=set)
    all_keys: set[str] = field(default_factory=set)
    file_key: dict[str, str | None] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None
    has_videos: bool = False


def walk_files(root: Path) -> list[str]:
    """Every regular file under ``root`` as a posix path relative to it (symlinks followed)."""
    out: list[str] = []
    stack = [("", root)]
    while stack:
        prefix, d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                rel = prefix + e.name
                if e.is_dir():
                    stack.append((rel + "/", Path(e.path)))
                elif e.is_file():
                    out.append(rel)
    return out


def stem_key(rel: str) -> str | None:
    """The motion key a file belongs to by stem, or None (textures are matched later)."""
    top, _, rest = rel.partition("/")
    name = rest.rsplit("/", 1)[-1]
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        return None
    suffix = "." + suffix
    if top in ("robot", "objects", "meta"):
        return stem if suffix == ".pkl" and name != "metadata.pkl" else None
    if top == "object_usd":
        if rest.startswith("textures/") or name == PLACEHOLDER:
            return None
        return stem if suffix in USD_SUFFIXES else None
    if top == "vis":
        return stem if suffix == ".mp4" else None
    return None


def _texture_key(rel: str, keys: set[str]) -> str | None:
    """``object_usd/textures/<key>/...`` (nested) or ``object_usd/textures/<key>_*`` (flat)."""
    rest = rel[len("object_usd/textures/"):]
    first, sep, _ = rest.partition("/")
    if sep:
        return first if first in keys else None
    best = None
    for i, ch in enumerate(first):  # longest key followed by "_"
        if ch == "_" and first[:i] in keys:
            best = first[:i]
    return best


def _load_manifest(path: Path) -> dict[str, Any]:
    fix = "re-run the export of this shard (grail.data_export.export_successful_rollouts), or remove the shard"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read export manifest: {exc}", path=path, fix=fix) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed export manifest (invalid JSON: {exc})", path=path, fix=fix) from None
    if not isinstance(data, dict):
        raise DataError("malformed export manifest: expected a JSON object", path=path, fix=fix)
    for name in ("total_motions_evaluated", "exported_count"):
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"malformed export manifest: {name!r} must be a non-negative integer, "
                            f"got {value!r}", path=path, fix=fix)
    skipped = data.get("skipped_no_trajectory", 0)
    if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
        raise DataError(f"malformed export manifest: 'skipped_no_trajectory' must be a non-negative "
                        f"integer, got {skipped!r}", path=path, fix=fix)
    motions = data.get("exported_motions")
    if not isinstance(motions, list) or not all(
        isinstance(m, dict) and isinstance(m.get("motion_key"), str) for m in motions
    ):
        raise DataError("malformed export manifest: 'exported_motions' must be a list of objects "
                        "with a string 'motion_key'", path=path, fix=fix)
    if data["exported_count"] != len(motions):
        raise DataError(f"export manifest says exported_count {data['exported_count']} but lists "
                        f"{len(motions)} exported_motions", path=path, fix=fix)
    if data["exported_count"] > data["total_motions_evaluated"]:
        raise DataError(f"export manifest says {data['exported_count']} exported of "
                        f"{data['total_motions_evaluated']} evaluated", path=path, fix=fix)
    keys = [m["motion_key"] for m in motions]
    if len(set(keys)) != len(keys):
        raise DataError("export manifest lists a motion_key twice", path=path, fix=fix)
    outputs = data.get("outputs")
    if outputs is not None and not (isinstance(outputs, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in outputs.items())):
        raise DataError("malformed export manifest: 'outputs' must map file paths to sha256 digests",
                        path=path, fix=fix)
    return data


def scan_shard(rank: int, path: Path) -> Shard:
    sh = Shard(rank, path)
    if not path.is_dir():
        sh.status = "missing"
        return sh
    for sub in SUBDIRS:
        if (path / sub).is_dir():
            sh.files.extend(f"{sub}/{rel}" for rel in walk_files(path / sub))
    sh.files.sort()
    for rel in sh.files:
        key = stem_key(rel)
        sh.file_key[rel] = key
        if key is not None:
            sh.all_keys.add(key)
            if rel.startswith("robot/"):
                sh.robot_keys.add(key)
            if rel.startswith("vis/"):
                sh.has_videos = True
    for rel in sh.files:
        if rel.startswith("object_usd/textures/"):
            key = _texture_key(rel, sh.all_keys)
            sh.file_key[rel] = key
    if (path / MANIFEST).is_file():
        try:
            sh.manifest = _load_manifest(path / MANIFEST)
        except DataError as exc:
            # Unreadable evidence makes the merge unsound (and named), it does not stop the report.
            sh.status = "bad_manifest"
            sh.error = exc
    else:
        sh.status = "no_manifest"
    return sh


def find_step_dir(exp_dir: Path, step: int | str) -> Path:
    try:
        n = int(step)
    except (TypeError, ValueError):
        raise ConfigError(f"--step must be an integer, got {step!r}") from None
    exported = exp_dir / "exported"
    candidates = list(dict.fromkeys([exported / f"step_{n:06d}", exported / f"step_{n}"]))
    found = [c for c in candidates if c.is_dir()]
    if len(found) > 1:
        raise DataError(f"both {found[0].name} and {found[1].name} exist: ambiguous step",
                        path=exported, fix="keep one of the two step directories")
    if not found:
        have = sorted(p.name for p in exported.glob("step_*")) if exported.is_dir() else []
        raise DataError(f"no export for step {n} (looked for {', '.join(c.name for c in candidates)})",
                        path=exported,
                        fix=f"existing steps: {', '.join(have)}" if have else "run the export stage first")
    return found[0]

