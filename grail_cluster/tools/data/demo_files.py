"""One demo motion as GRAIL library files: robot, objects and meta pickles (§1.2-1.4) and the object USD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from grail_cluster.tools.data.demo_geometry import (
    CLOSE_BEFORE_LIFT,
    FPS,
    SMPL_HEIGHT,
    TABLE_QUAT,
    ObjectShape,
    quat_to_rotvec,
)
from grail_cluster.tools.data.demo_motion import Motion
from grail_cluster.tools.data.g1 import NUM_BODY_DOF, dof_axis

# ----------------------------------------------------------------------------- writing


def robot_dict(motion: Motion, hand_actions: bool) -> dict[str, Any]:
    """§1.2 robot pickle body (wxyz root_rot)."""
    t = len(motion.dof)
    axis = dof_axis().astype(np.float64)
    pose_aa = np.empty((t, NUM_BODY_DOF + 1, 3))
    pose_aa[:, 0] = [quat_to_rotvec(q) for q in motion.root_quat]
    pose_aa[:, 1:] = motion.dof[:, :, None] * axis[None]
    out: dict[str, Any] = {
        "root_trans_offset": motion.root_pos.astype(np.float32),
        "pose_aa": pose_aa.astype(np.float32),
        "dof": motion.dof.astype(np.float32),
        "root_rot": motion.root_quat.astype(np.float32),
        "smpl_joints": np.zeros((t, 24, 3), np.float32),
        "fps": FPS,
    }
    if hand_actions:
        right = np.full(t, -1.0, np.float32)
        right[motion.lift_frame - CLOSE_BEFORE_LIFT:] = 1.0
        out["hand_action_left"] = np.full(t, -1.0, np.float32)
        out["hand_action_right"] = right
    return out


def objects_dict(motion: Motion, ha: bool) -> dict[str, Any]:
    """§1.3 objects pickle body; ``_ha`` keeps only contact frames from the lift frame on.

    Contact points are the 8 object surface points nearest the palm at the grasp, in world
    coordinates for each frame (they move with the object once it is lifted).
    """
    first = motion.lift_frame if ha else motion.grasp_frame
    return {
        "root_pos": motion.obj_pos[:, None].astype(np.float32),
        "root_quat": motion.obj_quat[:, None].astype(np.float32),
        "fps": float(FPS),
        "scale": 1.0,
        "object_name": motion.shape.name,
        "contact_points_left_hand": {},
        "contact_points_right_hand": {f: p for f, p in motion.contacts.items() if f >= first},
    }


def meta_dict(motion: Motion) -> dict[str, Any]:
    """§1.4 meta: the table box (centre, wxyz quat, size) unless the object is on the ground."""
    meta: dict[str, Any] = {"object_name": motion.shape.name, "scene_scale": 1.0, "smpl_height": SMPL_HEIGHT}
    if not motion.scene.ground:
        meta["table_pos"] = [float(v) for v in motion.scene.table_center]
        meta["table_quat"] = list(TABLE_QUAT)
        meta["table_size"] = motion.scene.table_size.astype(np.float32)
    return meta


def write_usd(path: Path, shape: ObjectShape) -> None:
    """The object's mesh as a USD (Z up, metres), origin at the object centre = ``root_pos``."""
    from pxr import Gf, Usd, UsdGeom, Vt

    verts, faces = shape.mesh()
    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    root = UsdGeom.Xform.Define(stage, "/Object")
    stage.SetDefaultPrim(root.GetPrim())
    mesh = UsdGeom.Mesh.Define(stage, "/Object/mesh")
    mesh.CreatePointsAttr(Vt.Vec3fArray([Gf.Vec3f(*map(float, v)) for v in verts]))
    mesh.CreateFaceVertexCountsAttr(Vt.IntArray([3] * len(faces)))
    mesh.CreateFaceVertexIndicesAttr(Vt.IntArray([int(i) for i in faces.reshape(-1)]))
    mesh.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*map(float, verts.min(0))), Gf.Vec3f(*map(float, verts.max(0)))]))
    mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    stage.GetRootLayer().Save()


def _dump(path: Path, obj: Any) -> None:
    import joblib

    joblib.dump(obj, path, compress=3)


def write_motion(motion: Motion, plain: Path, ha: Path) -> None:
    key = motion.key
    _dump(plain / "robot" / f"{key}.pkl", {key: robot_dict(motion, hand_actions=False)})
    _dump(plain / "objects" / f"{key}.pkl", {key: objects_dict(motion, ha=False)})
    _dump(plain / "meta" / f"{key}.pkl", meta_dict(motion))
    write_usd(plain / "object_usd" / f"{key}.usd", motion.shape)
    _dump(ha / "robot" / f"{key}.pkl", {key: robot_dict(motion, hand_actions=True)})
    _dump(ha / "objects" / f"{key}.pkl", {key: objects_dict(motion, ha=True)})
    _dump(ha / "meta" / f"{key}.pkl", meta_dict(motion))

