"""Motion synthesis for ``demo-data``: keyframes by IK joined by minimum-jerk paths, checked frame by frame;
and the retargeting defects of ``--untrackable``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from grail_cluster.core.errors import ConfigError, GrailError
from grail_cluster.tools.data.demo_geometry import (
    ARM_COLS,
    ARM_WAIST_COLS,
    CLASSES,
    COM_X_RANGE,
    COM_Y_LIMIT,
    FOOT_LIFT,
    FOOT_LIFT_HOLD_S,
    FOOT_LIFT_SPEED,
    FPS,
    GROUND_CLASSES,
    IK_TOLERANCE,
    INSTANCES_PER_CLASS,
    JOINT_INDEX,
    LEFT_ARM,
    LEFT_ARM_RELAXED,
    LEG,
    LIFT_TILT,
    MAX_ATTEMPTS,
    MAX_JOINT_SPEED,
    MAX_PALM_DISTANCE,
    PLANNED_JOINT_SPEED,
    PRE_GRASP_BACK,
    PRE_GRASP_UP,
    REACH_BLEND,
    REACH_BODY_START,
    RIGHT_ARM,
    RIGHT_ARM_REACH,
    RIGHT_ARM_REST,
    RIGHT_ARM_START,
    TRACK_IK_STEPS,
    TRACK_TOLERANCE,
    VIA_ABOVE_TOP,
    VIA_AHEAD_SHARES,
    VIA_CHECK_FRAMES,
    VIA_EDGE_GAP,
    VIA_FINGERS_UP,
    ObjectShape,
    Reject,
    mat_to_quat,
    min_jerk,
    object_instance,
    quat_to_rotvec,
    rot_z,
    surface_points,
)
from grail_cluster.tools.data.demo_kinematics import Kinematics, balance, kinematics, pitch_quat, solve_ik
from grail_cluster.tools.data.demo_scene import (
    Scene,
    hand_low_point,
    object_contains,
    palm_target,
    sample_scene,
)
from grail_cluster.tools.data.g1 import NUM_BODY_DOF

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
    obj_rot = rot_z(scene.obj_yaw)
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
    hip, knee, ankle = JOINT_INDEX["left_hip_pitch_joint"], JOINT_INDEX["left_knee_joint"], JOINT_INDEX["left_ankle_pitch_joint"]
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

