"""Checks that tests.libgen writes libraries that match grail-contracts.md §1.

joblib.load is fine here: the files are our own synthetic data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import libgen
from tests.libgen import (
    DOF_AXIS,
    bps_basis,
    bps_encode,
    heavy_tailed_lengths,
    make_ha_pair,
    make_library,
    make_terrain_library,
    rotvec_to_quat_wxyz,
    write_malicious_pickle,
    write_usd_mesh,
)

REPO = Path(__file__).resolve().parents[1]
KEY_RE = re.compile(r"^[a-z_]+__[a-z]+_\d+__\d{3}$")


# ------------------------------------------------------------------ helpers
def load_robot(info, key):
    d = joblib.load(info.root / "robot" / f"{key}.pkl")
    assert list(d) == [key], "robot pickles are single-key dicts"
    return d[key]


def load_objects(info, key):
    d = joblib.load(info.root / "objects" / f"{key}.pkl")
    assert list(d) == [key], "object pickles are single-key dicts"
    return d[key]


def load_meta(info, key):
    return joblib.load(info.root / "meta" / f"{key}.pkl")


def to_wxyz(q, convention):
    q = np.asarray(q, np.float64)
    return q if convention == "wxyz" else np.concatenate([q[..., 3:], q[..., :3]], -1)


def same_rotation(q1, q2, atol=1e-5):
    return np.allclose(np.abs(np.sum(q1 * q2, -1)), 1.0, atol=atol)  # q and -q are equal


def tilt_deg(q_wxyz):
    """Angle between the body z axis and world z (0 = upright)."""
    w, x, y, z = np.moveaxis(q_wxyz, -1, 0)
    zz = 1 - 2 * (x * x + y * y)  # R[2,2]
    return np.degrees(np.arccos(np.clip(zz, -1, 1)))


def parse_usd(path: Path):
    text = path.read_text()
    assert text.startswith("#usda 1.0\n")

    def grab(name):
        return re.search(rf"{name} = \[(.*?)\]\n", text).group(1)

    pts = np.array(
        [[float(c) for c in p.split(",")] for p in re.findall(r"\(([^()]*)\)", grab("point3f\\[\\] points"))]
    )
    counts = [int(c) for c in grab("int\\[\\] faceVertexCounts").split(",")]
    idx = [int(c) for c in grab("int\\[\\] faceVertexIndices").split(",")]
    ext = np.array(
        [[float(c) for c in p.split(",")] for p in re.findall(r"\(([^()]*)\)", grab("float3\\[\\] extent"))]
    )
    return text, pts, counts, idx, ext


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def retarget(tmp_path_factory):
    # 40 motions: every class gets instances 0..2, so meshes differ per instance too.
    return make_library(tmp_path_factory.mktemp("lib") / "pickup", 40)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_ha_pair(tmp_path_factory.mktemp("pair"), "pickup_table", 12)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_library(tmp_path_factory.mktemp("exp") / "merged", 10, variant="export")


# ------------------------------------------------------------------ layout and keys
def test_retarget_layout_and_keys(retarget):
    root = retarget.root
    assert {p.name for p in root.iterdir()} == {"robot", "objects", "object_usd", "meta", "bps"}
    assert retarget.keys == sorted(retarget.keys) and len(set(retarget.keys)) == 40
    assert retarget.keys[0] == "pickup_table__apple_0__000"
    assert all(KEY_RE.match(k) for k in retarget.keys)
    for sub, ext in [
        ("robot", ".pkl"),
        ("objects", ".pkl"),
        ("meta", ".pkl"),
        ("object_usd", ".usd"),
        ("bps", ".npy"),
    ]:
        stems = sorted(p.stem for p in (root / sub).glob(f"*{ext}") if not p.stem.startswith("_"))
        assert stems == retarget.keys, sub
    assert retarget.variant == "retarget" and retarget.root_rot_convention == "wxyz"
    assert retarget.bps_dir == root / "bps"
    assert (root / "object_usd" / "config.yaml").is_file()
    # Objects cycle through the class list.
    classes = [k.split("__")[1].rsplit("_", 1)[0] for k in retarget.keys]
    assert {c: classes.count(c) for c in set(classes)} == {
        c: 8 for c in ("apple", "mug", "box", "bottle", "bowl")
    }


def test_textures_both_layouts(retarget):
    tex = retarget.root / "object_usd" / "textures"
    flat = list(tex.glob("*_albedo.png"))
    nested = list(tex.glob("*/base.png"))
    assert flat and nested
    for p in flat + nested:
        assert p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    stems = {p.name[: -len("_albedo.png")] for p in flat} | {p.parent.name for p in nested}
    assert stems <= set(retarget.keys)


# ------------------------------------------------------------------ robot
def check_robot(r, T, convention, fps_type, fps_value):
    f32 = np.float32
    assert r["root_trans_offset"].shape == (T, 3) and r["root_trans_offset"].dtype == f32
    assert r["pose_aa"].shape == (T, 30, 3) and r["pose_aa"].dtype == f32
    assert r["dof"].shape == (T, 29) and r["dof"].dtype == f32
    assert r["root_rot"].shape == (T, 4) and r["root_rot"].dtype == f32
    assert r["smpl_joints"].shape == (T, 24, 3) and not r["smpl_joints"].any()
    assert type(r["fps"]) is fps_type and r["fps"] == fps_value
    # Rows 1..29 of pose_aa are dof * dof_axis.
    np.testing.assert_allclose(r["pose_aa"][:, 1:], r["dof"][:, :, None] * DOF_AXIS, atol=1e-7)
    # Row 0 and root_rot are the same rotation in the declared convention ...
    q = to_wxyz(r["root_rot"], convention)
    assert np.allclose(np.linalg.norm(q, axis=-1), 1, atol=1e-5)
    assert same_rotation(rotvec_to_quat_wxyz(r["pose_aa"][:, 0]), q)
    # ... an upright pelvis with a varying yaw, which is what makes the convention detectable.
    assert tilt_deg(q).max() < 6
    wrong = to_wxyz(r["root_rot"], "xyzw" if convention == "wxyz" else "wxyz")
    assert tilt_deg(wrong).min() > 25
    yaw = np.unwrap(2 * np.arctan2(q[:, 3], q[:, 0]))
    assert np.ptp(yaw) > 0.05
    assert 0.6 < r["root_trans_offset"][:, 2].min() < 1.0  # pelvis height at the start (flat ground)
    assert np.all(np.abs(r["dof"]) < 2.5) and np.ptp(r["dof"], axis=0).min() > 0
    assert np.abs(np.diff(r["dof"], axis=0)).max() < 0.2, "dof must be smooth"


def test_dof_axis_table():
    assert DOF_AXIS.shape == (29, 3) and DOF_AXIS.dtype == np.float32
    assert np.allclose(np.linalg.norm(DOF_AXIS, axis=1), 1)
    names = libgen.G1_MUJOCO_JOINTS
    assert names[0] == "left_hip_pitch_joint" and names[12] == "waist_yaw_joint"
    assert names[15] == "left_shoulder_pitch_joint" and names[-1] == "right_wrist_yaw_joint"
    axis_of = {"pitch": 1, "knee": 1, "elbow": 1, "roll": 0, "yaw": 2}
    for name, ax in zip(names, DOF_AXIS, strict=True):
        kind = next(k for k in axis_of if k in name)
        assert ax[axis_of[kind]] == 1, name


def test_retarget_robot(retarget):
    for key in retarget.keys:
        r = load_robot(retarget, key)
        check_robot(r, retarget.lengths[key], "wxyz", int, 30)
        assert not any(k.startswith("hand_") for k in r)


# ------------------------------------------------------------------ objects and meta
def test_retarget_objects(retarget):
    for key in retarget.keys:
        T = retarget.lengths[key]
        o = load_objects(retarget, key)
        assert o["root_pos"].shape == (T, 1, 3) and o["root_pos"].dtype == np.float32
        assert o["root_quat"].shape == (T, 1, 4) and o["root_quat"].dtype == np.float32
        assert np.allclose(np.linalg.norm(o["root_quat"], axis=-1), 1, atol=1e-5)
        assert type(o["fps"]) is float
        assert o["object_name"] == key.split("__")[1].rsplit("_", 1)[0]
        assert "scale" not in o or isinstance(o["scale"], float)
        # Rests on the table top, then is lifted.
        z = o["root_pos"][:, 0, 2]
        assert abs(z[0] - z[1]) < 1e-6 and z[0] > libgen.TABLE_TOP_Z and z[-1] > z[0] + 0.05
        for side in ("left", "right"):
            cp = o[f"contact_points_{side}_hand"]
            assert isinstance(cp, dict)
            for fr, pts in cp.items():
                assert isinstance(fr, int) and 0 <= fr < T
                assert pts.ndim == 2 and pts.shape[1] == 3 and pts.dtype == np.float32
        assert o["contact_points_right_hand"], "right hand grasps in every motion"


def test_optional_scale_sometimes_missing(retarget):
    has = [("scale" in load_objects(retarget, k)) for k in retarget.keys]
    assert any(has) and not all(has)


def test_retarget_meta(retarget):
    for key in retarget.keys:
        m = load_meta(retarget, key)
        assert set(m) == {"table_pos", "table_quat", "object_name", "scene_scale", "smpl_height"}
        assert isinstance(m["table_pos"], list) and len(m["table_pos"]) == 3
        assert isinstance(m["table_quat"], list) and len(m["table_quat"]) == 4
        assert abs(np.linalg.norm(m["table_quat"]) - 1) < 1e-6
        assert m["smpl_height"] == 1.66 and isinstance(m["object_name"], str)


def test_no_table(tmp_path):
    info = make_library(tmp_path / "ground", 5, table=False, scene="pickup_ground")
    k = info.keys[0]
    assert k.startswith("pickup_ground__")
    assert set(load_meta(info, k)) == {"object_name", "scene_scale", "smpl_height"}
    z = load_objects(info, k)["root_pos"][0, 0, 2]
    assert 0 < z < 0.2, "object rests on the ground"
    ha = make_library(tmp_path / "ground_ha", 5, table=False, variant="ha")
    assert set(load_meta(ha, ha.keys[0])) == {"object_name"}


def test_no_contacts_no_bps(tmp_path):
    info = make_library(tmp_path / "lib", 4, with_contacts=False, with_bps=False)
    assert info.bps_dir is None and not (tmp_path / "lib" / "bps").exists()
    assert not any(k.startswith("contact") for k in load_objects(info, info.keys[0]))


# ------------------------------------------------------------------ _ha pair and export
def test_ha_pair(pair):
    base, ha = pair
    assert ha.root.name == base.root.name + "_ha"
    assert {p.name for p in ha.root.iterdir()} == {"robot", "objects", "meta"}
    assert ha.keys == base.keys and ha.lengths == base.lengths
    assert ha.bps_dir == base.bps_dir and base.bps_dir.is_dir()
    assert ha.root_rot_convention == "wxyz"
    for key in ha.keys:
        T = ha.lengths[key]
        r, rb = load_robot(ha, key), load_robot(base, key)
        check_robot(r, T, "wxyz", int, 30)
        for name in rb:  # same motion as the retarget sibling, plus hand actions
            np.testing.assert_array_equal(r[name], rb[name])
        left, right = r["hand_action_left"], r["hand_action_right"]
        assert left.shape == right.shape == (T,) and left.dtype == right.dtype == np.float32
        assert set(np.unique(right)) <= {-1.0, 1.0} and np.all(left == -1)
        close = int(np.argmax(right > 0))
        assert right[-1] == 1 and np.all(right[close:] == 1) and np.all(right[:close] == -1)
        o, ob = load_objects(ha, key), load_objects(base, key)
        assert "object_name" not in o
        np.testing.assert_array_equal(o["root_pos"], ob["root_pos"])
        lift = close + 10  # right hand closes at lift - 10 (never earlier than frame 0)
        frames = o["contact_points_right_hand"]
        assert frames and set(frames) <= set(ob["contact_points_right_hand"])
        assert min(frames) >= lift or close == 0
        assert min(ob["contact_points_right_hand"]) < min(frames), "_ha drops pre-lift frames"
        m = load_meta(ha, key)
        assert set(m) == {"object_name", "table_pos", "table_quat", "table_size"}
        assert m["table_size"].dtype == np.float32
        np.testing.assert_allclose(m["table_size"], [1.5, 0.7, 0.04])


def test_export(export):
    root = export.root
    assert {"robot", "objects", "object_usd", "meta", "vis", "export_manifest.json"} <= {
        p.name for p in root.iterdir()
    }
    assert export.root_rot_convention == "xyzw"
    for key in export.keys:
        T = export.lengths[key]
        r = load_robot(export, key)
        check_robot(r, T, "xyzw", float, 25.0)
        assert r["hand_dof_pos"].shape == (T, 14) and r["hand_dof_pos"].dtype == np.float32
        closed = r["hand_action_right"] > 0
        np.testing.assert_allclose(r["hand_dof_pos"][closed, 7:], [libgen.HAND_CLOSED_RIGHT] * closed.sum())
        assert not r["hand_dof_pos"][~closed].any() and not r["hand_dof_pos"][:, :7].any()
        o = load_objects(export, key)
        assert o["fps"] == 25.0 and "object_name" not in o
        m = load_meta(export, key)
        assert m["table_pos"].dtype == np.float64 and m["table_quat"].dtype == np.float64
        q = m["table_quat"]  # xyzw, pure yaw: x = y = 0
        assert q[0] == 0 and q[1] == 0 and abs(np.linalg.norm(q) - 1) < 1e-9


def test_fps_override(tmp_path):
    info = make_library(tmp_path / "lib", 3, fps=50)
    k = info.keys[0]
    assert load_robot(info, k)["fps"] == 50 and load_objects(info, k)["fps"] == 50.0
    assert load_robot(info, k)["dof"].shape[0] == info.lengths[k]


# ------------------------------------------------------------------ USD and BPS
def test_usd_meshes(retarget):
    seen = {}
    for key in retarget.keys:
        text, pts, counts, idx, ext = parse_usd(retarget.root / "object_usd" / f"{key}.usd")
        assert 'def Xform "' in text and 'def Mesh "mesh"' in text
        assert sum(counts) == len(idx) and max(idx) < len(pts) and min(idx) >= 0
        np.testing.assert_allclose(ext, [pts.min(0), pts.max(0)], atol=1e-6)
        assert len(pts) <= 2048
        seen[key] = pts

    # Same instance -> same mesh; different class or instance -> different mesh.
    def same(a, b):
        return seen[a].shape == seen[b].shape and np.allclose(seen[a], seen[b])

    assert same("pickup_table__apple_0__000", "pickup_table__apple_0__001")
    assert not same("pickup_table__apple_0__000", "pickup_table__apple_1__000")
    assert not same("pickup_table__box_0__000", "pickup_table__box_1__000")
    assert not same("pickup_table__apple_0__000", "pickup_table__mug_0__000")


def test_bps(retarget):
    basis = np.load(retarget.bps_dir / "_basis.npy")
    assert basis.shape == (10, 3) and basis.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(basis, axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(basis, bps_basis())
    for key in retarget.keys:
        v = np.load(retarget.bps_dir / f"{key}.npy")
        assert v.shape == (10,) and v.dtype == np.float32
        # Recompute §1.6 from the USD we wrote (<=2048 vertices: use the vertices).
        pts = parse_usd(retarget.root / "object_usd" / f"{key}.usd")[1]
        np.testing.assert_allclose(v, bps_encode(pts), atol=1e-4)
        assert np.all(v >= 0) and np.all(v <= 2)


def test_bps_encode_definition():
    pts = np.array([[0, 0, 0], [2, 0, 0]], float)  # centre (1,0,0), radius 1 -> points at +-x
    v = bps_encode(pts, np.array([[1, 0, 0], [0, 0, 1]], np.float32))
    np.testing.assert_allclose(v, [0, np.sqrt(2)], atol=1e-6)


def test_write_usd_mesh_mixed_polygons(tmp_path):
    p = tmp_path / "m.usda"
    write_usd_mesh(
        p,
        np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 2, 0]]),
        [[0, 1, 2, 3], [3, 2, 4]],
        name="3d-thing",
    )
    text, pts, counts, idx, _ = parse_usd(p)
    assert counts == [4, 3] and idx == [0, 1, 2, 3, 3, 2, 4] and len(pts) == 5
    assert 'defaultPrim = "_3d_thing"' in text


def test_shared_usd(tmp_path):
    info = make_library(tmp_path / "lib", 10, shared_usd=True)
    usds = sorted(p.name for p in (tmp_path / "lib" / "object_usd").glob("*.usd"))
    assert usds == sorted(f"{o}.usd" for o in ("apple", "mug", "box", "bottle", "bowl"))
    assert all(info.usd_paths[k].name == k.split("__")[1].rsplit("_", 1)[0] + ".usd" for k in info.keys)
    assert sorted(p.stem for p in info.bps_dir.glob("[!_]*.npy")) == info.keys


# ------------------------------------------------------------------ lengths and determinism
def test_explicit_lengths(tmp_path):
    lens = [20, 33, 250, 41]
    info = make_library(tmp_path / "lib", 4, lengths=lens, fast=True)
    for i, key in enumerate(libgen._plan_keys(4, ("apple", "mug", "box", "bottle", "bowl"), "pickup_table")):
        k = key[1]
        assert info.lengths[k] == lens[i] == load_robot(info, k)["dof"].shape[0]
        assert load_objects(info, k)["root_pos"].shape[0] == lens[i]
    with pytest.raises(ValueError):
        make_library(tmp_path / "bad", 3, lengths=[30, 30])


@pytest.mark.parametrize("variant", ["retarget", "ha", "export"])
def test_tiny_lengths(tmp_path, variant):
    """Very short motions still get exactly the requested frame counts."""
    lens = [1, 2, 5, 11, 19]
    info = make_library(tmp_path / "lib", 5, variant=variant, lengths=lens)
    for k in info.keys:
        r = load_robot(info, k)
        assert r["dof"].shape[0] == r["pose_aa"].shape[0] == info.lengths[k]
        assert load_objects(info, k)["root_pos"].shape[0] == info.lengths[k]
    assert sorted(info.lengths.values()) == lens


def test_heavy_tailed_lengths():
    a = heavy_tailed_lengths(2000, seed=3)
    assert a == heavy_tailed_lengths(2000, seed=3) != heavy_tailed_lengths(2000, seed=4)
    assert min(a) >= 20 and max(a) <= 5000 and all(type(x) is int for x in a)
    assert max(a) > 5 * float(np.median(a)), "needs a long tail"


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 300), seed=st.integers(0, 2**31))
def test_heavy_tailed_lengths_bounds(n, seed):
    a = heavy_tailed_lengths(n, seed)
    assert len(a) == n and all(20 <= x <= 5000 for x in a)


def test_default_lengths_ranges(tmp_path):
    assert all(40 <= t <= 120 for t in make_library(tmp_path / "a", 20, fast=False).lengths.values())
    info = make_library(tmp_path / "b", 20, fast=True, lengths="heavy_tailed")
    plan = libgen._plan_keys(20, ("apple", "mug", "box", "bottle", "bowl"), "pickup_table")
    assert [info.lengths[k] for _, k, _, _ in plan] == heavy_tailed_lengths(20, 0)
    assert list(info.lengths) == info.keys
    assert all(20 <= t <= 40 for t in make_library(tmp_path / "c", 20, fast=True).lengths.values())


@pytest.mark.parametrize("variant", ["retarget", "ha", "export"])
def test_deterministic_bytes(tmp_path, variant):
    a = make_library(tmp_path / "a", 8, variant=variant, seed=7)
    b = make_library(tmp_path / "b", 8, variant=variant, seed=7)
    ta, tb = tree_bytes(a.root), tree_bytes(b.root)
    assert ta.keys() == tb.keys() and all(ta[k] == tb[k] for k in ta)
    c = make_library(tmp_path / "c", 8, variant=variant, seed=8)
    key = f"robot/{a.keys[0]}.pkl"
    assert tree_bytes(c.root)[key] != ta[key]


def test_deterministic_across_processes(tmp_path):
    """Fresh interpreters (different hash seeds) write the same bytes."""
    for name, hashseed in (("a", "1"), ("b", "2")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.libgen",
                "--out",
                str(tmp_path / name),
                "--motions",
                "7",
                "--variant",
                "export",
                "--seed",
                "5",
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": hashseed},
            check=True,
            capture_output=True,
            timeout=120,
        )
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


def test_prefix_stable(tmp_path):
    """A motion's bytes do not depend on how many motions the library has."""
    a = make_library(tmp_path / "a", 5, lengths=[30] * 5)
    b = make_library(tmp_path / "b", 9, lengths=[30] * 9)
    for k in a.keys:
        assert (a.root / "robot" / f"{k}.pkl").read_bytes() == (b.root / "robot" / f"{k}.pkl").read_bytes()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs for the pool")
def test_parallel_equals_serial(tmp_path, monkeypatch):
    serial = make_library(tmp_path / "s", 30, fast=True)
    monkeypatch.setattr(libgen, "PARALLEL_MIN_MOTIONS", 1)
    par = make_library(tmp_path / "p", 30, fast=True)
    assert tree_bytes(serial.root) == tree_bytes(par.root)


def test_fast_is_uncompressed(tmp_path):
    fast = make_library(tmp_path / "f", 2, fast=True)
    slow = make_library(tmp_path / "s", 2, compress=3)
    k = fast.keys[0]
    assert (fast.root / "robot" / f"{k}.pkl").read_bytes()[:1] == b"\x80"  # raw pickle
    assert (slow.root / "robot" / f"{k}.pkl").read_bytes()[:1] == b"x"  # zlib stream


# ------------------------------------------------------------------ terrain
@pytest.mark.parametrize("placeholder", ["root", "legacy", "none"])
def test_terrain(tmp_path, placeholder):
    info = make_terrain_library(tmp_path / "terrain", 8, placeholder=placeholder)
    root = info.root
    assert {p.name for p in root.iterdir()} - {"flat_placeholder.usd"} == {"robot", "objects", "object_usd"}
    assert (root / "flat_placeholder.usd").exists() == (placeholder == "root")
    assert (root / "object_usd" / "flat_placeholder.usd").exists() == (placeholder == "legacy")
    # Discovery as in §1.7: recursive, skip metadata.pkl / flat_placeholder, 1:1 by stem.
    robots = {p.stem: p for p in (root / "robot").rglob("*.pkl") if p.name != "metadata.pkl"}
    usds = {p.stem: p for p in (root / "object_usd").rglob("*.usd") if p.stem != "flat_placeholder"}
    assert sorted(robots) == sorted(usds) == info.keys
    assert (root / "robot" / "metadata.pkl").exists()
    assert any(p.parent != root / "robot" for p in robots.values()), "some nested"
    assert any(p.parent == root / "robot" for p in robots.values()), "some flat"
    assert all(re.match(r"^terrain_[a-z]+__s\d{2}_\d{3}$", k) for k in info.keys)
    assert info.root_rot_convention == "xyzw" and info.variant == "terrain" and info.bps_dir is None
    for key, path in robots.items():
        d = joblib.load(path)
        assert list(d) == [key]
        check_robot(d[key], info.lengths[key], "xyzw", int, 30)
        assert not any(k.startswith("hand_") for k in d[key])
        rel = path.relative_to(root / "robot").with_suffix(".pkl")
        assert (root / "objects" / rel).is_file()
        assert usds[key] == info.usd_paths[key]
        _, pts, counts, idx, _ = parse_usd(usds[key])
        assert sum(counts) == len(idx) and max(idx) < len(pts)


# ------------------------------------------------------------------ malicious pickle
@pytest.mark.parametrize("loader", ["pickle.load(open(sys.argv[1], 'rb'))", "joblib.load(sys.argv[1])"])
def test_malicious_pickle_really_fires(tmp_path, loader):
    evil, marker = tmp_path / "robot" / "evil.pkl", tmp_path / "pwned.txt"
    write_malicious_pickle(evil, marker)
    assert not marker.exists(), "writing must not trigger it"
    # Fresh interpreter, cwd outside the repo: the payload needs nothing from tests.libgen.
    code = f"import sys, pickle, joblib; {loader}"
    subprocess.run([sys.executable, "-c", code, str(evil)], cwd=tmp_path, check=True, timeout=60)
    assert marker.read_text() == "pwned"


def test_malicious_pickle_only_references_exec(tmp_path):
    import pickletools

    evil = tmp_path / "evil.pkl"
    write_malicious_pickle(evil, tmp_path / "m")
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(evil.read_bytes())]
    strings = [a for _, a in ops if isinstance(a, str)]
    assert "builtins" in strings and "exec" in strings
    assert not any("libgen" in s or "_Exploit" in s for s in strings)


# ------------------------------------------------------------------ CLI
def test_cli(tmp_path):
    out = tmp_path / "cli_lib"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.libgen",
            "--out",
            str(out),
            "--motions",
            "6",
            "--variant",
            "export",
            "--fast",
            "--seed",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and "6 motions" in lines[0] and "xyzw" in lines[0]
    assert len(list((out / "robot").glob("*.pkl"))) == 6
    res = subprocess.run(
        [sys.executable, "-m", "tests.libgen", "--out", str(tmp_path / "t"), "--motions", "4", "--terrain"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "variant=terrain" in res.stdout
