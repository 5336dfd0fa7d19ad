"""The G1's kinematics for ``demo-data``: forward kinematics, contacts, balance over flat feet, and IK."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from grail_cluster.tools.data.demo_geometry import (
    ANKLE_PITCH,
    COM_X_PER_KNEE,
    COM_X_TARGET,
    CONTACT_MARGIN,
    HAND_BODY,
    HIP_PITCH,
    JOINT_MARGIN,
    KNEE,
    LEG,
    PALM_OFFSET,
    SELF_PENETRATION,
    TABLE_QUAT,
    ObjectShape,
    Reject,
    mat_to_quat,
    orientation_error,
)
from grail_cluster.tools.data.g1 import G1_MUJOCO_JOINTS, NUM_BODY_DOF, g1_mjcf_path

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
        e_rot = orientation_error(rot, target_rot)
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

