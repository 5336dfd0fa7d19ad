"""Hostile motion libraries, written by hand from the contracts (grail-contracts.md §1), not by our
own generator: each case breaks one thing that retargeting, hand edits or a bad copy really produce,
and `doctor`, `index` and `plan` must refuse it by name, with a fix, without changing a byte of it
and without running any code from its pickles.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pytest

from tests.adversarial.harness import (
    assert_no_traceback,
    assert_refused,
    assert_unchanged,
    canary_pickle,
    run_cli,
    snapshot,
)
from tests.conftest import make_sonic_root

T = 24
KEYS = ("pickup_table__apple_0__000", "pickup_table__mug_0__001", "pickup_table__box_0__002")
INDEX_CACHE = ".grail_index.json"  # the one file doctor may write into a library (its index cache)


# ----------------------------------------------------------------------------- a healthy library, from §1


def _quat_wxyz(n: int) -> np.ndarray:
    yaw = np.linspace(0.0, 0.3, n)
    return np.stack([np.cos(yaw / 2), np.zeros(n), np.zeros(n), np.sin(yaw / 2)], axis=1).astype(np.float32)


def robot_inner(n: int = T) -> dict:
    dof = (0.1 * np.sin(np.linspace(0, 1, n))[:, None] * np.ones((1, 29))).astype(np.float32)
    pose_aa = np.zeros((n, 30, 3), np.float32)
    pose_aa[:, 1:, 0] = dof  # any axis: the checks read shapes and values, FK is SONIC's business
    hands = np.where(np.arange(n) >= n // 2, 1.0, -1.0).astype(np.float32)
    return {
        "root_trans_offset": np.tile(np.array([0.0, 0.0, 0.79], np.float32), (n, 1)),
        "pose_aa": pose_aa, "dof": dof, "root_rot": _quat_wxyz(n),
        "smpl_joints": np.zeros((n, 24, 3), np.float32), "fps": 30,
        "hand_action_left": -np.ones(n, np.float32), "hand_action_right": hands,
    }


def objects_inner(n: int = T) -> dict:
    return {
        "root_pos": np.tile(np.array([[0.5, 0.0, 0.8]], np.float32), (n, 1, 1)),
        "root_quat": np.tile(np.array([[1.0, 0.0, 0.0, 0.0]], np.float32), (n, 1, 1)),
        "fps": 30.0, "scale": 1.0,
        "contact_points_right_hand": {f: np.full((3, 3), 0.01, np.float32) for f in range(n // 2, n)},
    }


def meta_dict() -> dict:
    return {"object_name": "apple", "table_pos": [0.6, 0.0, 0.4], "table_quat": [1.0, 0.0, 0.0, 0.0],
            "table_size": np.array([1.5, 0.7, 0.04], np.float32)}


USDA = """#usda 1.0
(
    defaultPrim = "object"
    upAxis = "Z"
)

def Mesh "object"
{
    int[] faceVertexCounts = [3]
    int[] faceVertexIndices = [0, 1, 2]
    point3f[] points = [(0, 0, 0), (0.1, 0, 0), (0, 0.1, 0)]
}
"""


def write_library(parent: Path) -> Path:
    """An `_ha` library (robot/objects/meta) with its non-`_ha` sibling holding object_usd/ and bps/."""
    ha, src = parent / "lib_ha", parent / "lib"
    for sub in ("robot", "objects", "meta"):
        (ha / sub).mkdir(parents=True)
    (src / "object_usd").mkdir(parents=True)
    (src / "bps").mkdir()
    basis = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    np.save(src / "bps" / "_basis.npy", basis / np.linalg.norm(basis, axis=1, keepdims=True))
    for key in KEYS:
        joblib.dump({key: robot_inner()}, ha / "robot" / f"{key}.pkl", compress=3)
        joblib.dump({key: objects_inner()}, ha / "objects" / f"{key}.pkl", compress=3)
        joblib.dump(meta_dict(), ha / "meta" / f"{key}.pkl")
        (src / "object_usd" / f"{key}.usda").write_text(USDA)
        np.save(src / "bps" / f"{key}.npy", np.linspace(0.1, 1.0, 10).astype(np.float32))
    return ha


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_library(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def lib(pristine, tmp_path) -> Path:
    """A fresh copy of the healthy library (and its sibling) for one case to break."""
    shutil.copytree(pristine.parent, tmp_path / "data")
    return tmp_path / "data" / "lib_ha"


def _edit(lib: Path, sub: str, key: str, fn: Callable[[dict], object], *, wrapped: bool = True) -> Path:
    path = lib / sub / f"{key}.pkl"
    obj = joblib.load(path)
    if wrapped:
        res = fn(obj[key])
        obj = obj if res is None else res
    else:
        res = fn(obj)
        obj = obj if res is None else res
    joblib.dump(obj, path)
    return path


def _set(**kv):
    def fn(d: dict) -> None:
        for k, v in kv.items():
            if v is _DROP:
                d.pop(k, None)
            else:
                d[k] = v
    return fn


_DROP = object()
K0 = KEYS[0]


def _nan_at(name: str, sub: str = "robot", value: float = np.nan):
    def fn(d: dict) -> None:
        arr = np.array(d[name], dtype=np.float32, copy=True)
        arr.reshape(-1)[arr.size // 2] = value
        d[name] = arr
    return lambda lib: (_edit(lib, sub, K0, fn), "finite", name)


def _robot(check: str, key: str = "", **kv):
    return lambda lib: (_edit(lib, "robot", K0, _set(**kv)), check, key)


def _objects(check: str, key: str = "", **kv):
    return lambda lib: (_edit(lib, "objects", K0, _set(**kv)), check, key)


def _meta(check: str, key: str = "", **kv):
    return lambda lib: (_edit(lib, "meta", K0, _set(**kv), wrapped=False), check, key)


def _replace_file(sub: str, data: bytes, check: str = "readable", name: str | None = None):
    def make(lib: Path):
        path = lib / sub / f"{name or K0}.pkl"
        path.write_bytes(data)
        return path, check, ""
    return make


def _raw_pickle(sub: str, obj: object, check: str):
    def make(lib: Path):
        path = lib / sub / f"{K0}.pkl"
        joblib.dump(obj, path)
        return path, check, ""
    return make


def _usd(content: bytes, check: str = "usd"):
    def make(lib: Path):
        path = lib.parent / "lib" / "object_usd" / f"{K0}.usda"
        path.write_bytes(content)
        return path, check, ""
    return make


def _bps(arr, check: str = "bps-embedding"):
    def make(lib: Path):
        path = lib.parent / "lib" / "bps" / f"{K0}.npy"
        if isinstance(arr, bytes):
            path.write_bytes(arr)
        else:
            np.save(path, arr)
        return path, check, ""
    return make


def _truncate(sub: str):
    def make(lib: Path):
        path = lib / sub / f"{K0}.pkl"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, "readable", ""
    return make


def _npy_as_pickle(lib: Path):
    """A .npy saved under a .pkl name (a real mix-up when scripts write both)."""
    path = lib / "robot" / f"{K0}.pkl"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros((T, 29), np.float32))
    return path, "readable", ""


GOOD_PICKLE = pickle.dumps({K0: robot_inner()}, protocol=4)

CASES: dict[str, Callable[[Path], tuple[Path, str, str]]] = {
    # non-finite values, in every array the contracts name
    **{f"nan-robot-{n}": _nan_at(n) for n in ("dof", "root_trans_offset", "pose_aa", "root_rot", "hand_action_right")},
    "inf-robot-dof": _nan_at("dof", value=np.inf),
    "neg-inf-root-trans": _nan_at("root_trans_offset", value=-np.inf),
    "nan-objects-root_pos": _nan_at("root_pos", "objects"),
    "nan-objects-root_quat": _nan_at("root_quat", "objects"),
    "nan-hand-dof-pos": _robot("finite", "hand_dof_pos", hand_dof_pos=np.full((T, 14), np.nan, np.float32)),
    # shapes
    "dof-28-columns": _robot("shape", "dof", dof=np.zeros((T, 28), np.float32)),
    "dof-30-columns": _robot("shape", "dof", dof=np.zeros((T, 30), np.float32)),
    "dof-1d": _robot("shape", "dof", dof=np.zeros(T, np.float32)),
    "dof-transposed": _robot("shape", "dof", dof=np.zeros((29, T), np.float32)),
    "root-rot-3-columns": _robot("shape", "root_rot", root_rot=np.zeros((T, 3), np.float32)),
    "root-rot-5-columns": _robot("shape", "root_rot", root_rot=np.zeros((T, 5), np.float32)),
    "root-trans-2-columns": _robot("shape", "root_trans_offset", root_trans_offset=np.zeros((T, 2), np.float32)),
    "pose-aa-24-joints": _robot("shape", "pose_aa", pose_aa=np.zeros((T, 24, 3), np.float32)),
    "pose-aa-flat": _robot("shape", "pose_aa", pose_aa=np.zeros((T, 90), np.float32)),
    "smpl-joints-wrong": _robot("shape", "smpl_joints", smpl_joints=np.zeros((T, 22, 3), np.float32)),
    "hand-dof-pos-7": _robot("shape", "hand_dof_pos", hand_dof_pos=np.zeros((T, 7), np.float32)),
    "objects-root-pos-2d": _objects("shape", "root_pos", root_pos=np.zeros((T, 3), np.float32)),
    "objects-root-quat-xyz": _objects("shape", "root_quat", root_quat=np.zeros((T, 1, 3), np.float32)),
    "objects-two-vs-one": _objects("shape", "root_quat", root_quat=np.tile(np.array([[[1.0, 0, 0, 0]]], np.float32), (T, 2, 1))),
    # dtypes
    "dof-strings": _robot("dtype", "dof", dof=np.array([["a"] * 29] * T)),
    "dof-object-array": _robot("dtype", "dof", dof=np.array([None] * T, dtype=object)),
    "dof-complex": _robot("dtype", "dof", dof=np.zeros((T, 29), np.complex64)),
    "root-rot-bool": _robot("dtype", "root_rot", root_rot=np.ones((T, 4), bool)),
    "dof-a-string": _robot("dtype", "dof", dof="not an array"),
    # unit quaternions
    "root-rot-not-unit": _robot("quat-norm", "root_rot", root_rot=np.tile(np.array([2.0, 0, 0, 0], np.float32), (T, 1))),
    "root-rot-zeros": _robot("quat-norm", "root_rot", root_rot=np.zeros((T, 4), np.float32)),
    "objects-quat-not-unit": _objects("quat-norm", "root_quat", root_quat=np.full((T, 1, 4), 0.9, np.float32)),
    # frame counts
    "root-trans-short": _robot("frame-count", "root_trans_offset", root_trans_offset=np.zeros((T - 3, 3), np.float32)),
    "pose-aa-long": _robot("frame-count", "pose_aa", pose_aa=np.zeros((T + 5, 30, 3), np.float32)),
    "objects-shorter-than-robot": _objects("frame-count", "root_pos", root_pos=np.zeros((T - 4, 1, 3), np.float32),
                                           root_quat=np.tile(np.array([[[1.0, 0, 0, 0]]], np.float32), (T - 4, 1, 1))),
    "hand-actions-short": _robot("frame-count", "hand_action_right", hand_action_right=np.ones(T - 1, np.float32)),
    # fps
    "fps-zero": _robot("fps", "fps", fps=0),
    "fps-negative": _robot("fps", "fps", fps=-30),
    "fps-nan": _robot("fps", "fps", fps=float("nan")),
    "fps-string": _robot("fps", "fps", fps="30"),
    "fps-missing": _robot("required", "fps", fps=_DROP),
    "objects-fps-zero": _objects("fps", "fps", fps=0.0),
    "objects-fps-mismatch": _objects("fps-mismatch", "fps", fps=25.0),
    # required keys
    "no-dof": _robot("required", "dof", dof=_DROP),
    "no-pose-aa": _robot("required", "pose_aa", pose_aa=_DROP),
    "no-root-rot": _robot("required", "root_rot", root_rot=_DROP),
    "objects-no-root-pos": _objects("required", "root_pos", root_pos=_DROP),
    # pickle structure (contracts §1.1: {stem: {...}} for robot/objects, flat meta)
    "robot-two-keys": lambda lib: (_edit(lib, "robot", K0, lambda o: {**o, "extra_key": o[K0]}, wrapped=False),
                                   "structure", ""),
    "robot-key-not-stem": lambda lib: (_edit(lib, "robot", K0, lambda o: {"some_other_motion": o[K0]}, wrapped=False),
                                       "structure", ""),
    "robot-flat-dict": lambda lib: (_edit(lib, "robot", K0, lambda o: o[K0], wrapped=False), "structure", ""),
    "robot-value-a-list": lambda lib: (_edit(lib, "robot", K0, lambda o: {K0: [1, 2, 3]}, wrapped=False),
                                       "structure", ""),
    "robot-is-a-list": _raw_pickle("robot", [1, 2, 3], "structure"),
    "robot-is-an-array": _raw_pickle("robot", np.zeros((T, 29)), "structure"),
    "objects-key-not-stem": lambda lib: (_edit(lib, "objects", K0, lambda o: {"x": o[K0]}, wrapped=False),
                                         "structure", ""),
    "meta-wrapped": lambda lib: (_edit(lib, "meta", K0, lambda o: {K0: o}, wrapped=False), "structure", ""),
    "meta-a-list": _raw_pickle("meta", ["apple"], "structure"),
    # meta field types
    "meta-object-name-int": _meta("meta-types", "object_name", object_name=7),
    "meta-table-pos-2": _meta("meta-types", "table_pos", table_pos=[0.1, 0.2]),
    "meta-table-pos-string": _meta("meta-types", "table_pos", table_pos="0.1,0.2,0.3"),
    "meta-table-quat-not-unit": _meta("meta-types", "table_quat", table_quat=[0.0, 0.0, 0.0, 0.0]),
    "meta-table-size-negative": _meta("meta-types", "table_size", table_size=[1.5, -0.7, 0.04]),
    "meta-table-pos-nan": _meta("meta-types", "table_pos", table_pos=[np.nan, 0.0, 0.4]),
    "meta-scene-scale-string": _meta("meta-types", "scene_scale", scene_scale="big"),
    # hand actions
    "hand-actions-only-left": _robot("hand-action-values", "hand_action_right", hand_action_right=_DROP),
    "hand-actions-negative-continuous": _robot("hand-action-values", "hand_action_right",
                                               hand_action_right=np.full(T, -0.5, np.float32)),
    # contact labels
    "contacts-negative-frame": _objects("contact-frames", "contact_points_right_hand",
                                        contact_points_right_hand={-1: np.zeros((2, 3), np.float32)}),
    "contacts-string-keys": _objects("contact-frames", "contact_points_right_hand",
                                     contact_points_right_hand={"12": np.zeros((2, 3), np.float32)}),
    "contacts-points-2d": _objects("contact-frames", "contact_points_right_hand",
                                   contact_points_right_hand={12: np.zeros((2, 2), np.float32)}),
    "contacts-nan-points": _objects("contact-frames", "contact_points_right_hand",
                                    contact_points_right_hand={12: np.full((2, 3), np.nan, np.float32)}),
    "contacts-a-list": _objects("contact-frames", "contact_points_right_hand", contact_points_right_hand=[1, 2]),
    "objects-scale-negative": _objects("shape", "scale", scale=-1.0),
    # unreadable streams (the safe unpickler must name the file, never a KeyError traceback)
    "robot-text-file": _replace_file("robot", b"this is not a pickle\n"),
    "robot-json-file": _replace_file("robot", json.dumps({K0: {"dof": [[0] * 29]}}).encode()),
    "robot-empty-file": _replace_file("robot", b""),
    "robot-truncated-plain": _replace_file("robot", GOOD_PICKLE[: len(GOOD_PICKLE) // 3]),
    "robot-truncated-joblib": _truncate("robot"),
    "robot-unknown-opcode": _replace_file("robot", b"\x80\x04\xff\xff\xff\xff"),
    "robot-gzip-garbage": _replace_file("robot", b"\x1f\x8b\x08\x00" + b"\x00" * 40),
    "robot-random-bytes": _replace_file("robot", np.random.default_rng(1).bytes(4096)),
    "objects-truncated": _truncate("objects"),
    "meta-text-file": _replace_file("meta", b"object_name: apple\n"),
    "robot-numpy-npy": _npy_as_pickle,
    # USD files that are not USD
    "usd-is-text": _usd(b"hello, I am not a USD\n"),
    "usd-is-png": _usd(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),
    "usd-empty": _usd(b""),
    "usd-bad-syntax": _usd(b"#usda 1.0\ndef Mesh \"x\" {{{ broken\n"),
    "usd-no-prims": _usd(b"#usda 1.0\n"),
    # BPS vectors
    "bps-wrong-length": _bps(np.zeros(7, np.float32)),
    "bps-2d": _bps(np.zeros((10, 3), np.float32)),
    "bps-nan": _bps(np.full(10, np.nan, np.float32)),
    "bps-not-npy": _bps(b"not numpy at all"),
    "bps-int": _bps(np.arange(10)),
    "bps-missing-for-one-key": lambda lib: ((lib.parent / "lib" / "bps" / f"{K0}.npy").unlink() or
                                            (lib.parent / "lib" / "bps", "bps", "")),
}


def test_the_hand_written_library_is_healthy(lib):
    """The baseline every case breaks: no finding at all, for the strictest pipeline."""
    res = run_cli(["doctor", lib, "pipeline=pnp_table", "--json"])
    assert res.code == 0, res.text
    rep = json.loads(res.stdout)
    assert rep["problems"] == [] and rep["findings"] == [], rep["problems"]
    assert rep["hand_action_kind"] == {"discrete": len(KEYS)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_doctor_refuses_each_hostile_library(case, lib):
    bad_file, check, key = CASES[case](lib)
    before = snapshot(lib.parent)
    res = run_cli(["doctor", lib, "pipeline=pnp_table"])
    assert_refused(res, code=1, names=[str(bad_file), check])
    assert_unchanged(before, lib.parent, ignore=(INDEX_CACHE,))
    rep = json.loads(run_cli(["doctor", lib, "pipeline=pnp_table", "--json"]).stdout)
    mine = [f for f in rep["findings"] + rep["problems"] if f["check"] == check and f["severity"] == "error"]
    assert mine, f"no {check} error in {rep['problems']}"
    if key:
        assert any(key in (f.get("key") or "") or f"`{key}`" in f["problem"] for f in mine), mine


@pytest.mark.parametrize("case", ["nan-robot-dof", "robot-two-keys", "robot-text-file", "usd-is-text",
                                  "objects-shorter-than-robot"])
def test_index_names_the_bad_file_and_exits_1(case, lib):
    bad_file, check, _ = CASES[case](lib)
    res = run_cli(["index", lib])
    assert_refused(res, code=1, names=[str(bad_file), check], fix=False)


@pytest.mark.parametrize("case", ["nan-objects-root_pos", "robot-key-not-stem", "bps-missing-for-one-key",
                                  "meta-table-pos-2"])
def test_plan_refuses_before_writing_anything(case, lib, tmp_path):
    bad_file, check, _ = CASES[case](lib)
    sonic = make_sonic_root(tmp_path / "SONIC")
    runs = tmp_path / "runs"
    res = run_cli(["plan", "pipeline=pnp_table", f"data.motion_lib={lib}", f"sonic.root={sonic}",
                   f"run.root={runs}", "trainer=reference"])
    assert_refused(res, code=1, names=[str(bad_file)])
    assert not runs.exists() or not any(runs.rglob("plan.json")), "a plan was written for a refused library"


def test_the_warm_index_keeps_the_verdict_and_sees_a_fix(lib):
    """The verdict is cached with the entry: a warm scan still refuses, and repairing the file clears it."""
    bad_file, _, _ = CASES["nan-robot-dof"](lib)
    assert run_cli(["index", lib]).code == 1
    warm = run_cli(["index", lib, "--json"])
    data = json.loads(warm.stdout)
    assert data["cache"] == "hit" and warm.code == 1 and data["findings"][0]["file"] == str(bad_file)
    joblib.dump({K0: robot_inner()}, bad_file)
    fixed = run_cli(["index", lib, "--json"])
    assert fixed.code == 0 and json.loads(fixed.stdout)["findings"] == []


def test_allow_downgrades_only_allowable_checks(lib):
    CASES["root-rot-not-unit"](lib)
    assert run_cli(["doctor", lib, "pipeline=pnp_table"]).code == 1
    res = run_cli(["doctor", lib, "pipeline=pnp_table", "--allow", "quat-norm"])
    assert res.code == 0 and "quat-norm" in res.text, res.text
    for name, code in (("finite", 2), ("no-such-check", 2)):
        res = run_cli(["doctor", lib, "--allow", name])
        assert_refused(res, code=code, names=[name])


def test_continuous_hand_actions_are_accepted_and_reported(lib):
    """GRAIL's upstream export writes the mean |hand joint position|; doctor accepts it and says so."""
    for key in KEYS:
        _edit(lib, "robot", key, _set(hand_action_left=np.linspace(0.0, 0.2, T).astype(np.float32),
                                      hand_action_right=np.linspace(0.0, 1.1, T).astype(np.float32)))
    res = run_cli(["doctor", lib, "pipeline=pnp_table", "--json"])
    assert res.code == 0, res.text
    assert json.loads(res.stdout)["hand_action_kind"] == {"continuous": len(KEYS)}
    _edit(lib, "robot", K0, _set(**{n: np.where(np.arange(T) > 5, 1.0, -1.0).astype(np.float32)
                                    for n in ("hand_action_left", "hand_action_right")}))
    mixed = run_cli(["doctor", lib, "pipeline=pnp_table"])
    assert mixed.code == 0 and "mixed" in mixed.text and "hand-action-values" in mixed.text


@pytest.mark.parametrize("sub", ["robot", "objects", "meta"])
def test_canary_pickles_never_run(sub, lib, tmp_path):
    witness = tmp_path / "pwned"
    target = lib / sub / f"{K0}.pkl"
    canary_pickle(target, witness, wrap_key=K0 if sub != "meta" else None)
    before = snapshot(lib.parent)
    for cmd in (["doctor", lib, "pipeline=pnp_table"], ["index", lib, "--no-cache"]):
        res = run_cli(cmd)
        assert_no_traceback(res)
        assert res.code == 1 and str(target) in res.text and "not an allowed type" in res.text, res.text
    assert not witness.exists(), "pickle code ran"
    assert_unchanged(before, lib.parent, ignore=(INDEX_CACHE,))


@pytest.mark.parametrize("case", ["robot-text-file", "robot-truncated-joblib", "robot-two-keys"])
def test_web_counts_and_names_unusable_motions(case, lib, tmp_path):
    """The viewer still lists the motion (with its error), and the command names it: no silent drop."""
    bad_file, _, _ = CASES[case](lib)
    witness = tmp_path / "pwned"
    canary_pickle(lib / "robot" / f"{KEYS[1]}.pkl", witness, wrap_key=KEYS[1])
    res = run_cli(["web", "--motion_lib", lib, "--output", tmp_path / "web"])
    assert_no_traceback(res)
    assert "2 motion(s) have unreadable or refused files" in res.stderr, res.text
    assert K0 in res.stderr and KEYS[1] in res.stderr and "not an allowed type" in res.stderr, res.stderr
    manifest = json.loads((tmp_path / "web" / "manifest.json").read_text())
    errors = {m["name"]: m["error"] for m in manifest["motions"] if "error" in m}
    assert set(errors) == {K0, KEYS[1]} and str(bad_file) in errors[K0]
    assert not witness.exists()


def test_plan_honours_data_allow(lib, tmp_path):
    """`data.allow=[quat-norm]` plans a library whose only problem is an allowable check; `finite` stays refused."""
    CASES["root-rot-not-unit"](lib)
    sonic = make_sonic_root(tmp_path / "SONIC")
    base = ["plan", "pipeline=pnp_table", f"data.motion_lib={lib}", f"sonic.root={sonic}", f"run.root={tmp_path / 'runs'}",
            "trainer=reference", "eval.num_shards=1"]
    refused = run_cli(base)
    assert_refused(refused, code=1, names=["quat-norm" if "quat-norm" in refused.text else "not unit norm"])
    allowed = run_cli([*base, "data.allow=[quat-norm]"])
    assert allowed.code == 0, allowed.text
    bad = run_cli([*base, "data.allow=[finite]"])
    assert_refused(bad, code=2, names=["finite"])


def test_contact_frames_past_the_motion_are_a_warning(lib):
    """GRAIL's export copies contact dicts in the source's timeline (contracts §5.4): every library it
    exports has frames past the motion. doctor says so, by name, without refusing the library."""
    path = _edit(lib, "objects", K0, _set(contact_points_right_hand={T + 10: np.zeros((2, 3), np.float32)}))
    res = run_cli(["doctor", lib, "pipeline=pnp_table", "--json"])
    assert res.code == 0, res.text
    rows = [f for f in json.loads(res.stdout)["findings"] if f["check"] == "contact-frame-range"]
    assert rows and rows[0]["severity"] == "warn" and rows[0]["file"] == str(path)


def test_our_export_of_a_ha_library_passes_doctor(tmp_path):
    """A second reading of the exporter's output: doctor (written from the contracts) finds no error in it."""
    from grail_cluster.tools.data import export as ex
    from tests.evalgen import make_eval_shard
    from tests.libgen import make_ha_pair

    _, src = make_ha_pair(tmp_path, "lib", 6, fast=True)
    shard = make_eval_shard(tmp_path / "shard", src, src.keys)
    ex.export_shard(shard.shard_dir, src.root, tmp_path / "out")
    res = run_cli(["doctor", tmp_path / "out", "--json"])
    rep = json.loads(res.stdout)
    assert res.code == 0 and not [f for f in rep["findings"] if f["severity"] == "error"], rep["findings"]
    assert rep["root_rot"] == {"xyzw": 6} and rep["hand_action_kind"] == {"discrete": 6}
