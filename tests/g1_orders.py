"""G1 joint orders written out by hand from contracts §1.8, for tests only.

The product keeps its own tables in grail_cluster/tools/data/g1.py. Test data built with those tables would
agree with any mistake in them, so the generators in tests/ use these instead, and
tests/test_g1_orders.py checks the product's tables against them. Every list below is typed from the
contract text, not computed from another list, so that each one can catch an error in the others.
"""

from __future__ import annotations

# MuJoCo order (motion-lib `dof`): L leg, R leg, waist, L arm, R arm.
MUJOCO_JOINTS: tuple[str, ...] = (
    "left_hip_pitch_joint", "left_hip_roll_joint", "left_hip_yaw_joint", "left_knee_joint",
    "left_ankle_pitch_joint", "left_ankle_roll_joint",
    "right_hip_pitch_joint", "right_hip_roll_joint", "right_hip_yaw_joint", "right_knee_joint",
    "right_ankle_pitch_joint", "right_ankle_roll_joint",
    "waist_yaw_joint", "waist_roll_joint", "waist_pitch_joint",
    "left_shoulder_pitch_joint", "left_shoulder_roll_joint", "left_shoulder_yaw_joint", "left_elbow_joint",
    "left_wrist_roll_joint", "left_wrist_pitch_joint", "left_wrist_yaw_joint",
    "right_shoulder_pitch_joint", "right_shoulder_roll_joint", "right_shoulder_yaw_joint", "right_elbow_joint",
    "right_wrist_roll_joint", "right_wrist_pitch_joint", "right_wrist_yaw_joint",
)

# IsaacLab order (breadth-first over the articulation, simulator `joint_pos`), as §1.8 lists it.
ISAACLAB_JOINTS: tuple[str, ...] = (
    "left_hip_pitch_joint", "right_hip_pitch_joint", "waist_yaw_joint",
    "left_hip_roll_joint", "right_hip_roll_joint", "waist_roll_joint",
    "left_hip_yaw_joint", "right_hip_yaw_joint", "waist_pitch_joint",
    "left_knee_joint", "right_knee_joint",
    "left_shoulder_pitch_joint", "right_shoulder_pitch_joint",
    "left_ankle_pitch_joint", "right_ankle_pitch_joint",
    "left_shoulder_roll_joint", "right_shoulder_roll_joint",
    "left_ankle_roll_joint", "right_ankle_roll_joint",
    "left_shoulder_yaw_joint", "right_shoulder_yaw_joint",
    "left_elbow_joint", "right_elbow_joint",
    "left_wrist_roll_joint", "right_wrist_roll_joint",
    "left_wrist_pitch_joint", "right_wrist_pitch_joint",
    "left_wrist_yaw_joint", "right_wrist_yaw_joint",
)

# The two permutation lists, verbatim from §1.8: mujoco = isaac[:, ISAACLAB_TO_MUJOCO_DOF] and
# isaac = mujoco[:, MUJOCO_TO_ISAACLAB_DOF].
ISAACLAB_TO_MUJOCO_DOF: tuple[int, ...] = (
    0, 3, 6, 9, 13, 17, 1, 4, 7, 10, 14, 18, 2, 5, 8, 11, 15, 19, 21, 23, 25, 27, 12, 16, 20, 22, 24, 26, 28)
MUJOCO_TO_ISAACLAB_DOF: tuple[int, ...] = (
    0, 6, 12, 1, 7, 13, 2, 8, 14, 3, 9, 15, 22, 4, 10, 16, 23, 5, 11, 17, 24, 18, 25, 19, 26, 20, 27, 21, 28)

# Hand, 14 DOF (`G1_HAND_JOINTS`): left seven, then right seven.
HAND_JOINTS: tuple[str, ...] = (
    "left_hand_index_0_joint", "left_hand_index_1_joint", "left_hand_middle_0_joint", "left_hand_middle_1_joint",
    "left_hand_thumb_0_joint", "left_hand_thumb_1_joint", "left_hand_thumb_2_joint",
    "right_hand_index_0_joint", "right_hand_index_1_joint", "right_hand_middle_0_joint", "right_hand_middle_1_joint",
    "right_hand_thumb_0_joint", "right_hand_thumb_1_joint", "right_hand_thumb_2_joint",
)


def mujoco_to_isaaclab_by_name() -> list[int]:
    """isaac = mujoco[:, this], found by joint name (a reading that does not use the permutation lists)."""
    return [MUJOCO_JOINTS.index(name) for name in ISAACLAB_JOINTS]


def isaaclab_to_mujoco_by_name() -> list[int]:
    """mujoco = isaac[:, this], found by joint name."""
    return [ISAACLAB_JOINTS.index(name) for name in MUJOCO_JOINTS]
