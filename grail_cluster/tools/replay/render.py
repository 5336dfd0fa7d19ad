"""``render-replay``: kinematic replay videos on the CPU (MuJoCo), GRAIL ``batch_render_replay`` style.

Contracts §5.3 (flags, behaviour), §4.3 (``*.trajectory.pkl``), §1.8-1.9 (joint orders, quaternions).

What is rendered
- **Shard mode** (``--shard_dir``): the shard's successful motions (``terminated == false`` in
  ``metrics_eval.json``; every motion with ``--all``), in load order. A motion's trajectory is
  ``<key>.trajectory.pkl`` or ``{env_idx:06d}.trajectory.pkl``, looked for in ``--traj_dir`` and then
  with the exporter's lookup (shard dir, ``trajectories/``, ``export_render/``, ``render_results/``).
  ``dof_pos`` (F,43) is IsaacLab-order body (29) then the 14 hand joints in G1_HAND_JOINTS order; a
  29-DOF trajectory gets open hands. Root, object and table quaternions are wxyz (``quat_format``).
  The object mesh is ``<object_usd_dir>/<key>.usd[a]``; the table is drawn from frame 0 of
  ``table_pos_w``/``table_quat_w`` when its z is >= 0.1 m, sized by the library's ``meta/<key>.pkl``
  ``table_size`` (``--source_data``) or ``--table_size`` (release default 2.0 x 0.6 x 0.04).
- **Library mode** (``--motion_lib``): every motion of a library at the library's fps: robot ``dof``
  (MuJoCo order), ``root_trans_offset``, ``root_rot`` (wxyz or xyzw: detected per motion from
  ``pose_aa``/tilt with ``detect_root_rot_convention``, or ``--quat_convention``), objects
  ``root_pos``/``root_quat`` (wxyz) and ``scale``, meta ``table_pos``/``table_quat`` (same convention as
  that library's ``root_rot``: wxyz in retarget/``_ha``, xyzw in exported/released libraries) and
  ``table_size``; hands from ``hand_dof_pos``, else the discrete ``hand_action_*`` primitive, else open.

How
- The scene is ``sonic.reference.scene`` (G1 with hands + the object's mesh + a table box), posed
  kinematically each frame (``mj_kinematics``; nothing is simulated).
- Offscreen GL from ``MUJOCO_GL``: ``egl`` when unset, falling back to ``osmesa`` if EGL cannot
  render; shadows and reflections are off; every renderer is closed.
- Camera: a free camera at ``anchor + --camera_offset`` looking at ``anchor + --camera_target``. The
  anchor is the robot root's x, y and its height change since frame 0 (0.5 s moving average), so the
  offsets are relative to the root at frame 0 and heights are above the floor; ``--camera_mode fixed``
  keeps the frame-0 anchor.
- Video: one frame per trajectory frame, H.264 yuv420p through imageio-ffmpeg (libx264, quality 5,
  macro block 16: sizes that are not multiples of 16 are rounded up, not rescaled), at the
  trajectory's fps (25 when absent). Each video is written to ``.<key>.partial-<host>-<pid>-<n>.mp4``
  and renamed to ``<key>.mp4`` when complete; a failed motion's partial file is deleted, and stale
  partial files of dead processes on this host are removed at the next start.
- Workers and watchdog: motions are rendered by ``--workers`` spawned worker processes (default one
  per CPU, capped at one per 1.6 GiB of available memory: a worker peaks near that), longest first. Each worker runs in its own process group. The parent hands
  out one motion at a time. Workers report progress (scene built, then every 0.5 s of frames); a
  motion with no progress for ``--motion_timeout`` seconds (GRAIL's heartbeat rule: a long motion
  that keeps rendering is not cut off), or whose worker dies, has its worker's process group killed
  (ffmpeg included), its partial file deleted, and is reported as failed; a fresh worker takes over
  and the rest goes on. Unlike GRAIL (exit 2 from the whole process) one stuck motion costs only
  itself. SIGTERM/Ctrl-C kill the workers and delete their partial files before exiting.
- ``contact_sheet.png``: one mid frame per motion, labelled with its key, for a quick look.
- Exit code 1 when any motion failed (the others are still rendered), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import EXIT_OK, EXIT_PROBLEMS, ConfigError
from grail_cluster.tools.replay.motion import (
    DEFAULT_CAMERA_OFFSET,
    DEFAULT_CAMERA_TARGET,
    DEFAULT_RESOLUTION,
    RELEASE_TABLE_SIZE,
    RenderSettings,
    Task,
    parse_resolution,
)
from grail_cluster.tools.replay.planning import clean_stale_partials, plan_library, plan_shard
from grail_cluster.tools.replay.video import (
    CONTACT_SHEET,
    MAX_SHEET,
    mid_frame,
    remove_file,
    write_contact_sheet,
)
from grail_cluster.tools.replay.workers import DEFAULT_MOTION_TIMEOUT, default_workers, run_tasks

SETTINGS_STAMP = ".render_settings.json"



# ----------------------------------------------------------------------------------------------
# The whole call
# ----------------------------------------------------------------------------------------------
def execute(tasks: list[Task], planned_failures: dict[str, str], output_dir: str | Path, settings: RenderSettings, *,
            total_motions: int, mode: str, skip_existing: bool = False, dry_run: bool = False, workers: int = 0,
            motion_timeout: float = DEFAULT_MOTION_TIMEOUT, contact_sheet: bool = True, progress: bool = True) -> dict[str, Any]:
    """Render planned tasks; returns the summary (``rendered``, ``skipped``, ``failed[{key, why}]``, ...)."""
    output_dir = Path(output_dir)
    t0 = time.perf_counter()
    skipped = [t for t in tasks if skip_existing and Path(t.output).is_file() and Path(t.output).stat().st_size > 0]
    skipped_keys = {t.key for t in skipped}
    todo = [t for t in tasks if t.key not in skipped_keys]
    summary: dict[str, Any] = {
        "mode": mode, "output_dir": str(output_dir), "motions_in_input": total_motions,
        "selected": len(tasks) + len(planned_failures), "width": settings.width, "height": settings.height,
        "dry_run": dry_run, "skipped_keys": [t.key for t in skipped],
    }
    if dry_run:
        summary.update(rendered=0, skipped=len(skipped), seconds=round(time.perf_counter() - t0, 3), frames=0,
                       frames_per_second=0.0, failed=[{"key": k, "why": w} for k, w in sorted(planned_failures.items())],
                       would_render=[{"key": t.key, "input": t.trajectory or t.robot, "usd": t.usd, "output": t.output}
                                     for t in todo], videos=[], contact_sheet=None, backend=None, workers=0, warnings=[])
        return summary
    warnings = []
    if todo:
        output_dir.mkdir(parents=True, exist_ok=True)
        stale = clean_stale_partials(output_dir)
        if stale:
            warnings.append(f"removed {len(stale)} partial video(s) of dead processes: {', '.join(sorted(stale)[:5])}")
    n_workers = (max(1, min(workers, len(todo))) if workers > 0 else default_workers(len(todo))) if todo else 0
    results, failed, backend, gl_errors = run_tasks(todo, settings, workers=n_workers, motion_timeout=motion_timeout,
                                                    progress=progress)
    warnings += [f"{e}; fell back to MUJOCO_GL={backend}" for e in gl_errors]
    failed = {**planned_failures, **failed}
    seconds = time.perf_counter() - t0
    frames = sum(r["frames"] for r in results.values())
    for r in results.values():
        warnings += [f"{r['key']}: {note}" for note in r["notes"] if note.startswith("no object")]
    sheet = None
    if contact_sheet and (results or skipped):
        thumbs = []
        for t in tasks:
            if t.key in results and results[t.key]["thumb"] is not None:
                thumbs.append((t.key, results[t.key]["thumb"]))
            elif t.key in skipped_keys and len(thumbs) < MAX_SHEET:
                img = mid_frame(Path(t.output))
                if img is not None:
                    thumbs.append((t.key, img))
        output_dir.mkdir(parents=True, exist_ok=True)
        sheet = write_contact_sheet(output_dir / CONTACT_SHEET, thumbs)
    videos = [{k: v for k, v in results[t.key].items() if k != "thumb"} for t in tasks if t.key in results]
    hand_kinds: dict[str, int] = {}
    for v in videos:  # which hand-action signal each library motion carried (discrete or continuous)
        for note in v["notes"]:
            if note.startswith("hand_action: "):
                hand_kinds[note.split(": ", 1)[1]] = hand_kinds.get(note.split(": ", 1)[1], 0) + 1
    summary["hand_action_kinds"] = dict(sorted(hand_kinds.items()))
    summary.update(rendered=len(results), skipped=len(skipped), seconds=round(seconds, 3), frames=frames,
                   frames_per_second=round(frames / seconds, 2) if seconds > 0 else 0.0,
                   failed=[{"key": k, "why": w} for k, w in sorted(failed.items())], videos=videos,
                   contact_sheet=str(sheet) if sheet else None, backend=backend,
                   workers=n_workers, warnings=warnings)
    return summary


def settings_from_args(args: argparse.Namespace) -> RenderSettings:
    w, h = parse_resolution(args.resolution)
    if args.start_frame_skip < 0:
        raise ConfigError("--start_frame_skip must be >= 0")
    if args.motion_timeout <= 0:
        raise ConfigError("--motion_timeout must be > 0 seconds")
    if args.lod_mm < 0:
        raise ConfigError("--lod_mm must be >= 0")
    if any(s <= 0 for s in args.table_size):
        raise ConfigError("--table_size values must be > 0")
    return RenderSettings(width=w, height=h, camera_offset=tuple(args.camera_offset), camera_target=tuple(args.camera_target),
                          camera_mode=args.camera_mode, start_frame_skip=args.start_frame_skip,
                          quat_convention=args.quat_convention, lod_mm=args.lod_mm, table_size=tuple(args.table_size))


def render_stage(shard_dir: str | Path, *, usd_dir: str | Path | None, source_data: str | Path | None,
                 resolution: str = DEFAULT_RESOLUTION, workers: int = 0, lod_mm: float = 0.0,
                 camera_offset: tuple[float, float, float] = DEFAULT_CAMERA_OFFSET) -> dict[str, Any]:
    """The render stage's work: the shard's successful motions into ``<shard_dir>/vis/<key>.mp4``.

    Videos already in ``vis/`` are reused only when ``vis/.render_settings.json`` says they were
    rendered with the same settings; otherwise the old videos of the keys to render are removed first
    (so a retry after a crash never mixes settings).
    """
    import json

    settings = RenderSettings(*parse_resolution(resolution), lod_mm=float(lod_mm or 0.0),
                              camera_offset=tuple(float(v) for v in camera_offset))
    out = Path(shard_dir) / "vis"
    tasks, planned_failures, total = plan_shard(shard_dir, out, usd_dir=usd_dir, source_data=source_data)
    stamp_path = out / SETTINGS_STAMP
    try:
        same = json.loads(stamp_path.read_text()) == settings.stamp()
    except (OSError, ValueError):
        same = False
    if tasks and not same:
        for t in tasks:
            remove_file(t.output)
        out.mkdir(parents=True, exist_ok=True)
        tmp = stamp_path.with_name(f"{SETTINGS_STAMP}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(settings.stamp(), sort_keys=True))
        os.replace(tmp, stamp_path)
    return execute(tasks, planned_failures, out, settings, total_motions=total, mode="shard", skip_existing=True,
                   workers=workers)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def register(subparsers: Any) -> argparse.ArgumentParser:
    desc = ("Kinematic replay videos on the CPU (MuJoCo, GRAIL batch_render_replay). --shard_dir: the successful "
            "motions of an eval shard (--all: every motion) from their trajectories; --motion_lib: every motion of "
            "a motion library. One <output_dir>/<motion_key>.mp4 per motion (H.264 yuv420p, one frame per "
            "trajectory frame, written atomically) and contact_sheet.png. Motions run on worker processes with a "
            "watchdog: a motion without progress for --motion_timeout s is killed and reported, the rest go on. Exit 1 if any "
            "motion failed.")
    p = subparsers.add_parser("render-replay", help="render kinematic replay videos of an eval shard or a motion library",
                              description=desc)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shard_dir", help="eval shard dir holding metrics_eval.json and the trajectories")
    src.add_argument("--motion_lib", help="replay a motion library (robot/ objects/ meta/) instead")
    p.add_argument("--traj_dir", help="where the trajectories are (default: the shard dir and its trajectories/, "
                                      "render_results/, export_render/)")
    p.add_argument("--object_usd_dir", help="object USDs by motion key (required with --shard_dir; default with "
                                            "--motion_lib: the library's object_usd/, or its non-_ha sibling's)")
    p.add_argument("--source_data", help="shard mode: the library the shard evaluated (its meta table_size is used)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--resolution", default=DEFAULT_RESOLUTION, help="WIDTHxHEIGHT (rounded up to multiples of 16)")
    p.add_argument("--camera_offset", nargs=3, type=float, default=list(DEFAULT_CAMERA_OFFSET), metavar=("X", "Y", "Z"),
                   help="camera position relative to the robot root at frame 0 (z: height above the floor)")
    p.add_argument("--camera_target", nargs=3, type=float, default=list(DEFAULT_CAMERA_TARGET), metavar=("X", "Y", "Z"),
                   help="look-at point, same frame as --camera_offset")
    p.add_argument("--camera_mode", choices=("track", "fixed"), default="track",
                   help="track: follow the root (smoothed); fixed: stay at the frame-0 placement")
    p.add_argument("--start_frame_skip", type=int, default=0, help="drop this many frames at the start of each motion")
    p.add_argument("--max_motions", type=int, default=None, help="render at most this many motions (load order)")
    p.add_argument("--motion_keys", help="comma-separated keys to render (others are ignored)")
    p.add_argument("--skip_existing", action="store_true", help="keep <key>.mp4 files that already exist")
    p.add_argument("--dry_run", action="store_true", help="list what would be rendered; write nothing")
    p.add_argument("--all", action="store_true", help="shard mode: failed (terminated) motions too")
    p.add_argument("--quat_convention", choices=("auto", "wxyz", "xyzw"), default="auto",
                   help="library mode: robot root_rot / meta table_quat order (auto: detected per motion)")
    p.add_argument("--table_size", nargs=3, type=float, default=list(RELEASE_TABLE_SIZE), metavar=("X", "Y", "Z"),
                   help="table size when the library's meta has none (m)")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes (default: one per CPU, at most one per 1.6 GiB of available memory)")
    p.add_argument("--motion_timeout", type=float, default=DEFAULT_MOTION_TIMEOUT,
                   help="seconds a motion may go without progress before its worker is killed (default 180)")
    p.add_argument("--lod_mm", type=float, default=0.0,
                   help="simplify the robot meshes to this cell size in mm for speed (0 = full meshes)")
    p.add_argument("--no_contact_sheet", action="store_true")
    p.add_argument("--headless", action="store_true", help="accepted for GRAIL compatibility (always headless)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_render_replay)
    return p


def cmd_render_replay(args: argparse.Namespace) -> int:
    import json

    settings = settings_from_args(args)
    keys = [k.strip() for k in args.motion_keys.split(",") if k.strip()] if args.motion_keys else None
    if args.max_motions is not None and args.max_motions < 0:
        raise ConfigError("--max_motions must be >= 0")
    if args.shard_dir:
        if not args.object_usd_dir:
            raise ConfigError("--object_usd_dir is required with --shard_dir", fix="pass the library's object_usd/ dir")
        tasks, failures, total = plan_shard(args.shard_dir, args.output_dir, usd_dir=args.object_usd_dir,
                                            traj_dir=args.traj_dir, source_data=args.source_data,
                                            include_failed=args.all, motion_keys=keys, max_motions=args.max_motions)
        mode = "shard"
    else:
        tasks, failures, total = plan_library(args.motion_lib, args.output_dir, usd_dir=args.object_usd_dir,
                                              motion_keys=keys, max_motions=args.max_motions)
        mode = "library"
    summary = execute(tasks, failures, args.output_dir, settings, total_motions=total, mode=mode,
                      skip_existing=args.skip_existing, dry_run=args.dry_run, workers=args.workers,
                      motion_timeout=args.motion_timeout, contact_sheet=not args.no_contact_sheet)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    else:
        _print_summary(summary)
    return EXIT_PROBLEMS if summary["failed"] else EXIT_OK


def _print_summary(s: dict[str, Any]) -> None:
    out = sys.stdout
    if s["dry_run"]:
        for item in s["would_render"]:
            out.write(f"would render {item['key']}: {item['input']} -> {item['output']}"
                      f"{'' if item['usd'] else ' (no object USD)'}\n")
        out.write(f"dry run: {len(s['would_render'])} to render, {s['skipped']} existing skipped, "
                  f"{len(s['failed'])} without a trajectory; nothing written\n")
    else:
        out.write(f"rendered {s['rendered']} motion(s), {s['frames']} frames in {s['seconds']:.1f} s "
                  f"({s['frames_per_second']:.1f} frames/s, {s['workers']} worker(s), MUJOCO_GL={s['backend']}); "
                  f"skipped {s['skipped']} existing; {len(s['failed'])} failed -> {s['output_dir']}\n")
        if s["contact_sheet"]:
            out.write(f"contact sheet: {s['contact_sheet']}\n")
    for w in s.get("warnings") or []:
        sys.stderr.write(f"warning: {w}\n")
    for f in s["failed"]:
        sys.stderr.write(f"FAILED {f['key']}: {f['why']}\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m grail_cluster.tools.replay.render``: the same command, standalone."""
    from grail_cluster.core.standalone import run_tool

    return run_tool(register, "render-replay", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

