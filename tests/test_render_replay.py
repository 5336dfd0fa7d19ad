"""``render-replay`` and the render stage, rendering for real (MuJoCo on the CPU, EGL/OSMesa).

Shards come from tests.evalgen (SONIC-format metrics + trajectories of a tests.libgen library); each
MP4 is decoded back with imageio. Resolutions and motions are tiny: the G1 with hands has ~630k
triangles, so a frame costs ~0.1 s on llvmpipe whatever the size.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import imageio.v2 as imageio
import joblib
import numpy as np
import pytest

from grail_cluster.cli.main import main as cli
from grail_cluster.core import config
from grail_cluster.core.errors import ConfigError
from grail_cluster.core.library import scan_library
from grail_cluster.core.markers import read_marker, validate_marker
from grail_cluster.core.plan import write_plan
from grail_cluster.entry import main as entry
from grail_cluster.runs.planner import build_plan
from grail_cluster.tools.replay import render as R
from grail_cluster.tools.replay.scene import look_at
from grail_cluster.tools.replay.video import STALL_KEY_ENV
from tests.conftest import base_overrides
from tests.evalgen import make_eval_shard
from tests.libgen import make_ha_pair, make_library

RES = "160x128"
W, H = 160, 128
LENGTHS = [14, 12, 16]  # source frames at 30 fps -> 11, 10, 13 frames at 25 fps


def _run(capsys, *argv: str) -> tuple[int, dict]:
    rc = cli(["render-replay", *argv, "--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def _decode(path: Path) -> tuple[list[np.ndarray], dict]:
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return [np.asarray(f) for f in reader], reader.get_meta_data()
    finally:
        reader.close()


def _robot_pixels(frame: np.ndarray) -> float:
    """Share of bright, neutral (grey metal) pixels in the centre: the G1 is grey, the sky blue, the
    floor dark blue, the table brown and the object orange."""
    h, w, _ = frame.shape
    c = frame[h // 4: 3 * h // 4, w // 4: 3 * w // 4].astype(int)
    lo, hi = c.min(-1), c.max(-1)
    return float(((lo > 90) & (hi - lo < 40)).mean())


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    lib = make_library(root / "lib", 3, fast=True, lengths=LENGTHS)
    info = make_eval_shard(root / "shard", lib, lib.keys, terminated={lib.keys[1]})
    return lib, info, root


@pytest.fixture(scope="module")
def rendered(shard):
    """One default render of the shard (successes only), shared by the checks below."""
    lib, info, root = shard
    out = root / "out"
    proc = subprocess.run([sys.executable, "-m", "grail_cluster", "render-replay", "--shard_dir", str(info.shard_dir),
                           "--object_usd_dir", str(lib.root / "object_usd"), "--source_data", str(lib.root),
                           "--output_dir", str(out), "--resolution", RES, "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_parse_resolution_rounds_up_to_macro_blocks():
    assert R.parse_resolution("1280x720") == (1280, 720)
    assert R.parse_resolution("160x120") == (160, 128)
    assert R.parse_resolution("1920x1080") == (1920, 1088)
    for bad in ("720p", "0x10", "12x12", "99999x100"):
        with pytest.raises(ConfigError):
            R.parse_resolution(bad)


def test_look_at_places_the_free_camera():
    class Cam:
        lookat = np.zeros(3)

    cam = Cam()
    pos, target = np.array([-3.54, 0.0, 1.2]), np.array([0.0, 0.0, 0.8])
    look_at(cam, pos, target)
    az, el = np.radians(cam.azimuth), np.radians(cam.elevation)
    forward = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    # MuJoCo's free camera sits at lookat - distance * forward.
    np.testing.assert_allclose(cam.lookat - cam.distance * forward, pos, atol=1e-9)


def test_successful_motions_become_decodable_videos(shard, rendered):
    lib, info, _ = shard
    out, summary = rendered
    assert summary["rendered"] == 2 and summary["failed"] == [] and summary["skipped"] == 0
    assert summary["frames_per_second"] > 0 and summary["seconds"] > 0
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(f"{k}.mp4" for k in info.success)
    assert not any(p.name.startswith(".") for p in out.iterdir()), "no partial files left"
    for key in info.success:
        frames, meta = _decode(out / f"{key}.mp4")
        assert len(frames) == len(info.frames[key])  # one video frame per trajectory frame
        assert meta["fps"] == pytest.approx(25.0)
        assert meta["size"] == (W, H) and frames[0].shape == (H, W, 3)
        assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
        # The tracking camera keeps the robot in the middle of every frame.
        assert min(_robot_pixels(f) for f in frames) > 0.01, key
    sheet = imageio.imread(out / R.CONTACT_SHEET)
    assert sheet.ndim == 3 and sheet.shape[0] >= H // 2


def test_camera_looking_away_sees_no_robot(shard, tmp_path, capsys):
    """The negative control of the in-frame check: the same motion, camera turned 90 degrees away."""
    lib, info, _ = shard
    rc, s = _run(capsys, "--shard_dir", str(info.shard_dir), "--object_usd_dir", str(lib.root / "object_usd"),
                 "--output_dir", str(tmp_path / "away"), "--resolution", RES, "--max_motions", "1",
                 "--camera_target", "0", "40", "0.8", "--no_contact_sheet")
    assert rc == 0 and s["rendered"] == 1
    frames, _ = _decode(tmp_path / "away" / f"{info.success[0]}.mp4")
    assert max(_robot_pixels(f) for f in frames) < 0.002


def test_all_dry_run_and_skip_existing(shard, rendered, tmp_path, capsys):
    lib, info, _ = shard
    out, _ = rendered
    usd = str(lib.root / "object_usd")
    # --dry_run writes nothing, not even the output dir.
    dry = tmp_path / "dry"
    rc, s = _run(capsys, "--shard_dir", str(info.shard_dir), "--object_usd_dir", usd, "--output_dir", str(dry),
                 "--all", "--dry_run")
    assert rc == 0 and s["dry_run"] and s["rendered"] == 0
    assert sorted(w["key"] for w in s["would_render"]) == sorted(info.keys)
    assert not dry.exists()
    # --skip_existing keeps the videos already there and renders only the failed motion (--all).
    work = tmp_path / "work"
    shutil.copytree(out, work)
    before = {p.name: p.stat().st_mtime_ns for p in work.glob("*.mp4")}
    rc, s = _run(capsys, "--shard_dir", str(info.shard_dir), "--object_usd_dir", usd, "--output_dir", str(work),
                 "--resolution", RES, "--all", "--skip_existing")
    assert rc == 0 and s["skipped"] == 2 and s["rendered"] == 1
    failed_key = lib.keys[1]
    assert [v["key"] for v in s["videos"]] == [failed_key]
    assert {p.name: p.stat().st_mtime_ns for p in work.glob("*.mp4") if p.name in before} == before
    frames, _ = _decode(work / f"{failed_key}.mp4")
    assert len(frames) == len(info.frames[failed_key])
    # Everything present: nothing to do.
    rc, s = _run(capsys, "--shard_dir", str(info.shard_dir), "--object_usd_dir", usd, "--output_dir", str(work),
                 "--resolution", RES, "--all", "--skip_existing", "--no_contact_sheet")
    assert rc == 0 and s["skipped"] == 3 and s["rendered"] == 0 and s["workers"] == 0


def test_corrupt_trajectory_fails_alone(shard, tmp_path, capsys):
    lib, info, _ = shard
    bad_shard = tmp_path / "shard"
    shutil.copytree(info.shard_dir, bad_shard)
    bad, good = info.success
    (bad_shard / f"{bad}.trajectory.pkl").write_bytes(b"\x80\x04this is not a pickle")
    rc, s = _run(capsys, "--shard_dir", str(bad_shard), "--object_usd_dir", str(lib.root / "object_usd"),
                 "--output_dir", str(tmp_path / "out"), "--resolution", RES)
    assert rc == 1
    assert [f["key"] for f in s["failed"]] == [bad]
    assert "cannot read pickle" in s["failed"][0]["why"] and f"{bad}.trajectory.pkl" in s["failed"][0]["why"]
    assert s["rendered"] == 1 and (tmp_path / "out" / f"{good}.mp4").is_file()
    assert not (tmp_path / "out" / f"{bad}.mp4").exists()
    # A missing trajectory is named too.
    (bad_shard / f"{bad}.trajectory.pkl").unlink()
    rc, s = _run(capsys, "--shard_dir", str(bad_shard), "--object_usd_dir", str(lib.root / "object_usd"),
                 "--output_dir", str(tmp_path / "out2"), "--resolution", RES, "--dry_run")
    assert rc == 1 and "no trajectory" in s["failed"][0]["why"]


def test_watchdog_kills_a_stuck_motion_and_leaves_no_partial_file(shard, tmp_path):
    lib, info, _ = shard
    stuck, other = info.success
    out = tmp_path / "out"
    env = {**os.environ, STALL_KEY_ENV: stuck}
    proc = subprocess.Popen([sys.executable, "-m", "grail_cluster", "render-replay", "--shard_dir", str(info.shard_dir),
                             "--object_usd_dir", str(lib.root / "object_usd"), "--output_dir", str(out),
                             "--resolution", RES, "--workers", "2", "--motion_timeout", "15", "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if out.is_dir():
            seen |= {p.name for p in out.iterdir() if ".partial-" in p.name}
        time.sleep(0.1)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    s = json.loads(stdout)
    assert [f["key"] for f in s["failed"]] == [stuck] and "watchdog" in s["failed"][0]["why"]
    assert s["rendered"] == 1 and (out / f"{other}.mp4").is_file()
    assert any(name.startswith(f".{stuck}.partial-") for name in seen), "the stuck motion had a partial file"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{other}.mp4", R.CONTACT_SHEET])


def _to_wxyz_copy(src: Path, dst: Path) -> None:
    """The same library with robot root_rot and meta table_quat rewritten from xyzw to wxyz."""
    shutil.copytree(src, dst)
    (dst / "export_manifest.json").unlink()  # no longer an export
    for p in (dst / "robot").glob("*.pkl"):
        data = joblib.load(p)
        inner = next(iter(data.values()))
        inner["root_rot"] = np.roll(np.asarray(inner["root_rot"]), 1, axis=-1)
        joblib.dump(data, p)
    for p in (dst / "meta").glob("*.pkl"):
        meta = joblib.load(p)
        if "table_quat" in meta:
            meta["table_quat"] = np.roll(np.asarray(meta["table_quat"]), 1, axis=-1)
        joblib.dump(meta, p)


def test_motion_lib_mode_reads_both_quaternion_conventions(tmp_path, capsys):
    xyzw = make_library(tmp_path / "export_lib", 1, variant="export", fast=True, lengths=[10])
    _to_wxyz_copy(xyzw.root, tmp_path / "wxyz_lib")
    key = xyzw.keys[0]
    frames = {}
    for name, lib, extra in (("xyzw", xyzw.root, ()), ("wxyz", tmp_path / "wxyz_lib", ()),
                             ("wrong", xyzw.root, ("--quat_convention", "wxyz"))):
        rc, s = _run(capsys, "--motion_lib", str(lib), "--output_dir", str(tmp_path / name), "--resolution", RES,
                     "--no_contact_sheet", *extra)
        assert rc == 0 and s["mode"] == "library" and s["rendered"] == 1, s
        frames[name], meta = _decode(tmp_path / name / f"{key}.mp4")
        assert len(frames[name]) == 10 and meta["fps"] == pytest.approx(25.0)  # the library's frames and fps
        if name != "wrong":
            assert f"root_rot read as {name}" in s["videos"][0]["notes"]

    def diff(a: str, b: str) -> float:
        return float(np.mean([np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(frames[a], frames[b], strict=True)]))

    assert diff("xyzw", "wxyz") < 0.5  # the same pose once converted
    assert diff("xyzw", "wrong") > 5 * max(diff("xyzw", "wxyz"), 0.2)  # a misread root_rot tilts the robot
    assert min(_robot_pixels(f) for f in frames["xyzw"]) > 0.01


def test_render_stage_entry_renders_into_vis_and_export_picks_it_up(tmp_path, sonic_root):
    _, ha = make_ha_pair(tmp_path / "data", "pickup_table", 4, fast=True, lengths=[12, 12, 12, 12])
    ckpt = tmp_path / "exp" / "model_step_001000.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"w")
    c = config.load(base_overrides(tmp_path, ha.root, sonic_root, f"select.checkpoints=[{ckpt}]", "eval.num_shards=2",
                                   f"render.resolution={RES}", "web.enabled=false", f"job.python={sys.executable}"))
    plan = build_plan(c, scan_library(ha.root))
    write_plan(plan)
    assert "render" in plan.stage_names and plan.library["usd_dir"]
    from grail_cluster.stages.checkpoints import shard_dir

    dirs = {}
    for index in range(2):
        _, sh = plan.eval_index(index)
        dirs[index] = Path(shard_dir(plan, 1000, sh.shard))
        # Shard 0: one success, one failure. Shard 1: no success at all.
        term = {sh.motion_keys[1]} if index == 0 else set(sh.motion_keys)
        make_eval_shard(dirs[index], ha.root, sh.motion_keys, terminated=term)
    success = plan.eval_index(0)[1].motion_keys[0]

    assert entry(["render", "--run-dir", plan.run_dir, "--index", "0", "--plan-hash", plan.plan_hash]) == 0
    vis = dirs[0] / "vis"
    assert sorted(p.name for p in vis.glob("*.mp4")) == [f"{success}.mp4"]
    frames, meta = _decode(vis / f"{success}.mp4")
    assert meta["size"] == (W, H) and min(_robot_pixels(f) for f in frames) > 0.01
    marker = read_marker(plan.run_dir, "render", 0)
    assert list(marker["outputs"]) == [str(vis / f"{success}.mp4")]
    assert validate_marker(plan.run_dir, "render", 0, plan.plan_hash, deep=True)

    assert entry(["render", "--run-dir", plan.run_dir, "--index", "1"]) == 0  # zero successes: nothing, still done
    assert read_marker(plan.run_dir, "render", 1)["outputs"] == {}
    assert not (dirs[1] / "vis").exists()

    # A re-run with --force keeps the video (same settings) instead of rendering it again.
    mtime = (vis / f"{success}.mp4").stat().st_mtime_ns
    assert entry(["render", "--run-dir", plan.run_dir, "--index", "0", "--force"]) == 0
    assert (vis / f"{success}.mp4").stat().st_mtime_ns == mtime

    # The export stage copies the shard's vis/<key>.mp4 into the exported library.
    assert entry(["export", "--run-dir", plan.run_dir, "--index", "0"]) == 0
    exported = Path(plan.paths["export_dir"]) / "step_001000" / "shard_0" / "vis" / f"{success}.mp4"
    assert exported.is_file() and exported.read_bytes() == (vis / f"{success}.mp4").read_bytes()
