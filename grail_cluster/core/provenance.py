"""Provenance of a run: which code, data and image produced it.

``provenance.json`` is written into the run dir beside ``plan.json`` (atomically, by
:func:`grail_cluster.core.plan.write_plan`), shown by ``grail-cluster status`` and copied into each
merged library's ``export_manifest.json`` (GRAIL's docs promise checkpoint provenance there and
ship none, contracts §10.6). It holds:

- ``config``: the resolved configuration;
- ``library``: the motion-library index hash (the plan's fingerprint), root and motion count;
- ``bps``: a hash over ``bps/*.npy`` names and contents (a copied library hashes the same, which
  size+mtime would not), memoised per file signature so a warm re-plan of 20,000 files only stats;
- ``sonic``: the git commit of ``sonic.root`` (``unknown`` outside a git checkout or without git)
  and whether tracked files under it differ from that commit. GRAIL vendors SONIC as a plain
  directory (§0), so the commit is usually the GRAIL checkout's, and ``dirty`` looks at files
  under ``sonic.root`` only; untracked files (``logs_rl/`` outputs) do not count;
- ``image``: the container image (``cluster.image`` on Kubernetes), else None;
- ``grail_cluster_version`` and ``grail_cluster_code``: a sha256 over every file of the installed
  grail-cluster packages (``grail_cluster``, its launchers, SONIC adapter, job templates and
  configs): a version string does not change when a bug in them is fixed, so a re-run of a run
  dir after such a fix would otherwise reuse shards the old code made.

No timestamps and no host names: the same inputs give the same bytes, so merged manifests stay
reproducible and the sources can be part of the plan hash (see ``plan.build_plan``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "provenance.json"
PROVENANCE_VERSION = 1
UNKNOWN = "unknown"


def grail_cluster_version() -> str:
    """The version of the code that is running (the plan records the same ``__version__``)."""
    from grail_cluster import __version__

    if __version__:
        return __version__
    try:  # pragma: no cover - __version__ is always set in this package
        from importlib.metadata import version

        return version("grail-cluster")
    except Exception:  # noqa: BLE001
        return UNKNOWN


def _git(root: Path, *args: str) -> str | None:
    from grail_cluster.core.code_digest import git_output

    out = git_output(root, *args)
    return None if out is None else out.decode(errors="replace").strip()


def sonic_git(root: str | Path | None) -> dict[str, Any]:
    """``{"commit", "dirty", "repo"}`` of the checkout holding ``root``; commit ``unknown`` (and
    dirty None) when it is not in a git checkout, git is missing, or git fails."""
    out: dict[str, Any] = {"root": str(root) if root else None, "commit": UNKNOWN, "dirty": None, "repo": None}
    if not root or not Path(root).expanduser().is_dir():
        return out
    path = Path(root).expanduser().resolve()
    commit = _git(path, "rev-parse", "--verify", "HEAD")
    if not commit:
        return out
    out["commit"] = commit
    out["repo"] = _git(path, "rev-parse", "--show-toplevel")
    # Only tracked files under sonic.root: a vendored SONIC inside GRAIL is dirty when SONIC changed,
    # not when someone edited GRAIL's docs; run outputs (untracked) never make it dirty.
    status = _git(path, "status", "--porcelain", "--untracked-files=no", "--", ".")
    out["dirty"] = None if status is None else bool(status)
    return out


def _bps_cache_path(bps_dir: Path) -> Path:
    digest = hashlib.sha256(str(bps_dir).encode()).hexdigest()[:16]
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "grail-cluster" / "bps" / f"{digest}.json"


def bps_hash(bps_dir: str | Path | None, *, use_cache: bool = True) -> dict[str, Any] | None:
    """sha256 over the sorted ``*.npy`` names and contents of a BPS dir (``_basis.npy`` included).

    Content, not size+mtime, so a copied library hashes the same. Re-reading 20,000 small files
    costs ~0.2 s warm but seconds on a cold or network file system, so the result is memoised in
    the user cache, keyed by every file's name, size and mtime: a warm re-plan only stats them."""
    if not bps_dir or not Path(bps_dir).is_dir():
        return None
    bps_dir = Path(bps_dir).resolve()
    files: list[tuple[str, int, int]] = []
    with os.scandir(bps_dir) as it:
        for entry in it:
            if entry.name.endswith(".npy") and entry.is_file():
                st = entry.stat()
                files.append((entry.name, st.st_size, st.st_mtime_ns))
    files.sort()
    signature = hashlib.sha256(json.dumps(files, separators=(",", ":")).encode()).hexdigest()
    cache = _bps_cache_path(bps_dir)
    if use_cache:
        try:
            cached = json.loads(cache.read_text())
            if cached.get("dir") == str(bps_dir) and cached.get("signature") == signature:
                return {k: cached[k] for k in ("dir", "files", "bytes", "sha256")}
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    h = hashlib.sha256()
    total = 0
    for name, _, _ in files:
        with open(bps_dir / name, "rb") as fh:
            data = fh.read()
        total += len(data)
        # Length-prefixed, so no concatenation of names and contents can collide with another.
        h.update(f"{len(name)}:{name}:{len(data)}:".encode())
        h.update(data)
    out = {"dir": str(bps_dir), "files": len(files), "bytes": total, "sha256": h.hexdigest()}
    if use_cache:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".bps.", suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump({**out, "signature": signature}, fh)
            os.replace(tmp, cache)
        except OSError:
            pass  # no writable cache: hash again next time
    return out


def container_image(c: dict[str, Any]) -> str | None:
    cluster = c.get("cluster") or {}
    image = cluster.get("image")
    return str(image) if image and image != "???" else None


def _is_reference_root(root: str | Path) -> bool:
    from grail_cluster.sonic.reference import reference_root

    try:
        return Path(root).expanduser().resolve() == Path(reference_root()).resolve()
    except OSError:
        return False


def sources(c: dict[str, Any], bps_dir: str | None) -> dict[str, Any]:
    """What the configuration and library index do not already say: SONIC commit, BPS contents,
    image, tool version. Reads git and the BPS files; deterministic for the same inputs."""
    root = (c.get("sonic") or {}).get("root")
    sonic = sonic_git(root)
    # The embedded reference tracker is versioned with grail-cluster, not by a SONIC checkout.
    sonic["trainer"] = "reference" if root and _is_reference_root(root) else "sonic"
    if sonic["commit"] != UNKNOWN:
        # "dirty" alone cannot tell two different uncommitted edits of SONIC apart.
        from grail_cluster.core.code_digest import git_state

        sonic["diff_sha256"] = (git_state(Path(str(root)).expanduser().resolve()) or {}).get("diff_sha256")
    return {
        "sonic": sonic,
        "bps": bps_hash(bps_dir),
        "image": container_image(c),
        "grail_cluster_version": grail_cluster_version(),
        "grail_cluster_code": grail_cluster_code(),
    }


def grail_cluster_package_dirs() -> list[str]:
    """The directories of the installed grail-cluster packages (mapped from several source dirs)."""
    import importlib

    dirs: list[str] = []
    for name in ("grail_cluster", "grail_cluster.launchers", "grail_cluster.sonic", "grail_cluster.job_templates",
                 "grail_cluster.configs"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for d in getattr(module, "__path__", []):
            if d not in dirs and not any(d.startswith(p + os.sep) for p in dirs):
                dirs.append(d)
    return dirs


def grail_cluster_code() -> dict[str, Any]:
    """``{"files", "sha256"}`` over the grail-cluster code that plans, renders and runs the jobs."""
    from grail_cluster.core.code_digest import tree_digest

    return tree_digest(grail_cluster_package_dirs())


def source_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between a recorded provenance and new sources, in words (for refusals)."""
    if not old:
        return []
    out = []
    if (old.get("grail_cluster_code") or {}).get("sha256") != (new.get("grail_cluster_code") or {}).get("sha256"):
        out.append("grail-cluster's code")
    if old.get("grail_cluster_version") != new.get("grail_cluster_version"):
        out.append("grail-cluster's version")
    o, n = old.get("sonic") or {}, new.get("sonic") or {}
    if o.get("commit") != n.get("commit"):
        out.append("the SONIC commit")
    elif (o.get("dirty"), o.get("diff_sha256")) != (n.get("dirty"), n.get("diff_sha256")):
        out.append("SONIC's uncommitted changes")
    if (old.get("bps") or {}).get("sha256") != (new.get("bps") or {}).get("sha256"):
        out.append("the BPS files")
    if old.get("image") != new.get("image"):
        out.append("the image")
    return out


def record(plan: Any) -> dict[str, Any]:
    """The full provenance record of a plan (its sources, collected now if the plan has none)."""
    src = plan.provenance or sources(plan.config, plan.library.get("bps_dir"))
    lib = plan.library
    return {
        "version": PROVENANCE_VERSION,
        "run_id": plan.run_id,
        "plan_hash": plan.plan_hash,
        "pipeline": plan.pipeline.get("name"),
        "exp": plan.pipeline.get("exp"),
        "sonic": src.get("sonic"),
        "library": {"root": lib.get("root"), "layout": lib.get("layout"), "num_motions": lib.get("num_motions"),
                    "index_hash": lib.get("fingerprint")},
        "bps": src.get("bps"),
        "image": src.get("image"),
        "grail_cluster_version": src.get("grail_cluster_version"),
        "grail_cluster_code": src.get("grail_cluster_code"),
        "sources_in_plan_hash": bool(plan.provenance),
        "config": plan.config,
    }


def write_provenance(run_dir: str | Path, data: dict[str, Any]) -> Path:
    """Atomically write ``provenance.json`` (left untouched when it already holds the same bytes)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / PROVENANCE_FILE
    text = json.dumps(data, indent=1, sort_keys=True, default=str) + "\n"
    try:
        if path.read_text() == text:
            return path
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".provenance.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_provenance(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's provenance record, or None (runs planned before provenance existed)."""
    try:
        with open(Path(run_dir) / PROVENANCE_FILE) as fh:
            data = json.load(fh)
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def summary_line(prov: dict[str, Any] | None) -> str:
    """One short line for ``status``: SONIC commit, library and BPS hashes, image, tool version."""
    if not prov:
        return "provenance: none recorded (planned before provenance.json existed)"
    sonic = prov.get("sonic") or {}
    commit = sonic.get("commit") or UNKNOWN
    commit_text = commit[:12] if commit != UNKNOWN else UNKNOWN
    if sonic.get("dirty"):
        commit_text += " (dirty)"
    lib = (prov.get("library") or {}).get("index_hash") or "-"
    bps = (prov.get("bps") or {}).get("sha256") or "-"
    trainer = "reference tracker, code" if sonic.get("trainer") == "reference" else "SONIC"
    return (f"provenance: {trainer} {commit_text}, library {lib[:12]}, BPS {bps[:12]}, "
            f"image {prov.get('image') or 'none'}, grail-cluster {prov.get('grail_cluster_version') or '?'}")
