"""The CPU reference tracker's physics, metrics and SONIC-schema outputs, on hand-made motions whose
outcome is known from physics: a G1 standing still is tracked to the end, a reference that jumps the
pelvis 0.5 m up cannot be, an object left on a table stays there."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import joblib
import mujoco
import numpy as np
import pytest

from tests.libgen import _box_mesh, write_usd_mesh

pytest.importorskip("torch")
from grail_cluster.sonic.reference import metrics as M  # noqa: E402
from grail_cluster.sonic.reference import scene as S  # noqa: E402
from grail_cluster.sonic.reference.env import Terminations, TrackingEnv, prepare  # noqa: E402
from grail_cluster.sonic.reference.evaluate import rollout, write_shard  # noqa: E402
from grail_cluster.sonic.reference.motion import load_motion  # noqa: E402
from grail_cluster.tools.data.g1 import G1_ISAACLAB_TO_MUJOCO_DOF, dof_axis  # noqa: E402

FPS = 30


def _stand_qpos() -> np.ndarray:
    model = mujoco.MjModel.from_xml_path(str(S.g1_scene_path()))
    return model.key_qpos[0].copy()


def _stand_dof() -> np.ndarray:
    model = mujoco.MjModel.from_xml_path(str(S.g1_scene_path()))
    idx = S.indices(model)
    return model.key_qpos[0][idx.body_qpos].copy()


def write_motion(root: Path, key: str, seconds: float = 2.0, jump_at: float | None = None,
                 object_on_table: bool = True) -> None:
    """A standing G1 (the model's keyframe), optionally with an impossible 0.5 m pelvis jump."""
    T = int(seconds * FPS)
    q = _stand_qpos()
    root_pos = np.tile(q[:3], (T, 1)).astype(np.float32)
    if jump_at is not None:
        root_pos[int(jump_at * FPS):, 2] += 0.5
    dof = np.tile(_stand_dof(), (T, 1)).astype(np.float32)
    pose_aa = np.zeros((T, 30, 3), np.float32)
    pose_aa[:, 1:] = dof[:, :, None] * dof_axis()[None]
    robot = {"root_trans_offset": root_pos, "pose_aa": pose_aa, "dof": dof,
             "root_rot": np.tile([1, 0, 0, 0], (T, 1)).astype(np.float32), "smpl_joints": np.zeros((T, 24, 3), np.float32),
             "fps": FPS, "hand_action_left": -np.ones(T, np.float32), "hand_action_right": -np.ones(T, np.float32)}
    table_top = 0.75
    obj_pos = np.tile([0.62, -0.1, table_top + 0.05], (T, 1)).astype(np.float32)[:, None]
    for sub in ("robot", "objects", "meta", "object_usd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    joblib.dump({key: robot}, root / "robot" / f"{key}.pkl")
    if object_on_table:
        joblib.dump({key: {"root_pos": obj_pos, "root_quat": np.tile([1, 0, 0, 0], (T, 1, 1)).astype(np.float32),
                           "fps": float(FPS), "scale": 1.0}}, root / "objects" / f"{key}.pkl")
        v, quads = _box_mesh(0.06, 0.06, 0.1)
        write_usd_mesh(root / "object_usd" / f"{key}.usda", v, quads)
    joblib.dump({"object_name": "box", "table_pos": [0.85, 0.0, table_top - 0.02], "table_quat": [1, 0, 0, 0],
                 "table_size": np.array([0.5, 0.8, 0.04], np.float32)}, root / "meta" / f"{key}.pkl")


def _load(root: Path, key: str):
    usd = root / "object_usd" / f"{key}.usda"
    return load_motion(key, root / "robot" / f"{key}.pkl", root / "objects" / f"{key}.pkl", root / "meta" / f"{key}.pkl",
                       usd if usd.exists() else None)


def _zero_policy(obs: np.ndarray) -> np.ndarray:
    return np.zeros((len(obs), 29))


@pytest.fixture(scope="module")
def stand_lib(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reflib")
    write_motion(root, "stand_box_0", seconds=2.0)
    write_motion(root, "jump_box_0", seconds=2.0, jump_at=1.0)
    return root


def test_motion_is_resampled_to_50hz_from_pose_aa(stand_lib):
    m = _load(stand_lib, "stand_box_0")
    assert m.frames == int((60 - 1) / FPS * 50) + 1
    np.testing.assert_allclose(m.root_quat[:, 0], 1.0, atol=1e-6)  # identity rotation from pose_aa row 0
    assert m.has_object and m.scene.table_pos is not None and m.object_radius > 0.05


def test_standing_is_tracked_to_the_end_and_object_stays_on_table(stand_lib):
    prep = prepare(_load(stand_lib, "stand_box_0"))
    row = rollout([prep], _zero_policy, Terminations(), 0.25)[0]
    assert not row["terminated"] and row["progress"] == 1.0
    assert row["mpjpe_g"] < 30.0  # mm: PD on the keyframe holds the pose
    assert row["obj_pos_error"] < 0.01  # the box rests where the reference says
    assert row["grasp_help_frames"] == 0  # the hand never closes


def test_impossible_jump_terminates_on_the_anchor_term_at_the_jump(stand_lib):
    prep = prepare(_load(stand_lib, "jump_box_0"))
    row = rollout([prep], _zero_policy, Terminations(), 0.25)[0]
    assert row["terminated"] and row["terminate_reason"] == "anchor_pos"
    assert row["progress"] == pytest.approx(0.5, abs=0.03)


def test_weld_holds_the_object_relative_to_the_hand(stand_lib):
    prep = prepare(_load(stand_lib, "stand_box_0"))
    prep.motion.hand_closed[:, 1] = True  # the reference keeps the right hand closed
    env = TrackingEnv(prep, Terminations(), 0.25, np.random.default_rng(0))
    env.reset(0)
    d, idx = env.data, env.idx
    d.qpos[idx.object_qpos:idx.object_qpos + 3] = d.xpos[idx.hand_body] + [0.1, 0.0, 0.0]
    mujoco.mj_forward(env.model, d)
    env._set_weld(True)
    before = d.xpos[idx.object_body] - d.xpos[idx.hand_body]
    for _ in range(20):
        env.step(np.zeros(29))
    after = d.xpos[idx.object_body] - d.xpos[idx.hand_body]
    assert np.linalg.norm(after - before) < 0.03  # held (a soft constraint: a few mm of sag)
    assert env.grasp_frames == 20
    prep.motion.hand_closed[:, 1] = False  # opening the hand releases the object
    env.step(np.zeros(29))
    assert not env.welded and env.data.eq_active[idx.weld] == 0


def test_body_metrics_against_known_offsets():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(10, len(S.TRACKED_BODIES), 3))
    same = M.body_metrics(ref, ref)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in same.values())
    shifted = M.body_metrics(ref + [0.0, 0.0, 0.02], ref)
    assert shifted["mpjpe_g"] == pytest.approx(20.0)
    assert shifted["mpjpe_l"] == pytest.approx(0.0, abs=1e-9)
    assert shifted["mpjpe_pa"] == pytest.approx(0.0, abs=1e-6)
    rot = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    assert M.body_metrics(ref @ rot.T * 1.1, ref)["mpjpe_pa"] == pytest.approx(0.0, abs=1e-6)


def test_shard_outputs_have_sonics_schema(stand_lib, tmp_path):
    preps = [prepare(_load(stand_lib, k)) for k in ("jump_box_0", "stand_box_0")]
    rows = rollout(preps, _zero_policy, Terminations(), 0.25, record_trajectories=True)
    result = write_shard(rows, tmp_path, tmp_path)
    data = json.loads((tmp_path / "metrics_eval.json").read_text())
    table = data["eval/all_metrics_dict"]
    assert table["motion_keys"] == ["jump_box_0", "stand_box_0"]
    assert table["terminated"] == [True, False] and data["failed_keys"] == ["jump_box_0"]
    assert data["eval/success/success_rate"] == 0.5 == result["eval/success/success_rate"]
    for name in ("mpjpe_g", "mpjpe_l", "mpjpe_pa", "accel_dist", "vel_dist", "mpjpe_l_legs", "mpjpe_g_foot",
                 "obj_pos_error", "obj_ori_error", "progress", "terminate_reason"):
        assert len(table[name]) == 2, name
    with open(tmp_path / "stand_box_0.trajectory.pkl", "rb") as fh:
        traj = pickle.load(fh)
    assert traj["quat_format"] == "wxyz" and traj["fps"] == 25.0 and traj["num_joints"] == 43
    F = traj["total_frames"]
    assert traj["dof_pos"].shape == (F, 43) and F == len(traj["root_pos_w"]) == len(traj["object_pos_w"])
    # dof_pos is IsaacLab order: reordering it to MuJoCo order gives back the standing pose.
    mujoco_order = traj["dof_pos"][:, :29][:, list(G1_ISAACLAB_TO_MUJOCO_DOF)]
    np.testing.assert_allclose(mujoco_order[0], _stand_dof(), atol=1e-5)
    assert F == pytest.approx(preps[1].motion.frames / 2, abs=1)


def test_continuous_hand_actions_read_by_their_own_rule(tmp_path):
    """GRAIL's upstream export writes the mean |hand joint| (>= 0): `> 0` would close the hand on every
    frame of a slightly bent hand; it is closed only past half the closed primitive's mean |joint|."""
    import joblib
    import numpy as np

    from grail_cluster.core.motion_checks import CLOSED_MEAN_ABS
    from sonic.reference.motion import load_motion

    T = 60
    right = np.where(np.arange(T) >= 40, CLOSED_MEAN_ABS, 0.05).astype(np.float32)  # bent, then closed
    robot = {"dof": np.zeros((T, 29), np.float32), "root_trans_offset": np.tile([0, 0, 0.79], (T, 1)).astype(np.float32),
             "pose_aa": np.zeros((T, 30, 3), np.float32), "root_rot": np.tile([1, 0, 0, 0], (T, 1)).astype(np.float32),
             "fps": 30, "hand_action_left": np.full(T, 0.05, np.float32), "hand_action_right": right}
    path = tmp_path / "m.pkl"
    joblib.dump({"m": robot}, path)
    motion = load_motion("m", path, None, None, None)
    closed = motion.hand_closed
    assert not closed[:, 0].any(), "a slightly bent left hand read as closed"
    n = len(closed)
    assert not closed[: int(0.6 * n), 1].any() and closed[-5:, 1].all()
    robot["hand_action_right"] = np.where(np.arange(T) >= 40, 1.0, -1.0).astype(np.float32)
    robot["hand_action_left"] = np.full(T, -1.0, np.float32)
    joblib.dump({"m": robot}, path)
    discrete = load_motion("m", path, None, None, None).hand_closed
    assert (discrete == closed).all()
