"""Synthetic GRAIL-format motion libraries for tests and benchmarks.

Everything here is written from the layout contracts (grail-contracts.md §1): one file per
motion in ``robot/ objects/ meta/ object_usd/ bps/``, joblib pickles, single-key robot and
object dicts, flat meta dicts, per-key USD meshes and 10-point BPS vectors.

Determinism: every motion draws from its own ``np.random.default_rng([seed, index])``, so the
bytes of a motion depend only on (seed, index, length, arguments) -- not on how many motions
are written or how the work is split across processes.

Run ``python -m tests.libgen --help`` for the CLI.
"""

from __future__ import annotations

import argparse
import builtins
import functools
import json
import multiprocessing as mp
import os
import pickle
import re
import struct
import sys
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np

__all__ = [
    "LibraryInfo",
    "make_library",
    "make_ha_pair",
    "make_terrain_library",
    "heavy_tailed_lengths",
    "write_malicious_pickle",
    "write_usd_mesh",
    "G1_MUJOCO_JOINTS",
    "DOF_AXIS",
    "bps_basis",
    "bps_encode",
    "rotvec_to_quat_wxyz",
]

VARIANTS = ("retarget", "ha", "export")
ROOT_ROT_CONVENTION = {"retarget": "wxyz", "ha": "wxyz", "export": "xyzw"}
DEFAULT_FPS = {"retarget": 30, "ha": 30, "export": 25.0}  # int for retarget/_ha, float for export
MOTIONS_PER_INSTANCE = 3  # keys <obj>_<n>__000.._002 share one object instance (one mesh)
TABLE_SIZE = (1.5, 0.7, 0.04)  # `_ha` default table_size
TABLE_TOP_Z = 0.75
PELVIS_Z = 0.78
SMPL_HEIGHT = 1.66
NUM_BPS = 10
FAST_LENGTH_RANGE = (20, 40)  # fast mode keeps files small when no lengths are given
DEFAULT_LENGTH_RANGE = (40, 120)
PARALLEL_MIN_MOTIONS = 2000  # below this a process pool costs more than it saves

# Hand "closed" primitive pos_1 (§1.8), G1_HAND_JOINTS name order: left 7 then right 7.
HAND_CLOSED_LEFT = (-1.4286, -2.1429, -1.4286, -2.1429, 0.0, 1.0, 1.0)
HAND_CLOSED_RIGHT = (1.4286, 2.1429, 1.4286, 2.1429, 0.0, -1.0, -1.0)


@dataclass
class LibraryInfo:
    root: Path
    keys: list[str]
    lengths: dict[str, int]
    bps_dir: Path | None
    variant: str  # "retarget" | "ha" | "export" | "terrain"
    root_rot_convention: str  # "wxyz" | "xyzw"
    # Extra (not in the requested API, defaulted so callers may ignore it): key -> USD file.
    usd_paths: dict[str, Path] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------
# G1 joint table (§1.8, MuJoCo order).  Axis: pitch/knee/elbow -> y, roll -> x, yaw -> z.
# center/amp are radians for the synthetic sinusoids; they stay inside the G1 joint limits.
# ----------------------------------------------------------------------------------------
_LEG = [
    ("hip_pitch", "y", -0.2, 0.35),
    ("hip_roll", "x", 0.0, 0.08),
    ("hip_yaw", "z", 0.0, 0.1),
    ("knee", "y", 0.45, 0.3),
    ("ankle_pitch", "y", -0.25, 0.15),
    ("ankle_roll", "x", 0.0, 0.06),
]
_WAIST = [("waist_yaw", "z", 0.0, 0.2), ("waist_roll", "x", 0.0, 0.05), ("waist_pitch", "y", 0.1, 0.1)]
_ARM = [
    ("shoulder_pitch", "y", 0.2, 0.4),
    ("shoulder_roll", "x", 0.2, 0.12),
    ("shoulder_yaw", "z", 0.0, 0.2),
    ("elbow", "y", 0.9, 0.3),
    ("wrist_roll", "x", 0.0, 0.2),
    ("wrist_pitch", "y", 0.0, 0.2),
    ("wrist_yaw", "z", 0.0, 0.2),
]


def _joint_table():
    rows = [(f"left_{n}_joint", a, c, s) for n, a, c, s in _LEG]
    rows += [(f"right_{n}_joint", a, c, s) for n, a, c, s in _LEG]
    rows += [(f"{n}_joint", a, c, s) for n, a, c, s in _WAIST]
    rows += [(f"left_{n}_joint", a, c, s) for n, a, c, s in _ARM]
    # Right shoulder_roll mirrors the left one (arm held away from the body on both sides).
    rows += [(f"right_{n}_joint", a, -c if n == "shoulder_roll" else c, s) for n, a, c, s in _ARM]
    return rows


_JOINTS = _joint_table()
G1_MUJOCO_JOINTS: tuple[str, ...] = tuple(r[0] for r in _JOINTS)
DOF_AXIS: np.ndarray = np.array(
    [{"x": (1, 0, 0), "y": (0, 1, 0), "z": (0, 0, 1)}[r[1]] for r in _JOINTS], np.float32
)
_DOF_CENTER = np.array([r[2] for r in _JOINTS], np.float32)
_DOF_AMP = np.array([r[3] for r in _JOINTS], np.float32)
_RIGHT_LEG = slice(6, 12)
assert len(G1_MUJOCO_JOINTS) == 29


# ----------------------------------------------------------------------------------------
# Quaternion helpers (wxyz internally).
# ----------------------------------------------------------------------------------------
def _quat_yaw_pitch_roll(yaw, pitch, roll) -> np.ndarray:
    """wxyz of Rz(yaw) @ Ry(pitch) @ Rx(roll); inputs broadcast to (T,)."""
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    return np.stack(
        [
            cy * cp * cr + sy * sp * sr,
            cy * cp * sr - sy * sp * cr,
            cy * sp * cr + sy * cp * sr,
            sy * cp * cr - cy * sp * sr,
        ],
        axis=-1,
    )


def _quat_to_rotvec(q_wxyz: np.ndarray) -> np.ndarray:
    q = np.where(q_wxyz[..., :1] < 0, -q_wxyz, q_wxyz)  # w >= 0 keeps the angle in [0, pi]
    v = q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2 * np.arctan2(s, q[..., :1])
    scale = np.where(s > 1e-12, angle / np.maximum(s, 1e-12), 2.0)  # small-angle limit
    return v * scale


def rotvec_to_quat_wxyz(rv: np.ndarray) -> np.ndarray:
    """Inverse of the rotation-vector encoding in ``pose_aa`` row 0 (used by the tests)."""
    rv = np.asarray(rv, np.float64)
    angle = np.linalg.norm(rv, axis=-1, keepdims=True)
    half = angle / 2
    k = np.where(angle > 1e-12, np.sin(half) / np.maximum(angle, 1e-12), 0.5)
    return np.concatenate([np.cos(half), rv * k], axis=-1)


def _wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    return np.concatenate([q[..., 1:], q[..., :1]], axis=-1)


def _rot2(yaw: float, xy) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([c * xy[0] - s * xy[1], s * xy[0] + c * xy[1]])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# ----------------------------------------------------------------------------------------
# Lengths and keys
# ----------------------------------------------------------------------------------------
def heavy_tailed_lengths(n: int, seed: int = 0) -> list[int]:
    """Lognormal frame counts (median ~90, long right tail) clipped to [20, 5000]."""
    rng = np.random.default_rng([seed, 0x4C454E])  # own stream: independent of motion content
    x = rng.lognormal(mean=np.log(90.0), sigma=1.0, size=n)
    return [int(v) for v in np.clip(np.rint(x), 20, 5000)]


def _resolve_lengths(n: int, lengths, seed: int, fast: bool) -> list[int]:
    if isinstance(lengths, str):
        if lengths != "heavy_tailed":
            raise ValueError(f"unknown lengths spec {lengths!r}")
        return heavy_tailed_lengths(n, seed)
    if lengths is not None:
        out = [int(v) for v in lengths]
        if len(out) != n:
            raise ValueError(f"got {len(out)} lengths for {n} motions")
        if min(out, default=1) < 1:
            raise ValueError("lengths must be >= 1 frame")
        return out
    lo, hi = FAST_LENGTH_RANGE if fast else DEFAULT_LENGTH_RANGE
    rng = np.random.default_rng([seed, 0x4C454F])
    return [int(v) for v in rng.integers(lo, hi + 1, size=n)]


def _plan_keys(n: int, objects: Sequence[str], scene: str):
    """(index, key, object, instance) with objects cycling, MOTIONS_PER_INSTANCE per instance."""
    plan = []
    for i in range(n):
        obj = objects[i % len(objects)]
        j = i // len(objects)
        inst, idx = divmod(j, MOTIONS_PER_INSTANCE)
        plan.append((i, f"{scene}__{obj}_{inst}__{idx:03d}", obj, inst))
    return plan


# ----------------------------------------------------------------------------------------
# Meshes, USD and BPS
# ----------------------------------------------------------------------------------------
def _box_mesh(sx, sy, sz):
    v = np.array([[x, y, z] for z in (-1, 1) for y in (-1, 1) for x in (-1, 1)], np.float64)
    v *= np.array([sx, sy, sz]) / 2
    quads = np.array([[0, 2, 3, 1], [4, 5, 7, 6], [0, 1, 5, 4], [2, 6, 7, 3], [0, 4, 6, 2], [1, 3, 7, 5]])
    return v, quads


def _uv_sphere(radius, n_lat, n_lon, squash=1.0):
    """Low-poly sphere; poles are single vertices so every face is a triangle."""
    verts = [(0.0, 0.0, -radius * squash)]
    for i in range(1, n_lat):
        th = np.pi * i / n_lat - np.pi / 2
        for j in range(n_lon):
            ph = 2 * np.pi * j / n_lon
            verts.append(
                (
                    radius * np.cos(th) * np.cos(ph),
                    radius * np.cos(th) * np.sin(ph),
                    radius * squash * np.sin(th),
                )
            )
    verts.append((0.0, 0.0, radius * squash))
    faces = []

    def ring(i, j):  # vertex index of latitude ring i (1-based), longitude j (wraps)
        return 1 + (i - 1) * n_lon + (j % n_lon)

    top = len(verts) - 1
    for j in range(n_lon):
        faces.append((0, ring(1, j + 1), ring(1, j)))
        faces.append((top, ring(n_lat - 1, j), ring(n_lat - 1, j + 1)))
        for i in range(1, n_lat - 1):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j + 1), ring(i + 1, j)
            faces += [(a, b, c), (a, c, d)]
    return np.array(verts), np.array(faces)


def _frustum(r_bottom, r_top, height, n_seg):
    """Capped cylinder/cone frustum (mug, bottle, bowl), all triangles."""
    ang = 2 * np.pi * np.arange(n_seg) / n_seg

    def ring(r, z):
        return np.stack([r * np.cos(ang), r * np.sin(ang), np.full(n_seg, z)], 1)

    verts = np.concatenate(
        [ring(r_bottom, -height / 2), ring(r_top, height / 2), [[0, 0, -height / 2], [0, 0, height / 2]]]
    )
    cb, ct = 2 * n_seg, 2 * n_seg + 1
    faces = []
    for j in range(n_seg):
        k = (j + 1) % n_seg
        faces += [(j, k, n_seg + k), (j, n_seg + k, n_seg + j), (cb, k, j), (ct, n_seg + j, n_seg + k)]
    return verts, np.array(faces)


_SHAPES = ("sphere", "cylinder", "box", "bottle", "bowl")
_SHAPE_OF = {
    "apple": "sphere",
    "orange": "sphere",
    "ball": "sphere",
    "mug": "cylinder",
    "cup": "cylinder",
    "can": "cylinder",
    "box": "box",
    "book": "box",
    "bottle": "bottle",
    "bowl": "bowl",
    "plate": "bowl",
}


@functools.lru_cache(maxsize=4096)
def _object_mesh(obj: str, inst: int, seed: int):
    """Mesh of object instance ``inst`` of class ``obj``: shape per class, size per instance.

    Cached: with MOTIONS_PER_INSTANCE motions per instance the same mesh is reused."""
    shape = _SHAPE_OF.get(obj, _SHAPES[zlib.crc32(obj.encode()) % len(_SHAPES)])
    rng = np.random.default_rng([seed, zlib.crc32(obj.encode()), inst, 0x4D455348])
    f = rng.uniform(0.8, 1.25, size=3)
    seg = int(rng.integers(10, 17))
    if shape == "sphere":
        v, fc = _uv_sphere(0.04 * f[0], n_lat=6 + seg % 3, n_lon=seg, squash=0.9 * f[1] / f[0] + 0.1)
    elif shape == "cylinder":
        v, fc = _frustum(0.04 * f[0], 0.042 * f[0], 0.10 * f[2], seg)
    elif shape == "bottle":
        v, fc = _frustum(0.035 * f[0], 0.02 * f[1], 0.22 * f[2], seg)
    elif shape == "bowl":
        v, fc = _frustum(0.04 * f[0], 0.08 * f[1], 0.06 * f[2], seg + 8)
    else:
        v, fc = _box_mesh(0.12 * f[0], 0.08 * f[1], 0.06 * f[2])
    v = v - (v.min(0) + v.max(0)) / 2  # origin at the bbox centre: resting z = top + half height
    return v.astype(np.float32), fc.astype(np.int32)


def _usd_ident(name: str) -> str:
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name) or "object"
    return "_" + ident if ident[0].isdigit() else ident


def _fmt_floats(a: np.ndarray) -> list[str]:
    return [f"{x:.6g}" for x in np.asarray(a, np.float64).ravel()]


def _usd_text(vertices: np.ndarray, faces, name: str) -> str:
    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    faces = [list(map(int, f)) for f in faces] if not isinstance(faces, np.ndarray) else faces
    counts = [len(f) for f in faces] if isinstance(faces, list) else [faces.shape[1]] * len(faces)
    idx = [int(i) for f in faces for i in f]
    fv = _fmt_floats(v)
    pts = ", ".join(f"({fv[3 * i]}, {fv[3 * i + 1]}, {fv[3 * i + 2]})" for i in range(len(v)))
    lo, hi = _fmt_floats(v.min(0)), _fmt_floats(v.max(0))
    prim = _usd_ident(name)
    return (
        "#usda 1.0\n(\n"
        f'    defaultPrim = "{prim}"\n    metersPerUnit = 1\n    upAxis = "Z"\n)\n\n'
        f'def Xform "{prim}" (\n    kind = "component"\n)\n{{\n'
        '    def Mesh "mesh"\n    {\n'
        f"        float3[] extent = [({', '.join(lo)}), ({', '.join(hi)})]\n"
        f"        int[] faceVertexCounts = [{', '.join(map(str, counts))}]\n"
        f"        int[] faceVertexIndices = [{', '.join(map(str, idx))}]\n"
        f"        point3f[] points = [{pts}]\n"
        '        uniform token subdivisionScheme = "none"\n'
        "    }\n}\n"
    )


def write_usd_mesh(path: Path, vertices: np.ndarray, faces, name: str = "object") -> None:
    """Write an ASCII USD (usda) with one Xform ``name`` holding one Mesh ``mesh``.

    ``faces`` is an (F,k) int array or a list of index sequences (mixed polygons)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_usd_text(vertices, faces, name))


@functools.lru_cache(maxsize=8)
def bps_basis(n: int = NUM_BPS) -> np.ndarray:
    """Fibonacci-sphere points on the unit sphere, (n,3) f32."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z * z)
    phi = np.pi * (3 - np.sqrt(5)) * np.arange(n)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1).astype(np.float32)


def bps_encode(vertices: np.ndarray, basis: np.ndarray | None = None) -> np.ndarray:
    """§1.6 for meshes with <=2048 vertices: centre, scale to radius 1, nearest distance."""
    basis = bps_basis() if basis is None else basis
    p = np.asarray(vertices, np.float64)
    if len(p) > 2048:
        raise ValueError("bps_encode only implements the <=2048-vertex case of §1.6")
    p = p - p.mean(0)
    p = p / max(np.linalg.norm(p, axis=1).max(), 1e-12)
    d = np.linalg.norm(basis[:, None, :].astype(np.float64) - p[None], axis=-1)
    return d.min(1).astype(np.float32)


@functools.lru_cache(maxsize=4096)
def _usd_text_cached(obj: str, inst: int, seed: int) -> str:
    v, f = _object_mesh(obj, inst, seed)
    return _usd_text(v, f, obj)


@functools.lru_cache(maxsize=4096)
def _bps_cached(obj: str, inst: int, seed: int) -> np.ndarray:
    return bps_encode(_object_mesh(obj, inst, seed)[0])


def _tiny_png(rgb: tuple[int, int, int], size: int = 2) -> bytes:
    """A valid size x size RGB PNG (stdlib only), for texture-layout tests."""
    raw = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------------------
# Motion synthesis (variant independent; serialisers below pick fields per variant)
# ----------------------------------------------------------------------------------------
def _root_rotation(rng, t):
    """Upright pelvis, yaw swinging around a random heading, small roll/pitch.

    With roll/pitch tiny only w and z are large, so a loader can tell wxyz from xyzw: wxyz
    data read as xyzw tilts the pelvis by pi-|yaw|, xyzw read as wxyz by |yaw|. Keeping
    0.6 <= |yaw| <= 2.55 rad (heading 0.95..2.2 either side, swing 0.35) makes the wrong
    reading tilt >= ~30 degrees in every frame of every motion."""
    yaw0 = rng.choice([-1.0, 1.0]) * rng.uniform(0.95, 2.2)
    f = rng.uniform(0.1, 0.3, 3)
    ph = rng.uniform(0, 2 * np.pi, 3)
    yaw = yaw0 + 0.35 * np.sin(2 * np.pi * f[0] * t + ph[0])
    pitch = 0.05 * np.sin(2 * np.pi * f[1] * t + ph[1])
    roll = 0.04 * np.sin(2 * np.pi * f[2] * t + ph[2])
    return yaw0, _quat_yaw_pitch_roll(yaw, pitch, roll)


def _dof_motion(rng, t):
    """Smooth sinusoids around a standing pose; legs in anti-phase like a gait."""
    freq = rng.uniform(0.3, 1.0, 29)
    phase = rng.uniform(0, 2 * np.pi, 29)
    phase[_RIGHT_LEG] = phase[:6] + np.pi
    freq[_RIGHT_LEG] = freq[:6]
    return (_DOF_CENTER + _DOF_AMP * np.sin(2 * np.pi * freq * t[:, None] + phase)).astype(np.float32)


def _synth_motion(seed: int, index: int, T: int, obj: str, inst: int, table: bool) -> dict:
    rng = np.random.default_rng([seed, index])
    fps = 30.0
    t = np.arange(T) / fps
    yaw0, q = _root_rotation(rng, t)
    dof = _dof_motion(rng, t)
    # Lift frame: mid-motion, with >=10 frames before it and >=5 after when T allows.
    lo = min(10, T // 2)
    lift = int(np.clip(round(T * rng.uniform(0.45, 0.65)), lo, max(lo, T - 5)))

    # The pelvis approaches a stance point in front of the table, then stays.
    stand = rng.uniform(-1.0, 1.0, 2)
    heading = np.array([np.cos(yaw0), np.sin(yaw0)])
    approach = 0.6 * (1 - _smoothstep(np.arange(T) / max(lift - 5, 1)))
    root = np.empty((T, 3))
    root[:, :2] = stand - approach[:, None] * heading
    root[:, 2] = PELVIS_Z + 0.01 * np.sin(2 * np.pi * 1.5 * t)

    # Table 0.55 m ahead along the heading; object on its top (or on the ground), right side.
    verts, _ = _object_mesh(obj, inst, seed)
    half_h = float(verts[:, 2].max())
    table_xy = stand + 0.55 * heading
    rest_xy = table_xy + _rot2(yaw0, (-0.15, -0.12))
    rest_z = (TABLE_TOP_Z if table else 0.0) + half_h
    k = np.arange(T)
    up = _smoothstep((k - lift) / 20.0)
    obj_pos = np.empty((T, 1, 3))
    obj_pos[:, 0, :2] = rest_xy - 0.1 * up[:, None] * heading  # drawn towards the body
    obj_pos[:, 0, 2] = rest_z + 0.18 * up
    obj_quat = np.broadcast_to(_quat_yaw_pitch_roll(rng.uniform(-np.pi, np.pi), 0.0, 0.0), (T, 1, 4))

    # Contact points in the object frame, on mesh vertices; some start before the lift so the
    # `_ha` rule (keep frames >= lift) has something to drop.
    def contacts(first, last):
        out = {}
        for fr in range(max(first, 0), min(last, T)):
            n = int(rng.integers(3, 9))
            pts = verts[rng.integers(0, len(verts), n)] + rng.normal(0, 0.002, (n, 3))
            out[int(fr)] = pts.astype(np.float32)
        return out

    right = contacts(lift - 8, lift + 40)
    left = contacts(lift, lift + 6) if index % 3 == 1 else {}

    hand_r = np.where(k >= max(lift - 10, 0), 1.0, -1.0).astype(np.float32)
    return {
        "T": T,
        "lift": lift,
        "root": root.astype(np.float32),
        "root_quat": q.astype(np.float32),
        "dof": dof,
        "obj_pos": obj_pos.astype(np.float32),
        "obj_quat": np.ascontiguousarray(obj_quat, np.float32),
        "table_pos": [float(table_xy[0]), float(table_xy[1]), TABLE_TOP_Z - TABLE_SIZE[2] / 2],
        "table_quat": [float(v) for v in _quat_yaw_pitch_roll(yaw0, 0.0, 0.0)],
        "contacts_right": right,
        "contacts_left": left,
        "hand_right": hand_r,
        "hand_left": np.full(T, -1.0, np.float32),
        "scale": None if index % 4 == 3 else 1.0,  # `scale` is optional: omit it sometimes
    }


# ----------------------------------------------------------------------------------------
# Per-variant serialisation
# ----------------------------------------------------------------------------------------
def _pose_aa(root_quat_wxyz: np.ndarray, dof: np.ndarray) -> np.ndarray:
    pose = np.empty((len(dof), 30, 3), np.float32)
    pose[:, 0] = _quat_to_rotvec(root_quat_wxyz.astype(np.float64))
    pose[:, 1:] = dof[:, :, None] * DOF_AXIS[None]
    return pose


def _hand_dof_pos(m: dict) -> np.ndarray:
    closed = np.array(HAND_CLOSED_LEFT + HAND_CLOSED_RIGHT, np.float32)
    on = np.concatenate(
        [np.repeat((m["hand_left"] > 0)[:, None], 7, 1), np.repeat((m["hand_right"] > 0)[:, None], 7, 1)], 1
    )
    return np.where(on, closed, 0.0).astype(np.float32)


def _robot_dict(m: dict, variant: str, fps: int | float) -> dict:
    q = m["root_quat"]
    d = {
        "root_trans_offset": m["root"],
        "pose_aa": _pose_aa(q, m["dof"]),
        "dof": m["dof"],
        "root_rot": q if ROOT_ROT_CONVENTION[variant] == "wxyz" else _wxyz_to_xyzw(q),
        "smpl_joints": np.zeros((m["T"], 24, 3), np.float32),
        "fps": fps,
    }
    if variant in ("ha", "export"):
        d["hand_action_left"] = m["hand_left"]
        d["hand_action_right"] = m["hand_right"]
    if variant == "export":
        d["hand_dof_pos"] = _hand_dof_pos(m)
    return d


def _objects_dict(m: dict, variant: str, fps: int | float, obj: str, with_contacts: bool) -> dict:
    d = {"root_pos": m["obj_pos"], "root_quat": m["obj_quat"], "fps": float(fps)}
    if m["scale"] is not None:
        d["scale"] = m["scale"]
    if variant == "retarget":
        d["object_name"] = obj
    if with_contacts:
        # `_ha` (and the export, which copies from `_ha`) keep only frames >= lift.
        first = 0 if variant == "retarget" else m["lift"]
        d["contact_points_left_hand"] = {f: p for f, p in m["contacts_left"].items() if f >= first}
        d["contact_points_right_hand"] = {f: p for f, p in m["contacts_right"].items() if f >= first}
    return d


def _meta_dict(m: dict, variant: str, obj: str, table: bool) -> dict:
    if variant == "retarget":
        d = {"object_name": obj, "scene_scale": 1.0, "smpl_height": SMPL_HEIGHT}
        if table:
            d = {"table_pos": list(m["table_pos"]), "table_quat": list(m["table_quat"]), **d}
        return d
    d = {"object_name": obj}
    if not table:
        return d
    if variant == "ha":
        d["table_pos"] = np.array(m["table_pos"], np.float32)
        d["table_quat"] = np.array(m["table_quat"], np.float32)
    else:  # export: frame-0 values as f64, quaternion xyzw
        d["table_pos"] = np.array(m["table_pos"], np.float64)
        d["table_quat"] = _wxyz_to_xyzw(np.array(m["table_quat"], np.float64))
    d["table_size"] = np.array(TABLE_SIZE, np.float32)
    return d


# ----------------------------------------------------------------------------------------
# Library writer
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ctx:
    root: Path
    variant: str
    fps: int | float
    with_bps: bool
    with_contacts: bool
    table: bool
    shared_usd: bool
    compress: int
    seed: int

    @property
    def write_usd(self) -> bool:
        return self.variant != "ha"  # `_ha` libraries have no object_usd/ or bps/ (§1.1)


def _write_texture(root: Path, i: int, stem: str) -> None:
    """Both texture layouts of §1.5: flat for i%3==0, nested for i%3==1, none otherwise."""
    tex = root / "object_usd" / "textures"
    png = _tiny_png(((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
    if i % 3 == 0:
        (tex / f"{stem}_albedo.png").write_bytes(png)
    elif i % 3 == 1:
        (tex / stem).mkdir(exist_ok=True)
        (tex / stem / "base.png").write_bytes(png)


def _write_motion(ctx: _Ctx, item) -> None:
    i, key, obj, inst, T = item
    m = _synth_motion(ctx.seed, i, T, obj, inst, ctx.table)
    r, v = ctx.root, ctx.variant
    joblib.dump({key: _robot_dict(m, v, ctx.fps)}, r / "robot" / f"{key}.pkl", compress=ctx.compress)
    joblib.dump(
        {key: _objects_dict(m, v, ctx.fps, obj, ctx.with_contacts)},
        r / "objects" / f"{key}.pkl",
        compress=ctx.compress,
    )
    joblib.dump(_meta_dict(m, v, obj, ctx.table), r / "meta" / f"{key}.pkl", compress=ctx.compress)
    # With shared_usd the class files are written once by the parent (_write_shared_usd).
    if ctx.write_usd and not ctx.shared_usd:
        (r / "object_usd" / f"{key}.usd").write_text(_usd_text_cached(obj, inst, ctx.seed))
        _write_texture(r, i, key)
    if ctx.with_bps:
        np.save(r / "bps" / f"{key}.npy", _bps_cached(obj, 0 if ctx.shared_usd else inst, ctx.seed))


def _write_chunk(ctx: _Ctx, items) -> None:
    for it in items:
        _write_motion(ctx, it)


def _run_items(ctx: _Ctx, items: list) -> None:
    """Serial for small libraries, a process pool for large ones.

    Each motion's bytes depend only on its own rng stream, so the split cannot change output."""
    workers = min(len(os.sched_getaffinity(0)), 8)
    if len(items) < PARALLEL_MIN_MOTIONS or workers < 2:
        _write_chunk(ctx, items)
        return
    n_chunks = workers * 4
    # Explicit fork: workers inherit the module as imported (also as __main__ under the CLI)
    # without re-importing it; Python 3.14 changes the Linux default to forkserver.
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as ex:
        futures = [ex.submit(_write_chunk, ctx, items[k::n_chunks]) for k in range(n_chunks)]
        for fut in futures:
            fut.result()


def _write_shared_usd(ctx: _Ctx, objects: Sequence[str]) -> None:
    for n, obj in enumerate(dict.fromkeys(objects)):
        (ctx.root / "object_usd" / f"{obj}.usd").write_text(_usd_text_cached(obj, 0, ctx.seed))
        _write_texture(ctx.root, n, obj)


def _write_export_extras(root: Path, plan) -> None:
    """`vis/` (empty: no videos) and `export_manifest.json` with the §5.4 fields."""
    (root / "vis").mkdir(exist_ok=True)
    motions = [
        {
            "motion_key": k,
            "env_idx": i,
            "obj_pos_error": 0.01,
            "obj_ori_error": 0.05,
            "mpjpe_g": 30.0,
            "progress": 1.0,
        }
        for i, k, _, _ in plan
    ]
    manifest = {
        "source_eval_dir": "synthetic",
        "source_data_dir": "synthetic",
        "obj_pos_threshold": None,
        "min_progress": 1.0,
        "total_motions_evaluated": len(plan),
        "exported_motions": motions,
        "exported_count": len(plan),
        "skipped_no_trajectory": 0,
    }
    (root / "export_manifest.json").write_text(json.dumps(manifest, indent=1))


def make_library(
    root: Path,
    n_motions: int = 12,
    *,
    variant: str = "retarget",
    with_bps: bool = True,
    with_contacts: bool = True,
    table: bool = True,
    shared_usd: bool = False,
    lengths: Sequence[int] | str | None = None,
    objects: Sequence[str] = ("apple", "mug", "box", "bottle", "bowl"),
    scene: str = "pickup_table",
    fps: int | float | None = None,
    compress: int = 3,
    seed: int = 0,
    fast: bool = False,
) -> LibraryInfo:
    """Write a GRAIL motion library under ``root`` and describe it.

    - variant "ha" writes only robot/objects/meta (make_ha_pair adds the USD/BPS sibling);
      ``with_bps`` is ignored for it.
    - ``shared_usd`` writes ``object_usd/<object>.usd`` once per class instead of one USD per
      key. That is NOT the GRAIL rule (scans pair USD and motion by stem); it exists for
      negative tests. BPS files stay per key.
    - ``fps`` overrides the stored fps value only; frame counts are never resampled.
    - ``fast`` forces compress=0 and, when ``lengths`` is None, 20..40 frames per motion.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    if not objects:
        raise ValueError("objects must not be empty")
    root = Path(root)
    ctx = _Ctx(
        root,
        variant,
        DEFAULT_FPS[variant] if fps is None else fps,
        with_bps and variant != "ha",
        with_contacts,
        table,
        shared_usd,
        0 if fast else compress,
        seed,
    )
    Ts = _resolve_lengths(n_motions, lengths, seed, fast)
    plan = _plan_keys(n_motions, objects, scene)

    for sub in ["robot", "objects", "meta"]:
        (root / sub).mkdir(parents=True, exist_ok=True)
    if ctx.write_usd:
        (root / "object_usd" / "textures").mkdir(parents=True, exist_ok=True)
        (root / "object_usd" / "config.yaml").write_text(
            "# synthetic object_usd config (tests.libgen)\nmass: 1.0\ncollision: sdf\n"
        )
    if ctx.with_bps:
        (root / "bps").mkdir(exist_ok=True)
        np.save(root / "bps" / "_basis.npy", bps_basis())

    _run_items(ctx, [(i, key, obj, inst, Ts[i]) for i, key, obj, inst in plan])
    if ctx.write_usd and shared_usd:
        _write_shared_usd(ctx, [obj for _, _, obj, _ in plan])
    if variant == "export":
        _write_export_extras(root, plan)

    keys = sorted(k for _, k, _, _ in plan)
    length_of = {k: Ts[i] for i, k, _, _ in plan}
    info = LibraryInfo(
        root,
        keys,
        {k: length_of[k] for k in keys},
        root / "bps" if ctx.with_bps else None,
        variant,
        ROOT_ROT_CONVENTION[variant],
    )
    if ctx.write_usd:
        info.usd_paths = {k: root / "object_usd" / f"{o if shared_usd else k}.usd" for _, k, o, _ in plan}
    return info


def make_ha_pair(parent: Path, name: str, n_motions: int = 12, **kw) -> tuple[LibraryInfo, LibraryInfo]:
    """Write ``<parent>/<name>/`` (retarget: object_usd, bps, ...) and ``<parent>/<name>_ha/``
    (hand actions, no USD/BPS) with the same keys and motion data, as GRAIL training uses them.

    The returned `_ha` info points ``bps_dir`` and ``usd_paths`` at the non-`_ha` sibling."""
    if "variant" in kw:
        raise TypeError("make_ha_pair always writes a retarget + ha pair; drop 'variant'")
    parent = Path(parent)
    base = make_library(parent / name, n_motions, variant="retarget", **kw)
    ha = make_library(parent / f"{name}_ha", n_motions, variant="ha", **kw)
    ha.bps_dir = base.bps_dir
    ha.usd_paths = dict(base.usd_paths)
    return base, ha


# ----------------------------------------------------------------------------------------
# Terrain libraries (§1.7)
# ----------------------------------------------------------------------------------------
TERRAIN_KINDS = ("stairs", "slope", "curb")
_NESTED_TERRAIN = {"stairs", "slope"}  # curb files sit directly in robot/ (mixed layout)


def _terrain_mesh(kind: str, rng) -> tuple[np.ndarray, list]:
    """Stairs: stacked boxes; slope: ramp; curb: one low box. Sizes vary per motion."""
    if kind == "stairs":
        n, rise, run = int(rng.integers(3, 7)), rng.uniform(0.1, 0.18), rng.uniform(0.25, 0.35)
        verts, faces = [], []
        for s in range(n):
            v, f = _box_mesh(run, 1.5, rise * (s + 1))
            v = v + [run * (s + 0.5), 0.0, rise * (s + 1) / 2]
            faces += [list(q + len(verts)) for q in f]
            verts += list(v)
        return np.array(verts), faces
    if kind == "slope":
        length, height = rng.uniform(1.5, 3.0), rng.uniform(0.1, 0.4)
        v = np.array(
            [
                [0, -0.75, 0],
                [length, -0.75, 0],
                [length, 0.75, 0],
                [0, 0.75, 0],
                [length, -0.75, height],
                [length, 0.75, height],
            ]
        )
        return v, [[0, 3, 2, 1], [0, 1, 4], [3, 5, 2], [1, 2, 5, 4], [0, 4, 5, 3]]
    v, f = _box_mesh(0.3, 2.0, rng.uniform(0.08, 0.2))
    return v + [0.6, 0.0, float(v[:, 2].max())], [list(q) for q in f]


def _terrain_robot(rng, T: int, rise: float) -> dict:
    """Walk forward along the heading while the pelvis climbs ``rise`` metres."""
    t = np.arange(T) / 30.0
    yaw0, q = _root_rotation(rng, t)
    heading = np.array([np.cos(yaw0), np.sin(yaw0)])
    prog = np.arange(T) / max(T - 1, 1)
    root = np.empty((T, 3), np.float32)
    root[:, :2] = prog[:, None] * 2.0 * heading
    root[:, 2] = PELVIS_Z + rise * _smoothstep(prog * 1.3 - 0.15)
    dof = _dof_motion(rng, t)
    return {
        "root_trans_offset": root,
        "pose_aa": _pose_aa(q, dof),
        "dof": dof,
        "root_rot": _wxyz_to_xyzw(q).astype(np.float32),
        "smpl_joints": np.zeros((T, 24, 3), np.float32),
        "fps": 30,
    }


def make_terrain_library(
    root: Path, n_motions: int = 8, *, placeholder: str = "root", seed: int = 0, lengths=None
) -> LibraryInfo:
    """Terrain layout: robot/ objects/ object_usd/, partly nested per kind, USD per key by stem.

    ``placeholder``: "root" -> <root>/flat_placeholder.usd, "legacy" ->
    object_usd/flat_placeholder.usd, "none" -> absent.  robot/metadata.pkl is written too
    because discovery must skip it.  root_rot is xyzw (released terrain data is exported)."""
    if placeholder not in ("root", "legacy", "none"):
        raise ValueError("placeholder must be 'root', 'legacy' or 'none'")
    root = Path(root)
    Ts = _resolve_lengths(n_motions, lengths, seed, fast=False)
    keys, usd_paths = [], {}
    for i in range(n_motions):
        kind = TERRAIN_KINDS[i % len(TERRAIN_KINDS)]
        inst, idx = divmod(i // len(TERRAIN_KINDS), 2)
        key = f"terrain_{kind}__s{inst:02d}_{idx:03d}"
        sub = kind if kind in _NESTED_TERRAIN else ""
        rng = np.random.default_rng([seed, i, 0x5445])
        verts, faces = _terrain_mesh(kind, rng)
        T = Ts[i]
        robot = _terrain_robot(rng, T, rise=float(np.asarray(verts)[:, 2].max()))
        objects = {
            "root_pos": np.zeros((T, 1, 3), np.float32),
            "root_quat": np.tile(np.float32([1, 0, 0, 0]), (T, 1, 1)),
            "fps": 30.0,
        }
        for d in ("robot", "objects", "object_usd"):
            (root / d / sub).mkdir(parents=True, exist_ok=True)
        joblib.dump({key: robot}, root / "robot" / sub / f"{key}.pkl", compress=3)
        joblib.dump({key: objects}, root / "objects" / sub / f"{key}.pkl", compress=3)
        usd_paths[key] = root / "object_usd" / sub / f"{key}.usd"
        write_usd_mesh(usd_paths[key], verts, faces, name=f"terrain_{kind}")
        keys.append(key)
    joblib.dump(
        {"num_motions": n_motions, "generator": "tests.libgen"}, root / "robot" / "metadata.pkl", compress=3
    )
    if placeholder != "none":
        where = root if placeholder == "root" else root / "object_usd"
        plane = np.array([[-5, -5, 0], [5, -5, 0], [5, 5, 0], [-5, 5, 0]], np.float32)
        write_usd_mesh(where / "flat_placeholder.usd", plane, np.array([[0, 1, 2, 3]]), "flat")
    length_of = dict(zip(keys, Ts, strict=True))
    keys.sort()
    info = LibraryInfo(root, keys, {k: length_of[k] for k in keys}, None, "terrain", "xyzw")
    info.usd_paths = usd_paths
    return info


# ----------------------------------------------------------------------------------------
# Malicious pickle (for tests of the safe loader)
# ----------------------------------------------------------------------------------------
class _Exploit:
    """Unpickling calls builtins.exec(code); only ``builtins exec`` lands in the stream, so the
    file loads (and fires) without this module being importable."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (builtins.exec, (self.code,))


def write_malicious_pickle(path: Path, marker: Path) -> None:
    """A motion-shaped pickle ``{key: {"fps": <exploit>, ...}}`` whose load creates ``marker``.

    Plain ``pickle.load`` and ``joblib.load`` both execute the payload; the payload sits inside
    the dict so loaders that only check the top-level type are not protected."""
    code = f"open({str(Path(marker).resolve())!r}, 'w').write('pwned')"
    payload = {
        "evil__motion__000": {"root_trans_offset": np.zeros((2, 3), np.float32), "fps": _Exploit(code)}
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------
def _du_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.libgen", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--motions", type=int, default=12)
    ap.add_argument("--variant", choices=VARIANTS + ("ha_pair",), default="retarget")
    ap.add_argument("--terrain", action="store_true", help="write a terrain library (§1.7)")
    ap.add_argument("--fast", action="store_true", help="compress=0, short motions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lengths", choices=("uniform", "heavy_tailed"), default="uniform")
    args = ap.parse_args(argv)
    lengths = None if args.lengths == "uniform" else args.lengths
    t0 = time.perf_counter()
    if args.terrain:
        info = make_terrain_library(args.out, args.motions, seed=args.seed, lengths=lengths)
    elif args.variant == "ha_pair":
        info, _ = make_ha_pair(
            args.out.parent, args.out.name, args.motions, seed=args.seed, fast=args.fast, lengths=lengths
        )
    else:
        info = make_library(
            args.out, args.motions, variant=args.variant, seed=args.seed, fast=args.fast, lengths=lengths
        )
    dt = time.perf_counter() - t0
    out_dirs = [args.out] + (
        [args.out.parent / f"{args.out.name}_ha"] if args.variant == "ha_pair" and not args.terrain else []
    )
    mb = sum(_du_bytes(d) for d in out_dirs) / 1e6
    print(
        f"libgen: {len(info.keys)} motions variant={info.variant} root_rot={info.root_rot_convention} "
        f"frames={sum(info.lengths.values())} -> {args.out} ({mb:.1f} MB, {dt:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
