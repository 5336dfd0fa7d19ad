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
import functools
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grail_cluster.core.errors import EXIT_OK, ConfigError, DataError, GrailError
from grail_cluster.tools.data.g1 import G1_MUJOCO_JOINTS, NUM_BODY_DOF, dof_axis, g1_mjcf_path

# ----------------------------------------------------------------------------- public constants

HAND_BODY = "right_wrist_yaw_link"
# Middle of the palm's inner face in the HAND_BODY frame, measured in g1_with_hands.xml: the palm
# mesh (geom at (0.0415, -0.003, 0)) spans x 0.0415..0.128 (volume centroid x 0.0838), z +-0.044,
# and y -0.024..0.017; the fingers and the thumb close towards +y, so that is the grasping face.
PALM_OFFSET = (0.084, 0.018, 0.0)
PALM_NORMAL = (0.0, 1.0, 0.0)  # direction the palm faces (where the fingers close), HAND_BODY frame

FPS = 30
TMP_PREFIX = ".demo-data.tmp-"
CLASSES = ("box", "cylinder", "sphere", "bottle")
# On the floor the palm comes down on top of a tall object; a ball offers no top the open hand can
# reach without its thumb (standing 9 cm out of the palm) hitting the ball or the floor.
GROUND_CLASSES = ("box", "cylinder", "bottle")
INSTANCES_PER_CLASS = 3
SCENES = ("table", "ground", "mixed")
TABLE_QUAT = (1.0, 0.0, 0.0, 0.0)
SMPL_HEIGHT = 1.66
CLOSE_BEFORE_LIFT = 10  # §1.2: the right hand closes from (lift frame - 10) on

MAX_JOINT_SPEED = 2.0  # rad/s, checked on the finished trajectory
PLANNED_JOINT_SPEED = 1.9  # rad/s each path is stretched to stay under
IK_TOLERANCE = 0.005  # m, palm to its target at the grasp (reject above)
TRACK_TOLERANCE = 0.01  # m, palm to its target on every approach/lift frame
TRACK_IK_STEPS = 4  # IK iterations per frame along a palm path
PALM_GAP = 0.005  # m between the palm face and the object before closing
# m between the lowest point of the open hand and the support at the grasp; a tracking controller
# lags a few cm, so the larger one where the object allows (small objects need the palm lower)
HAND_CLEARANCES = (0.04, 0.03)
CONTACT_MARGIN = 0.02  # m: any robot geom this close to the table (or a non-foot geom to the floor) fails
SELF_PENETRATION = 0.005  # m of self-penetration tolerated (hull approximations overlap at rest)
COM_X_TARGET = 0.03  # m ahead of the ankles: middle of the sole (heel -0.05 .. toe +0.12) ...
COM_X_PER_KNEE = 0.01  # ... plus this per rad of knee bend: a loaded deep squat sags backwards under PD
COM_X_RANGE = (-0.02, 0.09)
COM_Y_LIMIT = 0.06
JOINT_MARGIN = 0.02  # rad kept inside every joint range
MAX_ATTEMPTS = 60

# --untrackable: retargeting defects (ground truth of the generator, never written into the library)
DEFECTS = ("foot_lift",)
# foot_lift: once the legs are still (after the reach) the left foot comes off the floor and stays up while the centre of mass
# stays between the feet, far outside the right sole: what a human does leaning a hip or hand on the
# table, and what a robot without that support cannot hold (it tips over sideways).
FOOT_LIFT = {"hip": -0.3, "knee": 1.1}  # rad added to the left hip pitch and knee; the ankle keeps the sole level
FOOT_LIFT_SPEED = 1.6  # rad/s peak while the foot rises
FOOT_LIFT_HOLD_S = 1.2  # s the foot stays up at the end of the motion

# Fixed upper-body poses (MuJoCo order within the 7 arm joints).
# Elbow 0 points the forearm forward, ~1.5 straight down; shoulder roll keeps the hands off the hips.
LEFT_ARM_RELAXED = (0.3, 0.5, 0.0, 1.1, 0.0, 0.0, 0.0)  # left arm for the whole motion (§1.2)
RIGHT_ARM_START = (0.3, -0.4, 0.0, 1.1, 0.0, 0.0, 0.0)
RIGHT_ARM_REST = (-0.4, -0.1, 0.0, 0.6, 0.0, 0.0, 0.0)  # posture the IK null space leans towards
RIGHT_ARM_REACH = (-0.9, -0.1, 0.0, 0.2, 0.0, 0.0, 0.0)  # second IK seed: arm stretched forward
PRE_GRASP_BACK = 0.07  # m the palm starts away from the object (along the palm normal) ...
PRE_GRASP_UP = 0.03  # ... and above its grasp height
VIA_EDGE_GAP = 0.05  # m between the hand and the table's near edge while the hand rises ...
VIA_AHEAD_SHARES = (0.0, 0.5, 1.0, 1.4)  # ... counting this share of the fingers ahead of the palm
VIA_FINGERS_UP = 1.2  # rad the fingers turn up while the hand rises close to a table
VIA_CHECK_FRAMES = 16  # poses of the coarse reach checked when choosing the via point
LIFT_TILT = 0.3  # rad the hand (and object) may pitch up over a 25 cm lift
TABLE_EDGE_X = (0.19, 0.26)  # m, the table's near edge in front of the pelvis
REACH_BLEND = (0.4, 0.6)  # the arm's second reach segment starts before the first one ends
REACH_BODY_START = 0.0  # legs and waist join the reach this far into it
VIA_ABOVE_TOP = 0.08  # m between the lowest hand point and the table top when the hand goes out
MAX_PALM_DISTANCE = 0.03  # m from the palm point to the object surface at the grasp
HAND_OBJECT_MARGIN = 0.003  # m the open hand keeps from the object at the grasp

LEG = slice(0, 12)
WAIST = slice(12, 15)
LEFT_ARM = slice(15, 22)
RIGHT_ARM = slice(22, 29)
_IDX = {name: i for i, name in enumerate(G1_MUJOCO_JOINTS)}
HIP_PITCH = (_IDX["left_hip_pitch_joint"], _IDX["right_hip_pitch_joint"])
KNEE = (_IDX["left_knee_joint"], _IDX["right_knee_joint"])
ANKLE_PITCH = (_IDX["left_ankle_pitch_joint"], _IDX["right_ankle_pitch_joint"])
ARM_COLS = np.arange(22, 29)
ARM_WAIST_COLS = np.r_[12:15, 22:29]


# ----------------------------------------------------------------------------- small rotation helpers


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def mat_to_quat(mat: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion wxyz with w >= 0."""
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.asarray(mat, np.float64).reshape(9))
    return q if q[0] >= 0 else -q


def quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    """wxyz -> rotation vector (axis * angle)."""
    q = np.asarray(q, np.float64)
    q = q if q[0] >= 0 else -q
    s = np.linalg.norm(q[1:])
    if s < 1e-12:
        return np.zeros(3)
    return q[1:] / s * (2.0 * np.arctan2(s, q[0]))


def _orientation_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-frame rotation vector taking ``current`` towards ``target`` (exact, via the quaternion)."""
    return quat_to_rotvec(mat_to_quat(target @ current.T))


def min_jerk(n: int) -> np.ndarray:
    """n samples of the minimum-jerk profile 0 -> 1 (zero speed and acceleration at both ends)."""
    tau = np.linspace(0.0, 1.0, n)
    return tau**3 * (10.0 - 15.0 * tau + 6.0 * tau**2)


# ----------------------------------------------------------------------------- object meshes


@dataclass(frozen=True)
class ObjectShape:
    """One object instance: a closed triangle mesh centred on its bounding box, z up."""

    cls: str
    instance: int
    size: tuple[float, ...]  # box: (x, y, z); cylinder: (r, h); sphere: (r,); bottle: (r_bottom, r_top, h)

    @property
    def name(self) -> str:
        return f"{self.cls}_{self.instance}"

    @property
    def height(self) -> float:
        return {"box": lambda s: s[2], "cylinder": lambda s: s[1], "sphere": lambda s: 2 * s[0],
                "bottle": lambda s: s[2]}[self.cls](self.size)

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        if self.cls == "box":
            return _box_mesh(*self.size)
        if self.cls == "cylinder":
            return _frustum_mesh(self.size[0], self.size[0], self.size[1])
        if self.cls == "sphere":
            return _sphere_mesh(self.size[0])
        return _frustum_mesh(*self.size)


def _box_mesh(sx: float, sy: float, sz: float) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[x, y, z] for z in (-1, 1) for y in (-1, 1) for x in (-1, 1)], np.float64)
    verts = corners * (0.5 * np.array([sx, sy, sz]))
    # counter-clockwise seen from outside (outward normals)
    quads = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
    faces = [(a, b, c) for a, b, c, d in quads] + [(a, c, d) for a, b, c, d in quads]
    return verts, np.array(faces, np.int64)


def _frustum_mesh(r_bottom: float, r_top: float, height: float, segments: int = 24) -> tuple[np.ndarray, np.ndarray]:
    phi = 2.0 * np.pi * np.arange(segments) / segments
    ring = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    bottom = np.c_[ring * r_bottom, np.full(segments, -0.5 * height)]
    top = np.c_[ring * r_top, np.full(segments, 0.5 * height)]
    verts = np.vstack([bottom, top, [[0.0, 0.0, -0.5 * height], [0.0, 0.0, 0.5 * height]]])
    cb, ct = 2 * segments, 2 * segments + 1
    faces = []
    for i in range(segments):
        j = (i + 1) % segments
        faces += [(i, j, segments + j), (i, segments + j, segments + i), (cb, j, i), (ct, segments + i, segments + j)]
    return verts, np.array(faces, np.int64)


def _sphere_mesh(radius: float, n_lat: int = 10, n_lon: int = 20) -> tuple[np.ndarray, np.ndarray]:
    verts = [(0.0, 0.0, -radius)]
    for i in range(1, n_lat):
        theta = np.pi * i / n_lat - 0.5 * np.pi
        for j in range(n_lon):
            phi = 2.0 * np.pi * j / n_lon
            verts.append((radius * np.cos(theta) * np.cos(phi), radius * np.cos(theta) * np.sin(phi),
                          radius * np.sin(theta)))
    verts.append((0.0, 0.0, radius))
    top = len(verts) - 1

    def ring(i: int, j: int) -> int:
        return 1 + (i - 1) * n_lon + (j % n_lon)

    faces = []
    for j in range(n_lon):
        faces += [(0, ring(1, j + 1), ring(1, j)), (top, ring(n_lat - 1, j), ring(n_lat - 1, j + 1))]
        for i in range(1, n_lat - 1):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j + 1), ring(i + 1, j)
            faces += [(a, c, d), (a, b, c)]
    return np.array(verts), np.array(faces, np.int64)


def object_instance(seed: int, cls: str, instance: int) -> ObjectShape:
    """The shape of ``<cls>_<instance>``: every motion with this object name shares it.

    Instances below INSTANCES_PER_CLASS stand on tables; the ones above lie on the floor and are
    taller, because the open hand must stay clear of the floor while the palm faces the object.
    """
    rng = np.random.default_rng([seed, 1, CLASSES.index(cls), instance])
    tall = instance >= INSTANCES_PER_CLASS
    if cls == "box":
        height = rng.uniform(0.16, 0.24) if tall else rng.uniform(0.06, 0.16)
        size: tuple[float, ...] = (rng.uniform(0.04, 0.12), rng.uniform(0.04, 0.09), height)
    elif cls == "cylinder":
        size = (rng.uniform(0.03, 0.045) if tall else rng.uniform(0.02, 0.045),
                rng.uniform(0.16, 0.24) if tall else rng.uniform(0.07, 0.18))
    elif cls == "sphere":
        size = (rng.uniform(0.06, 0.075) if tall else rng.uniform(0.03, 0.06),)
    else:
        r = rng.uniform(0.035, 0.045) if tall else rng.uniform(0.025, 0.045)
        size = (r, r * rng.uniform(0.45, 0.8), rng.uniform(0.18, 0.26) if tall else rng.uniform(0.10, 0.20))
    return ObjectShape(cls, instance, tuple(round(float(s), 4) for s in size))


@functools.lru_cache(maxsize=64)
def surface_points(shape: ObjectShape, n: int = 600) -> np.ndarray:
    """Area-weighted surface samples (object frame), fixed per shape: palm placement and contacts."""
    from grail_cluster.tools.data.bps import sample_surface

    verts, faces = shape.mesh()
    points = np.vstack([verts, sample_surface(verts, faces, n, seed=7)])
    points.setflags(write=False)  # cached and shared
    return points


# ----------------------------------------------------------------------------- the kinematic model


class Kinematics:
    """G1 with hands (MuJoCo) plus a floor, a mocap table box and a mocap object, for FK, Jacobians
    and contact checks. Built once per process: compiling the meshes is the expensive part (~1 s)."""

    def __init__(self) -> None:
        import mujoco

        self.mj = mujoco
        spec = mujoco.MjSpec.from_file(str(g1_mjcf_path().parent / "g1_with_hands.xml"))
        box, cyl, sphere, plane = (mujoco.mjtGeom.mjGEOM_BOX, mujoco.mjtGeom.mjGEOM_CYLINDER,
                                   mujoco.mjtGeom.mjGEOM_SPHERE, mujoco.mjtGeom.mjGEOM_PLANE)
        spec.worldbody.add_geom(name="demo_floor", type=plane, size=[0, 0, 0.05], margin=CONTACT_MARGIN)
        table = spec.worldbody.add_body(name="demo_table", mocap=True)
        table.add_geom(name="demo_table", type=box, size=[0.5, 0.5, 0.02], margin=CONTACT_MARGIN, density=0.0)
        obj = spec.worldbody.add_body(name="demo_object", mocap=True)
        for name, kind in (("box", box), ("cylinder", cyl), ("sphere", sphere)):
            obj.add_geom(name=f"demo_object_{name}", type=kind, size=[0.02, 0.02, 0.02], density=0.0)
        self.model = m = spec.compile()
        self.data = mujoco.MjData(m)
        joints = [m.joint(n) for n in G1_MUJOCO_JOINTS]
        self.qadr = np.array([j.qposadr[0] for j in joints])
        self.dadr = np.array([j.dofadr[0] for j in joints])
        ranges = np.array([j.range for j in joints])
        self.lo, self.hi = ranges[:, 0] + JOINT_MARGIN, ranges[:, 1] - JOINT_MARGIN
        self.hand = m.body(HAND_BODY).id
        self.pelvis = m.body("pelvis").id
        self.ankle = m.body("right_ankle_roll_link").id
        self.floor_geom = m.geom("demo_floor").id
        self.table_geom = m.geom("demo_table").id
        self.table_mocap = m.body_mocapid[m.body("demo_table").id]
        self.object_geoms = {n: m.geom(f"demo_object_{n}").id for n in ("box", "cylinder", "sphere")}
        self.object_mocap = m.body_mocapid[m.body("demo_object").id]
        self._object_ids = np.array(sorted(self.object_geoms.values()))
        self._scene_ids = np.r_[self.floor_geom, self.table_geom, self._object_ids]
        # The soles are the four small spheres under each ankle_roll_link (class "foot").
        feet = {m.body("left_ankle_roll_link").id, m.body("right_ankle_roll_link").id}
        self.foot_geoms = np.array([g for g in range(m.ngeom) if m.geom_bodyid[g] in feet
                                    and m.geom_type[g] == mujoco.mjtGeom.mjGEOM_SPHERE])
        self.foot_radius = float(m.geom_size[self.foot_geoms[0], 0])
        self.palm = np.asarray(PALM_OFFSET, np.float64)
        self.jacp = np.zeros((3, m.nv))
        self.jacr = np.zeros((3, m.nv))
        self.place_table(None, None)
        self.place_object(None, np.zeros(3), np.eye(3))
        self.baseline_self_pairs = self._self_pairs_at_rest()
        self.hand_points = self._open_hand_points()
        self._hand_geoms = np.array([g for g in range(m.ngeom) if m.geom_bodyid[g] == self.hand
                                     or _is_descendant(m, int(m.geom_bodyid[g]), self.hand)])
        # The feet stay where they are when the straight-legged robot stands with its pelvis at x=0.
        self.foot_x = 0.0
        self.foot_x = -float(self.place_on_floor(np.zeros(NUM_BODY_DOF), 0.0)[0])

    # -- forward kinematics
    def set_pose(self, root_pos: np.ndarray, root_quat: np.ndarray, dof: np.ndarray) -> None:
        d = self.data
        d.qpos[:] = 0.0
        d.qpos[0:3] = root_pos
        d.qpos[3:7] = root_quat
        d.qpos[self.qadr] = dof
        self.mj.mj_kinematics(self.model, d)
        self.mj.mj_comPos(self.model, d)

    def palm_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """World position of the palm point and orientation of HAND_BODY."""
        rot = self.data.xmat[self.hand].reshape(3, 3).copy()
        return self.data.xpos[self.hand] + rot @ self.palm, rot

    def hand_frame(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.xpos[self.hand].copy(), self.data.xmat[self.hand].reshape(3, 3).copy()

    def com(self) -> np.ndarray:
        return self.data.subtree_com[self.pelvis].copy()

    @property
    def ankle_x(self) -> float:
        return float(self.data.xpos[self.ankle][0])

    def place_on_floor(self, dof: np.ndarray, pitch: float) -> np.ndarray:
        """Pelvis position that puts the lowest sole point at z=0 and the ankles at ``foot_x``."""
        quat = pitch_quat(pitch)
        self.set_pose(np.zeros(3), quat, dof)
        sole = float(self.data.geom_xpos[self.foot_geoms, 2].min()) - self.foot_radius
        root = np.array([self.foot_x - self.ankle_x, 0.0, -sole])
        self.set_pose(root, quat, dof)
        return root

    # -- the scene's collision stand-ins
    def _resize(self, geom: int, half: np.ndarray, aabb_half: np.ndarray) -> None:
        m = self.model
        m.geom_size[geom] = half
        m.geom_aabb[geom] = np.r_[np.zeros(3), aabb_half]
        m.geom_rbound[geom] = float(np.linalg.norm(aabb_half))

    def place_table(self, center: np.ndarray | None, size: np.ndarray | None) -> None:
        if center is None or size is None:
            center, size = np.array([0.0, 0.0, -10.0]), np.array([0.1, 0.1, 0.1])  # out of the way
        half = 0.5 * np.asarray(size, np.float64)
        self._resize(self.table_geom, half, half)
        self.data.mocap_pos[self.table_mocap] = center
        self.data.mocap_quat[self.table_mocap] = TABLE_QUAT

    def place_object(self, shape: ObjectShape | None, pos: np.ndarray, rot: np.ndarray) -> None:
        """Pose the object's primitive stand-in (for the body; the hand is checked on the exact shape)."""
        m = self.model
        for geom in self.object_geoms.values():
            m.geom_contype[geom] = m.geom_conaffinity[geom] = 0
        if shape is None:
            return
        kind = "cylinder" if shape.cls == "bottle" else shape.cls  # a bottle: its mean-radius cylinder
        geom = self.object_geoms[kind]
        if kind == "box":
            half = 0.5 * np.asarray(shape.size)
            self._resize(geom, half, half)
        elif kind == "cylinder":
            r, h = 0.5 * (shape.size[0] + shape.size[1 if shape.cls == "bottle" else 0]), shape.height
            self._resize(geom, np.array([r, 0.5 * h, 0.0]), np.array([r, r, 0.5 * h]))
        else:
            r = shape.size[0]
            self._resize(geom, np.array([r, 0.0, 0.0]), np.full(3, r))
        m.geom_contype[geom] = m.geom_conaffinity[geom] = 1
        self.data.mocap_pos[self.object_mocap] = pos
        self.data.mocap_quat[self.object_mocap] = mat_to_quat(rot)

    def contact_problem(self) -> str | None:
        """What the current pose touches that it should not: the table or the floor (anything but the
        soles, within CONTACT_MARGIN), the object (penetration), or itself (penetration)."""
        m, d = self.model, self.data
        self.mj.mj_collision(m, d)
        if d.ncon == 0:
            return None
        pairs = d.contact.geom[: d.ncon].copy()
        dist = d.contact.dist[: d.ncon]
        # put the scene geom (floor, table, object) of each pair first; robot-robot pairs sorted
        swap = np.isin(pairs[:, 1], self._scene_ids) | (~np.isin(pairs[:, 0], self._scene_ids)
                                                        & (pairs[:, 0] > pairs[:, 1]))
        pairs[swap] = pairs[swap][:, ::-1]
        first, other = pairs[:, 0], pairs[:, 1]
        bad = first == self.table_geom
        bad |= (first == self.floor_geom) & ~np.isin(other, self.foot_geoms)
        on_object = np.isin(first, self._object_ids)
        # the open hand is checked against the exact object shape instead (the stand-in is coarser)
        bad |= on_object & ~np.isin(other, self._hand_geoms) & (dist < -0.002)
        selfish = ~np.isin(first, self._scene_ids) & (dist < -SELF_PENETRATION)
        if selfish.any():
            selfish &= np.array([(int(a), int(b)) not in self.baseline_self_pairs for a, b in pairs])
        hit = np.flatnonzero(bad | selfish)
        if not len(hit):
            return None
        g1, g2 = (int(g) for g in pairs[hit[0]])
        name1, name2 = (m.body(m.geom_bodyid[g]).name for g in (g1, g2))
        if g1 == self.table_geom:
            return f"robot touches the table ({name2})"
        if g1 == self.floor_geom:
            return f"robot touches the floor ({name2})"
        if g1 in self._object_ids:
            return f"robot pushes into the object ({name2})"
        return f"self-collision {name1} / {name2}"

    def _self_pairs_at_rest(self) -> set[tuple[int, int]]:
        # Some neighbouring hulls (thumb and wrist) overlap in the model's own zero pose: not our doing.
        self.set_pose(np.array([0, 0, 5.0]), np.array([1.0, 0, 0, 0]), np.zeros(NUM_BODY_DOF))
        self.mj.mj_collision(self.model, self.data)
        return {(min(int(c.geom1), int(c.geom2)), max(int(c.geom1), int(c.geom2)))
                for c in self.data.contact[: self.data.ncon]}

    def _open_hand_points(self) -> np.ndarray:
        """Collision-mesh vertices of the open right hand (HAND_BODY and below), in the HAND_BODY frame
        relative to the palm point, thinned to a 4 mm grid."""
        m = self.model
        self.set_pose(np.zeros(3), np.array([1.0, 0, 0, 0]), np.zeros(NUM_BODY_DOF))
        pos, rot = self.hand_frame()
        pts = []
        for g in range(m.ngeom):
            body = int(m.geom_bodyid[g])
            if m.geom_type[g] != self.mj.mjtGeom.mjGEOM_MESH or not m.geom_contype[g]:
                continue
            if body != self.hand and not _is_descendant(m, body, self.hand):
                continue
            mesh = m.geom_dataid[g]
            v = m.mesh_vert[m.mesh_vertadr[mesh]: m.mesh_vertadr[mesh] + m.mesh_vertnum[mesh]]
            world = v @ self.data.geom_xmat[g].reshape(3, 3).T + self.data.geom_xpos[g]
            pts.append((world - pos) @ rot - self.palm)
        return np.unique(np.round(np.vstack(pts) / 0.004), axis=0) * 0.004

    # -- Jacobians
    def palm_jacobian(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        point, _ = self.palm_pose()
        self.mj.mj_jac(self.model, self.data, self.jacp, self.jacr, point, self.hand)
        idx = self.dadr[cols]
        return self.jacp[:, idx], self.jacr[:, idx]


def _is_descendant(m: Any, body: int, ancestor: int) -> bool:
    while body > 0:
        body = int(m.body_parentid[body])
        if body == ancestor:
            return True
    return False


@functools.lru_cache(maxsize=1)
def kinematics() -> Kinematics:
    return Kinematics()


def pitch_quat(pitch: float) -> np.ndarray:
    return np.array([np.cos(0.5 * pitch), 0.0, np.sin(0.5 * pitch), 0.0])


# ----------------------------------------------------------------------------- legs and balance


def set_legs(dof: np.ndarray, knee: float, hip: float, pitch: float) -> None:
    """Symmetric legs; the ankle pitch cancels pelvis, hip and knee pitch so the soles stay level.

    All pitch axes are parallel while hip roll/yaw and ankle roll are zero, and the G1's soles are
    level at the zero pose, so the sole's pitch is simply pitch + hip + knee + ankle.
    """
    dof[LEG] = 0.0
    for i in range(2):
        dof[HIP_PITCH[i]] = hip
        dof[KNEE[i]] = knee
        dof[ANKLE_PITCH[i]] = -(pitch + hip + knee)


def balance(kin: Kinematics, dof: np.ndarray, knee: float, pitch: float) -> np.ndarray:
    """Solve the hip pitch that puts the centre of mass COM_X_TARGET (+ COM_X_PER_KNEE * knee) ahead
    of the ankles.

    Leaning the shins (hip and ankle together) moves the whole body over the fixed feet, which is
    how a person balances a forward reach or a squat. Sets the legs in ``dof``; returns the pelvis
    position. Raises Reject if the ankle would leave its range.
    """
    def offset(hip: float) -> float:
        set_legs(dof, knee, hip, pitch)
        kin.place_on_floor(dof, pitch)
        return float(kin.com()[0]) - kin.foot_x - (COM_X_TARGET + COM_X_PER_KNEE * knee)

    h0, h1 = -0.5 * knee - pitch, -0.5 * knee - pitch - 0.05
    f0, f1 = offset(h0), offset(h1)
    for _ in range(12):
        if abs(f1) < 5e-4 or abs(f1 - f0) < 1e-9:
            break
        h0, h1, f0 = h1, h1 - f1 * (h1 - h0) / (f1 - f0), f1
        h1 = float(np.clip(h1, kin.lo[HIP_PITCH[0]], kin.hi[HIP_PITCH[0]]))
        f1 = offset(h1)
    set_legs(dof, knee, h1, pitch)
    ankle = ANKLE_PITCH[0]
    if not kin.lo[ankle] <= dof[ankle] <= kin.hi[ankle]:
        raise Reject(f"ankle pitch {dof[ankle]:.2f} out of range for knee {knee:.2f}, pelvis pitch {pitch:.2f}")
    return kin.place_on_floor(dof, pitch)


# ----------------------------------------------------------------------------- inverse kinematics


_EYE = {n: np.eye(n) for n in (3, 7, 10)}


def _dls(jac: np.ndarray, damping: float) -> np.ndarray:
    """Damped least-squares pseudo-inverse J^T (J J^T + lambda^2 I)^-1 of a 3-row Jacobian."""
    return jac.T @ np.linalg.inv(jac @ jac.T + damping**2 * _EYE[3])


def solve_ik(kin: Kinematics, dof: np.ndarray, root: np.ndarray, root_quat: np.ndarray, cols: np.ndarray,
             target_pos: np.ndarray, target_rot: np.ndarray, rest: np.ndarray, posture_gain: np.ndarray,
             iters: int = 150, tol: float = 2e-4, still: float = 1e-3) -> float:
    """Move ``dof[cols]`` so the palm point reaches ``target_pos``; returns the remaining distance.

    Task priority: palm position first, hand orientation in its null space, a pull towards ``rest``
    (per-joint ``posture_gain``) in what is left, so an unreachable orientation never costs position.
    """
    eye = _EYE[len(cols)]
    for _ in range(iters):
        kin.set_pose(root, root_quat, dof)
        pos, rot = kin.palm_pose()
        e_pos = target_pos - pos
        e_rot = _orientation_error(rot, target_rot)
        jp, jr = kin.palm_jacobian(cols)
        jp_inv = _dls(jp, 0.02)
        step = jp_inv @ e_pos
        null_p = eye - jp_inv @ jp
        jr_n = jr @ null_p
        jr_inv = _dls(jr_n, 0.1)
        step = step + jr_inv @ (e_rot - jr @ step)
        step = step + (null_p - jr_inv @ jr_n) @ (posture_gain * (rest - dof[cols]))
        scale = max(1.0, float(np.abs(step).max()) / 0.15)  # at most 0.15 rad per joint per iteration
        dof[cols] = np.clip(dof[cols] + step / scale, kin.lo[cols], kin.hi[cols])
        # converged on position and no longer moving (an unreachable orientation stops improving)
        if np.linalg.norm(e_pos) < tol and np.abs(step).max() < still:
            break
    kin.set_pose(root, root_quat, dof)
    return float(np.linalg.norm(target_pos - kin.palm_pose()[0]))


# ----------------------------------------------------------------------------- scene sampling


@dataclass
class Scene:
    """Everything random about one motion (drawn from the motion's own generator)."""

    ground: bool
    support_z: float  # table top, or 0 for the floor
    clearance: float  # m between the open hand and the support at the grasp (HAND_CLEARANCES)
    table_size: np.ndarray  # (3,) x depth, y width, thickness (zeros on the ground)
    table_center: np.ndarray  # (3,) z = top - thickness/2
    obj_pos: np.ndarray  # object centre at rest
    obj_yaw: float
    knee: float
    pitch: float
    hand_rot: np.ndarray  # target HAND_BODY orientation at the grasp
    lift: float  # m
    lift_speed: float  # peak m/s
    joint_speed: float  # peak rad/s of the fastest joint during the reach (how brisk the motion is)
    idle_s: float
    hand_speed: float  # peak m/s of the palm on its straight paths
    grip_frames: int
    total_s: float


def hand_orientation(yaw: float, roll: float, pitch: float) -> np.ndarray:
    """HAND_BODY orientation (columns: fingers, palm normal, thumb-side axis): fingers forward turned by
    ``yaw``, palm facing left (towards an object on the right hand's left), rolled palm-down by
    ``roll``, fingers tipped down by ``pitch``."""
    fingers = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    palm = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
    up = np.cross(fingers, palm)
    palm = np.cos(roll) * palm - np.sin(roll) * up
    up = np.cross(fingers, palm)
    fingers = np.cos(pitch) * fingers - np.sin(pitch) * up
    up = np.cross(fingers, palm)
    return np.stack([fingers, palm, up], axis=1)


def sample_scene(rng: np.random.Generator, shape: ObjectShape, ground: bool, kin: Kinematics) -> Scene:
    """Draw a scene, placing the object from where the palm should be (the G1's arm is short, so the
    reach is drawn first and the object and table are put around it). Raises Reject for a hand
    orientation that cannot hold the palm near this object."""
    half_h = 0.5 * shape.height
    yaw = float(rng.uniform(-0.6, 0.6))
    if ground:
        # a deep squat with the torso leaning in, and the palm coming down on top of the (tall) object:
        # the G1's arm does not reach lower with the feet flat
        support, size = 0.0, np.zeros(3)
        knee, pitch = rng.uniform(2.1, 2.28), rng.uniform(0.5, 0.6)
        rot = hand_orientation(rng.uniform(-0.1, 0.4), rng.uniform(1.1, 1.5), rng.uniform(-0.2, 0.2))
        palm_xy = np.array([rng.uniform(0.24, 0.34), rng.uniform(-0.26, -0.16)])
    else:
        support = float(rng.uniform(0.65, 0.85))
        size = np.array([rng.uniform(1.2, 1.8), rng.uniform(0.6, 0.9), rng.uniform(0.03, 0.05)])
        # lower tables need a bend of the knees (and some forward lean) to reach comfortably
        knee = float(np.clip(rng.uniform(0.05, 0.3) + 2.0 * (0.8 - support), 0.05, 0.8))
        pitch = rng.uniform(0.0, 0.12)
        rot = hand_orientation(rng.uniform(-0.2, 0.35), rng.uniform(0.0, 0.5), rng.uniform(0.0, 0.3))
        palm_xy = np.array([rng.uniform(0.20, 0.34), rng.uniform(-0.30, -0.14)])  # far ones need the waist
    obj_rot = _rot_z(yaw)
    center = np.array([0.0, 0.0, support + half_h])
    points = surface_points(shape) @ obj_rot.T + center
    for clearance in HAND_CLEARANCES:
        try:
            palm = palm_target(kin, shape, center, obj_rot, rot, support, clearance)
        except Reject:
            continue
        if palm_to_surface(shape, center, obj_rot, palm) <= MAX_PALM_DISTANCE:
            break
    else:
        raise Reject("no palm placement near the object for this hand orientation")
    obj = np.r_[palm_xy - palm[:2], center[2]]
    table_center = np.zeros(3)
    if not ground:
        # the near edge stays clear of the body (the hands rise in front of it); the object stands a few
        # cm behind it, which pushes the reach out further; the table centre is offset sideways
        near_edge = rng.uniform(*TABLE_EDGE_X)
        front = float((points[:, 0] - center[0]).min())
        obj[0] = max(obj[0], near_edge - front + rng.uniform(0.02, 0.06))
        lateral = rng.uniform(-0.5, 0.5) * (size[1] - 0.3)
        table_center = np.array([near_edge + 0.5 * size[0], obj[1] + lateral, support - 0.5 * size[2]])
    return Scene(
        ground=ground, support_z=support, clearance=clearance, table_size=size, table_center=table_center, obj_pos=obj, obj_yaw=yaw,
        knee=float(knee), pitch=float(pitch), hand_rot=rot,
        lift=float(rng.uniform(0.10, 0.25)), lift_speed=float(rng.uniform(0.25, 0.5)),
        joint_speed=float(rng.uniform(1.5, PLANNED_JOINT_SPEED)), idle_s=float(rng.uniform(0.15, 0.4)),
        hand_speed=float(rng.uniform(0.25, 0.5)), grip_frames=int(rng.integers(CLOSE_BEFORE_LIFT + 2, CLOSE_BEFORE_LIFT + 7)),
        total_s=float(rng.uniform(3.0, 5.0)),
    )


# ----------------------------------------------------------------------------- grasp geometry


def object_contains(shape: ObjectShape, local: np.ndarray, margin: float) -> np.ndarray:
    """Which points (object frame) lie inside the object grown by ``margin``."""
    x, y, z = np.asarray(local, np.float64).T
    if shape.cls == "box":
        return np.all(np.abs(local) < 0.5 * np.asarray(shape.size) + margin, axis=1)
    if shape.cls == "sphere":
        return np.linalg.norm(local, axis=1) < shape.size[0] + margin
    r_bottom, r_top = (shape.size[0], shape.size[0]) if shape.cls == "cylinder" else shape.size[:2]
    h = shape.height
    radius = r_bottom + (r_top - r_bottom) * np.clip(z / h + 0.5, 0.0, 1.0)
    return (np.abs(z) < 0.5 * h + margin) & (np.hypot(x, y) < radius + margin)


def palm_target(kin: Kinematics, shape: ObjectShape, obj_pos: np.ndarray, obj_rot: np.ndarray, rot: np.ndarray,
                support_z: float, clearance: float) -> np.ndarray:
    """Palm point for hand orientation ``rot``: palm face PALM_GAP from the object, open hand (thumb
    included) out of it, lowest hand point ``clearance`` above the support.

    A palm facing sideways sits at the height of the object's centre, or higher where the hand would
    reach down to the support; a palm facing down rests on top of the object. Along the fingers it
    starts centred on the object and moves back until the open thumb, which stands out 9 cm from the
    palm 2 cm behind the palm point, clears the object. Along the palm normal it stops PALM_GAP
    before the first surface point inside the palm's 8 x 8 cm face.
    """
    fingers, normal, up = rot[:, 0], rot[:, 1], rot[:, 2]
    rel = surface_points(shape) @ obj_rot.T
    back = float(-(rel @ fingers).min())
    hand = kin.hand_points @ rot.T  # open hand around the palm point, world axes
    palm_z = max(obj_pos[2], support_z + clearance - float(hand[:, 2].min()))
    for along in np.linspace(0.0, back + 0.02, 9):
        point = obj_pos - fingers * along
        if up[2] > 0.3:  # a palm facing the side is raised along its face; a palm facing down sits on top
            point = point + up * ((palm_z - point[2]) / up[2])
        window = rel - (point - obj_pos)  # surface points relative to the palm point
        inside = (np.abs(window @ fingers) < 0.04) & (np.abs(window @ up) < 0.04)
        depth = window @ normal  # along the palm normal, positive = in front of the palm
        touch = float(depth[inside].min()) if inside.any() else float(depth.min())
        for extra in (0.0, 0.003, 0.006, 0.01):  # the wrist or the finger roots may stand proud of the palm
            palm = point + normal * (touch - PALM_GAP - extra)
            if palm[2] + float(hand[:, 2].min()) < support_z + clearance - 1e-6:
                break  # the open hand would touch the support
            if not object_contains(shape, (palm + hand - obj_pos) @ obj_rot, HAND_OBJECT_MARGIN).any():
                return palm
    raise Reject("no palm placement keeps the open hand out of the object and off the support")


def hand_low_point(kin: Kinematics, rot: np.ndarray) -> float:
    """How far below the palm point the open hand reaches, for hand orientation ``rot``."""
    return float(-(kin.hand_points @ rot.T)[:, 2].min())


def palm_to_surface(shape: ObjectShape, obj_pos: np.ndarray, obj_rot: np.ndarray, palm: np.ndarray) -> float:
    return float(np.linalg.norm(surface_points(shape) @ obj_rot.T + obj_pos - palm, axis=1).min())


# ----------------------------------------------------------------------------- one motion


@dataclass
class Motion:
    key: str
    shape: ObjectShape
    scene: Scene
    root_pos: np.ndarray  # (T,3)
    root_quat: np.ndarray  # (T,4) wxyz
    dof: np.ndarray  # (T,29)
    obj_pos: np.ndarray  # (T,3)
    obj_quat: np.ndarray  # (T,4) wxyz
    grasp_frame: int  # the palm is at the object from here on
    lift_frame: int  # the object moves with the hand from here on
    contacts: dict[int, np.ndarray]
    attempts: int
    grasp_error: float


class Reject(Exception):
    """This draw of the scene cannot be done well; draw again."""


def _start_pose(kin: Kinematics, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    dof = np.zeros(NUM_BODY_DOF)
    dof[LEFT_ARM] = LEFT_ARM_RELAXED
    dof[RIGHT_ARM] = RIGHT_ARM_START
    root = balance(kin, dof, min(scene.knee, 0.3) if not scene.ground else 0.1, 0.0)
    return dof, root


def _grasp_pose(kin: Kinematics, scene: Scene, shape: ObjectShape, obj_rot: np.ndarray, start: np.ndarray):
    """Whole-body grasp keyframe: alternate balance (legs) and IK (waist + right arm), then place the
    palm again for the orientation the wrist actually reached."""
    quat = pitch_quat(scene.pitch)
    rest = np.r_[np.zeros(3), RIGHT_ARM_REST]
    # the waist moves the centre of mass: lean on it only where the arm alone falls short
    gain = np.r_[0.3, 0.6, 0.15, np.full(7, 0.05)]
    rot = scene.hand_rot
    best: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
    for seed_arm in (RIGHT_ARM_REST, RIGHT_ARM_REACH):
        dof = start.copy()
        dof[RIGHT_ARM] = seed_arm
        target = palm_target(kin, shape, scene.obj_pos, obj_rot, rot, scene.support_z, scene.clearance)
        root = balance(kin, dof, scene.knee, scene.pitch)
        for _ in range(3):
            solve_ik(kin, dof, root, quat, ARM_WAIST_COLS, target, rot, rest, gain)
            root = balance(kin, dof, scene.knee, scene.pitch)
            kin.set_pose(root, quat, dof)
            reached = kin.palm_pose()[1]  # the wrist may not reach the asked orientation: re-place the palm
            target = palm_target(kin, shape, scene.obj_pos, obj_rot, reached, scene.support_z, scene.clearance)
        err = solve_ik(kin, dof, root, quat, ARM_COLS, target, reached, rest[3:], gain[3:])
        if best is None or err < best[0]:
            best = (err, dof.copy(), root, target)
        if err < IK_TOLERANCE:
            break
    err, dof, root, target = best
    if err > IK_TOLERANCE:
        raise Reject(f"grasp IK residual {err * 100:.1f} cm")
    return dof, root, target, err


def _track(kin: Kinematics, dof: np.ndarray, root: np.ndarray, quat: np.ndarray, start: np.ndarray,
           end: np.ndarray, rot: np.ndarray, n: int, rot_end: np.ndarray | None = None,
           waist: bool = False) -> np.ndarray:
    """Per-frame IK along a minimum-jerk straight line of the palm point, the hand turning from
    ``rot`` to ``rot_end``; the right arm moves, and the waist too if ``waist``. (n,29) joint rows."""
    rows = np.empty((n, NUM_BODY_DOF))
    cols = ARM_WAIST_COLS if waist else ARM_COLS
    # No posture pull here: it would keep the joints moving in the null space after the palm has
    # stopped (and jerk the first frame); minimum-norm steps stop when the target stops.
    rest, gain = dof[cols].copy(), np.zeros(len(cols))
    turn = np.zeros(3) if rot_end is None else quat_to_rotvec(mat_to_quat(rot_end @ rot.T))
    for i, s in enumerate(min_jerk(n)):
        target_rot = _rotvec_to_mat(s * turn) @ rot
        # The same few Newton steps every frame, no early stop: the joints then follow the target like
        # a smooth filter (an early stop lets small orientation errors pile up and jump later).
        err = solve_ik(kin, dof, root, quat, cols, start + s * (end - start), target_rot, rest, gain,
                       iters=TRACK_IK_STEPS, tol=0.0)
        if err > TRACK_TOLERANCE:
            raise Reject(f"hand path not reachable ({err * 100:.1f} cm off)")
        rows[i] = dof
    return rows


def _arm_ik(kin: Kinematics, dof: np.ndarray, root: np.ndarray, quat: np.ndarray, target: np.ndarray,
            rot: np.ndarray, what: str) -> np.ndarray:
    out = dof.copy()
    if solve_ik(kin, out, root, quat, ARM_COLS, target, rot, np.asarray(RIGHT_ARM_REST), np.full(7, 0.02)) > TRACK_TOLERANCE:
        raise Reject(f"{what} not reachable")
    return out


def _rotvec_to_mat(rotvec: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3)
    k = rotvec / angle
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


def _ramp(n: int, start: float, end: float) -> np.ndarray:
    """Minimum-jerk 0 -> 1 over the fraction [start, end] of n frames, flat outside it."""
    tau = np.clip((np.linspace(0.0, 1.0, n) - start) / (end - start), 0.0, 1.0)
    return tau**3 * (10.0 - 15.0 * tau + 6.0 * tau**2)


def _reach(start: np.ndarray, via: np.ndarray, end: np.ndarray, n: int) -> np.ndarray:
    """The whole-body reach from the start pose to the pre-grasp pose ``end``, (n,29) joints.

    The right arm blends two overlapping minimum-jerk joint paths, start -> ``via`` (hand raised in
    front of the body) and ``via`` -> end, so the hand rises before it goes out over the table
    without stopping in between. Legs and waist (the squat and the lean, see :func:`_body_ramp`)
    start later, so the hanging hand is not carried under the table's edge before it rises.
    """
    rows = start + _body_ramp(n)[:, None] * (end - start)
    first, second = _ramp(n, 0.0, REACH_BLEND[1]), _ramp(n, REACH_BLEND[0], 1.0)
    arm = start[RIGHT_ARM] + first[:, None] * (via[RIGHT_ARM] - start[RIGHT_ARM])
    rows[:, RIGHT_ARM] = arm + second[:, None] * (end[RIGHT_ARM] - via[RIGHT_ARM])
    return rows


def _body_ramp(n: int) -> np.ndarray:
    """Progress 0 -> 1 of legs, waist and pelvis pitch over a reach of n frames."""
    return _ramp(n, REACH_BODY_START, 1.0)


def _frames(seconds: float) -> int:
    return max(2, int(round(seconds * FPS)))


def _paced(make: Callable[[int], np.ndarray], n_min: int, before: np.ndarray, speed: float,
           n_guess: int | None = None) -> np.ndarray:
    """``make(n)`` frames of a path, n timed so the fastest joint peaks near ``speed`` rad/s, but
    never fewer than ``n_min`` frames (IK paths are not uniformly fast: a near-straight elbow or a
    wrist holding the hand's orientation speeds up)."""
    n = max(n_min, n_guess or n_min)
    for _ in range(5):
        rows = make(n)
        peak = joint_speed(np.vstack([before[None], rows]))
        want = max(n_min, int(np.ceil(n * peak / speed)))
        if peak <= PLANNED_JOINT_SPEED and (want == n or want == n - 1):
            return rows
        if want > 8 * max(n_min, n_guess or 0):
            break  # not getting slower with more frames: the path jumps somewhere
        n = want
    if peak > PLANNED_JOINT_SPEED:
        raise Reject(f"path too fast ({peak:.2f} rad/s)")
    return rows


@dataclass
class Keyframes:
    """The poses a motion passes through; all but ``start`` share the grasp pose's legs and waist."""

    start: np.ndarray  # (29,) standing, arms relaxed
    via: np.ndarray  # hand raised in front of the body, above the table top
    pre: np.ndarray  # palm PRE_GRASP_BACK away from the grasp point and PRE_GRASP_UP above it
    grasp: np.ndarray  # palm at the grasp point
    root: np.ndarray  # pelvis position of the grasp pose
    pre_palm: np.ndarray  # palm positions of pre and grasp
    grasp_palm: np.ndarray
    hand_rot: np.ndarray  # HAND_BODY orientation of the grasp pose (kept on the palm paths)
    error: float  # IK residual at the grasp


def _keyframes(kin: Kinematics, scene: Scene, shape: ObjectShape, obj_rot: np.ndarray) -> Keyframes:
    start, _ = _start_pose(kin, scene)
    grasp, root, target, err = _grasp_pose(kin, scene, shape, obj_rot, start)
    quat = pitch_quat(scene.pitch)
    kin.set_pose(root, quat, grasp)
    _, rot = kin.palm_pose()  # the orientation the arm reached: kept along the palm paths
    # pre-grasp: back off along the palm normal and up, so the palm comes in from the side (or above)
    pre_palm = target - rot[:, 1] * PRE_GRASP_BACK + np.array([0.0, 0.0, PRE_GRASP_UP])
    pre = _arm_ik(kin, grasp, root, quat, pre_palm, rot, "pre-grasp")
    via = _via_pose(kin, scene, start, pre, pre_palm, root, rot)
    return Keyframes(start=start, via=via, pre=pre, grasp=grasp, root=root, pre_palm=pre_palm, grasp_palm=target,
                     hand_rot=rot, error=err)


def _via_pose(kin: Kinematics, scene: Scene, start: np.ndarray, pre: np.ndarray, pre_palm: np.ndarray,
              root: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Where the right arm passes on its way out: the hand rises in front of the body, the whole hand
    VIA_ABOVE_TOP over the table top, then goes out to the pre-grasp.

    A table close to the body leaves little room to raise a hand: the first candidate whose reach
    stays clear of the table (checked on a coarse reach) wins: straight to the pre-grasp, then palms
    ever further back (up to the fingertips VIA_EDGE_GAP short of the table's near edge), first
    with the grasp's hand orientation, then with the fingers turned up as a person raises a hand
    close to a table.
    """
    if scene.ground:
        return pre
    quat = pitch_quat(scene.pitch)
    edge = scene.table_center[0] - 0.5 * scene.table_size[0]
    candidates: list[tuple[np.ndarray, np.ndarray | None]] = [(pre, None)]
    for hand_rot in (rot, _pitch_up(rot, VIA_FINGERS_UP)):
        ahead = float((kin.hand_points @ hand_rot.T)[:, 0].max())  # fingertips ahead of the palm point
        high = max(pre_palm[2], scene.support_z + hand_low_point(kin, hand_rot) + VIA_ABOVE_TOP)
        candidates += [(np.array([min(pre_palm[0], edge - VIA_EDGE_GAP - share * ahead), pre_palm[1], high]), hand_rot)
                       for share in VIA_AHEAD_SHARES]
    for target, hand_rot in candidates:
        if hand_rot is None:
            via = target
        else:
            try:
                via = _arm_ik(kin, pre, root, quat, target, hand_rot, "via point")
            except Reject:
                continue
        if _reach_is_clear(kin, start, via, pre, scene.pitch):
            return via
    raise Reject("no way for the hand to rise past the table's near edge")


def _pitch_up(rot: np.ndarray, angle: float) -> np.ndarray:
    """``rot`` turned fingers-up by ``angle`` about the horizontal axis across the fingers."""
    fingers = rot[:, 0] * [1.0, 1.0, 0.0]
    axis = np.cross(fingers / max(np.linalg.norm(fingers), 1e-9), [0.0, 0.0, 1.0])
    return _rotvec_to_mat(axis * angle) @ rot


def _reach_is_clear(kin: Kinematics, start: np.ndarray, via: np.ndarray, pre: np.ndarray, pitch: float) -> bool:
    """A coarse look at the reach: does any sampled pose touch something it should not?"""
    for q, p in zip(_reach(start, via, pre, VIA_CHECK_FRAMES), pitch * _body_ramp(VIA_CHECK_FRAMES), strict=True):
        kin.place_on_floor(q, p)
        if kin.contact_problem() is not None:
            return False
    return True


def _lift_rotation(rot: np.ndarray, lift: float) -> np.ndarray:
    """The hand's orientation at the top of the lift: pitched up by up to LIFT_TILT, as when the
    forearm rises and the wrist does not fully compensate (shorter, more natural lifts)."""
    return _pitch_up(rot, LIFT_TILT * lift / 0.25)


def _phases(kin: Kinematics, scene: Scene, keys: Keyframes) -> dict[str, np.ndarray]:
    """Joint rows of each phase: idle, reach (whole body, joint space), approach and lift (palm on
    straight lines, per-frame IK), grip and hold (still)."""
    quat = pitch_quat(scene.pitch)

    def palm_path(begin: np.ndarray, a: np.ndarray, b: np.ndarray, min_s: float, speed: float,
                  **kw: Any) -> np.ndarray:
        # timed by the palm's speed; stretched only where a joint would pass PLANNED_JOINT_SPEED
        n = _frames(max(min_s, 1.875 * float(np.linalg.norm(b - a)) / speed))
        return _paced(lambda k: _track(kin, begin.copy(), keys.root, quat, a, b, keys.hand_rot, k, **kw), n, begin,
                      PLANNED_JOINT_SPEED)

    legs = float(np.abs(keys.pre - keys.start)[: RIGHT_ARM.start].max())
    arm = max(float(np.abs(keys.via - keys.start)[RIGHT_ARM].max()), float(np.abs(keys.pre - keys.via)[RIGHT_ARM].max()))
    guess = _frames(1.875 * max(legs / (1.0 - REACH_BODY_START), arm / REACH_BLEND[1]) / scene.joint_speed)
    reach = _paced(lambda n: _reach(keys.start, keys.via, keys.pre, n), _frames(1.4 if scene.ground else 1.0),
                   keys.start, scene.joint_speed, guess)
    approach = palm_path(reach[-1], keys.pre_palm, keys.grasp_palm, 0.4, scene.hand_speed)
    grasp = approach[-1]
    kin.set_pose(keys.root, quat, grasp)
    palm0, _ = kin.palm_pose()
    # the palm goes straight up; the waist helps (straightening up is how people lift)
    lift = palm_path(grasp, palm0, palm0 + [0.0, 0.0, scene.lift], 0.5, scene.lift_speed,
                     rot_end=_lift_rotation(keys.hand_rot, scene.lift), waist=True)
    phases = {"idle": np.repeat(keys.start[None], _frames(scene.idle_s), axis=0), "reach": reach,
              "approach": approach, "grip": np.repeat(grasp[None], scene.grip_frames, axis=0), "lift": lift}
    used = sum(len(v) for v in phases.values())
    phases["hold"] = np.repeat(lift[-1][None], max(_frames(0.3), _frames(scene.total_s) - used), axis=0)
    return phases


def build_motion(key: str, shape: ObjectShape, scene: Scene) -> Motion:
    """Keyframes by IK, joined by minimum-jerk joint paths and straight palm paths, then checked
    frame by frame; raises Reject when the scene cannot be done well."""
    kin = kinematics()
    kin.place_table(None if scene.ground else scene.table_center, scene.table_size)
    obj_rot = _rot_z(scene.obj_yaw)
    kin.place_object(shape, scene.obj_pos, obj_rot)
    keys = _keyframes(kin, scene, shape, obj_rot)
    phases = _phases(kin, scene, keys)
    dof = np.vstack(list(phases.values()))
    before_reach, reach = len(phases["idle"]), len(phases["reach"])
    pitch = np.r_[np.zeros(before_reach), scene.pitch * _body_ramp(reach),
                  np.full(len(dof) - before_reach - reach, scene.pitch)]
    grasp_frame = before_reach + reach + len(phases["approach"]) - 1
    lift_frame = grasp_frame + 1 + len(phases["grip"])
    root_pos, root_quat, obj_pos, obj_quat, contacts = _rollout(kin, dof, pitch, shape, scene, obj_rot,
                                                                surface_points(shape), grasp_frame, lift_frame)
    return Motion(key=key, shape=shape, scene=scene, root_pos=root_pos, root_quat=root_quat, dof=dof,
                  obj_pos=obj_pos, obj_quat=obj_quat, grasp_frame=grasp_frame, lift_frame=lift_frame,
                  contacts=contacts, attempts=0, grasp_error=keys.error)


def _rollout(kin: Kinematics, dof: np.ndarray, pitch: np.ndarray, shape: ObjectShape, scene: Scene,
             obj_rot: np.ndarray, points_obj: np.ndarray, grasp_frame: int, lift_frame: int):
    """Pelvis and object poses for every frame, with the physical checks; raises Reject."""
    t = len(dof)
    root_pos, root_quat = np.empty((t, 3)), np.empty((t, 4))
    obj_pos, obj_quat = np.empty((t, 3)), np.empty((t, 4))
    contacts: dict[int, np.ndarray] = {}
    rel_rot = rel_pos = nearest = None
    for f in range(t):
        root = kin.place_on_floor(dof[f], pitch[f])
        root_pos[f], root_quat[f] = root, pitch_quat(pitch[f])
        com = kin.com()
        com_x = com[0] - kin.foot_x
        if not (COM_X_RANGE[0] <= com_x <= COM_X_RANGE[1]) or abs(com[1]) > COM_Y_LIMIT:
            raise Reject(f"centre of mass off the feet at frame {f} ({com_x:+.3f}, {com[1]:+.3f})")
        hand_pos, hand_rot = kin.hand_frame()
        if f == lift_frame:
            rel_rot = hand_rot.T @ obj_rot
            rel_pos = hand_rot.T @ (scene.obj_pos - hand_pos)
        if rel_rot is None:
            rot, pos = obj_rot, scene.obj_pos
        else:
            rot, pos = hand_rot @ rel_rot, hand_pos + hand_rot @ rel_pos
        obj_pos[f], obj_quat[f] = pos, mat_to_quat(rot)
        kin.place_object(shape, pos, rot)
        if (problem := kin.contact_problem()) is not None:
            raise Reject(f"{problem} at frame {f}")
        if f <= lift_frame:  # later the hand holds the object as it did at the lift frame
            palm, _ = kin.palm_pose()
            hand = ((palm + kin.hand_points @ hand_rot.T) - pos) @ rot
            if object_contains(shape, hand, -0.002).any():
                raise Reject(f"the open hand pushes into the object at frame {f}")
        if f >= grasp_frame:
            palm, _ = kin.palm_pose()
            world = points_obj @ rot.T + pos
            if nearest is None:
                dist = np.linalg.norm(world - palm, axis=1)
                if dist.min() > MAX_PALM_DISTANCE:
                    raise Reject(f"palm {dist.min() * 100:.1f} cm from the object at the grasp")
                nearest = np.argsort(dist, kind="stable")[:8]  # the patch the palm touches, fixed on the object
            contacts[f] = world[nearest].astype(np.float32)
    return root_pos, root_quat, obj_pos, obj_quat, contacts


def joint_speed(dof: np.ndarray) -> float:
    return float(np.abs(np.diff(dof, axis=0)).max() * FPS) if len(dof) > 1 else 0.0


def untrackable_indices(seed: int, motions: int, fraction: float) -> list[int]:
    """The motions that get a retargeting defect: about ``fraction`` of them (at least one when
    fraction > 0 and motions >= 4), drawn from the seed by a generator of their own."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"--untrackable must be in [0, 1] (got {fraction})")
    if fraction == 0.0:
        return []
    count = int(round(fraction * motions))
    if motions >= 4:
        count = max(1, count)
    rng = np.random.default_rng([seed, 5, motions])
    return sorted(int(i) for i in rng.choice(motions, size=min(count, motions), replace=False))


def add_foot_lift(motion: Motion) -> None:
    """Lift the left foot once the legs are still (after the reach) and keep it up to the end
    (defect ``foot_lift``).

    Only the left leg's joints change: the pelvis, the right foot, the arms and the object are as
    before, so the centre of mass stays between the feet, ~10 cm to the left of the right sole: a single
    stance that no controller can hold. Joint speeds stay under PLANNED_JOINT_SPEED; frames (still
    holding the object) are added at the end where the hold phase is too short.
    """
    kin = kinematics()
    hip, knee, ankle = _IDX["left_hip_pitch_joint"], _IDX["left_knee_joint"], _IDX["left_ankle_pitch_joint"]
    delta = np.zeros(NUM_BODY_DOF)
    delta[hip], delta[knee] = FOOT_LIFT["hip"], FOOT_LIFT["knee"]
    delta[ankle] = -(FOOT_LIFT["hip"] + FOOT_LIFT["knee"])
    ramp_n = _frames(1.875 * float(np.abs(delta).max()) / FOOT_LIFT_SPEED)
    hold_n = _frames(FOOT_LIFT_HOLD_S)
    t = len(motion.dof)
    legs_still = t - 1  # the legs are still from here on (the arm approaches and lifts after the reach)
    while legs_still > 0 and np.array_equal(motion.dof[legs_still - 1, LEG], motion.dof[t - 1, LEG]):
        legs_still -= 1
    start = max(legs_still, t - ramp_n - hold_n)
    extra = start + ramp_n + hold_n - t
    if extra > 0:
        for name in ("root_pos", "root_quat", "dof", "obj_pos", "obj_quat"):
            arr = getattr(motion, name)
            setattr(motion, name, np.vstack([arr, np.repeat(arr[-1:], extra, axis=0)]))
        last = motion.contacts[t - 1]
        for f in range(t, t + extra):
            motion.contacts[f] = last.copy()
    profile = np.r_[np.zeros(start), min_jerk(ramp_n), np.ones(len(motion.dof) - start - ramp_n)]
    dof = motion.dof + profile[:, None] * delta[None]
    motion.dof = np.clip(dof, np.minimum(kin.lo, motion.dof), np.maximum(kin.hi, motion.dof))


def make_motion(name: str, seed: int, index: int, scene_kind: str, defect: str = "") -> Motion:
    """Motion ``index`` of the library: the same (seed, index, scene) always gives the same motion.

    Classes take turns (GROUND_CLASSES on the floor); each class has INSTANCES_PER_CLASS table objects
    and as many floor objects.
    Draws that fail a check are replaced by the next draw of the same generator (deterministic).
    """
    rng = np.random.default_rng([seed, 2, index])
    ground = scene_kind == "ground" or (scene_kind == "mixed" and rng.random() < 1 / 3)
    classes = GROUND_CLASSES if ground else CLASSES
    cls = classes[index % len(classes)]
    instance = (index // len(classes)) % INSTANCES_PER_CLASS + (INSTANCES_PER_CLASS if ground else 0)
    shape = object_instance(seed, cls, instance)
    key = f"{name}__{shape.name}__{index:03d}"
    kin = kinematics()
    reasons: list[str] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            scene = sample_scene(rng, shape, ground, kin)
            motion = build_motion(key, shape, scene)
            if joint_speed(motion.dof) > MAX_JOINT_SPEED:
                raise Reject(f"joint speed {joint_speed(motion.dof):.2f} rad/s")
        except Reject as exc:
            reasons.append(str(exc))
            continue
        motion.attempts = attempt
        if defect == "foot_lift":
            add_foot_lift(motion)
        elif defect:
            raise ConfigError(f"unknown defect {defect!r}")
        return motion
    raise GrailError(f"could not build motion {key} in {MAX_ATTEMPTS} draws (last: {'; '.join(reasons[-3:])})",
                     fix="this is a bug in demo-data; try another --seed meanwhile")


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
