"""The tracking task in MuJoCo: one env per (motion, MjData), PD targets = reference joints + residual.

Termination follows SONIC's terms (contracts §4.1): anchor (pelvis) |dz|, anchor orientation error
squared, ankle/wrist |dz|, and in training the object's deviation. Reaching the motion's last frame
is a time-out, not a failure.

Grasp help: while the reference closes the right hand and the palm is within reach of the object,
a weld holds the object to the hand (the G1's fingers in MuJoCo cannot hold a 0.1 kg object by
friction alone at this control rate). Every frame it is on is counted and reported in the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from grail_cluster.sonic.reference import scene as S
from grail_cluster.sonic.reference.motion import ReferenceMotion, add_reference_kinematics
from grail_cluster.tools.data.g1 import G1_MUJOCO_TO_ISAACLAB_DOF

OBS_DIM = 29 * 3 + 3 + 3 + 3 + 1 + 3 + 2 + 1 + 3
ACT_DIM = 29
GRASP_REACH = 0.05  # palm-to-object-surface distance (m) at which a closed hand may hold the object
TRAJECTORY_EVERY = 2  # a trajectory frame every 2 policy steps: 25 fps (contracts §4.3)


@dataclass
class Terminations:
    anchor_pos_z: float | None = 0.25
    anchor_ori: float | None = 1.0  # rad^2
    ee_z: float | None = 0.25
    object_pos_deviation: float | None = None

    @classmethod
    def from_config(cls, cfg) -> Terminations:
        return cls(**{k: (None if cfg.get(k) is None else float(cfg.get(k))) for k in cls.__dataclass_fields__})


VELOCITY_AXES = ("x", "y", "z", "roll", "pitch", "yaw")


@dataclass
class StartVelocity:
    """The motion command's randomisation of an episode's initial velocities (contracts §4.1 keys):
    a uniform draw per root axis (linear x, y, z; angular roll, pitch, yaw) and per joint, added to
    the reference's (at rest here). All ranges [0,0], as HOI eval sets them: every episode starts
    exactly on the reference."""

    root: tuple[tuple[float, float], ...] = ((0.0, 0.0),) * 6
    joint: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def from_config(cls, motion_cfg) -> StartVelocity:
        """From ``manager_env.commands.motion``; absent keys are not randomised."""
        vr = motion_cfg.get("velocity_range") or {}
        root = tuple(_range(vr.get(axis), f"velocity_range.{axis}") for axis in VELOCITY_AXES)
        return cls(root, _range(motion_cfg.get("joint_velocity_range"), "joint_velocity_range"))

    @property
    def zero(self) -> bool:
        return all(lo == hi == 0.0 for lo, hi in (*self.root, self.joint))

    def sample(self, rng: np.random.Generator, num_joints: int) -> tuple[np.ndarray, np.ndarray]:
        root = np.array([rng.uniform(lo, hi) if hi > lo else lo for lo, hi in self.root])
        lo, hi = self.joint
        joint = rng.uniform(lo, hi, num_joints) if hi > lo else np.full(num_joints, lo)
        return root, joint


def _range(value, key: str) -> tuple[float, float]:
    if value is None:
        return 0.0, 0.0
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        from grail_cluster.core.errors import ConfigError

        raise ConfigError(f"manager_env.commands.motion.{key} must be a [low, high] pair, got {value!r}",
                          fix=f"++manager_env.commands.motion.{key}=[0,0]") from None
    if lo > hi:
        from grail_cluster.core.errors import ConfigError

        raise ConfigError(f"manager_env.commands.motion.{key}: low {lo} > high {hi}",
                          fix=f"++manager_env.commands.motion.{key}=[{hi},{lo}]")
    return lo, hi


def _quat_err_angle(q: np.ndarray, q_ref: np.ndarray) -> float:
    d = abs(float(np.dot(q, q_ref)))
    return 2.0 * float(np.arccos(min(1.0, d)))


def _rot_inv(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    qi = np.empty(4)
    mujoco.mju_negQuat(qi, q)
    out = np.empty(3)
    mujoco.mju_rotVecQuat(out, v, qi)
    return out


@dataclass
class Prepared:
    """A motion's compiled scene and reference, built once and shared by the envs that track it."""

    motion: ReferenceMotion
    model: mujoco.MjModel
    idx: S.Indices


def prepare(motion: ReferenceMotion) -> Prepared:
    model = S.build_model(motion.scene)
    idx = S.indices(model)
    add_reference_kinematics(motion, model, idx)
    return Prepared(motion, model, idx)


@dataclass
class Record:
    """What an evaluation rollout keeps: 50 Hz body positions and 25 fps trajectory frames."""

    body_pos: list = field(default_factory=list)
    object_pos: list = field(default_factory=list)
    object_quat: list = field(default_factory=list)
    traj: dict = field(default_factory=lambda: {k: [] for k in ("dof_pos", "root_pos_w", "root_quat_w",
                                                                 "object_pos_w", "object_quat_w")})


class TrackingEnv:
    def __init__(self, prep: Prepared, terms: Terminations, action_scale: float, rng: np.random.Generator):
        self.prep = prep
        self.m = prep.motion
        # Envs of the same motion share its model; the weld's relative pose is per env, so each env
        # writes its own into eq_data before it steps (deep-copying a model costs ~0.4 s).
        self.model = prep.model
        self.weld_pose = np.zeros(7)
        self.data = mujoco.MjData(self.model)
        self.idx = prep.idx
        self.terms = terms
        self.action_scale = action_scale
        self.rng = rng
        self.t = 0
        self.prev_action = np.zeros(ACT_DIM)
        self.welded = False
        self.grasp_frames = 0
        self.record: Record | None = None

    # -- episode ---------------------------------------------------------------------------------
    def reset(self, start: int = 0, record: bool = False, velocity: StartVelocity | None = None) -> None:
        m, d, idx = self.m, self.data, self.idx
        mujoco.mj_resetData(self.model, d)
        self.t = int(start)
        S.set_pose(self.model, d, idx, m.root_pos[self.t], m.root_quat[self.t], m.dof[self.t],
                   object_pos=m.object_pos[self.t] if m.has_object else None,
                   object_quat_wxyz=m.object_quat[self.t] if m.has_object else None)
        if velocity is not None and not velocity.zero:
            root, joint = velocity.sample(self.rng, len(d.qvel[idx.body_qvel]))
            d.qvel[:6] = root  # free joint: linear (world), then angular (body frame)
            d.qvel[idx.body_qvel] = joint
        d.ctrl[idx.body_ctrl] = m.dof[self.t]
        d.ctrl[idx.hand_ctrl] = S.hand_targets(self.model, idx, *m.hand_closed[self.t])
        self._set_weld(False)
        self.prev_action[:] = 0.0
        self.grasp_frames = 0
        mujoco.mj_forward(self.model, d)
        self.record = Record() if record else None
        if record:
            self._record(trajectory=True)

    def _set_weld(self, on: bool) -> None:
        if self.idx.weld is None or on == self.welded:
            return
        d, idx = self.data, self.idx
        if on:  # hold the object where it is now: relative pose of the hand in the object's frame
            op, oq = d.xpos[idx.object_body], d.xquat[idx.object_body]
            qi = np.empty(4)
            mujoco.mju_negQuat(qi, oq)
            rel_q = np.empty(4)
            mujoco.mju_mulQuat(rel_q, qi, d.xquat[idx.hand_body])
            self.weld_pose[:3] = _rot_inv(oq, d.xpos[idx.hand_body] - op)
            self.weld_pose[3:] = rel_q
        d.eq_active[idx.weld] = int(on)
        self.welded = on

    def _palm_near_object(self) -> bool:
        d, idx = self.data, self.idx
        palm = d.xpos[idx.hand_body] + d.xmat[idx.hand_body].reshape(3, 3) @ S.PALM_OFFSET
        return bool(np.linalg.norm(palm - d.xpos[idx.object_body]) < self.m.object_radius + GRASP_REACH)

    # -- observation -----------------------------------------------------------------------------
    def observe(self) -> np.ndarray:
        m, d, idx, t = self.m, self.data, self.idx, self.t
        nxt = min(t + 1, m.frames - 1)
        q = d.qpos[idx.body_qpos]
        quat = d.qpos[3:7]
        obj_rel = np.zeros(3)
        if m.has_object:
            obj_rel = _rot_inv(quat, d.xpos[idx.object_body] - d.xpos[idx.hand_body])
        ori_err = np.empty(3)
        mujoco.mju_subQuat(ori_err, m.root_quat[nxt], quat)
        return np.concatenate([
            q - m.dof[nxt], m.dof[nxt], d.qvel[idx.body_qvel] * 0.05,
            _rot_inv(quat, np.array([0.0, 0.0, -1.0])), d.qvel[3:6] * 0.25, _rot_inv(quat, d.qvel[:3]),
            [d.qpos[2] - m.root_pos[nxt, 2]], ori_err,
            m.hand_closed[nxt].astype(float) * 2 - 1, [t / max(1, m.frames - 1)], obj_rel,
        ])

    # -- step ------------------------------------------------------------------------------------
    def step(self, action: np.ndarray) -> tuple[float, bool, bool, str]:
        """Advance one policy step. Returns (reward, terminated, timed_out, termination term)."""
        m, d, idx, model = self.m, self.data, self.idx, self.model
        nxt = self.t + 1
        action = np.clip(action, -4.0, 4.0)
        target = m.dof[nxt] + self.action_scale * action
        lo, hi = model.actuator_ctrlrange[idx.body_ctrl].T
        d.ctrl[idx.body_ctrl] = np.clip(target, lo, hi)
        left, right = m.hand_closed[nxt]
        d.ctrl[idx.hand_ctrl] = S.hand_targets(model, idx, left, right)
        if m.has_object:
            if right and not self.welded and self._palm_near_object():
                self._set_weld(True)
            elif not right and self.welded:
                self._set_weld(False)
        if self.welded:
            model.eq_data[idx.weld, :3] = 0.0
            model.eq_data[idx.weld, 3:10] = self.weld_pose
        for _ in range(S.DECIMATION):
            mujoco.mj_step(model, d)
        self.t = nxt
        self.grasp_frames += int(self.welded)

        body = d.xpos[idx.tracked]
        ref_body = m.body_pos[nxt]
        dz = abs(d.qpos[2] - m.root_pos[nxt, 2])
        ori = _quat_err_angle(d.qpos[3:7], m.root_quat[nxt])
        ee_dz = np.abs(d.xpos[idx.end_effectors, 2] - m.ee_z[nxt])
        obj_err = float(np.linalg.norm(d.xpos[idx.object_body] - m.object_pos[nxt])) if m.has_object else 0.0
        reason = ""
        tr = self.terms
        if tr.anchor_pos_z is not None and dz > tr.anchor_pos_z:
            reason = "anchor_pos"
        elif tr.anchor_ori is not None and ori * ori > tr.anchor_ori:
            reason = "anchor_ori"
        elif tr.ee_z is not None and ee_dz.max() > tr.ee_z:
            reason = "ee_body_pos"
        elif tr.object_pos_deviation is not None and m.has_object and obj_err > tr.object_pos_deviation:
            reason = "object_pos_deviation"

        q_err = float(np.mean((d.qpos[idx.body_qpos] - m.dof[nxt]) ** 2))
        body_err = float(np.mean(np.sum((body - ref_body) ** 2, axis=1)))
        reward = (0.3 * np.exp(-q_err / 0.05) + 0.3 * np.exp(-body_err / 0.02) + 0.15 * np.exp(-ori * ori / 0.2)
                  + 0.15 * np.exp(-dz * dz / 0.005) + 0.1 * (np.exp(-obj_err ** 2 / 0.01) if m.has_object else 1.0)
                  - 0.005 * float(np.sum((action - self.prev_action) ** 2)))
        self.prev_action = action
        if self.record is not None:
            self._record(trajectory=self.t % TRAJECTORY_EVERY == 0)
        terminated = bool(reason)
        return (0.0 if terminated else float(reward)), terminated, (not terminated and nxt >= m.frames - 1), reason

    # -- recording -------------------------------------------------------------------------------
    def _record(self, trajectory: bool) -> None:
        d, idx, rec = self.data, self.idx, self.record
        rec.body_pos.append(d.xpos[idx.tracked].copy())
        if self.m.has_object:
            rec.object_pos.append(d.xpos[idx.object_body].copy())
            rec.object_quat.append(d.xquat[idx.object_body].copy())
        if not trajectory:
            return
        body = d.qpos[idx.body_qpos][list(G1_MUJOCO_TO_ISAACLAB_DOF)]
        rec.traj["dof_pos"].append(np.concatenate([body, d.qpos[idx.hand_qpos]]).astype(np.float32))
        rec.traj["root_pos_w"].append(d.qpos[:3].astype(np.float32))
        rec.traj["root_quat_w"].append(d.qpos[3:7].astype(np.float32))
        if self.m.has_object:
            rec.traj["object_pos_w"].append(d.xpos[idx.object_body].astype(np.float32))
            rec.traj["object_quat_w"].append(d.xquat[idx.object_body].astype(np.float32))
