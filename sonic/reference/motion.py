"""A reference motion as the tracker consumes it: one motion key's robot/objects/meta pickles and
USD, resampled to the 50 Hz policy clock, with the reference body positions from forward kinematics.

Like SONIC's motion library (contracts §1.2), the tracked root rotation comes from ``pose_aa`` row 0,
not from ``root_rot`` (whose quaternion order differs between library variants).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from grail_cluster.core import safe_pickle
from grail_cluster.core.errors import DataError
from grail_cluster.core.motion_checks import hand_action_kind, hand_closed
from grail_cluster.core.quaternions import rotvec_to_wxyz
from grail_cluster.sonic.reference import scene as S
from grail_cluster.tools.data.bps import read_usd_mesh

POLICY_FPS = 1.0 / S.POLICY_DT  # 50


@dataclass
class ReferenceMotion:
    key: str
    fps_source: float
    root_pos: np.ndarray  # (T,3) at 50 Hz
    root_quat: np.ndarray  # (T,4) wxyz
    dof: np.ndarray  # (T,29) MuJoCo order
    hand_closed: np.ndarray  # (T,2) bool: left, right (-1 open / +1 closed in the pickle)
    object_pos: np.ndarray | None  # (T,3)
    object_quat: np.ndarray | None  # (T,4) wxyz
    scene: S.SceneSpec
    body_pos: np.ndarray | None = None  # (T,B,3) reference positions of scene.TRACKED_BODIES
    ee_z: np.ndarray | None = None  # (T,4) reference heights of the termination end effectors
    object_radius: float = 0.0

    @property
    def frames(self) -> int:
        return len(self.dof)

    @property
    def has_object(self) -> bool:
        return self.object_pos is not None and self.scene.object_vertices is not None


def _inner(obj, key: str, path: Path) -> dict:
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
        return obj[key]
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        return next(iter(obj.values()))
    raise DataError(f"not a {{motion_key: dict}} pickle for {key}", path=path,
                    fix="robot/ and objects/ pickles are single-key dicts (contracts §1.2)")


def _resample(x: np.ndarray, n_out: int, src_fps: float) -> np.ndarray:
    t_src = np.arange(len(x)) / src_fps
    t_out = np.minimum(np.arange(n_out) / POLICY_FPS, t_src[-1])
    flat = x.reshape(len(x), -1)
    out = np.stack([np.interp(t_out, t_src, flat[:, j]) for j in range(flat.shape[1])], axis=1)
    return out.reshape((n_out,) + x.shape[1:])


def _resample_quat(q: np.ndarray, n_out: int, src_fps: float) -> np.ndarray:
    q = np.array(q, dtype=np.float64)
    for i in range(1, len(q)):  # one hemisphere, so linear interpolation + renormalise is a fine slerp
        if np.dot(q[i], q[i - 1]) < 0:
            q[i] = -q[i]
    out = _resample(q, n_out, src_fps)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _nearest(x: np.ndarray, n_out: int, src_fps: float) -> np.ndarray:
    idx = np.clip(np.rint(np.arange(n_out) / POLICY_FPS * src_fps).astype(int), 0, len(x) - 1)
    return x[idx]


def load_motion(key: str, robot_path: Path, objects_path: Path | None, meta_path: Path | None,
                usd_path: Path | None) -> ReferenceMotion:
    robot = _inner(safe_pickle.load(robot_path), key, robot_path)
    try:
        fps = float(robot["fps"])
        dof = np.asarray(robot["dof"], np.float64)[:, :29]
        trans = np.asarray(robot["root_trans_offset"], np.float64)
        root_rv = np.asarray(robot["pose_aa"], np.float64)[:, 0, :]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DataError(f"robot pickle lacks {exc} (needs fps, dof, root_trans_offset, pose_aa)", path=robot_path,
                        fix="regenerate it with GRAIL's retarget step") from None
    T_src = len(dof)
    if T_src < 2 or dof.shape[1] != 29:
        raise DataError(f"robot motion has shape {dof.shape}; need >= 2 frames of 29 DOF", path=robot_path)
    n = int(np.floor((T_src - 1) / fps * POLICY_FPS + 1e-9)) + 1
    hands = np.stack([np.asarray(robot.get(f"hand_action_{s}", -np.ones(T_src)), np.float64) for s in ("left", "right")], 1)
    # Discrete -1/+1 (process.py) or GRAIL's upstream continuous mean |hand joint|: each read by its own rule.
    closed = hand_closed(hands, hand_action_kind(hands)).astype(np.float64)

    obj_pos = obj_quat = None
    scale = 1.0
    if objects_path is not None and objects_path.exists():
        obj = _inner(safe_pickle.load(objects_path), key, objects_path)
        ofps = float(obj.get("fps", fps))
        obj_pos = _resample(np.asarray(obj["root_pos"], np.float64)[:, 0], n, ofps)
        obj_quat = _resample_quat(np.asarray(obj["root_quat"], np.float64)[:, 0], n, ofps)
        scale = float(np.asarray(obj.get("scale", 1.0)).reshape(-1)[0])
    spec = S.SceneSpec(object_scale=scale)
    if meta_path is not None and meta_path.exists():
        meta = safe_pickle.load(meta_path)
        if isinstance(meta, dict) and meta.get("table_pos") is not None:
            spec.table_pos = np.asarray(meta["table_pos"], np.float64).reshape(3)
            # Retarget/_ha meta is wxyz; an exported library's is xyzw (contracts §1.4), but we track
            # source libraries, so wxyz.
            spec.table_quat_wxyz = np.asarray(meta.get("table_quat", [1, 0, 0, 0]), np.float64).reshape(4)
            if meta.get("table_size") is not None:
                spec.table_size = np.asarray(meta["table_size"], np.float64).reshape(3)
    radius = 0.0
    if obj_pos is not None and usd_path is not None and usd_path.exists():
        verts, tris = read_usd_mesh(usd_path)
        spec.object_vertices, spec.object_faces = verts, tris
        radius = float(np.linalg.norm(verts * scale, axis=1).max())

    return ReferenceMotion(
        key=key, fps_source=fps,
        root_pos=_resample(trans, n, fps), root_quat=_resample_quat(rotvec_to_wxyz(root_rv), n, fps),
        dof=_resample(dof, n, fps), hand_closed=_nearest(closed, n, fps) > 0.5,
        object_pos=obj_pos, object_quat=obj_quat, scene=spec, object_radius=radius,
    )


def add_reference_kinematics(motion: ReferenceMotion, model: mujoco.MjModel, idx: S.Indices) -> None:
    """Reference body positions by forward kinematics of the reference pose, frame by frame."""
    data = mujoco.MjData(model)
    body = np.empty((motion.frames, len(idx.tracked), 3))
    ee = np.empty((motion.frames, len(idx.end_effectors)))
    for t in range(motion.frames):
        S.set_pose(model, data, idx, motion.root_pos[t], motion.root_quat[t], motion.dof[t])
        body[t] = data.xpos[idx.tracked]
        ee[t] = data.xpos[idx.end_effectors, 2]
    motion.body_pos, motion.ee_z = body, ee
