"""Quaternion conventions of GRAIL files.

Robot ``root_rot`` is wxyz in retargeted and ``_ha`` libraries and xyzw in exported and released
ones (contracts §1.9); nothing in the file says which. We detect it from the data instead of
guessing from the directory name, and record what was seen.
"""

from __future__ import annotations

import numpy as np

# How far apart the two readings must be before we call it.
_MARGIN = 0.2
_SAMPLE_FRAMES = 64


def rotvec_to_wxyz(rotvec: np.ndarray) -> np.ndarray:
    """Axis-angle (..., 3) to unit quaternions (..., 4) in wxyz order."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    half = 0.5 * angle
    # sin(x/2)/x -> 1/2 as x -> 0; avoid 0/0.
    scale = np.where(angle > 1e-8, np.sin(half) / np.where(angle > 1e-8, angle, 1.0), 0.5)
    return np.concatenate([np.cos(half), rotvec * scale], axis=-1)


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    return np.roll(np.asarray(q), 1, axis=-1)


def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    return np.roll(np.asarray(q), -1, axis=-1)


def _sample(arr: np.ndarray) -> np.ndarray:
    if len(arr) <= _SAMPLE_FRAMES:
        return arr
    idx = np.linspace(0, len(arr) - 1, _SAMPLE_FRAMES).astype(int)
    return arr[idx]


def detect_root_rot_convention(root_rot: np.ndarray, pose_aa: np.ndarray | None = None) -> str:
    """Return ``"wxyz"``, ``"xyzw"``, ``"ambiguous"`` or ``"unknown"`` for a (T,4) ``root_rot``.

    First choice: ``pose_aa[:, 0]`` is the same root rotation as a rotation vector, so whichever
    reading of ``root_rot`` matches it is the convention. Without ``pose_aa`` (or if it is
    degenerate) an upright pelvis has near-zero roll/pitch components: x, y are small, which puts
    the small entries at positions 1, 2 for wxyz and 0, 1 for xyzw.
    """
    q = np.asarray(root_rot, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 4 or len(q) == 0 or not np.all(np.isfinite(q)):
        return "unknown"
    q = _sample(q)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if np.any(norms < 1e-6):
        return "unknown"
    q = q / norms

    if pose_aa is not None:
        aa = np.asarray(pose_aa, dtype=np.float64)
        if aa.ndim == 3 and aa.shape[0] == len(root_rot) and aa.shape[2] == 3:
            ref = rotvec_to_wxyz(_sample(aa[:, 0, :]))
            as_wxyz = np.abs(np.sum(ref * q, axis=1)).mean()
            as_xyzw = np.abs(np.sum(ref * xyzw_to_wxyz(q), axis=1)).mean()
            if abs(as_wxyz - as_xyzw) > _MARGIN:
                return "wxyz" if as_wxyz > as_xyzw else "xyzw"

    tilt_if_wxyz = float(np.mean(q[:, 1] ** 2 + q[:, 2] ** 2))
    tilt_if_xyzw = float(np.mean(q[:, 0] ** 2 + q[:, 1] ** 2))
    if abs(tilt_if_wxyz - tilt_if_xyzw) > _MARGIN:
        return "wxyz" if tilt_if_wxyz < tilt_if_xyzw else "xyzw"
    return "ambiguous"
