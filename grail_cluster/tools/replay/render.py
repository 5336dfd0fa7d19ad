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
import hashlib
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grail_cluster.core import safe_pickle
from grail_cluster.core.errors import EXIT_OK, EXIT_PROBLEMS, ConfigError, DataError, GrailError
from grail_cluster.core.motion_checks import hand_action_kind
from grail_cluster.core.quaternions import detect_root_rot_convention, xyzw_to_wxyz
from grail_cluster.tools.data import g1
from grail_cluster.tools.data.bps import USD_SUFFIXES
from grail_cluster.tools.data.export import find_metrics, find_trajectory, load_trajectory, read_metrics

DEFAULT_RESOLUTION = "1280x720"
DEFAULT_CAMERA_OFFSET = (-3.54, 0.0, 1.2)
DEFAULT_CAMERA_TARGET = (0.0, 0.0, 0.8)
RELEASE_TABLE_SIZE = (2.0, 0.6, 0.04)  # what GRAIL's replay draws (contracts §5.3)
TABLE_MIN_Z = 0.1  # no table below this height (ground scenes)
DEFAULT_FPS = 25.0
DEFAULT_MOTION_TIMEOUT = 180.0
MACRO_BLOCK = 16
THUMB_WIDTH = 320
MAX_SHEET = 100  # motions on the contact sheet
CONTACT_SHEET = "contact_sheet.png"
SETTINGS_STAMP = ".render_settings.json"
# Test hook: the motion with this key hangs after its third frame (a stuck motion for the watchdog).
STALL_KEY_ENV = "GRAIL_RENDER_TEST_STALL_KEY"
GL_FIX = ("install the offscreen GL libraries (`make render-deps`, i.e. apt-get install libegl1 libegl-mesa0 "
          "libgl1-mesa-dri libosmesa6), or set MUJOCO_GL=egl or MUJOCO_GL=osmesa")
_PARTIAL = re.compile(r"^\..+\.partial-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-\d+\.mp4$")


# ----------------------------------------------------------------------------------------------
# Settings and tasks (parent -> worker, pickled)
# ----------------------------------------------------------------------------------------------
def parse_resolution(text: str) -> tuple[int, int]:
    """``"WxH"`` -> (W, H), each rounded up to a multiple of 16 (the H.264 macro block)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) < 16 or int(m.group(2)) < 16:
        raise ConfigError(f"bad resolution {text!r}", fix="use WIDTHxHEIGHT, each >= 16, e.g. 1280x720")
    w, h = int(m.group(1)), int(m.group(2))
    if max(w, h) > 8192:
        raise ConfigError(f"resolution {text!r} is too large", fix="use at most 8192 pixels per side")
    return (-(-w // MACRO_BLOCK) * MACRO_BLOCK, -(-h // MACRO_BLOCK) * MACRO_BLOCK)


@dataclass(frozen=True)
class RenderSettings:
    """What every motion of one call shares; part of the render stage's settings stamp."""

    width: int = 1280
    height: int = 720
    camera_offset: tuple[float, float, float] = DEFAULT_CAMERA_OFFSET
    camera_target: tuple[float, float, float] = DEFAULT_CAMERA_TARGET
    camera_mode: str = "track"  # track | fixed
    start_frame_skip: int = 0
    quat_convention: str = "auto"  # library mode: auto | wxyz | xyzw
    lod_mm: float = 0.0  # >0: vertex-cluster the robot meshes with cells of this size (faster, coarser)
    table_size: tuple[float, float, float] = RELEASE_TABLE_SIZE

    def stamp(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Task:
    key: str
    kind: str  # "trajectory" | "library"
    output: str  # final <output_dir>/<key>.mp4
    partial: str  # temp name in the same dir
    trajectory: str | None = None
    robot: str | None = None
    objects: str | None = None
    meta: str | None = None
    usd: str | None = None
    fallback_convention: str = "wxyz"  # library mode, when detection is ambiguous
    weight: int = 0  # input bytes: longest first


@dataclass
class Motion:
    """One motion, ready to pose: MuJoCo-order body joints, wxyz quaternions, world frame."""

    key: str
    fps: float
    root_pos: np.ndarray  # (F,3)
    root_quat: np.ndarray  # (F,4) wxyz
    body_dof: np.ndarray  # (F,29) MuJoCo order
    hand_dof: np.ndarray | None = None  # (F,14) G1_HAND_JOINTS order
    object_pos: np.ndarray | None = None  # (F,3)
    object_quat: np.ndarray | None = None  # (F,4) wxyz
    object_scale: float = 1.0
    usd: str | None = None
    table_pos: np.ndarray | None = None  # (3,)
    table_quat: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0, 0.0]))
    table_size: np.ndarray = field(default_factory=lambda: np.array(RELEASE_TABLE_SIZE))
    notes: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return len(self.root_pos)


# ----------------------------------------------------------------------------------------------
# Loading (runs in the workers)
# ----------------------------------------------------------------------------------------------
def _unit_quats(q: np.ndarray, what: str, path: str | None) -> np.ndarray:
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(n < 1e-6):
        raise DataError(f"{what} has zero-length quaternions", path=path, fix="re-record the trajectory")
    return q / n


def _check_finite(path: str | None, **arrays: np.ndarray | None) -> None:
    for name, arr in arrays.items():
        if arr is not None and not np.all(np.isfinite(arr)):
            raise DataError(f"{name} holds NaN or infinite values", path=path, fix="re-record or re-export this motion")


def _table_size_from_meta(meta_path: str | None, default) -> np.ndarray:
    if meta_path:
        meta = safe_pickle.load(meta_path)
        size = meta.get("table_size") if isinstance(meta, dict) else None
        if size is not None:
            arr = np.asarray(size, np.float64).reshape(-1)
            if arr.shape == (3,) and np.all(np.isfinite(arr)) and np.all(arr > 0):
                return arr
    return np.asarray(default, np.float64)


def _skip(motion: Motion, n: int, path: str | None) -> Motion:
    if n <= 0:
        return motion
    if n >= motion.frames:
        raise DataError(f"--start_frame_skip {n} leaves no frame of {motion.frames}", path=path)
    for name in ("root_pos", "root_quat", "body_dof", "hand_dof", "object_pos", "object_quat"):
        arr = getattr(motion, name)
        if arr is not None:
            setattr(motion, name, arr[n:])
    return motion


def motion_from_trajectory(task: Task, settings: RenderSettings) -> Motion:
    """A §4.3 trajectory (validated by the exporter's loader) as a Motion."""
    path = task.trajectory
    traj = load_trajectory(Path(path))
    dof = traj["dof_pos"]
    n_joints = dof.shape[1]
    if n_joints not in (g1.NUM_BODY_DOF, g1.NUM_BODY_DOF + g1.NUM_HAND_DOF):
        raise DataError(f"dof_pos has {n_joints} joints; expected 29 (body) or 43 (body + hands)", path=path)
    body = dof[:, : g1.NUM_BODY_DOF][:, list(g1.G1_ISAACLAB_TO_MUJOCO_DOF)]
    hand = dof[:, g1.NUM_BODY_DOF:] if n_joints > g1.NUM_BODY_DOF else None
    _check_finite(path, dof_pos=dof, root_pos_w=traj["root_pos_w"], root_quat_w=traj["root_quat_w"],
                  object_pos_w=traj["object_pos_w"], object_quat_w=traj["object_quat_w"],
                  table_pos_w=traj["table_pos_w"], table_quat_w=traj["table_quat_w"])
    m = Motion(task.key, traj["fps"] if traj["fps"] > 0 else DEFAULT_FPS, traj["root_pos_w"],
               _unit_quats(traj["root_quat_w"], "root_quat_w", path), body, hand)
    if traj["object_pos_w"] is not None:
        if task.usd:
            m.object_pos = traj["object_pos_w"]
            quat = traj["object_quat_w"] if traj["object_quat_w"] is not None else np.tile([1.0, 0, 0, 0], (m.frames, 1))
            m.object_quat = _unit_quats(quat, "object_quat_w", path)
            m.usd = task.usd
        else:
            m.notes.append("no object USD for this key: the object is not drawn")
    table = traj["table_pos_w"]
    if table is not None and float(table[0][2]) >= TABLE_MIN_Z:
        m.table_pos = np.asarray(table[0], np.float64)
        if traj["table_quat_w"] is not None:
            m.table_quat = _unit_quats(np.asarray(traj["table_quat_w"][0], np.float64), "table_quat_w", path)
        m.table_size = _table_size_from_meta(task.meta, settings.table_size)
    return _skip(m, settings.start_frame_skip, path)


def _inner(path: str, key: str, what: str) -> dict:
    data = safe_pickle.load(path)
    if isinstance(data, dict) and isinstance(data.get(key), dict):
        return data[key]
    raise DataError(f"{what} pickle is not a single-key dict {{{key!r}: {{...}}}}", path=path)


def _per_frame(arr, n: int, tail: int, name: str, path: str) -> np.ndarray:
    try:
        a = np.asarray(arr, np.float64).reshape(len(arr), -1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} is not a numeric array", path=path) from exc
    if a.shape[1] < tail or len(a) == 0:
        raise DataError(f"{name} has shape {np.shape(arr)}; need (T,{tail})", path=path)
    a = a[:, :tail]
    return a[np.clip(np.arange(n), 0, len(a) - 1)]  # objects shorter than the robot hold their last frame


def motion_from_library(task: Task, settings: RenderSettings) -> Motion:
    """A library motion (robot/objects/meta pickles, §1.2-1.4) as a Motion."""
    from grail_cluster.sonic.reference.scene import HAND_CLOSED

    rpath = task.robot
    robot = _inner(rpath, task.key, "robot")
    for name in ("dof", "root_trans_offset", "root_rot"):
        if robot.get(name) is None:
            raise DataError(f"robot pickle has no {name!r}", path=rpath, fix="regenerate this motion")
    dof = np.asarray(robot["dof"], np.float64)
    if dof.ndim != 2 or dof.shape[1] < g1.NUM_BODY_DOF or len(dof) == 0:
        raise DataError(f"dof has shape {dof.shape}; need (T,29) in MuJoCo order", path=rpath)
    T = len(dof)
    root_rot = _per_frame(robot["root_rot"], T, 4, "root_rot", rpath)
    convention = settings.quat_convention
    if convention == "auto":
        pose_aa = robot.get("pose_aa")
        convention = detect_root_rot_convention(root_rot, None if pose_aa is None else np.asarray(pose_aa))
        if convention not in ("wxyz", "xyzw"):
            convention = task.fallback_convention
    root_quat = root_rot if convention == "wxyz" else xyzw_to_wxyz(root_rot)
    hand, hand_note = None, None
    if robot.get("hand_dof_pos") is not None:
        hand = _per_frame(robot["hand_dof_pos"], T, g1.NUM_HAND_DOF, "hand_dof_pos", rpath)
    elif dof.shape[1] >= g1.NUM_BODY_DOF + g1.NUM_HAND_DOF:
        hand = dof[:, g1.NUM_BODY_DOF: g1.NUM_BODY_DOF + g1.NUM_HAND_DOF]
    elif robot.get("hand_action_left") is not None and robot.get("hand_action_right") is not None:
        left = _per_frame(robot["hand_action_left"], T, 1, "hand_action_left", rpath)[:, 0]
        right = _per_frame(robot["hand_action_right"], T, 1, "hand_action_right", rpath)[:, 0]
        _check_finite(rpath, hand_action_left=left, hand_action_right=right)
        kind = hand_action_kind(left, right)
        hand = np.zeros((T, g1.NUM_HAND_DOF))
        if kind == "discrete":  # -1 open, +1 closed (contracts §1.2)
            hand[left > 0, :7] = HAND_CLOSED[:7]
            hand[right > 0, 7:] = HAND_CLOSED[7:]
        else:
            # GRAIL's upstream release: the mean |hand joint position| per hand. Draw the closed pose
            # scaled so its mean |joint| equals that value (open at 0, closed at the closed pose's).
            for cols, act in ((slice(0, 7), left), (slice(7, 14), right)):
                full = float(np.mean(np.abs(HAND_CLOSED[cols])))
                hand[:, cols] = np.clip(act / full, 0.0, 1.0)[:, None] * HAND_CLOSED[cols][None]
        hand_note = f"hand_action: {kind}"
    fps = robot.get("fps") or 30.0
    if isinstance(fps, bool) or not isinstance(fps, int | float | np.integer | np.floating):
        raise DataError(f"robot fps is {fps!r}, not a number", path=rpath, fix="regenerate this motion")
    fps = float(fps)
    m = Motion(task.key, fps if fps > 0 else 30.0, _per_frame(robot["root_trans_offset"], T, 3, "root_trans_offset", rpath),
               _unit_quats(root_quat, "root_rot", rpath), dof[:, : g1.NUM_BODY_DOF], hand)
    m.notes.append(f"root_rot read as {convention}")
    if hand_note:
        m.notes.append(hand_note)
    if task.objects:
        obj = _inner(task.objects, task.key, "objects")
        if obj.get("root_pos") is not None and task.usd:
            m.object_pos = _per_frame(obj["root_pos"], T, 3, "objects root_pos", task.objects)
            quat = obj.get("root_quat")
            quat = np.tile([1.0, 0, 0, 0], (T, 1)) if quat is None else _per_frame(quat, T, 4, "objects root_quat", task.objects)
            m.object_quat = _unit_quats(quat, "objects root_quat", task.objects)  # wxyz in every variant (§1.3)
            m.object_scale = float(obj.get("scale") or 1.0)
            m.usd = task.usd
        elif obj.get("root_pos") is not None:
            m.notes.append("no object USD for this key: the object is not drawn")
    if task.meta:
        meta = safe_pickle.load(task.meta)
        if isinstance(meta, dict) and meta.get("table_pos") is not None:
            pos = np.asarray(meta["table_pos"], np.float64).reshape(-1)
            if pos.shape == (3,) and pos[2] >= TABLE_MIN_Z:
                m.table_pos = pos
                if meta.get("table_quat") is not None:
                    q = np.asarray(meta["table_quat"], np.float64).reshape(-1)[:4]
                    m.table_quat = _unit_quats(q if convention == "wxyz" else xyzw_to_wxyz(q), "table_quat", task.meta)
                m.table_size = _table_size_from_meta(task.meta, settings.table_size)
    _check_finite(rpath, dof=m.body_dof, root_trans_offset=m.root_pos, root_rot=m.root_quat, hand=m.hand_dof,
                  object_pos=m.object_pos, object_quat=m.object_quat, table_pos=m.table_pos)
    return _skip(m, settings.start_frame_skip, rpath)


def load_motion(task: Task, settings: RenderSettings) -> Motion:
    return motion_from_trajectory(task, settings) if task.kind == "trajectory" else motion_from_library(task, settings)


# ----------------------------------------------------------------------------------------------
# Rendering (runs in the workers)
# ----------------------------------------------------------------------------------------------
_LOD_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # per worker process


def simplify_meshes(model, cell_m: float, min_faces: int = 500) -> int:
    """Vertex-cluster every big mesh of a compiled model in place, for drawing only; returns faces kept.

    Each mesh's vertices are snapped to a grid of ``cell_m``; every cluster is represented by one of
    its own vertices, collapsed and duplicate triangles are dropped, and smooth normals are recomputed
    for the kept triangles. Only ``mesh_face``/``mesh_facenormal``/``mesh_normal``/``mesh_facenum``
    change (what the GL context uploads); kinematics never read them. Results are cached per mesh.
    """
    total = 0
    for i in range(model.nmesh):
        n = int(model.mesh_facenum[i])
        nv = int(model.mesh_vertnum[i])
        if n < min_faces or model.mesh_texcoordnum[i] > 0 or model.mesh_normalnum[i] != nv:
            total += n
            continue
        fa, va, na = int(model.mesh_faceadr[i]), int(model.mesh_vertadr[i]), int(model.mesh_normaladr[i])
        verts = np.asarray(model.mesh_vert[va:va + nv], np.float64)
        faces = np.asarray(model.mesh_face[fa:fa + n], np.int64)
        # Keyed by content: every motion's object mesh has the same name.
        key = (hashlib.blake2b(verts.tobytes() + faces.tobytes(), digest_size=16).digest(), round(cell_m, 6))
        hit = _LOD_CACHE.get(key)
        if hit is None:
            _, first, inverse = np.unique(np.floor(verts / cell_m).astype(np.int64), axis=0,
                                          return_index=True, return_inverse=True)
            new = first[inverse.reshape(-1)][faces]
            new = new[(new[:, 0] != new[:, 1]) & (new[:, 1] != new[:, 2]) & (new[:, 0] != new[:, 2])]
            _, uniq = np.unique(np.sort(new, axis=1), axis=0, return_index=True)
            new = new[np.sort(uniq)]
            normals = np.array(model.mesh_normal[na:na + nv], np.float64)
            fn = np.cross(verts[new[:, 1]] - verts[new[:, 0]], verts[new[:, 2]] - verts[new[:, 0]])
            acc = np.zeros((nv, 3))
            for k in range(3):
                np.add.at(acc, new[:, k], fn)
            used = np.unique(new)
            length = np.linalg.norm(acc[used], axis=1, keepdims=True)
            ok = length[:, 0] > 1e-12
            normals[used[ok]] = acc[used[ok]] / length[ok]
            hit = (new.astype(np.int32), normals.astype(np.float32), used)
            _LOD_CACHE[key] = hit
        new, normals, _ = hit
        model.mesh_face[fa:fa + len(new)] = new
        model.mesh_facenormal[fa:fa + len(new)] = new  # one normal per vertex (normalnum == vertnum)
        model.mesh_normal[na:na + nv] = normals
        model.mesh_facenum[i] = len(new)
        total += len(new)
    return total


def camera_anchor(root_pos: np.ndarray, fps: float, mode: str) -> np.ndarray:
    """(F,3): root x, y and the root's height change since frame 0; smoothed over 0.5 s (or frame 0 only)."""
    root = np.asarray(root_pos, np.float64)
    anchor = np.column_stack([root[:, 0], root[:, 1], root[:, 2] - root[0, 2]])
    if mode == "fixed":
        return np.repeat(anchor[:1], len(anchor), axis=0)
    half = max(int(round(fps * 0.25)), 0)
    if half == 0 or len(anchor) < 3:
        return anchor
    padded = np.concatenate([np.repeat(anchor[:1], half, 0), anchor, np.repeat(anchor[-1:], half, 0)])
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    return np.column_stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(3)])


def look_at(camera, position: np.ndarray, target: np.ndarray) -> None:
    """Point a free mjvCamera from ``position`` at ``target``."""
    d = np.asarray(target, np.float64) - np.asarray(position, np.float64)
    dist = max(float(np.linalg.norm(d)), 1e-6)
    camera.lookat[:] = target
    camera.distance = dist
    camera.azimuth = math.degrees(math.atan2(d[1], d[0]))
    camera.elevation = math.degrees(math.asin(max(-1.0, min(1.0, d[2] / dist))))


class MotionRenderer:
    """The compiled scene of one motion with its offscreen renderer; ``frame(i)`` -> (H,W,3) uint8."""

    def __init__(self, motion: Motion, settings: RenderSettings):
        import mujoco

        from grail_cluster.sonic.reference import scene as S
        from grail_cluster.tools.data.bps import read_usd_mesh

        self.motion, self.settings = motion, settings
        spec = S.SceneSpec(table_pos=motion.table_pos, table_quat_wxyz=motion.table_quat, table_size=motion.table_size)
        if motion.usd and motion.object_pos is not None:
            verts, tris = read_usd_mesh(motion.usd)
            spec.object_vertices, spec.object_faces, spec.object_scale = verts, tris, motion.object_scale
        try:
            self.model = S.build_model(spec, render=True)
        except ValueError as exc:  # MuJoCo's compiler errors
            raise DataError(f"the scene does not compile in MuJoCo: {exc}", path=motion.usd,
                            fix="check the object's USD mesh (it must be a closed, non-degenerate mesh)") from exc
        _trim_heap()  # compiling leaves ~0.5 GB of freed heap behind; give it back before rendering
        if settings.lod_mm > 0:
            simplify_meshes(self.model, settings.lod_mm / 1000.0)
        g = self.model.vis.global_
        g.offwidth, g.offheight = max(int(g.offwidth), settings.width), max(int(g.offheight), settings.height)
        self.data = mujoco.MjData(self.model)
        self.idx = S.indices(self.model)
        self._set_pose = S.set_pose
        self.renderer = mujoco.Renderer(self.model, settings.height, settings.width)
        try:
            flags = self.renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self.camera = mujoco.MjvCamera()
            self.camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        except BaseException:
            self.renderer.close()
            raise
        self.anchor = camera_anchor(motion.root_pos, motion.fps, settings.camera_mode)
        self.offset = np.asarray(settings.camera_offset, np.float64)
        self.target = np.asarray(settings.camera_target, np.float64)

    def frame(self, i: int) -> np.ndarray:
        m = self.motion
        self._set_pose(self.model, self.data, self.idx, m.root_pos[i], m.root_quat[i], m.body_dof[i],
                       None if m.hand_dof is None else m.hand_dof[i],
                       None if m.object_pos is None else m.object_pos[i],
                       None if m.object_quat is None else m.object_quat[i])
        a = self.anchor[i]
        look_at(self.camera, a + self.offset, a + self.target)
        self.renderer.update_scene(self.data, camera=self.camera)
        return self.renderer.render()

    def close(self) -> None:
        self.renderer.close()

    def __enter__(self) -> MotionRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    step = max(1, -(-frame.shape[1] // THUMB_WIDTH))
    return np.ascontiguousarray(frame[::step, ::step])


def _remove(path: str | None) -> None:
    if path:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def render_task(task: Task, settings: RenderSettings, heartbeat=None) -> dict[str, Any]:
    """Render one motion to ``task.output`` (via ``task.partial``); returns its stats and a thumbnail."""
    import imageio.v2 as imageio

    t0 = time.perf_counter()
    motion = load_motion(task, settings)
    stall = os.environ.get(STALL_KEY_ENV) == task.key
    os.makedirs(os.path.dirname(task.output) or ".", exist_ok=True)
    thumb = None
    with MotionRenderer(motion, settings) as r:
        writer = imageio.get_writer(task.partial, format="FFMPEG", fps=motion.fps, codec="libx264", quality=5,
                                    pixelformat="yuv420p", macro_block_size=MACRO_BLOCK, ffmpeg_log_level="error")
        try:
            if heartbeat is not None:
                heartbeat(0, motion.frames)  # the scene is built: the watchdog's clock restarts here
            last = time.monotonic()
            mid = motion.frames // 2
            for i in range(motion.frames):
                frame = r.frame(i)
                writer.append_data(frame)
                if i == mid:
                    thumb = _thumbnail(frame)
                if stall and i == 2:
                    time.sleep(24 * 3600)
                if heartbeat is not None and time.monotonic() - last > 0.5:
                    heartbeat(i + 1, motion.frames)
                    last = time.monotonic()
            writer.close()
            os.replace(task.partial, task.output)
        except BaseException:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the original error matters, not ffmpeg's reaction to it
                pass
            _remove(task.partial)
            raise
    seconds = time.perf_counter() - t0
    return {"key": task.key, "path": task.output, "frames": motion.frames, "fps": motion.fps,
            "seconds": round(seconds, 3), "notes": motion.notes, "thumb": thumb}


# ----------------------------------------------------------------------------------------------
# Worker process
# ----------------------------------------------------------------------------------------------
def _probe_gl() -> None:
    """Render one tiny frame: raises if this GL backend cannot render here."""
    import mujoco

    model = mujoco.MjModel.from_xml_string(
        '<mujoco><worldbody><light pos="0 0 2"/><geom type="sphere" size="0.2"/></worldbody></mujoco>')
    renderer = mujoco.Renderer(model, 16, 16)
    try:
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        renderer.update_scene(data)
        renderer.render()
    finally:
        renderer.close()


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, GrailError):
        return exc.render()
    return f"{type(exc).__name__}: {exc}".strip()


def _worker_main(conn, backend: str, settings: RenderSettings, lp_threads: int) -> None:
    """Spawned: pick the GL backend before mujoco is imported, warm up, then render tasks until None."""
    try:
        os.setpgrp()  # the parent kills our whole group (ffmpeg too) on a watchdog timeout
    except OSError:
        pass
    os.environ["MUJOCO_GL"] = backend
    if backend in ("egl", "osmesa"):
        os.environ["PYOPENGL_PLATFORM"] = backend
    if lp_threads > 0:
        os.environ.setdefault("LP_NUM_THREADS", str(lp_threads))
    try:
        _probe_gl()
        from grail_cluster.sonic.reference import scene as S

        S.build_model(S.SceneSpec(), render=True)  # parses and compiles the G1 once per worker
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        conn.send(("init_failed", _error_text(exc)))
        return
    conn.send(("ready", backend))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return

        def beat(done: int, total: int, key: str = task.key) -> None:
            conn.send(("frame", key, done, total))

        try:
            conn.send(("done", task.key, render_task(task, settings, heartbeat=beat)))
        except Exception as exc:  # noqa: BLE001 - one motion's failure must not end the worker
            conn.send(("error", task.key, _error_text(exc)))


class _Worker:
    def __init__(self, ctx, backend: str, settings: RenderSettings, lp_threads: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, backend, settings, lp_threads),
                                name="grail-render-worker", daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.born = time.monotonic()
        self.task: Task | None = None
        self.started = 0.0

    def kill(self) -> None:
        """SIGKILL this worker's process group (it leads one: ffmpeg goes too), or the worker alone."""
        pid = self.proc.pid
        # Only while it is unreaped is its pid (and group id) surely ours; once it has exited, an
        # orphaned ffmpeg sees EOF on its stdin and ends by itself.
        if pid is not None and self.proc.exitcode is None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    self.proc.kill()
                except (OSError, AttributeError):
                    pass
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(10)
        self.kill()


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


WORKER_MEM_BYTES = int(1.6 * 2**30)  # peak RSS of a worker: G1 scene (~0.7 GB) + one motion's compile


def _memory_bytes() -> int | None:
    """Memory this process may use: the smaller of MemAvailable and the cgroup limit (Slurm, k8s)."""
    limits = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            limits.append(int(text))
    return min(limits) if limits else None


def default_workers(n_tasks: int) -> int:
    """One worker per CPU, no more than the memory holds (WORKER_MEM_BYTES each) or there are motions."""
    mem = _memory_bytes()
    by_mem = max(1, mem // WORKER_MEM_BYTES) if mem else _cpus()
    return max(1, min(_cpus(), by_mem, n_tasks))


def gl_backends() -> list[str]:
    """The user's MUJOCO_GL alone, or egl then osmesa."""
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    return [chosen] if chosen else ["egl", "osmesa"]


class _Progress:
    """A rich bar on a TTY, plain lines otherwise (job logs)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("render-replay {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=total)

    def frame(self, key: str, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=f"{key} {done}/{total}")

    def finished(self, key: str, ok: bool, text: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
            if not ok:
                self.bar.console.print(f"[red]failed[/] {key}: {text}", markup=True, highlight=False)
        elif self.enabled:
            sys.stderr.write(f"[render-replay] {self.done}/{self.total} {'ok' if ok else 'FAILED'} {key}: {text}\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_tasks(tasks: list[Task], settings: RenderSettings, *, workers: int = 0, motion_timeout: float = DEFAULT_MOTION_TIMEOUT,
              progress: bool = True) -> tuple[dict[str, dict], dict[str, str], str | None, list[str]]:
    """Render ``tasks`` on a pool of spawned workers with a per-motion watchdog.

    Returns (results by key, failures by key -> why, GL backend used, GL backends that failed and why).
    """
    if not tasks:
        return {}, {}, None, []
    n = max(1, min(workers, len(tasks))) if workers > 0 else default_workers(len(tasks))
    lp_threads = max(1, _cpus() // n)
    ctx = mp.get_context("spawn")
    queue = deque(sorted(tasks, key=lambda t: -t.weight))
    results: dict[str, dict] = {}
    failed: dict[str, str] = {}
    backends = gl_backends()
    backend = backends.pop(0)
    init_errors: list[str] = []
    early_deaths = 0
    init_timeout = max(120.0, motion_timeout)
    bar = _Progress(len(tasks), progress)
    pool: list[_Worker] = []
    # SIGTERM (scancel, a time limit, `kill`) unwinds like Ctrl-C, so the finally below kills the
    # workers and deletes their partial videos.
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _raise_terminated)

    def fail(w: _Worker, why: str) -> None:
        task = w.task
        if task is not None:
            _remove(task.partial)
            failed[task.key] = why
            bar.finished(task.key, False, why)
        w.task = None

    def handle(w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            w.ready = True
        elif kind == "frame":
            w.started = time.monotonic()  # progress: the watchdog restarts its clock
            bar.frame(msg[1], msg[2], msg[3])
        elif kind == "done" and w.task is not None:
            res = msg[2]
            results[res["key"]] = res
            bar.finished(res["key"], True, f"{res['frames']} frames in {res['seconds']:.1f} s")
            w.task = None
        elif kind == "error":
            fail(w, msg[2])
        elif kind == "init_failed":
            raise _InitFailed(msg[1])

    def replace(w: _Worker) -> None:
        """A fresh worker in a dead or killed one's place, if there is still work for it."""
        if queue:
            pool[pool.index(w)] = _Worker(ctx, backend, settings, lp_threads)
        else:
            pool.remove(w)

    def drain(w: _Worker) -> None:
        try:
            while w.conn.poll():
                handle(w, w.conn.recv())
        except (EOFError, OSError):
            pass

    try:
        pool = [_Worker(ctx, backend, settings, lp_threads) for _ in range(n)]
        while queue or any(w.task is not None for w in pool):
            for w in pool:
                if w.ready and w.task is None and queue:
                    w.task = queue.popleft()
                    w.started = time.monotonic()
                    w.conn.send(w.task)
            now = time.monotonic()
            deadlines = [w.started + motion_timeout for w in pool if w.task is not None]
            deadlines += [w.born + init_timeout for w in pool if not w.ready]
            wait_s = min([1.0] + [max(0.0, d - now) for d in deadlines])
            objs = {}
            for w in pool:
                objs[w.conn] = w
                objs[w.proc.sentinel] = w
            try:
                ready = multiprocessing.connection.wait(list(objs), timeout=wait_s)
                for obj in ready:
                    w = objs[obj]
                    if obj is w.conn:
                        drain(w)
                    else:
                        drain(w)  # messages sent just before it exited
                        if w.proc.exitcode is not None and w in pool:
                            code = w.proc.exitcode
                            why = f"worker died (exit code {code}{' = signal ' + str(-code) if code < 0 else ''})"
                            if not w.ready:
                                early_deaths += 1
                                if early_deaths > 3:
                                    raise _InitFailed(why + " before it was ready, several times")
                            fail(w, why + f" while rendering {w.task.key}" if w.task else why)
                            w.kill()
                            replace(w)
            except _InitFailed as exc:
                init_errors.append(f"MUJOCO_GL={backend}: {exc}")
                if not backends:
                    raise ConfigError("offscreen rendering does not work here (" + "; ".join(init_errors) + ")",
                                      fix=GL_FIX) from None
                for w in pool:
                    if w.task is not None:
                        queue.appendleft(w.task)
                        _remove(w.task.partial)
                        w.task = None
                    w.kill()
                backend = backends.pop(0)
                early_deaths = 0
                pool = [_Worker(ctx, backend, settings, lp_threads) for _ in range(n)]
                continue
            now = time.monotonic()
            for w in list(pool):
                if w.task is not None and now - w.started > motion_timeout:
                    drain(w)  # it may have just finished, or reported progress
                    if w.task is not None and time.monotonic() - w.started > motion_timeout:
                        w.kill()
                        fail(w, f"watchdog: no progress for {motion_timeout:g} s; worker killed, partial video removed")
                        replace(w)
                elif not w.ready and now - w.born > init_timeout:
                    w.kill()
                    raise ConfigError(f"a render worker did not start within {init_timeout:g} s (MUJOCO_GL={backend})",
                                      fix=GL_FIX)
    finally:
        for w in pool:
            if w.task is not None:
                w.kill()
                _remove(w.task.partial)
            else:
                w.stop()
        bar.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return results, failed, backend, init_errors


class _InitFailed(Exception):
    pass


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while rendering."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"signal {signum}")


# ----------------------------------------------------------------------------------------------
# Planning (parent)
# ----------------------------------------------------------------------------------------------
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
            _remove(str(p))
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
    from grail_cluster.tools.data.export import Source

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
    from grail_cluster.tools.data.export import Source

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


# ----------------------------------------------------------------------------------------------
# Contact sheet
# ----------------------------------------------------------------------------------------------
def _mid_frame(path: Path) -> np.ndarray | None:
    """The middle frame of an existing video (for --skip_existing motions); None if unreadable."""
    try:
        import imageio.v2 as imageio

        reader = imageio.get_reader(str(path), format="FFMPEG")
        try:
            n = reader.count_frames()
            return _thumbnail(reader.get_data(max(0, n // 2)))
        finally:
            reader.close()
    except Exception:  # noqa: BLE001 - best effort: the sheet just leaves it out
        return None


def write_contact_sheet(path: Path, thumbs: list[tuple[str, np.ndarray]]) -> Path | None:
    """A grid of thumbnails labelled with their keys (PNG, written atomically)."""
    if not thumbs:
        return None
    from PIL import Image, ImageDraw

    thumbs = thumbs[:MAX_SHEET]
    th = max(t.shape[0] for _, t in thumbs)
    tw = max(t.shape[1] for _, t in thumbs)
    label = 14
    cols = max(1, math.ceil(math.sqrt(len(thumbs))))
    rows = math.ceil(len(thumbs) / cols)
    sheet = Image.new("RGB", (cols * tw, rows * (th + label)), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    max_chars = max(4, tw // 6)
    for i, (key, img) in enumerate(thumbs):
        x, y = (i % cols) * tw, (i // cols) * (th + label)
        sheet.paste(Image.fromarray(np.asarray(img, np.uint8)), (x, y))
        text = key if len(key) <= max_chars else key[: max_chars - 1] + "~"
        draw.text((x + 2, y + th + 1), text, fill=(235, 235, 235))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


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
                img = _mid_frame(Path(t.output))
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
            _remove(t.output)
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
