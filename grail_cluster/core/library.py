"""Index of a GRAIL motion library: one record per motion key, cached in the library.

A library is keyed by motion stem across ``robot/ objects/ meta/ object_usd/ bps/`` (contracts
§1). Reading a pickle is the expensive part, so parsed fields are cached next to the library,
keyed by the size and mtime of the robot/objects/meta files of each motion; a warm scan only
lists directories and stats files. Listing-derived facts (USD path, BPS embedding) are recomputed
on every scan because they are cheap and change when files are added.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grail_cluster.core import motion_checks, safe_pickle
from grail_cluster.core.errors import DataError, GrailError
from grail_cluster.core.quaternions import detect_root_rot_convention

CACHE_NAME = ".grail_index.json"
CACHE_VERSION = 3  # 3: content checks' findings cached with each entry
USD_SUFFIXES = (".usd", ".usda", ".usdc")
FLAT_PLACEHOLDER = "flat_placeholder"
PARALLEL_THRESHOLD = 64


@dataclass(frozen=True)
class MotionRecord:
    """What the planner and ``doctor`` need to know about one motion key."""

    key: str
    robot: str  # robot pickle, relative to the library root
    frames: int | None = None
    fps: float | None = None
    object_name: str | None = None
    usd: str | None = None  # USD path, absolute
    bps: bool = False
    hand_actions: bool = False
    hand_action_kind: str | None = None  # discrete (-1/+1) | continuous (upstream export) | None
    contacts: bool = False
    root_rot: str = "unknown"  # wxyz | xyzw | ambiguous | unknown
    has_objects: bool = False
    has_meta: bool = False
    error: str | None = None  # why the motion could not be read; the record is still listed
    findings: tuple[dict[str, str], ...] = ()  # motion_checks findings: check, file, key, problem, fix


@dataclass
class LibraryIndex:
    root: str
    layout: str  # "hoi" | "terrain"
    motions: list[MotionRecord]
    usd_dir: str | None = None
    usd_dir_note: str | None = None  # e.g. "taken from the non-_ha sibling"
    bps_dir: str | None = None
    bps_basis: bool = False
    flat_placeholder: str | None = None
    shared_usd: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    orphans: dict[str, list[str]] = field(default_factory=dict)  # objects/meta/usd stems without robot
    duplicates: list[str] = field(default_factory=list)
    findings: list[dict[str, str]] = field(default_factory=list)  # library-level (shared USD, BPS basis)
    cache: str = "miss"  # hit | partial | miss
    parsed: int = 0  # motions whose pickles were read in this scan

    @property
    def keys(self) -> list[str]:
        return [m.key for m in self.motions]

    def by_key(self) -> dict[str, MotionRecord]:
        return {m.key: m for m in self.motions}

    def fingerprint(self) -> str:
        """A content hash of what the index says (no mtimes), for plan hashes and provenance."""
        h = hashlib.sha256()
        for m in self.motions:
            usd = os.path.relpath(m.usd, self.root) if m.usd else ""
            h.update(
                f"{m.key}|{m.frames}|{m.fps}|{m.object_name}|{usd}|{m.bps}|{m.hand_actions}|{m.contacts}|{m.root_rot}\n".encode()
            )
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_motions"] = len(self.motions)
        d["fingerprint"] = self.fingerprint()
        return d


# ----------------------------------------------------------------------------- listing


def _list_files(directory: Path, suffixes: tuple[str, ...], recursive: bool,
                stat: bool = True) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) for files under ``directory`` with one of ``suffixes``.

    The warm scan of a 20,000-motion library is mostly this function, so relative paths are built
    by concatenation, and files whose presence is all that matters (USD, BPS) are not stat'ed.
    """
    out: dict[str, tuple[int, int]] = {}
    if not directory.is_dir():
        return out
    stack = [(str(directory), "")]
    while stack:
        path, prefix = stack.pop()
        with os.scandir(path) as it:
            for entry in it:
                name = entry.name
                if name.endswith(suffixes):
                    if not stat:
                        out[prefix + name] = (0, 0)
                    elif entry.is_file():
                        st = entry.stat()
                        out[prefix + name] = (st.st_size, st.st_mtime_ns)
                elif recursive and name != "textures" and entry.is_dir():
                    stack.append((entry.path, prefix + name + "/"))
    return out


def _stem(rel: str) -> str:
    name = rel.rpartition("/")[2]
    return name.rpartition(".")[0] or name


def _by_stem(files: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Stem -> relative path, and the stems that appear more than once (ambiguous)."""
    out: dict[str, str] = {}
    dups: list[str] = []
    for rel in sorted(files):
        stem = _stem(rel)
        if stem in out:
            dups.append(stem)
        else:
            out[stem] = rel
    return out, sorted(set(dups))


def _sig(st: tuple[int, int] | None) -> list[int] | None:
    return None if st is None else [st[0], st[1]]


# ----------------------------------------------------------------------------- parsing


def _frames(inner: dict) -> int | None:
    for name in ("dof", "root_trans_offset", "pose_aa", "root_rot"):
        arr = inner.get(name)
        if arr is not None and hasattr(arr, "shape") and len(arr.shape) >= 1:
            return int(arr.shape[0])
    return None


def _load(path: str, findings: list) -> Any:
    """The pickle's content, or ``_UNREADABLE`` with a ``readable`` finding naming the file."""
    try:
        return safe_pickle.load(path)
    except GrailError as exc:
        findings.append(motion_checks.finding("readable", path, "", exc.problem,
                                              exc.fix or "re-export or regenerate this file"))
        return _UNREADABLE


_UNREADABLE = object()


def parse_motion(root: str, key: str, robot: str, objects: str | None, meta: str | None,
                 usd: str | None = None, bps: str | None = None, bps_dim: int | None = None) -> dict[str, Any]:
    """Read and check the files of one motion; return the cached (parsed) fields and findings.

    ``error`` is set when the robot pickle itself cannot be used (unreadable, wrong structure):
    such a motion has no frame count and nothing downstream may rely on it.
    """
    findings: list[dict[str, str]] = []
    out: dict[str, Any] = {
        "frames": None, "fps": None, "object_name": None, "hand_actions": False, "hand_action_kind": None,
        "contacts": False, "root_rot": "unknown", "error": None, "findings": findings,
    }
    robot_path = os.path.join(root, robot)
    raw = _load(robot_path, findings)
    inner = None if raw is _UNREADABLE else motion_checks.unwrap(raw, key, robot_path, findings, "robot")
    if inner is None:
        first = findings[0]
        out["error"] = f"{first['file']}: {first['problem']}\n  fix: {first['fix']}"
    else:
        frames, fps, kind = motion_checks.check_robot(inner, robot_path, findings)
        out["frames"] = frames if frames is not None else _frames(inner)
        out["fps"] = fps
        out["hand_actions"] = kind is not None
        out["hand_action_kind"] = kind
        root_rot = inner.get("root_rot")
        pose_aa = inner.get("pose_aa")
        if isinstance(root_rot, np.ndarray) and root_rot.ndim == 2 and root_rot.shape[1] == 4 and len(root_rot):
            out["root_rot"] = detect_root_rot_convention(
                root_rot, pose_aa if isinstance(pose_aa, np.ndarray) and pose_aa.ndim == 3 else None)
    if objects:
        obj_path = os.path.join(root, objects)
        raw = _load(obj_path, findings)
        obj = None if raw is _UNREADABLE else motion_checks.unwrap(raw, key, obj_path, findings, "objects")
        if obj is not None:
            out["contacts"] = motion_checks.check_objects(obj, obj_path, out["frames"], out["fps"], findings)
            if isinstance(obj.get("object_name"), str):
                out["object_name"] = obj["object_name"]
    if meta:
        meta_path = os.path.join(root, meta)
        raw = _load(meta_path, findings)
        if raw is not _UNREADABLE and (name := motion_checks.check_meta(raw, key, meta_path, findings)) is not None:
            out["object_name"] = name
    if usd:
        motion_checks.check_usd(usd, findings)
    if bps:
        motion_checks.check_bps(bps, bps_dim, findings)
    return out


def _parse_many(root: str, jobs: list[tuple]) -> list[dict[str, Any]]:
    return [parse_motion(root, *job) for job in jobs]


# ----------------------------------------------------------------------------- cache


def _cache_candidates(root: Path) -> list[Path]:
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "grail-cluster" / "index"
    return [root / CACHE_NAME, base / f"{digest}.json"]


_ENTRY_KEYS = frozenset(("sig", "robot", "frames", "fps", "object_name", "hand_actions", "hand_action_kind",
                         "contacts", "root_rot", "error", "findings"))


def _load_cache(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(motion entries, shared-file verdicts) of the first readable cache for this root. The cache is
    a file in someone else's library: anything malformed in it is ignored (the motion is re-read)."""
    for path in _cache_candidates(root):
        try:
            with open(path) as fh:
                data = json.load(fh)
            if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or data.get("root") != str(root):
                continue
            motions, shared = data.get("motions"), data.get("shared")
            motions = {k: v for k, v in motions.items() if isinstance(v, dict) and _ENTRY_KEYS <= v.keys()} \
                if isinstance(motions, dict) else {}
            return motions, shared if isinstance(shared, dict) else {}
        except (OSError, ValueError):
            continue
    return {}, {}


def _save_cache(root: Path, motions: dict[str, Any], shared: dict[str, Any]) -> None:
    payload = json.dumps({"version": CACHE_VERSION, "root": str(root), "motions": motions, "shared": shared},
                         separators=(",", ":"))
    for path in _cache_candidates(root):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".grail_index.", suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                fh.write(payload)
            os.replace(tmp, path)
            return
        except OSError:
            continue  # read-only library: fall back to the user cache dir


# ----------------------------------------------------------------------------- scan


def _ha_sibling(root: Path, sub: str) -> Path | None:
    """``<name>_ha`` libraries keep USDs and BPS in the non-``_ha`` sibling (contracts §1.1, §10.8)."""
    if root.name.endswith("_ha"):
        sibling = root.parent / root.name[: -len("_ha")] / sub
        if sibling.is_dir():
            return sibling
    return None


def detect_layout(root: Path) -> str:
    if (root / f"{FLAT_PLACEHOLDER}.usd").exists() or (root / "object_usd" / f"{FLAT_PLACEHOLDER}.usd").exists():
        return "terrain"
    robot = root / "robot"
    if robot.is_dir() and any(e.is_dir() for e in os.scandir(robot)):
        return "terrain"
    return "hoi"


def scan_library(
    root: str | Path,
    *,
    layout: str = "auto",
    usd_dir: str | Path | None = None,
    bps_dir: str | Path | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LibraryIndex:
    """Scan a motion library into a :class:`LibraryIndex` (parsing only what changed)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError("motion library not found (not a directory)", path=root,
                        fix="pass the library root that holds robot/ objects/ meta/")
    if not (root / "robot").is_dir():
        raise DataError("not a GRAIL motion library: there is no robot/ directory", path=root,
                        fix="point at the directory that contains robot/, objects/ and meta/ (e.g. data/motion_lib/<name>_ha)")
    if layout == "auto":
        layout = detect_layout(root)
    terrain = layout == "terrain"

    robot_files = _list_files(root / "robot", (".pkl",), recursive=True)
    if terrain:
        robot_files = {k: v for k, v in robot_files.items() if os.path.basename(k) != "metadata.pkl"}
    object_files = _list_files(root / "objects", (".pkl",), recursive=True)
    meta_files = _list_files(root / "meta", (".pkl",), recursive=True)

    usd_note = None
    if usd_dir is not None:
        usd_path = Path(usd_dir).expanduser().resolve()
    elif (root / "object_usd").is_dir():
        usd_path = root / "object_usd"
    elif (sib := _ha_sibling(root, "object_usd")) is not None:
        usd_path, usd_note = sib, f"object_usd/ taken from the non-_ha sibling {sib.parent}"
    else:
        usd_path = root / "object_usd"
    # USD and BPS files are stat'ed because their content checks are cached by (size, mtime) too.
    usd_files = _list_files(usd_path, USD_SUFFIXES, recursive=True)

    placeholder = None
    for cand in (root / f"{FLAT_PLACEHOLDER}.usd", usd_path / f"{FLAT_PLACEHOLDER}.usd"):
        if cand.exists():
            placeholder = str(cand)
            break
    usd_files = {k: v for k, v in usd_files.items() if _stem(k) != FLAT_PLACEHOLDER}

    if bps_dir is not None:
        bps_path: Path | None = Path(bps_dir).expanduser().resolve()
    elif (root / "bps").is_dir():
        bps_path = root / "bps"
    else:
        bps_path = _ha_sibling(root, "bps")
    bps_stems: set[str] = set()
    bps_files: dict[str, tuple[int, int]] = {}
    bps_basis = False
    bps_dim: int | None = None
    lib_findings: list[dict[str, str]] = []
    if bps_path is not None and bps_path.is_dir():
        bps_files = _list_files(bps_path, (".npy",), recursive=False)
        for rel in bps_files:
            if rel == "_basis.npy":
                bps_basis = True
            elif not rel.startswith("_"):
                bps_stems.add(_stem(rel))
        if bps_basis:
            basis = str(bps_path / "_basis.npy")
            bps_dim, why = motion_checks.bps_basis_problem(basis)
            if why:
                lib_findings.append(motion_checks.finding("bps-embedding", basis, "", why,
                                                          "re-run compute_bps; it writes _basis.npy (N,3)"))

    robots, dup_robot = _by_stem(robot_files)
    objs, _ = _by_stem(object_files)
    metas, _ = _by_stem(meta_files)
    usds, _ = _by_stem(usd_files)
    shared_usd = str(usd_path / next(iter(usd_files))) if len(usd_files) == 1 and len(robots) > 1 else None

    cache, shared_cache = _load_cache(root) if use_cache else ({}, {})
    # Files every motion shares (one USD for all, the terrain placeholder) are checked once, and
    # their verdict cached like a motion's: a warm scan never opens a USD.
    new_shared: dict[str, Any] = {}
    for shared in filter(None, (shared_usd, placeholder)):
        st = os.stat(shared)
        sig = [st.st_size, st.st_mtime_ns]
        hit = shared_cache.get(shared)
        if not (isinstance(hit, dict) and hit.get("sig") == sig and isinstance(hit.get("findings"), list)):
            found: list[dict[str, str]] = []
            motion_checks.check_usd(shared, found)
            hit = {"sig": sig, "findings": found}
        new_shared[shared] = hit
        lib_findings.extend(hit["findings"])
    new_cache: dict[str, Any] = {}
    todo: list[tuple] = []
    sigs: dict[str, list] = {}
    usd_base = str(usd_path) + "/"
    bps_base = str(bps_path) + "/" if bps_path is not None else ""
    for key, rel in robots.items():
        o = objs.get(key)
        m = metas.get(key)
        u = None if shared_usd else usds.get(key)
        b = key + ".npy" if key in bps_stems else None
        # Everything the verdict depends on: each file's (size, mtime) and the basis length.
        sig = [_sig(robot_files[rel]), _sig(object_files.get(o) if o else None), _sig(meta_files.get(m) if m else None),
               _sig(usd_files[u]) if u else None, _sig(bps_files[b]) if b else None, bps_dim]
        sigs[key] = sig
        hit = cache.get(key)
        if hit is not None and hit.get("sig") == sig and hit.get("robot") == rel:
            new_cache[key] = hit
        else:
            todo.append((key, "robot/" + rel, "objects/" + o if o else None, "meta/" + m if m else None,
                         usd_base + u if u else None, bps_base + b if b else None, bps_dim))

    if todo:
        results = _parse_all(str(root), todo, workers, progress)
        for job, parsed in zip(todo, results, strict=True):
            key = job[0]
            new_cache[key] = {"sig": sigs[key], "robot": robots[key], **parsed}
    if use_cache and (todo or len(new_cache) != len(cache) or new_shared != shared_cache):
        _save_cache(root, new_cache, new_shared)

    motions = []
    for key in sorted(robots):
        c = new_cache[key]
        usd_rel = usds.get(key)
        motions.append(
            MotionRecord(
                key=key,
                robot="robot/" + robots[key],
                frames=c["frames"],
                fps=c["fps"],
                object_name=c["object_name"],
                usd=usd_base + usd_rel if usd_rel else None,
                bps=key in bps_stems,
                hand_actions=c["hand_actions"],
                hand_action_kind=c["hand_action_kind"],
                contacts=c["contacts"],
                root_rot=c["root_rot"],
                has_objects=key in objs,
                has_meta=key in metas,
                error=c["error"],
                findings=tuple(c["findings"]),
            )
        )

    robot_keys = set(robots)
    orphans = {
        "objects": sorted(set(objs) - robot_keys),
        "meta": sorted(set(metas) - robot_keys),
        "object_usd": sorted(set(usds) - robot_keys) if not shared_usd else [],
    }
    return LibraryIndex(
        root=str(root),
        layout=layout,
        motions=motions,
        usd_dir=str(usd_path) if usd_path.is_dir() else None,
        usd_dir_note=usd_note,
        bps_dir=str(bps_path) if bps_path is not None and bps_path.is_dir() else None,
        bps_basis=bps_basis,
        flat_placeholder=placeholder,
        shared_usd=shared_usd,
        counts={
            "robot": len(robot_files),
            "objects": len(object_files),
            "meta": len(meta_files),
            "object_usd": len(usd_files),
            "bps": len(bps_stems),
        },
        orphans=orphans,
        duplicates=dup_robot,
        findings=lib_findings,
        cache="miss" if len(todo) == len(robots) and robots else ("partial" if todo else "hit"),
        parsed=len(todo),
    )


def _parse_all(root: str, todo, workers: int | None, progress) -> list[dict[str, Any]]:
    workers = workers if workers is not None else (os.cpu_count() or 1)
    chunk = 128
    chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
    results: list[dict[str, Any]] = []
    if workers <= 1 or len(todo) < PARALLEL_THRESHOLD:
        for part in chunks:
            results.extend(_parse_many(root, part))
            if progress:
                progress(len(results), len(todo))
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part_result in pool.map(_parse_many, [root] * len(chunks), chunks):
            results.extend(part_result)
            if progress:
                progress(len(results), len(todo))
    return results
