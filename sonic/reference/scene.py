"""The MuJoCo scene of one motion: the Unitree G1 with hands, the object as a free body with its
real mesh (from the motion's USD), and the table from ``meta/`` (contracts §1.4).

Used by the CPU reference tracker (dynamic: the object falls, is pushed, is grasped) and by the
replay renderer (kinematic: every pose is set, nothing is stepped), so both show the same world.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np

from grail_cluster.tools.data.g1 import G1_HAND_JOINTS, G1_MUJOCO_JOINTS, g1_mjcf_path

# SONIC simulates at dt 0.005 with decimation 4: the policy acts at 50 Hz (contracts §1.9).
SIM_DT = 0.005
DECIMATION = 4
POLICY_DT = SIM_DT * DECIMATION

HAND_BODY = "right_wrist_yaw_link"  # the weld of the grasp help attaches the object here
PALM_OFFSET = np.array([0.084, 0.018, 0.0])  # palm centre in HAND_BODY's frame (from g1_with_hands.xml's palm mesh)
OBJECT_BODY = "object"
OBJECT_JOINT = "object_root"
TABLE_BODY = "table"
GRASP_WELD = "grasp_help"
OBJECT_MASS = 0.1  # the HOI release configs simulate a 0.1 kg object (contracts §2.3)

# Closed-hand finger targets of SONIC's hand primitive, G1_HAND_JOINTS order (contracts §1.8).
HAND_CLOSED = np.array([-1.4286, -2.1429, -1.4286, -2.1429, 0.0, 1.0, 1.0,
                        1.4286, 2.1429, 1.4286, 2.1429, 0.0, -1.0, -1.0])

# Bodies whose positions the MPJPE metrics compare, grouped like SONIC's metric variants.
LEG_BODIES = tuple(f"{s}_{n}_link" for s in ("left", "right")
                   for n in ("hip_pitch", "hip_roll", "hip_yaw", "knee", "ankle_pitch"))
FOOT_BODIES = ("left_ankle_roll_link", "right_ankle_roll_link")
VR_3POINT_BODIES = ("torso_link", "left_wrist_yaw_link", "right_wrist_yaw_link")
UPPER_BODIES = ("waist_yaw_link", "waist_roll_link") + tuple(
    f"{s}_{n}_link" for s in ("left", "right")
    for n in ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow", "wrist_roll", "wrist_pitch"))
TRACKED_BODIES = ("pelvis",) + LEG_BODIES + FOOT_BODIES + VR_3POINT_BODIES + UPPER_BODIES
# Termination bodies of SONIC's tracking/eval terms (ankles and wrists, contracts §4.1).
END_EFFECTORS = FOOT_BODIES + ("left_wrist_yaw_link", "right_wrist_yaw_link")


@dataclass
class SceneSpec:
    """What differs between motions: the object's mesh and the table."""

    object_vertices: np.ndarray | None = None  # (V,3) in the object's frame, metres
    object_faces: np.ndarray | None = None  # (F,3) triangles
    object_scale: float = 1.0
    table_pos: np.ndarray | None = None  # table centre (x,y,z)
    table_quat_wxyz: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0, 0.0]))
    table_size: np.ndarray = field(default_factory=lambda: np.array([1.5, 0.7, 0.04]))


def g1_scene_path() -> Path:
    """``scene_with_hands.xml``: floor + G1 with 43 DOF (29 body + 14 hand)."""
    return g1_mjcf_path().parent / "scene_with_hands.xml"


@functools.lru_cache(maxsize=2)
def _base_spec(render: bool) -> mujoco.MjSpec:
    """The G1 scene parsed and compiled once per process.

    Compiling the G1's meshes costs ~1.5 s; once a spec has compiled them, a recompile of the same
    spec costs ~0.2-0.4 s. So each motion adds its object and table to this spec, compiles, and
    removes them again, instead of parsing the robot anew.
    """
    spec = mujoco.MjSpec.from_file(str(g1_scene_path()))
    spec.option.timestep = SIM_DT
    if render:
        spec.visual.global_.offwidth = 1920
        spec.visual.global_.offheight = 1088
    spec.compile()
    return spec


def triangulate(faces) -> np.ndarray:
    """Polygon faces (lists or an (F,k) array) to (T,3) triangles by fans."""
    tris = []
    for face in faces:
        face = [int(i) for i in face]
        tris.extend((face[0], face[j], face[j + 1]) for j in range(1, len(face) - 1))
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def build_model(scene: SceneSpec, *, render: bool = False) -> mujoco.MjModel:
    """Compile the G1 scene of one motion (one model per motion: meshes and tables differ)."""
    spec = _base_spec(render)
    added = []
    try:
        world = spec.worldbody
        if scene.table_pos is not None:
            table = world.add_body(name=TABLE_BODY, pos=np.asarray(scene.table_pos, float),
                                   quat=np.asarray(scene.table_quat_wxyz, float))
            table.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX, size=np.asarray(scene.table_size, float) / 2.0,
                           rgba=[0.55, 0.42, 0.3, 1.0], friction=[1.0, 0.005, 0.0001])
            added.append(table)
        if scene.object_vertices is not None:
            verts = np.asarray(scene.object_vertices, float) * float(scene.object_scale)
            mesh = spec.add_mesh(name="object_mesh", uservert=verts.ravel().tolist(),
                                 userface=triangulate(scene.object_faces).ravel().tolist()
                                 if scene.object_faces is not None else [])
            added.append(mesh)
            body = world.add_body(name=OBJECT_BODY)
            body.add_freejoint(name=OBJECT_JOINT)
            body.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname="object_mesh", mass=OBJECT_MASS,
                          rgba=[0.85, 0.35, 0.2, 1.0], friction=[1.2, 0.01, 0.001], condim=4)
            added.append(body)
            # Grasp help: a weld the tracker switches on while the hand is closed on the object.
            added.append(spec.add_equality(name=GRASP_WELD, type=mujoco.mjtEq.mjEQ_WELD, name1=OBJECT_BODY,
                                           name2=HAND_BODY, objtype=mujoco.mjtObj.mjOBJ_BODY, active=False))
        return spec.compile()
    finally:
        for element in reversed(added):
            spec.delete(element)


@dataclass(frozen=True)
class Indices:
    """Addresses in qpos/qvel/ctrl of one compiled scene (the same for every motion's model)."""

    body_qpos: np.ndarray  # 29, MuJoCo joint order
    body_qvel: np.ndarray
    hand_qpos: np.ndarray  # 14, G1_HAND_JOINTS order
    body_ctrl: np.ndarray
    hand_ctrl: np.ndarray
    tracked: np.ndarray  # body ids of TRACKED_BODIES
    end_effectors: np.ndarray
    hand_body: int
    object_qpos: int | None  # start of the object's free joint (pos 3 + quat 4)
    object_body: int | None
    table_body: int | None
    weld: int | None


def indices(model: mujoco.MjModel) -> Indices:
    def jnt(name: str) -> int:
        return model.joint(name).id

    def act_of(names: tuple[str, ...]) -> np.ndarray:
        by_joint = {int(model.actuator_trnid[a, 0]): a for a in range(model.nu)}
        return np.array([by_joint[jnt(n)] for n in names])

    def body(name: str) -> int:
        return model.body(name).id

    def maybe(kind, name: str) -> int | None:
        return mujoco.mj_name2id(model, kind, name) if mujoco.mj_name2id(model, kind, name) >= 0 else None

    obj_j = maybe(mujoco.mjtObj.mjOBJ_JOINT, OBJECT_JOINT)
    return Indices(
        body_qpos=np.array([model.jnt_qposadr[jnt(n)] for n in G1_MUJOCO_JOINTS]),
        body_qvel=np.array([model.jnt_dofadr[jnt(n)] for n in G1_MUJOCO_JOINTS]),
        hand_qpos=np.array([model.jnt_qposadr[jnt(n)] for n in G1_HAND_JOINTS]),
        body_ctrl=act_of(G1_MUJOCO_JOINTS),
        hand_ctrl=act_of(G1_HAND_JOINTS),
        tracked=np.array([body(n) for n in TRACKED_BODIES]),
        end_effectors=np.array([body(n) for n in END_EFFECTORS]),
        hand_body=body(HAND_BODY),
        object_qpos=int(model.jnt_qposadr[obj_j]) if obj_j is not None else None,
        object_body=maybe(mujoco.mjtObj.mjOBJ_BODY, OBJECT_BODY),
        table_body=maybe(mujoco.mjtObj.mjOBJ_BODY, TABLE_BODY),
        weld=maybe(mujoco.mjtObj.mjOBJ_EQUALITY, GRASP_WELD),
    )


def hand_targets(model: mujoco.MjModel, idx: Indices, left_closed: bool, right_closed: bool) -> np.ndarray:
    """Finger targets of the discrete hand action (open = zeros), clipped to the actuator ranges."""
    target = np.zeros(14)
    if left_closed:
        target[:7] = HAND_CLOSED[:7]
    if right_closed:
        target[7:] = HAND_CLOSED[7:]
    lo, hi = model.actuator_ctrlrange[idx.hand_ctrl].T
    return np.clip(target, lo, hi)


def set_pose(model: mujoco.MjModel, data: mujoco.MjData, idx: Indices, root_pos, root_quat_wxyz, body_dof,
             hand_dof=None, object_pos=None, object_quat_wxyz=None) -> None:
    """Set a kinematic pose (replay, reference FK, episode start) and run forward kinematics."""
    data.qpos[:3] = root_pos
    data.qpos[3:7] = root_quat_wxyz
    data.qpos[idx.body_qpos] = body_dof
    data.qpos[idx.hand_qpos] = 0.0 if hand_dof is None else hand_dof
    if idx.object_qpos is not None and object_pos is not None:
        data.qpos[idx.object_qpos:idx.object_qpos + 3] = object_pos
        data.qpos[idx.object_qpos + 3:idx.object_qpos + 7] = object_quat_wxyz
    mujoco.mj_kinematics(model, data)
