"""``demo-data``: a procedural, deterministic GRAIL-format pick-up library (contracts §1.1-1.9).

The Unitree G1 stands in front of a table (or over an object on the floor), reaches with the right
hand, grasps the object, lifts it 10-25 cm and holds it. The motions are meant to be *tracked by a
physics-based PD controller*, so they are built to be physically sensible rather than merely
well-formed:

* feet stay flat at fixed places on the floor: the legs are symmetric pitch chains whose ankle
  cancels the hip, knee and pelvis pitch, and the pelvis is placed by forward kinematics so that the
  lowest sole point is at z=0; the hip pitch is solved so that the centre of mass stays over the feet;
* the right hand really reaches the object: damped-least-squares IK (``mj_jac``, position first,
  hand orientation in its null space, posture last) brings :data:`PALM_OFFSET` on :data:`HAND_BODY`
  to a grasp point beside the object (on a table) or on top of it (on the floor), palm facing it,
  the open hand (thumb included) out of the object and clear of the support;
* the hand rises in front of the body before it goes out over the table, comes in from a
  pre-grasp pose on a straight line, waits while the hand closes, and lifts on a straight line;
  joint paths are minimum-jerk, joint speeds stay below 2 rad/s, joint limits hold, and the object
  moves rigidly with the hand from the lift frame on;
* every frame is checked (speeds, centre of mass over the feet, robot-table/floor/object/self
  contacts in MuJoCo with a margin, palm to object distance) and the scene re-drawn,
  deterministically, when a check fails. Replayed open-loop through the position actuators of
  ``scene_with_hands.xml`` (kp=500) the motions keep the robot standing and the hand off the table.

``--untrackable F`` gives about F of the motions (chosen from the seed) one retargeting defect of
the kind real pipelines produce, :data:`DEFECTS`: ``foot_lift``, the left foot lifted and held up
with the centre of mass still between the feet (the human leaned on the table), which a robot
cannot hold; everything else about those motions is as above. Which ones is in the summary only.

Everything depends only on ``--seed`` and the motion index (``numpy.random.default_rng``), so the
same arguments give byte-identical pickles and USDs whatever the number of worker processes.
Output: ``<out>/<name>/`` (retarget variant: robot objects meta object_usd bps) and
``<out>/<name>_ha/`` (process variant: robot objects meta, with hand actions), written into a temp
dir and renamed into place at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import EXIT_OK, ConfigError, DataError
from grail_cluster.tools.data.demo_files import write_motion
from grail_cluster.tools.data.demo_geometry import DEFECTS, FPS, SCENES, TMP_PREFIX
from grail_cluster.tools.data.demo_kinematics import kinematics
from grail_cluster.tools.data.demo_motion import joint_speed, make_motion, untrackable_indices


def _generate_one(job: tuple[str, int, int, str, str, str, str]) -> dict[str, Any]:
    name, seed, index, scene, plain, ha, defect = job
    motion = make_motion(name, seed, index, scene, defect)
    write_motion(motion, Path(plain), Path(ha))
    return {"key": motion.key, "object": motion.shape.name, "class": motion.shape.cls,
            "frames": len(motion.dof), "ground": motion.scene.ground, "attempts": motion.attempts,
            "lift_frame": motion.lift_frame, "grasp_error_m": round(motion.grasp_error, 5),
            "max_joint_speed": round(joint_speed(motion.dof), 3), "defect": defect}


def _run_jobs(jobs: list[tuple], workers: int) -> list[dict[str, Any]]:
    if workers <= 1 or len(jobs) < 4:
        return [_generate_one(j) for j in jobs]
    kinematics()  # compile once here; forked workers inherit the model
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(_generate_one, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError("--out exists and is not a directory", path=out, fix="pass a directory path")
    # a temp dir left by a killed run is no library: it does not make --out "not empty"
    if out.is_dir() and any(not e.name.startswith(TMP_PREFIX) for e in out.iterdir()) and not force:
        raise DataError("--out is not empty", path=out,
                        fix="choose an empty or new directory, or pass --force to replace the demo libraries in it")


def _publish(tmp: Path, out: Path, names: list[str]) -> None:
    """Rename the finished libraries into place; the training (_ha) library goes last."""
    for name in names:
        dest = out / name
        old = None
        if dest.exists():
            old = out / f".{name}.old-{os.getpid()}"
            os.replace(dest, old)
        os.replace(tmp / name, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def generate_library(out: str | Path, motions: int = 24, seed: int = 0, name: str = "demo_pickup",
                     scene: str = "table", force: bool = False, workers: int | None = None,
                     untrackable: float = 0.0) -> dict[str, Any]:
    """Write ``<out>/<name>/`` and ``<out>/<name>_ha/``; returns a JSON-able summary.

    ``untrackable``: the share of motions given a retargeting defect (:func:`untrackable_indices`,
    :data:`DEFECTS`); 0 writes the same bytes as before the option existed. Which motions got one is
    in the summary only (``untrackable_keys``, ``defects``), never in the library.
    """
    from grail_cluster.tools.data.bps import compute_bps

    t0 = time.perf_counter()
    out = Path(out).expanduser()
    if motions < 1:
        raise ConfigError(f"--motions must be >= 1 (got {motions})")
    if scene not in SCENES:
        raise ConfigError(f"unknown --scene {scene!r}", fix=f"choose one of: {', '.join(SCENES)}")
    if not name or "/" in name or name.startswith(".") or name.endswith("_ha"):
        raise ConfigError(f"bad --name {name!r}", fix="a plain directory name not ending in _ha, e.g. demo_pickup")
    bad = set(untrackable_indices(seed, motions, float(untrackable)))
    _check_out(out, force)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"{TMP_PREFIX}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    plain, ha = tmp / name, tmp / f"{name}_ha"
    try:
        for lib, subs in ((plain, ("robot", "objects", "meta", "object_usd")), (ha, ("robot", "objects", "meta"))):
            for sub in subs:
                (lib / sub).mkdir(parents=True)
        jobs = [(name, seed, i, scene, str(plain), str(ha), DEFECTS[0] if i in bad else "") for i in range(motions)]
        workers = workers if workers is not None else min(len(jobs), os.cpu_count() or 1, 8)
        rows = _run_jobs(jobs, workers)
        compute_bps(plain / "object_usd", plain / "bps")
        _publish(tmp, out, [name, f"{name}_ha"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    frames = [r["frames"] for r in rows]
    return {
        "out": str(out), "library": str(out / name), "library_ha": str(out / f"{name}_ha"),
        "bps_dir": str(out / name / "bps"), "motions": len(rows), "seed": seed, "scene": scene,
        "keys": [r["key"] for r in rows],
        "objects": dict(sorted(Counter(r["object"] for r in rows).items())),
        "classes": dict(sorted(Counter(r["class"] for r in rows).items())),
        "ground_motions": sum(r["ground"] for r in rows),
        "frames": {"min": min(frames), "max": max(frames), "total": sum(frames)},
        "fps": FPS, "redraws": sum(r["attempts"] - 1 for r in rows),
        "max_joint_speed": max(r["max_joint_speed"] for r in rows),
        "max_grasp_error_m": max(r["grasp_error_m"] for r in rows),
        "untrackable": float(untrackable),
        "untrackable_keys": [r["key"] for r in rows if r["defect"]],
        "defects": {r["key"]: r["defect"] for r in rows if r["defect"]},
        "seconds": round(time.perf_counter() - t0, 3),
    }


# ----------------------------------------------------------------------------- CLI


def cmd_demo_data(args: argparse.Namespace) -> int:
    summary = generate_library(args.out, motions=args.motions, seed=args.seed, name=args.name, scene=args.scene,
                               force=args.force, untrackable=args.untrackable)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")
        return EXIT_OK
    from rich.table import Table

    from grail_cluster.core.console import make_console

    console = make_console()
    table = Table(title=f"demo library: {summary['motions']} motions, seed {summary['seed']}, scene {summary['scene']}")
    table.add_column("object")
    table.add_column("motions", justify="right")
    for obj, count in summary["objects"].items():
        table.add_row(obj, str(count))
    console.print(table)
    fr = summary["frames"]
    console.print(f"frames {fr['min']}-{fr['max']} at {FPS} fps ({fr['total'] / FPS:.1f} s in all); "
                  f"max joint speed {summary['max_joint_speed']:.2f} rad/s; grasp IK residual <= "
                  f"{summary['max_grasp_error_m'] * 1000:.1f} mm; {summary['redraws']} scenes re-drawn")
    console.print(f"wrote {summary['library']} (robot objects meta object_usd bps)")
    console.print(f"wrote {summary['library_ha']} (training library, hand actions)")
    pipeline = "pnp_ground" if summary["scene"] == "ground" else "pnp_table"
    console.print(f"in {summary['seconds']:.2f} s; try: grail-cluster doctor {summary['library_ha']} pipeline={pipeline}")
    return EXIT_OK


def register(subparsers: Any) -> argparse.ArgumentParser:
    desc = ("Write a procedural, deterministic GRAIL-format pick-up library: the G1 reaches for an object on a "
            "table (or the floor), grasps it, lifts it and holds it; feet flat, balanced, IK-exact hand. "
            "Writes <out>/<name>/ (robot objects meta object_usd bps, wxyz root_rot) and <out>/<name>_ha/ "
            "(robot objects meta with hand actions: the training library).")
    p = subparsers.add_parser("demo-data", help="write a small physically sensible demo motion library",
                              description=desc)
    p.add_argument("--out", required=True, help="directory to hold <name>/ and <name>_ha/ (empty or new)")
    p.add_argument("--motions", type=int, default=24, help="number of motions (default 24)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.add_argument("--name", default="demo_pickup", help="library name (default demo_pickup)")
    p.add_argument("--scene", choices=SCENES, default="table",
                   help="table: objects on tables; ground: on the floor (deep squat); mixed: both")
    p.add_argument("--untrackable", type=float, default=0.25, metavar="F",
                   help="share of motions given a retargeting defect a robot cannot track, as real retargeted data "
                        "has (default 0.25; 0: every motion trackable); the --json summary names them")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing <name>/ and <name>_ha/")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_demo_data)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m grail_cluster.tools.data.demo_library``: the same command, standalone."""
    from grail_cluster.core.standalone import run_tool

    return run_tool(register, "demo-data", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

