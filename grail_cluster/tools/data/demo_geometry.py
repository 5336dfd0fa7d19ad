"""The demo library's numbers (robot poses, tolerances, timings), rotation helpers and object shapes.

Every module of ``demo-data`` builds on these; see ``demo_library`` for what the motions are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from grail_cluster.tools.data.g1 import G1_MUJOCO_JOINTS

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
JOINT_INDEX = {name: i for i, name in enumerate(G1_MUJOCO_JOINTS)}
HIP_PITCH = (JOINT_INDEX["left_hip_pitch_joint"], JOINT_INDEX["right_hip_pitch_joint"])
KNEE = (JOINT_INDEX["left_knee_joint"], JOINT_INDEX["right_knee_joint"])
ANKLE_PITCH = (JOINT_INDEX["left_ankle_pitch_joint"], JOINT_INDEX["right_ankle_pitch_joint"])
ARM_COLS = np.arange(22, 29)
ARM_WAIST_COLS = np.r_[12:15, 22:29]



# ----------------------------------------------------------------------------- small rotation helpers


def rot_z(angle: float) -> np.ndarray:
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


def orientation_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
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



class Reject(Exception):
    """This draw of the scene cannot be done well; draw again."""

