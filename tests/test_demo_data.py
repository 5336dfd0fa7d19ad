"""``grail-cluster demo-data``: the procedural pick-up library, checked by independent means.

The motions are re-played by forward kinematics in MuJoCo with the plain 29-DOF ``g1.xml`` (the
generator works on ``g1_with_hands.xml``), objects are rebuilt from the written USD meshes, and the
grasp timing is read back from the files (``_ha`` contact frames, hand actions, object motion).
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import mujoco
import numpy as np
import pytest

from grail_cluster.cli.main import main
from grail_cluster.core.library import scan_library
from grail_cluster.tools.data.bps import read_usd_mesh, sample_surface
from grail_cluster.tools.data.demo_geometry import HAND_BODY, PALM_OFFSET
from grail_cluster.tools.data.demo_library import generate_library
from grail_cluster.tools.data.g1 import G1_MUJOCO_JOINTS, g1_mjcf_path

FPS = 30
NAME = "demo_pickup"


# ----------------------------------------------------------------------------- fixtures and helpers


UNTRACKABLE: dict[str, str] = {}  # key -> defect, filled by the libs fixture from the generator's summary


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> dict[str, Path]:
    """A table library (4 motions), a floor library (2 motions) and a table library of 8 motions with
    --untrackable 0.25, each as <out>/demo_pickup[_ha]."""
    out = tmp_path_factory.mktemp("demo")
    generate_library(out / "table", motions=4, seed=0, scene="table")
    generate_library(out / "ground", motions=2, seed=3, scene="ground")
    summary = generate_library(out / "defects", motions=8, seed=0, scene="table", untrackable=0.25)
    UNTRACKABLE.clear()
    UNTRACKABLE.update(summary["defects"])
    assert sorted(summary["untrackable_keys"]) == sorted(UNTRACKABLE) and len(UNTRACKABLE) == 2
    return {"table": out / "table", "ground": out / "ground", "defects": out / "defects"}


def _sensible(libs) -> list[dict]:
    """The motions without a retargeting defect (all of them but the defects library's chosen ones)."""
    return [m for m in _all(libs) if not _defect(m)]


def _defect(m: dict) -> str | None:
    """The generator's defect of a motion (keys repeat across seeds, so only in the defects library)."""
    return UNTRACKABLE.get(m["key"]) if m["lib"] == "defects" else None


@pytest.fixture(scope="module")
def g1():
    """The plain G1 (29 body joints, no hands) for forward kinematics."""
    model = mujoco.MjModel.from_xml_path(str(g1_mjcf_path()))
    names = [model.joint(j).name for j in range(1, model.njnt)]
    assert names == list(G1_MUJOCO_JOINTS), "g1.xml joint order is the MuJoCo dof order"
    return model, mujoco.MjData(model)


def _inner(path: Path) -> dict:
    data = joblib.load(path)
    assert isinstance(data, dict) and list(data) == [path.stem], "single-key dict keyed by the motion key"
    return data[path.stem]


def _motions(root: Path) -> list[dict]:
    """Everything written for each motion of <root>/demo_pickup and <root>/demo_pickup_ha."""
    plain, ha = root / NAME, root / f"{NAME}_ha"
    out = []
    for robot in sorted((plain / "robot").glob("*.pkl")):
        key = robot.stem
        verts, tris = read_usd_mesh(plain / "object_usd" / f"{key}.usd")
        out.append({
            "key": key,
            "lib": root.name,
            "robot": _inner(robot),
            "robot_ha": _inner(ha / "robot" / f"{key}.pkl"),
            "objects": _inner(plain / "objects" / f"{key}.pkl"),
            "objects_ha": _inner(ha / "objects" / f"{key}.pkl"),
            "meta": joblib.load(plain / "meta" / f"{key}.pkl"),
            "meta_ha": joblib.load(ha / "meta" / f"{key}.pkl"),
            "verts": verts,
            "surface": np.vstack([verts, sample_surface(verts, tris, 3000, seed=1)]),
        })
    return out


def _all(libs) -> list[dict]:
    return _motions(libs["table"]) + _motions(libs["ground"]) + _motions(libs["defects"])


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, np.asarray(q, np.float64))
    return mat.reshape(3, 3)


def _replay(g1, robot: dict):
    """Yield (model, data) posed at each frame from root_trans_offset, root_rot (wxyz) and dof."""
    model, data = g1
    for pos, quat, dof in zip(robot["root_trans_offset"], robot["root_rot"], robot["dof"], strict=True):
        data.qpos[:3] = pos
        data.qpos[3:7] = quat / np.linalg.norm(quat)
        data.qpos[7:36] = dof
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        yield model, data


def _soles(model) -> np.ndarray:
    """The sole contact spheres (the small spheres under both ankle_roll_links)."""
    feet = {model.body(n).id for n in ("left_ankle_roll_link", "right_ankle_roll_link")}
    return np.array([g for g in range(model.ngeom) if model.geom_bodyid[g] in feet
                     and model.geom_type[g] == mujoco.mjtGeom.mjGEOM_SPHERE])


def _lift_frame(m: dict) -> int:
    """The process step keeps contact frames from the lift frame on (§1.3)."""
    return min(m["objects_ha"]["contact_points_right_hand"])


def _object_pose(m: dict, f: int) -> tuple[np.ndarray, np.ndarray]:
    return m["objects"]["root_pos"][f, 0].astype(np.float64), _quat_to_mat(m["objects"]["root_quat"][f, 0])


def _support_top(m: dict) -> float:
    meta = m["meta"]
    return float(meta["table_pos"][2] + 0.5 * meta["table_size"][2]) if "table_pos" in meta else 0.0


# ----------------------------------------------------------------------------- layout and formats


def test_layout_and_formats(libs):
    for root in libs.values():
        plain, ha = root / NAME, root / f"{NAME}_ha"
        assert sorted(p.name for p in plain.iterdir()) == ["bps", "meta", "object_usd", "objects", "robot"]
        assert sorted(p.name for p in ha.iterdir()) == ["meta", "objects", "robot"]
        keys = sorted(p.stem for p in (plain / "robot").glob("*.pkl"))
        for sub, lib, suffix in (("objects", plain, ".pkl"), ("meta", plain, ".pkl"), ("object_usd", plain, ".usd"),
                                 ("robot", ha, ".pkl"), ("objects", ha, ".pkl"), ("meta", ha, ".pkl")):
            assert sorted(p.stem for p in (lib / sub).glob(f"*{suffix}")) == keys, f"{lib.name}/{sub}"
        assert sorted(p.stem for p in (plain / "bps").glob("*.npy")) == ["_basis", *keys]
        assert not list(root.glob(".demo-data.tmp-*")), "temp dir left behind"

    axis = None
    for m in _all(libs):
        r, ha = m["robot"], m["robot_ha"]
        t = len(r["dof"])
        assert 3 * FPS <= t <= 7 * FPS
        assert m["key"].startswith(f"{NAME}__{m['objects']['object_name']}__")
        for key, shape in (("root_trans_offset", (t, 3)), ("root_rot", (t, 4)), ("dof", (t, 29)),
                           ("pose_aa", (t, 30, 3)), ("smpl_joints", (t, 24, 3))):
            assert r[key].shape == shape and r[key].dtype == np.float32, key
        assert r["fps"] == FPS and not r["smpl_joints"].any()
        assert "hand_action_left" not in r and "hand_action_right" not in r
        for key in ("root_trans_offset", "root_rot", "dof", "pose_aa"):
            np.testing.assert_array_equal(ha[key], r[key])
        # wxyz: pose_aa row 0 is the same rotation as a rotation vector
        for q, aa in zip(r["root_rot"], r["pose_aa"][:, 0], strict=True):
            ref = np.zeros(4)
            mujoco.mju_axisAngle2Quat(ref, aa / max(np.linalg.norm(aa), 1e-12), np.linalg.norm(aa))
            assert abs(abs(float(np.dot(ref, q))) - 1.0) < 1e-5
        if axis is None:
            model = mujoco.MjModel.from_xml_path(str(g1_mjcf_path()))
            axis = np.array([model.joint(n).axis for n in G1_MUJOCO_JOINTS])
        np.testing.assert_allclose(r["pose_aa"][:, 1:], r["dof"][:, :, None] * axis[None], atol=1e-6)

        o = m["objects"]
        assert o["root_pos"].shape == (t, 1, 3) and o["root_quat"].shape == (t, 1, 4)
        assert o["root_pos"].dtype == o["root_quat"].dtype == np.float32
        assert o["fps"] == FPS and o["scale"] == 1.0 and o["contact_points_left_hand"] == {}
        for pts in o["contact_points_right_hand"].values():
            assert pts.dtype == np.float32 and pts.ndim == 2 and pts.shape[1] == 3
        assert set(m["objects_ha"]["contact_points_right_hand"]) < set(o["contact_points_right_hand"])

        meta = m["meta"]
        assert meta["object_name"] == o["object_name"] and meta["scene_scale"] == 1.0 and meta["smpl_height"] == 1.66
        if "table_pos" in meta:
            assert list(meta["table_quat"]) == [1.0, 0.0, 0.0, 0.0] and len(meta["table_pos"]) == 3
            assert meta["table_size"].dtype == np.float32 and meta["table_size"].shape == (3,)
            assert 0.65 <= _support_top(m) <= 0.85
    assert all("table_pos" not in m["meta"] for m in _motions(libs["ground"]))
    assert all("table_pos" in m["meta"] for m in _motions(libs["table"]) + _motions(libs["defects"]))


# ----------------------------------------------------------------------------- physics


def test_feet_flat_and_planted(libs, g1):
    for m in _sensible(libs):
        soles = []
        for model, data in _replay(g1, m["robot"]):
            geoms = _soles(model)
            soles.append(data.geom_xpos[geoms] - [0.0, 0.0, model.geom_size[geoms[0], 0]])
        soles = np.array(soles)  # (T, 8, 3) lowest points of the sole spheres
        assert np.abs(soles[..., 2]).max() < 0.015, f"{m['key']}: a sole leaves the floor"
        slide = np.linalg.norm(soles[..., :2] - soles[:1, :, :2], axis=-1).max()
        assert slide < 0.02, f"{m['key']}: feet slide {slide:.3f} m"


def test_joint_limits_speeds_and_smoothness(libs, g1):
    model, _ = g1
    ranges = np.array([model.joint(n).range for n in G1_MUJOCO_JOINTS])
    for m in _all(libs):
        dof = m["robot"]["dof"].astype(np.float64)
        assert (dof >= ranges[:, 0] - 1e-6).all() and (dof <= ranges[:, 1] + 1e-6).all(), m["key"]
        vel = np.diff(dof, axis=0) * FPS
        acc = np.diff(dof, 2, axis=0) * FPS**2
        assert np.abs(vel).max() < 2.0, f"{m['key']}: {np.abs(vel).max():.2f} rad/s"
        assert np.abs(acc).max() < 40.0, f"{m['key']}: a joint jumps ({np.abs(acc).max():.1f} rad/s^2)"
        root = m["robot"]["root_trans_offset"].astype(np.float64)
        assert np.abs(np.diff(root, 2, axis=0) * FPS**2).max() < 5.0, "the pelvis moves smoothly"
        assert np.abs(dof[0] - dof[1]).max() == 0.0, "the motion starts at rest"
        assert np.abs(dof[-1] - dof[-2]).max() == 0.0, "and ends holding still"


def test_centre_of_mass_over_the_feet(libs, g1):
    for m in _sensible(libs):
        for f, (model, data) in enumerate(_replay(g1, m["robot"])):
            soles = data.geom_xpos[_soles(model)]
            com = data.subtree_com[model.body("pelvis").id]
            lo, hi = soles[:, :2].min(axis=0) + 0.02, soles[:, :2].max(axis=0) - 0.02
            assert (lo <= com[:2]).all() and (com[:2] <= hi).all(), f"{m['key']} frame {f}: COM {com[:2]}"


def test_robot_stays_out_of_the_table(libs, g1):
    for m in _motions(libs["table"]) + _motions(libs["defects"]):
        meta = m["meta"]
        center, half = np.asarray(meta["table_pos"], np.float64), 0.5 * meta["table_size"].astype(np.float64)
        for f, (model, data) in enumerate(_replay(g1, m["robot"])):
            inside = np.all(np.abs(data.xpos[1:] - center) < half + [0.0, 0.0, 0.01], axis=1)
            assert not inside.any(), f"{m['key']} frame {f}: {model.body(int(np.argmax(inside)) + 1).name}"


def test_object_rests_then_moves_with_the_palm(libs, g1):
    for m in _all(libs):
        lift = _lift_frame(m)
        t = len(m["robot"]["dof"])
        right = m["robot_ha"]["hand_action_right"]
        # §1.2 default rule: right hand open until (lift frame - 10), then closed; left hand open
        np.testing.assert_array_equal(right, np.where(np.arange(t) >= lift - 10, 1.0, -1.0).astype(np.float32))
        np.testing.assert_array_equal(m["robot_ha"]["hand_action_left"], np.full(t, -1.0, np.float32))
        assert set(m["objects_ha"]["contact_points_right_hand"]) == set(range(lift, t))

        top = _support_top(m)
        pos0, rot0 = _object_pose(m, 0)
        for f in range(lift + 1):
            pos, rot = _object_pose(m, f)
            assert np.abs(pos - pos0).max() < 1e-5 and np.abs(rot - rot0).max() < 1e-5, "static before the lift"
        bottom = float((m["verts"] @ rot0.T + pos0)[:, 2].min())
        assert abs(bottom - top) < 0.002, f"{m['key']}: object bottom {bottom:.4f} vs support {top:.4f}"
        end_pos, end_rot = _object_pose(m, t - 1)
        # the palm rises 10-25 cm; the object, tilting a little in the hand, rises about as much
        assert 0.09 <= end_pos[2] - pos0[2] <= 0.27, f"{m['key']}: lifted {end_pos[2] - pos0[2]:.3f} m"
        assert float((m["verts"] @ end_rot.T + end_pos)[:, 2].min()) - top > 0.08, "clear of the support"

        # From the lift frame on the palm point is fixed on the object, next to its surface.
        grasp = None
        for f, (model, data) in enumerate(_replay(g1, m["robot"])):
            if f < lift:
                continue
            hand = model.body(HAND_BODY).id
            palm = data.xpos[hand] + data.xmat[hand].reshape(3, 3) @ np.asarray(PALM_OFFSET)
            pos, rot = _object_pose(m, f)
            surface = m["surface"] @ rot.T + pos
            if grasp is None:  # the grasp point: the object's surface point nearest the palm at the lift
                grasp = m["surface"][np.argmin(np.linalg.norm(surface - palm, axis=1))]
            gap = np.linalg.norm(grasp @ rot.T + pos - palm)
            assert gap < 0.03, f"{m['key']} frame {f}: palm {gap:.3f} m from the grasp point"


def test_foot_lift_defect_is_only_the_left_foot_up(libs, g1):
    """foot_lift: the right sole stays flat and planted, the left foot ends well off the floor, and
    the centre of mass is then far outside the right sole (single stance no robot can hold)."""
    defective = [m for m in _all(libs) if _defect(m)]
    assert len(defective) == 2 and {_defect(m) for m in defective} == {"foot_lift"}
    for m in defective:
        model, _ = g1
        right = [g for g in _soles(model) if model.body(int(model.geom_bodyid[g])).name.startswith("right")]
        soles, outside = [], []
        for model, data in _replay(g1, m["robot"]):
            soles.append(data.geom_xpos[_soles(model)][:, 2] - model.geom_size[right[0], 0])
            com = data.subtree_com[model.body("pelvis").id]
            outside.append(float(com[1] - data.geom_xpos[right, 1].max()))
        soles = np.array(soles)
        left = np.array([g not in right for g in _soles(model)])
        assert np.abs(soles[:, ~left]).max() < 0.015, f"{m['key']}: the right sole leaves the floor"
        assert soles[-FPS:, left].min() > 0.08, f"{m['key']}: the left foot is not up at the end"
        assert min(outside[-FPS:]) > 0.05, f"{m['key']}: COM only {min(outside[-FPS:]):.3f} m past the sole"


def test_physics_tracks_the_sensible_motions_and_drops_the_defective_ones(libs):
    """Rolled out with the reference tracker's PD controller and zero residual, every defective motion
    terminates (the robot falls) and every sensible one is tracked to the end."""
    pytest.importorskip("torch")
    from grail_cluster.sonic.reference.env import Terminations, prepare
    from grail_cluster.sonic.reference.evaluate import rollout
    from grail_cluster.sonic.reference.motion import load_motion

    plain, ha = libs["defects"] / NAME, libs["defects"] / f"{NAME}_ha"
    keys = sorted(p.stem for p in (ha / "robot").glob("*.pkl"))
    motions = [load_motion(k, ha / "robot" / f"{k}.pkl", ha / "objects" / f"{k}.pkl", ha / "meta" / f"{k}.pkl",
                           plain / "object_usd" / f"{k}.usd") for k in keys]
    rows = rollout([prepare(m) for m in motions], lambda obs: np.zeros((len(obs), 29)), Terminations(), 0.1)
    outcome = {r["motion_keys"]: r["terminated"] for r in rows}
    assert outcome == {k: k in UNTRACKABLE for k in keys}, outcome


def test_palm_offset_is_the_palm_face_centre():
    """PALM_OFFSET = middle of the palm mesh's inner face, in the HAND_BODY frame of g1_with_hands.xml."""
    model = mujoco.MjModel.from_xml_path(str(g1_mjcf_path().parent / "g1_with_hands.xml"))
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    hand = model.body(HAND_BODY).id
    palm = next(g for g in range(model.ngeom) if model.geom_bodyid[g] == hand and model.geom_contype[g]
                and model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH
                and model.mesh(model.geom_dataid[g]).name == "right_hand_palm_link")
    mesh = model.geom_dataid[palm]
    v = model.mesh_vert[model.mesh_vertadr[mesh]: model.mesh_vertadr[mesh] + model.mesh_vertnum[mesh]]
    world = v @ data.geom_xmat[palm].reshape(3, 3).T + data.geom_xpos[palm]
    local = (world - data.xpos[hand]) @ data.xmat[hand].reshape(3, 3)
    middle = 0.5 * (local.min(axis=0) + local.max(axis=0))
    face = np.array([middle[0], local[:, 1].max(), middle[2]])  # the fingers close towards +y
    np.testing.assert_allclose(PALM_OFFSET, face, atol=0.004)


# ----------------------------------------------------------------------------- the library as a whole


def test_doctor_and_scanner_accept_it(libs):
    for root in libs.values():
        ha = root / f"{NAME}_ha"
        assert main(["doctor", str(ha), "pipeline=pnp_table"]) == 0
        index = scan_library(ha, use_cache=False)
        keys = sorted(p.stem for p in (ha / "robot").glob("*.pkl"))
        assert index.keys == keys and index.bps_basis
        for rec in index.motions:
            assert rec.usd and rec.bps and rec.hand_actions and rec.contacts and rec.root_rot == "wxyz", rec


def _files(root: Path) -> dict[str, bytes]:
    """Every file of the libraries by relative path (not the scanner's .grail_index.json cache)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_same_seed_same_bytes(tmp_path, libs):
    again = tmp_path / "again"
    generate_library(again, motions=2, seed=3, scene="ground")
    assert _files(again) == _files(libs["ground"])  # BPS, USDs, pickles: byte for byte
    serial = tmp_path / "serial"
    generate_library(serial, motions=4, seed=0, scene="table", workers=1)
    assert _files(serial) == _files(libs["table"]), "the number of worker processes does not matter"
    other = tmp_path / "other"
    generate_library(other, motions=2, seed=4, scene="ground")
    first, second = _files(libs["ground"]), _files(other)
    robots = [k for k in first if "/robot/" in k]
    assert robots and all(first[k] != second.get(k) for k in robots)
    # --untrackable 0 is the library as before; with 0.25 only the chosen motions' robot pickles differ
    plain = tmp_path / "plain"
    generate_library(plain, motions=8, seed=0, scene="table", untrackable=0.0)
    zero, defects = _files(plain), _files(libs["defects"])
    table = _files(libs["table"])
    assert all(zero[k] == v for k, v in table.items() if "/bps/" not in k), "the first 4 motions are the 4-motion library's"
    assert zero.keys() == defects.keys()
    differ = {k for k in zero if zero[k] != defects[k]}
    robots = {f"{lib}/robot/{key}.pkl" for key in UNTRACKABLE for lib in (NAME, f"{NAME}_ha")}
    # a defective motion may be held a little longer at the end, so its objects pickles may differ too
    assert robots <= differ <= robots | {f"{lib}/objects/{key}.pkl" for key in UNTRACKABLE for lib in (NAME, f"{NAME}_ha")}


def test_cli_json_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "lib"
    assert main(["demo-data", "--out", str(out), "--motions", "1", "--seed", "7", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["motions"] == 1 and len(summary["keys"]) == 1 and summary["seconds"] > 0
    assert summary["library_ha"] == str(out / f"{NAME}_ha") and sum(summary["objects"].values()) == 1
    assert summary["untrackable"] == 0.25 and summary["untrackable_keys"] == [] == list(summary["defects"])
    before = _files(out)

    rc = main(["demo-data", "--out", str(out), "--motions", "1", "--seed", "8"])
    err = capsys.readouterr().err
    assert rc != 0 and "not empty" in err and "--force" in err and "Traceback" not in err
    assert _files(out) == before, "a refused run changes nothing"

    (out / "notes.txt").write_text("keep me")
    assert main(["demo-data", "--out", str(out), "--motions", "1", "--seed", "8", "--force"]) == 0
    assert (out / "notes.txt").read_text() == "keep me", "--force replaces only the demo libraries"
    assert _files(out) != before

    capsys.readouterr()
    assert main(["demo-data", "--out", str(tmp_path / "four"), "--motions", "4", "--seed", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["untrackable_keys"]) == 1 and set(summary["defects"].values()) == {"foot_lift"}
    assert set(summary["untrackable_keys"]) < set(summary["keys"])

    assert main(["demo-data", "--out", str(tmp_path / "x"), "--motions", "0"]) == 2
    assert "--motions" in capsys.readouterr().err
