"""Which motions a call renders: tasks for a shard's or a library's motions, with their partial names."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from grail_cluster.core.errors import DataError
from grail_cluster.tools.data.bps import USD_SUFFIXES
from grail_cluster.tools.data.eval_shard import find_metrics, find_trajectory, read_metrics
from grail_cluster.tools.data.source_library import Source
from grail_cluster.tools.replay.motion import (
    Task,
)
from grail_cluster.tools.replay.video import remove_file

_PARTIAL = re.compile(r"^\..+\.partial-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-\d+\.mp4$")



def usd_index(usd_dir: str | Path | None) -> dict[str, Path]:
    """Object USDs by stem (recursive; textures/ and flat_placeholder skipped; first one wins)."""
    out: dict[str, Path] = {}
    if not usd_dir:
        return out
    root = Path(usd_dir)
    if not root.is_dir():
        raise DataError("object USD dir not found", path=root, fix="pass the library's object_usd/ dir")
    for p in sorted(root.rglob("*")):
        if (p.suffix.lower() in USD_SUFFIXES and p.stem != "flat_placeholder" and p.is_file()
                and "textures" not in p.relative_to(root).parts):
            out.setdefault(p.stem, p)
    return out


_SEQ = [0]


def _partial_name(output: Path) -> Path:
    _SEQ[0] += 1
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
    return output.with_name(f".{output.stem}.partial-{host}-{os.getpid()}-{_SEQ[0]}.mp4")


def clean_stale_partials(output_dir: Path) -> list[str]:
    """Remove partial videos left by dead processes of this host (a killed job); returns their names."""
    if not output_dir.is_dir():
        return []
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
    removed = []
    for p in output_dir.iterdir():
        m = _PARTIAL.match(p.name)
        if not m or m.group("host") != host:
            continue
        pid = int(m.group("pid"))
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            remove_file(str(p))
            removed.append(p.name)
    return removed


def _key_filter(keys: list[str], motion_keys: list[str] | None, max_motions: int | None) -> list[str]:
    if motion_keys:
        wanted = set(motion_keys)
        keys = [k for k in keys if k in wanted]
    if max_motions is not None and max_motions >= 0:
        keys = keys[:max_motions]
    return keys


def plan_shard(shard_dir: str | Path, output_dir: str | Path, *, usd_dir: str | Path | None, traj_dir: str | Path | None = None,
               source_data: str | Path | None = None, include_failed: bool = False, motion_keys: list[str] | None = None,
               max_motions: int | None = None) -> tuple[list[Task], dict[str, str], int]:
    """Tasks for a shard's motions; (tasks, failures found while planning, motions in the shard)."""
    shard_dir, output_dir = Path(shard_dir), Path(output_dir)
    metrics = read_metrics(find_metrics(shard_dir))
    all_keys = metrics["motion_keys"]
    env_of = {k: i for i, k in enumerate(all_keys)}
    keys = [k for k, term in zip(all_keys, metrics["terminated"], strict=True) if include_failed or not bool(term)]
    keys = _key_filter(keys, motion_keys, max_motions)
    usds = usd_index(usd_dir)
    metas = Source.scan(Path(source_data)).meta if source_data else {}
    tasks, failed = [], {}
    for key in keys:
        env_idx = env_of[key]
        path = None
        if traj_dir:
            for name in (f"{key}.trajectory.pkl", f"{env_idx:06d}.trajectory.pkl"):
                if (Path(traj_dir) / name).is_file():
                    path = Path(traj_dir) / name
                    break
        path = path or find_trajectory(shard_dir, key, env_idx)
        if path is None:
            failed[key] = (f"no trajectory ({key}.trajectory.pkl or {env_idx:06d}.trajectory.pkl) in "
                           f"{traj_dir or shard_dir} or its trajectories/, render_results/, export_render/")
            continue
        out = output_dir / f"{key}.mp4"
        tasks.append(Task(key, "trajectory", str(out), str(_partial_name(out)), trajectory=str(path),
                          meta=str(metas[key]) if key in metas else None,
                          usd=str(usds[key]) if key in usds else None, weight=path.stat().st_size))
    return tasks, failed, len(all_keys)


def plan_library(motion_lib: str | Path, output_dir: str | Path, *, usd_dir: str | Path | None = None,
                 motion_keys: list[str] | None = None, max_motions: int | None = None) -> tuple[list[Task], dict[str, str], int]:
    """Tasks for every motion of a library (sorted keys)."""
    src = Source.scan(Path(motion_lib))
    output_dir = Path(output_dir)
    usds = usd_index(usd_dir) if usd_dir else src.usd
    # Ambiguous root_rot (e.g. a perfectly upright, unrotated motion): exported libraries are xyzw.
    fallback = "xyzw" if (src.root / "export_manifest.json").is_file() else "wxyz"
    keys = _key_filter(sorted(src.robot), motion_keys, max_motions)
    tasks = []
    for key in keys:
        out = output_dir / f"{key}.mp4"
        tasks.append(Task(key, "library", str(out), str(_partial_name(out)), robot=str(src.robot[key]),
                          objects=str(src.objects[key]) if key in src.objects else None,
                          meta=str(src.meta[key]) if key in src.meta else None,
                          usd=str(usds[key]) if key in usds else None, fallback_convention=fallback,
                          weight=src.robot[key].stat().st_size))
    return tasks, {}, len(src.robot)

