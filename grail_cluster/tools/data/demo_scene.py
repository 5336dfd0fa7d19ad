"""One motion's random scene (object, support, reach) and the grasp geometry around the palm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grail_cluster.tools.data.demo_geometry import (
    CLOSE_BEFORE_LIFT,
    HAND_CLEARANCES,
    HAND_OBJECT_MARGIN,
    MAX_PALM_DISTANCE,
    PALM_GAP,
    PLANNED_JOINT_SPEED,
    TABLE_EDGE_X,
    ObjectShape,
    Reject,
    rot_z,
    surface_points,
)
from grail_cluster.tools.data.demo_kinematics import Kinematics

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
    obj_rot = rot_z(yaw)
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

