"""Export successful evaluation rollouts as a GRAIL motion library (contracts §5.4).

Input: one eval shard dir (``metrics_eval.json`` + ``*.trajectory.pkl``) and the source library the
shard evaluated. Output: ``robot/ objects/ meta/ object_usd/ vis/`` + ``export_manifest.json``, with
robot ``root_rot`` in xyzw (export convention, §1.9). Everything is read and checked first and
written into a temp dir that is renamed into place at the end, so an error leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

from grail_cluster.core.errors import EXIT_OK, EXIT_PROBLEMS, ConfigError, DataError, GrailError
from grail_cluster.core.motion_checks import hand_action_kind
from grail_cluster.core.quaternions import wxyz_to_xyzw
from grail_cluster.tools.data import g1
from grail_cluster.tools.data.eval_shard import (
    METRIC_COLUMNS,
    find_metrics,
    find_trajectory,
    find_video,
    judge,
    load_trajectory,
    output_defects,
    read_metrics,
    trajectory_defects,
)
from grail_cluster.tools.data.io import (
    atomic_dir,
    disk_full_errors,
    dumps_json,
    finite_or_none,
    sha256_file,
    write_json,
    write_pickle,
)
from grail_cluster.tools.data.source_library import Source

MANIFEST = "export_manifest.json"



# ----------------------------------------------------------------------------------------------
# Conversions
# ----------------------------------------------------------------------------------------------
def quat_wxyz_to_rotvec(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    q = np.where(q[..., :1] < 0, -q, q)  # w >= 0 keeps the angle in [0, pi]
    v = q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2 * np.arctan2(s, q[..., :1])
    return v * np.where(s > 1e-12, angle / np.maximum(s, 1e-12), 2.0)


def resample_nearest(values: np.ndarray, src_fps: float, dst_fps: float, n: int) -> np.ndarray:
    """Nearest source frame for each of ``n`` frames at ``dst_fps`` (held at the last frame)."""
    idx = np.rint(np.arange(n) * (float(src_fps) / float(dst_fps))).astype(int)
    return np.asarray(values)[np.clip(idx, 0, len(values) - 1)]


def robot_entry(traj: dict, src_robot: dict | None, src_path: Path | None, need_hands: bool) -> dict:
    dof_pos = traj["dof_pos"]
    F, fps = len(dof_pos), traj["fps"]
    dof = dof_pos[:, : g1.NUM_BODY_DOF][:, list(g1.G1_ISAACLAB_TO_MUJOCO_DOF)].astype(np.float32)
    pose_aa = np.empty((F, g1.NUM_BODY_DOF + 1, 3), np.float32)
    pose_aa[:, 0] = quat_wxyz_to_rotvec(traj["root_quat_w"])
    pose_aa[:, 1:] = dof[:, :, None] * g1.dof_axis()[None]
    out = {
        "root_trans_offset": traj["root_pos_w"].astype(np.float32),
        "pose_aa": pose_aa,
        "dof": dof,
        "root_rot": wxyz_to_xyzw(traj["root_quat_w"]).astype(np.float32),
        "smpl_joints": np.zeros((F, 24, 3), np.float32),
        "fps": float(fps),
        "hand_dof_pos": dof_pos[:, g1.NUM_BODY_DOF:].astype(np.float32),
    }
    has = src_robot is not None and all(src_robot.get(f"hand_action_{s}") is not None for s in ("left", "right"))
    if has:
        fix = "regenerate this motion with grail.retargeting.process (`grail-cluster doctor` lists every such file)"
        src_fps = src_robot.get("fps") or 30  # retarget writes int 30 (contracts §1.2)
        if isinstance(src_fps, bool) or not isinstance(src_fps, int | float | np.integer | np.floating) \
                or not math.isfinite(float(src_fps)) or float(src_fps) <= 0:
            raise DataError(f"source robot fps is {src_fps!r}; hand actions cannot be resampled to the rollout",
                            path=src_path, fix=fix)
        for side in ("left", "right"):
            try:
                act = np.asarray(src_robot[f"hand_action_{side}"], np.float32).reshape(-1)
            except (TypeError, ValueError):
                act = None
            if act is None or act.size == 0:
                raise DataError(f"source hand_action_{side} is empty or not numeric", path=src_path, fix=fix)
            out[f"hand_action_{side}"] = resample_nearest(act, float(src_fps), fps, F)
    elif need_hands:
        raise DataError(
            "the source robot pickle has no hand_action_left/right; the discrete hand signal cannot be "
            "recovered from finger angles", path=src_path,
            fix="export from the `_ha` library (grail.retargeting.process output), or pass --no_hand_actions "
                "for terrain/sitting data that has no hand actions")
    return out


def objects_entry(traj: dict, src_obj: dict | None) -> dict:
    F = len(traj["dof_pos"])
    pos = traj["object_pos_w"] if traj["object_pos_w"] is not None else np.zeros((F, 3))
    quat = traj["object_quat_w"] if traj["object_quat_w"] is not None else np.tile([1.0, 0, 0, 0], (F, 1))
    out = {"root_pos": pos[:, None].astype(np.float32), "root_quat": quat[:, None].astype(np.float32),
           "fps": float(traj["fps"])}
    for name in ("scale", "contact_points_left_hand", "contact_points_right_hand"):
        if src_obj is not None and name in src_obj:
            out[name] = src_obj[name]
    return out


def meta_entry(traj: dict, src_meta: dict | None) -> dict:
    meta = dict(src_meta or {})
    if traj["table_pos_w"] is not None:
        meta["table_pos"] = np.asarray(traj["table_pos_w"][0], np.float64)
        quat = traj["table_quat_w"][0] if traj["table_quat_w"] is not None else np.array([1.0, 0, 0, 0])
        meta["table_quat"] = wxyz_to_xyzw(np.asarray(quat, np.float64))
    else:
        # Without a table in the rollout the source's wxyz table_quat would contradict the
        # export convention (xyzw); drop the pose instead of writing a mixed-convention file.
        meta.pop("table_pos", None)
        meta.pop("table_quat", None)
    return meta


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------
def _plan(eval_dir: Path, src: Source, metrics: dict, min_progress: float, threshold: float | None,
          need_hands: bool, videos: bool) -> tuple[list[dict], int, list[dict]]:
    """Read and convert every successful motion (all reads happen here, before any write).

    Returns (items, skipped without a trajectory, rejected). A rejected motion is one that is not
    terminated but cannot be exported: its metrics cannot show success (NaN/null progress or object
    error) or its rollout holds non-finite values. It counts as failed and is never written.
    """
    items, skipped, rejected = [], 0, []
    for env_idx, key in enumerate(metrics["motion_keys"]):
        row = {name: metrics[name][env_idx] for name in METRIC_COLUMNS}
        ok, why = judge(row, min_progress, threshold)
        if why is not None:
            rejected.append({"motion_key": key, "env_idx": env_idx, "reason": why, "file": "metrics_eval.json"})
            continue
        if not ok:
            continue
        traj_path = find_trajectory(eval_dir, key, env_idx)
        if traj_path is None:
            skipped += 1
            continue
        if key not in src.robot:
            raise DataError(f"motion {key!r} is not in the source library", path=src.root / "robot",
                            fix="--source_data must be the library this shard evaluated")
        traj = load_trajectory(traj_path)
        defects = trajectory_defects(traj)
        if defects:
            rejected.append({"motion_key": key, "env_idx": env_idx, "reason": "; ".join(defects),
                             "file": str(traj_path)})
            continue
        entries = {
            "robot": robot_entry(traj, src.inner(src.robot, key, "robot"), src.robot[key], need_hands),
            "objects": objects_entry(traj, src.inner(src.objects, key, "objects")),
            "meta": meta_entry(traj, src.inner(src.meta, key, "meta")),
        }
        defects = output_defects(entries)
        if defects:  # e.g. NaN hand actions or contact points carried over from the source library
            rejected.append({"motion_key": key, "env_idx": env_idx, "file": str(src.robot[key]),
                             "reason": "the exported motion would hold non-finite values: " + "; ".join(defects)})
            continue
        robot = entries["robot"]
        kind = (hand_action_kind(robot["hand_action_left"], robot["hand_action_right"])
                if "hand_action_left" in robot else "none")
        items.append({"key": key, "env_idx": env_idx, "row": row, **entries, "hand_action_kind": kind,
                      "video": find_video(eval_dir, key, env_idx) if videos else None})
    return items, skipped, rejected


def _write(tmp: Path, src: Source, items: list[dict]) -> list[str]:
    for sub in ("robot", "objects", "meta", "object_usd", "vis"):
        (tmp / sub).mkdir()
    missing_usd = []
    for it in items:
        key = it["key"]
        write_pickle(tmp / "robot" / f"{key}.pkl", {key: it["robot"]})
        write_pickle(tmp / "objects" / f"{key}.pkl", {key: it["objects"]})
        write_pickle(tmp / "meta" / f"{key}.pkl", it["meta"])
        usd = src.usd.get(key)
        if usd is None:
            missing_usd.append(key)
        else:
            # Flattened to object_usd/<key>.usd*: merge counts object_usd/*.usd against robot/*.pkl.
            shutil.copy2(usd, tmp / "object_usd" / usd.name)
            for tex in src.textures(key):
                dst = tmp / "object_usd" / tex.relative_to(src.usd_root)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(tex, dst)
        if it["video"] is not None:
            shutil.copy2(it["video"], tmp / "vis" / f"{key}.mp4")
    if src.usd_root is not None and (src.usd_root / "config.yaml").is_file():
        shutil.copy2(src.usd_root / "config.yaml", tmp / "object_usd" / "config.yaml")
    return missing_usd


def _outputs(root: Path) -> dict[str, str]:
    # Dotfiles are caches of readers (the library index writes .grail_index.json), not library content.
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}


PROGRESS_RULE = ("success = not terminated, progress >= min_progress and, with obj_pos_threshold, "
                 "obj_pos_error <= obj_pos_threshold; a NaN or null progress (or object error, when a threshold is "
                 "set) cannot be shown to pass, so that motion is rejected, never exported; a shard without a "
                 "progress column takes progress 1.0 for motions that did not terminate (SONIC forces it, "
                 "contracts §4.2); a rollout with NaN/Inf values or zero-length quaternions is rejected")


def _hand_kind_summary(items: list[dict]) -> tuple[str, dict[str, int]]:
    counts: dict[str, int] = {}
    for it in items:
        counts[it["hand_action_kind"]] = counts.get(it["hand_action_kind"], 0) + 1
    kinds = sorted(k for k in counts if k != "none")
    kind = kinds[0] if len(kinds) == 1 else ("mixed" if kinds else "none")
    return kind, dict(sorted(counts.items()))


def export_shard(eval_dir: str | Path, source_data: str | Path, output_dir: str | Path, *,
                 obj_pos_threshold: float | None = None, min_progress: float = 1.0, videos: bool = True,
                 hand_actions: bool = True, checkpoint: str | None = None, step: int | None = None,
                 retry: str = "run the export again") -> dict:
    """Export the successful rollouts of one eval shard into ``output_dir``; return the manifest.

    A full disk is a DataError naming ``output_dir`` whose fix ends with ``retry`` (a run's stage says
    `grail-cluster resubmit`)."""
    eval_dir, source_data, output_dir = Path(eval_dir), Path(source_data), Path(output_dir)
    for name, value in (("--min_progress", min_progress), ("--obj_pos_threshold", obj_pos_threshold)):
        if value is not None and not math.isfinite(float(value)):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
    metrics_path = find_metrics(eval_dir)
    metrics = read_metrics(metrics_path)
    src = Source.scan(source_data)
    items, skipped, rejected = _plan(eval_dir, src, metrics, min_progress, obj_pos_threshold, hand_actions, videos)
    for r in rejected:
        if r["file"] == "metrics_eval.json":
            r["file"] = str(metrics_path)
    kind, kinds = _hand_kind_summary(items)
    manifest = {
        "source_eval_dir": str(eval_dir.resolve()),
        "source_data_dir": str(source_data.resolve()),
        "obj_pos_threshold": obj_pos_threshold,
        "min_progress": min_progress,
        "success_rule": PROGRESS_RULE,
        "defaulted_metrics": metrics["absent_columns"],
        "total_motions_evaluated": len(metrics["motion_keys"]),
        # JSON has no NaN: a non-finite metric is written as null.
        "exported_motions": [
            {"motion_key": it["key"], "env_idx": it["env_idx"],
             **{n: finite_or_none(it["row"][n]) for n in ("obj_pos_error", "obj_ori_error", "mpjpe_g", "progress")},
             "hand_action_kind": it["hand_action_kind"]} for it in items],
        "exported_count": len(items),
        "skipped_no_trajectory": skipped,
        "rejected": rejected,
        "rejected_count": len(rejected),
        "checkpoint": checkpoint,
        "step": step,
        "root_rot_convention": "xyzw",
        "hand_actions": "source" if hand_actions else "optional",
        "hand_action_kind": kind,
        "hand_action_kinds": kinds,
    }
    with disk_full_errors(output_dir, "the export", retry), atomic_dir(output_dir) as tmp:
        manifest["missing_usd"] = _write(tmp, src, items)
        manifest["outputs"] = _outputs(tmp)
        write_json(tmp / MANIFEST, manifest)
        problems = verify_export(tmp)
        if problems:  # a bug or a disk problem; the temp dir is removed by atomic_dir
            raise DataError("export failed its own verification: " + "; ".join(problems), path=output_dir)
    return manifest


def verify_export(out: str | Path) -> list[str]:
    """Problems with an existing export (counts, manifest, hashes); empty when it is intact."""
    out = Path(out)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        motions = [m["motion_key"] for m in manifest["exported_motions"]]
        outputs = dict(manifest.get("outputs") or {})
        count = int(manifest["exported_count"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{out / MANIFEST}: missing or malformed ({exc!r})"]
    problems = []
    if count != len(motions):
        problems.append(f"exported_count {count} != {len(motions)} exported_motions")
    for sub in ("robot", "objects", "meta"):
        have = sorted(p.stem for p in (out / sub).glob("*.pkl"))
        if have != sorted(motions):
            problems.append(f"{sub}/ holds {len(have)} pickles, the manifest lists {len(motions)} motions")
    if not outputs and motions:  # a shard where nothing succeeded is a valid, empty export
        problems.append("manifest has no `outputs` hashes")
    for rel, digest in sorted(outputs.items()):
        path = out / rel
        if not path.is_file():
            problems.append(f"{rel}: listed in the manifest but missing")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 differs from the manifest")
    extra = sorted(set(_outputs(out)) - set(outputs))
    problems += [f"{rel}: not listed in the manifest" for rel in extra]
    return problems


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="export the successful rollouts of an eval shard as a motion library",
        description="Turn one eval shard (metrics_eval.json + *.trajectory.pkl) into robot/ objects/ meta/ "
                    "object_usd/ vis/ + export_manifest.json (GRAIL export_successful_rollouts). Success: not "
                    "terminated, progress >= --min_progress, obj_pos_error <= --obj_pos_threshold if given. "
                    "Hand actions are copied from the source robot pickles and are required unless "
                    "--no_hand_actions (terrain/sitting sources have none). Written atomically.")
    p.add_argument("--eval_dir", help="eval shard dir holding metrics_eval.json")
    p.add_argument("--source_data", help="the motion library the shard evaluated (the `_ha` one for HOI)")
    p.add_argument("--output_dir", help="export destination (replaced atomically)")
    p.add_argument("--obj_pos_threshold", type=float, default=None, help="max object position error, m")
    p.add_argument("--min_progress", type=float, default=1.0, help="min progress 0..1 (default 1.0)")
    p.add_argument("--no_videos", action="store_true", help="do not copy rollout videos to vis/")
    p.add_argument("--no_hand_actions", action="store_true",
                   help="allow sources without hand_action_left/right (terrain, sitting); they are then omitted")
    p.add_argument("--verify", metavar="O", help="only check an existing export dir; exit 1 on a mismatch")
    p.add_argument("--checkpoint", help="checkpoint the shard was evaluated with (recorded in the manifest)")
    p.add_argument("--step", type=int, help="training step of that checkpoint (recorded in the manifest)")
    p.add_argument("--json", action="store_true", help="print the manifest / verify result as JSON")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args) -> int:
    if args.verify:
        problems = verify_export(args.verify)
        if args.json:
            sys.stdout.write(dumps_json({"export_dir": args.verify, "ok": not problems, "problems": problems}))
        else:
            for line in problems:
                print(f"FAIL {line}", file=sys.stderr)
            print(f"{args.verify}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return EXIT_PROBLEMS if problems else EXIT_OK
    missing = [f"--{n}" for n in ("eval_dir", "source_data", "output_dir") if not getattr(args, n)]
    if missing:
        raise GrailError(f"export needs {', '.join(missing)}", fix="see `export --help`")
    manifest = export_shard(args.eval_dir, args.source_data, args.output_dir,
                            obj_pos_threshold=args.obj_pos_threshold, min_progress=args.min_progress,
                            videos=not args.no_videos, hand_actions=not args.no_hand_actions,
                            checkpoint=args.checkpoint, step=args.step)
    if args.json:
        sys.stdout.write(dumps_json(manifest))
    else:
        print(f"exported {manifest['exported_count']}/{manifest['total_motions_evaluated']} motions to "
              f"{args.output_dir} (skipped, no trajectory: {manifest['skipped_no_trajectory']}; "
              f"rejected: {manifest['rejected_count']}; missing USD: {len(manifest['missing_usd'])}; "
              f"hand actions: {manifest['hand_action_kind']})")
        for r in manifest["rejected"]:
            # One line per motion, key and file whole, so `grep KEY export.log` finds it.
            print(f"rejected {r['motion_key']}: {r['file']}: {r['reason']}")
        if manifest["rejected"]:
            print("  fix: rejected motions count as failed and were not written; re-evaluate them (a diverged "
                  "rollout records NaN) or repair the named files, then export again")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``python -m grail_cluster.tools.data.export``: the same command, standalone."""
    from grail_cluster.core.standalone import run_tool

    return run_tool(register, "export", argv)


if __name__ == "__main__":
    sys.exit(main())

