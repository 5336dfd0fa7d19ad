#!/usr/bin/env python
"""Benchmark the CPU replay renderer (``render-replay``) against a naive peer in the same run.

Figures at 320x240 and 1280x720 (medians over --repeat runs, interleaved; each run is a fresh process,
so worker start-up, model builds and video encoding are all inside the time):

- ours, 1 process: ``grail-cluster render-replay --workers 1`` (one render worker; llvmpipe may still
  use every core for rasterising);
- ours, 1 process per core: ``--workers <cpus>`` (each worker's llvmpipe limited to cpus/workers threads);
- ours + LOD, 1 process per core: the same with ``--lod_mm 3`` (robot meshes vertex-clustered to 3 mm
  cells: coarser shading, for previews);
- naive peer, 1 process: for every motion rebuild the G1 scene from its MJCF (``scene.build_model`` with
  the parsed-spec cache cleared: what a script that loads the XML per motion pays), a default
  ``mujoco.Renderer`` (shadows and reflections on), the same camera, pose code and imageio writer.

Reported per figure: frames per second of wall time, that divided by the machine's cores ("per core"),
and frames per CPU-second (user+sys of the run and all its children: what a core of a cluster node
buys). Ratios are against the peer.

Data (generated once under ``${GRAIL_BENCH_DIR:-.bench}/render``, never timed): ``tests.libgen.make_library
(lib, --motions, fast=True, lengths=[ceil((--frames-1)*30/25) + 1]*n)`` and one eval shard of all keys
(``tests.evalgen.make_eval_shard``: trajectories at 25 fps, --frames frames each). Results go to
``${GRAIL_BENCH_DIR:-.bench}/bench_render.json``.

    python bench/bench_render.py              # 4 motions x 50 frames, 3 repeats
    python bench/bench_render.py --quick      # 2 motions x 20 frames, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tests.libgen` lives in the repo, not the package

from bench.machine import machine, save_result  # noqa: E402

RESOLUTIONS = ("320x240", "1280x720")
CONFIGS = ("ours_1proc", "ours_per_core", "ours_lod_per_core", "peer")
LABELS = {"ours_1proc": "ours, 1 process", "ours_per_core": "ours, 1 process per core",
          "ours_lod_per_core": "ours + LOD 3 mm, 1 process per core", "peer": "naive peer, 1 process"}


def ensure_data(bench_dir: Path, motions: int, frames: int) -> tuple[Path, Path, dict[str, Any]]:
    from tests.evalgen import make_eval_shard
    from tests.libgen import make_library

    root = bench_dir / "render" / f"m{motions}_f{frames}"
    marker = root / ".bench_complete.json"
    want = {"motions": motions, "frames": frames, "generator": "tests.libgen.make_library + tests.evalgen.make_eval_shard"}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return root / "lib", root / "shard", want
    if root.exists():
        shutil.rmtree(root)
    src_len = math.ceil((frames - 1) * 30 / 25) + 1  # 30 fps source frames covering `frames` at 25 fps
    lib = make_library(root / "lib", motions, fast=True, lengths=[src_len] * motions)
    info = make_eval_shard(root / "shard", lib, lib.keys)
    got = {len(v) for v in info.frames.values()}
    if got != {frames}:
        raise SystemExit(f"eval shard has {got} frames per motion, wanted {frames}")
    marker.write_text(json.dumps(want))
    return root / "lib", root / "shard", want


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, cpu, proc


def run_one(config: str, res: str, lib: Path, shard: Path, out: Path, cpus: int) -> dict[str, float]:
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    if config == "peer":
        argv = [sys.executable, str(Path(__file__).resolve()), "--peer", str(shard), str(lib / "object_usd"), str(out), res]
    else:
        workers = 1 if config == "ours_1proc" else cpus
        argv = [sys.executable, "-m", "grail_cluster", "render-replay", "--shard_dir", str(shard), "--object_usd_dir",
                str(lib / "object_usd"), "--source_data", str(lib), "--output_dir", str(out), "--resolution", res,
                "--workers", str(workers), "--no_contact_sheet", "--json"]
        if config == "ours_lod_per_core":
            argv += ["--lod_mm", "3"]
    wall, cpu, proc = _timed(argv, env)
    if config == "peer":
        frames = json.loads(proc.stdout)["frames"]
    else:
        summary = json.loads(proc.stdout)
        if summary["failed"]:
            raise SystemExit(f"{config} {res}: failures {summary['failed']}")
        frames = summary["frames"]
    return {"wall_s": wall, "cpu_s": cpu, "frames": frames}


# ----------------------------------------------------------------------------------------------
# The naive peer (run in its own process: `bench_render.py --peer SHARD USD_DIR OUT WxH`)
# ----------------------------------------------------------------------------------------------
def naive_peer(shard: Path, usd_dir: Path, out: Path, res: str) -> dict[str, Any]:
    os.environ.setdefault("MUJOCO_GL", "egl")
    import imageio.v2 as imageio
    import mujoco
    import numpy as np

    from grail_cluster.core.safe_pickle import load
    from grail_cluster.sonic.reference import scene as S
    from grail_cluster.tools.data.bps import read_usd_mesh
    from grail_cluster.tools.data.g1 import G1_ISAACLAB_TO_MUJOCO_DOF
    from grail_cluster.tools.replay.motion import DEFAULT_CAMERA_OFFSET, DEFAULT_CAMERA_TARGET
    from grail_cluster.tools.replay.scene import look_at

    width, height = (int(v) for v in res.split("x"))
    metrics = json.loads((shard / "metrics_eval.json").read_text())["eval/all_metrics_dict"]
    out.mkdir(parents=True, exist_ok=True)
    frames = 0
    for key in metrics["motion_keys"]:
        traj = load(shard / f"{key}.trajectory.pkl")
        verts, tris = read_usd_mesh(usd_dir / f"{key}.usd")
        S._base_spec.cache_clear()  # parse the MJCF anew, as a per-motion script does
        table = traj["table_pos_w"]
        model = S.build_model(S.SceneSpec(verts, tris, 1.0, table[0], traj["table_quat_w"][0], np.array([2.0, 0.6, 0.04])),
                              render=True)
        data = mujoco.MjData(model)
        idx = S.indices(model)
        renderer = mujoco.Renderer(model, height, width)  # default flags: shadows and reflections on
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        writer = imageio.get_writer(str(out / f"{key}.mp4"), format="FFMPEG", fps=traj["fps"], codec="libx264",
                                    quality=5, pixelformat="yuv420p", macro_block_size=16, ffmpeg_log_level="error")
        dof = np.asarray(traj["dof_pos"])
        root0 = np.asarray(traj["root_pos_w"][0])
        for i in range(len(dof)):
            S.set_pose(model, data, idx, traj["root_pos_w"][i], traj["root_quat_w"][i],
                       dof[i, :29][list(G1_ISAACLAB_TO_MUJOCO_DOF)], dof[i, 29:], traj["object_pos_w"][i],
                       traj["object_quat_w"][i])
            anchor = np.array([traj["root_pos_w"][i][0], traj["root_pos_w"][i][1], traj["root_pos_w"][i][2] - root0[2]])
            look_at(cam, anchor + np.array(DEFAULT_CAMERA_OFFSET), anchor + np.array(DEFAULT_CAMERA_TARGET))
            renderer.update_scene(data, camera=cam)
            writer.append_data(renderer.render())
            frames += 1
        writer.close()
        renderer.close()
    return {"frames": frames}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--peer"]:
        shard, usd_dir, out, res = argv[1:5]
        print(json.dumps(naive_peer(Path(shard), Path(usd_dir), Path(out), res)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 motions x 20 frames, 1 repeat")
    ap.add_argument("--motions", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None, help="frames per motion (25 fps)")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--resolutions", default=",".join(RESOLUTIONS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args(argv)
    motions = args.motions or (2 if args.quick else 4)
    frames = args.frames or (20 if args.quick else 50)
    repeat = args.repeat or (1 if args.quick else 3)
    resolutions = [r for r in args.resolutions.split(",") if r]
    configs = [c for c in args.configs.split(",") if c]
    bench_dir = Path(os.environ.get("GRAIL_BENCH_DIR", REPO / ".bench"))
    bench_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    lib, shard, data = ensure_data(bench_dir, motions, frames)
    cpus = machine()["cpus"]
    out_root = bench_dir / "render" / "out"
    runs: dict[str, dict[str, list[dict[str, float]]]] = {r: {c: [] for c in configs} for r in resolutions}
    for rep in range(repeat):  # interleaved so drift (other load on the machine) hits every figure alike
        for res in resolutions:
            for config in configs:
                r = run_one(config, res, lib, shard, out_root / f"{config}_{res}", cpus)
                runs[res][config].append(r)
                print(f"  run {rep + 1}/{repeat} {res:>9s} {LABELS[config]:38s} {r['frames']} frames "
                      f"{r['wall_s']:6.1f} s wall {r['cpu_s']:6.1f} s CPU", flush=True)
    shutil.rmtree(out_root, ignore_errors=True)

    med: dict[str, dict[str, dict[str, float]]] = {}
    for res in resolutions:
        med[res] = {}
        for config in configs:
            rs = runs[res][config]
            wall = statistics.median(x["wall_s"] for x in rs)
            cpu = statistics.median(x["cpu_s"] for x in rs)
            n = rs[0]["frames"]
            med[res][config] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "frames": n,
                                "fps": round(n / wall, 3), "fps_per_core": round(n / wall / cpus, 3),
                                "frames_per_cpu_s": round(n / cpu, 3)}
    print(f"\nreplay render of {motions} motions x {frames} frames, {cpus} CPUs ({machine()['cpu_model']})")
    print(f"{'resolution':>10s} {'figure':38s} {'wall s':>7s} {'fps':>6s} {'fps/core':>8s} {'frames/CPU-s':>12s} "
          f"{'vs peer (fps)':>13s}")
    for res in resolutions:
        peer = med[res].get("peer")
        for config in configs:
            m = med[res][config]
            ratio = f"{m['fps'] / peer['fps']:.2f}x" if peer else "-"
            print(f"{res:>10s} {LABELS[config]:38s} {m['wall_s']:7.1f} {m['fps']:6.2f} {m['fps_per_core']:8.2f} "
                  f"{m['frames_per_cpu_s']:12.2f} {ratio:>13s}")
    result = {
        "command": " ".join([Path(sys.executable).name, "bench/bench_render.py", *argv]),
        "machine": machine(),
        "data": data,
        "repeat": repeat,
        "runs": {res: {c: [{k: round(v, 3) for k, v in r.items()} for r in rs] for c, rs in cr.items()}
                 for res, cr in runs.items()},
        "median": med,
        "ratio_fps_vs_peer": {res: {c: round(m["fps"] / med[res]["peer"]["fps"], 3) for c, m in cm.items()}
                              for res, cm in med.items() if "peer" in cm},
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    save_result(bench_dir, "bench_render", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
