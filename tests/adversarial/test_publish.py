"""Hostile inputs for the publishing stages: export never writes a rollout it cannot vouch for, and
merge never leaves an unsound library at ``merged/``.

Every case runs the installed ``grail-cluster`` by absolute path (harness.run_cli: venv off PATH,
pipes, no terminal) and checks the exit code, that there is no traceback, that the file (and key)
is named with a fix, that the inputs are byte-for-byte unchanged, that nothing complete-looking was
written, and that no pickle code ran. Inputs are our generators' outputs broken on purpose, plus a
library, trajectory and metrics file written by hand from the contracts (§1.2-1.4, §4.2, §4.3).
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from grail_cluster.core import safe_pickle
from grail_cluster.tools.data.export import export_shard
from tests.adversarial.harness import (
    assert_absent,
    assert_no_traceback,
    assert_refused,
    assert_unchanged,
    canary_pickle,
    run_cli,
    snapshot,
)
from tests.evalgen import make_eval_shard
from tests.libgen import make_ha_pair

STEP = 1000


def _strict_json(path: Path) -> dict:
    """Parse as a strict JSON reader would: NaN/Infinity are not JSON."""
    def refuse(name):
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _all_finite(value) -> bool:
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_all_finite(v) for v in value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        return bool(np.isfinite(value).all())
    if isinstance(value, float):
        return math.isfinite(value)
    return True


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A retarget + `_ha` pair (USDs in the non-`_ha` sibling); tests copy it before breaking it."""
    parent = tmp_path_factory.mktemp("lib")
    make_ha_pair(parent, "lib", 4, fast=True)
    return parent


@pytest.fixture
def case(library, tmp_path):
    """A private copy of the library and an eval shard over its 4 motions (all successful)."""
    shutil.copytree(library, tmp_path / "lib")
    ha = tmp_path / "lib" / "lib_ha"
    keys = sorted(p.stem for p in (ha / "robot").glob("*.pkl"))
    shard = make_eval_shard(tmp_path / "shard", ha, keys)

    class Case:
        pass

    c = Case()
    c.root, c.ha, c.keys, c.shard, c.out = tmp_path, ha, keys, shard, tmp_path / "out"
    c.argv = ["export", "--eval_dir", shard.shard_dir, "--source_data", ha, "--output_dir", c.out]
    return c


def _edit_traj(path: Path, **changes) -> None:
    traj = safe_pickle.load(path)
    for name, fn in changes.items():
        traj[name] = fn(traj[name])
    with open(path, "wb") as fh:
        pickle.dump(traj, fh, protocol=4)


def _poison(value: float, frame: int = 3, col: int = 0):
    def fn(arr):
        arr = np.array(arr, np.float32, copy=True)
        arr[frame, col] = value
        return arr
    return fn


def _edit_metrics(shard_dir: Path, fn) -> None:
    path = shard_dir / "metrics_eval.json"
    data = json.loads(path.read_text())
    fn(data["eval/all_metrics_dict"])
    path.write_text(json.dumps(data))  # json writes float('nan') as NaN, as SONIC's json.dump does


def _assert_rejected(c, res, key: str, words: tuple[str, ...]) -> dict:
    """The motion is counted as failed, named with its reason and file, and never written."""
    assert res.code == 0, res.text
    assert_no_traceback(res)
    manifest = _strict_json(c.out / "export_manifest.json")
    rejected = {r["motion_key"]: r for r in manifest["rejected"]}
    assert key in rejected and manifest["rejected_count"] == len(rejected)
    for w in words:
        assert w in rejected[key]["reason"], rejected[key]
    assert f"rejected {key}: " in res.stdout and rejected[key]["file"] in res.stdout and "fix" in res.stdout
    assert key not in {m["motion_key"] for m in manifest["exported_motions"]}
    for sub in ("robot", "objects", "meta"):
        assert not (c.out / sub / f"{key}.pkl").exists()
    assert manifest["exported_count"] == len(c.keys) - len(rejected)
    for p in (c.out / "robot").glob("*.pkl"):  # what was written is all finite
        assert _all_finite(safe_pickle.load(p)), p
    return manifest


TRAJ_POISON = [
    ("root_pos_w", float("nan")),
    ("root_quat_w", float("nan")),
    ("dof_pos", float("inf")),
    ("object_pos_w", float("-inf")),
    ("object_quat_w", float("nan")),
    ("table_pos_w", float("nan")),
    ("table_quat_w", float("inf")),
]


@pytest.mark.parametrize("field,value", TRAJ_POISON, ids=[f"{f}-{v}" for f, v in TRAJ_POISON])
def test_nonfinite_trajectory_array_is_rejected_not_written(case, field, value):
    key = case.keys[1]
    path = case.shard.traj_paths[key]
    traj = safe_pickle.load(path)
    if traj.get(field) is None:
        pytest.skip(f"the generated trajectory has no {field}")
    _edit_traj(path, **{field: _poison(value)})
    before = snapshot(case.root / "lib", case.shard.shard_dir)
    res = run_cli(case.argv)
    _assert_rejected(case, res, key, (field, "frame 3"))
    assert_unchanged(before, case.root / "lib", case.shard.shard_dir)


def test_zero_length_root_quaternion_is_rejected(case):
    key = case.keys[2]
    _edit_traj(case.shard.traj_paths[key], root_quat_w=lambda q: np.where(np.arange(len(q))[:, None] == 5, 0.0, q))
    res = run_cli(case.argv)
    _assert_rejected(case, res, key, ("root_quat_w", "zero-length"))


@pytest.mark.parametrize("bad", [float("nan"), None], ids=["nan", "null"])
def test_nan_or_null_progress_is_not_a_success(case, bad):
    key = case.keys[0]
    _edit_metrics(case.shard.shard_dir, lambda t: t["progress"].__setitem__(0, bad))
    res = run_cli(case.argv)
    manifest = _assert_rejected(case, res, key, ("progress", "min_progress"))
    assert "NaN or null progress" in manifest["success_rule"]
    # a lower bar does not rescue it: NaN cannot be shown to be >= anything
    shutil.rmtree(case.out)
    res = run_cli([*case.argv, "--min_progress", "0"])
    _assert_rejected(case, res, key, ("progress",))


def test_nan_obj_pos_error_counts_only_with_a_threshold(case):
    key = case.keys[3]
    _edit_metrics(case.shard.shard_dir, lambda t: t["obj_pos_error"].__setitem__(3, float("nan")))
    res = run_cli([*case.argv, "--obj_pos_threshold", "0.1"])
    _assert_rejected(case, res, key, ("obj_pos_error", "obj_pos_threshold"))
    shutil.rmtree(case.out)
    res = run_cli(case.argv)  # no object filter: the motion succeeded; its NaN error is written as null
    assert res.code == 0, res.text
    m = _strict_json(case.out / "export_manifest.json")
    entry = next(e for e in m["exported_motions"] if e["motion_key"] == key)
    assert entry["obj_pos_error"] is None and m["rejected"] == []


def test_nonfinite_metrics_are_null_in_the_manifest(case):
    _edit_metrics(case.shard.shard_dir, lambda t: (t["mpjpe_g"].__setitem__(0, float("inf")),
                                                    t["obj_ori_error"].__setitem__(1, float("nan"))))
    res = run_cli(case.argv)
    assert res.code == 0, res.text
    m = _strict_json(case.out / "export_manifest.json")  # raises on NaN/Infinity
    by_key = {e["motion_key"]: e for e in m["exported_motions"]}
    assert by_key[case.keys[0]]["mpjpe_g"] is None and by_key[case.keys[1]]["obj_ori_error"] is None


@pytest.mark.parametrize("breakage", ["short_list", "terminated_strings", "duplicate_keys", "keys_not_list",
                                      "progress_strings", "not_json"])
def test_malformed_metrics_are_refused_and_nothing_is_written(case, breakage):
    path = case.shard.shard_dir / "metrics_eval.json"
    key_named = {"short_list": "progress", "terminated_strings": "terminated", "duplicate_keys": "motion_keys",
                 "keys_not_list": "motion_keys", "progress_strings": "progress", "not_json": "JSON"}[breakage]
    if breakage == "not_json":
        path.write_text("eval/success/success_rate: 0.9\n")  # YAML, not JSON
    else:
        def fn(t):
            if breakage == "short_list":
                t["progress"] = t["progress"][:-1]
            elif breakage == "terminated_strings":
                t["terminated"] = ["false"] * len(t["terminated"])  # bool("false") would be True
            elif breakage == "duplicate_keys":
                t["motion_keys"][1] = t["motion_keys"][0]
            elif breakage == "keys_not_list":
                t["motion_keys"] = ",".join(t["motion_keys"])
            else:
                t["progress"] = ["1.0"] * len(t["progress"])
        _edit_metrics(case.shard.shard_dir, fn)
    before = snapshot(case.root / "lib", case.shard.shard_dir)
    res = run_cli(case.argv)
    assert_refused(res, code=1, names=[str(path), key_named])
    assert_unchanged(before, case.root / "lib", case.shard.shard_dir)
    assert_absent(case.out)
    assert not list(case.root.glob("out*"))  # no temp dir left either


@pytest.mark.parametrize("breakage", ["text", "truncated", "empty", "json"])
def test_unreadable_trajectory_is_named(case, breakage):
    path = case.shard.traj_paths[case.keys[2]]
    data = path.read_bytes()
    path.write_bytes({"text": b"this is not a pickle\n", "truncated": data[: len(data) // 2], "empty": b"",
                      "json": b'{"dof_pos": [[0.0]]}'}[breakage])
    before = snapshot(case.root / "lib", case.shard.shard_dir)
    res = run_cli(case.argv)
    assert_refused(res, code=1, names=[str(path)])
    assert_unchanged(before, case.root / "lib", case.shard.shard_dir)
    assert_absent(case.out)


@pytest.mark.parametrize("where", ["trajectory", "source_robot", "source_objects", "source_meta"])
def test_canary_pickle_is_refused_and_never_runs(case, where):
    key = case.keys[1]
    witness = case.root / "pwned"
    target = {"trajectory": case.shard.traj_paths[key], "source_robot": case.ha / "robot" / f"{key}.pkl",
              "source_objects": case.ha / "objects" / f"{key}.pkl", "source_meta": case.ha / "meta" / f"{key}.pkl"}[where]
    canary_pickle(target, witness, wrap_key=None if where in ("trajectory", "source_meta") else key)
    before = snapshot(case.root / "lib", case.shard.shard_dir)
    res = run_cli(case.argv)
    assert_refused(res, code=1, names=[str(target), "refused"])
    assert not witness.exists(), "pickle code ran"
    assert_unchanged(before, case.root / "lib", case.shard.shard_dir)
    assert_absent(case.out)


def _edit_source_robot(c, key: str, fn) -> Path:
    path = c.ha / "robot" / f"{key}.pkl"
    data = safe_pickle.load(path)
    fn(data[key])
    joblib.dump(data, path)
    return path


def test_nan_hand_action_in_the_source_is_rejected(case):
    key = case.keys[0]
    path = _edit_source_robot(case, key, lambda r: r["hand_action_left"].__setitem__(slice(None), np.nan))
    res = run_cli(case.argv)
    m = _assert_rejected(case, res, key, ("hand_action_left",))
    assert next(r for r in m["rejected"] if r["motion_key"] == key)["file"] == str(path)


@pytest.mark.parametrize("breakage", ["fps_string", "empty_hand_action", "hand_action_strings"])
def test_malformed_source_robot_is_named(case, breakage):
    key = case.keys[2]

    def fn(r):
        if breakage == "fps_string":
            r["fps"] = "thirty"
        elif breakage == "empty_hand_action":
            r["hand_action_right"] = np.zeros(0, np.float32)
        else:
            r["hand_action_right"] = np.array(["closed"] * len(r["dof"]))

    path = _edit_source_robot(case, key, fn)
    before = snapshot(case.root / "lib", case.shard.shard_dir)
    res = run_cli(case.argv)
    assert_refused(res, code=1, names=[str(path)])
    assert_unchanged(before, case.root / "lib", case.shard.shard_dir)
    assert_absent(case.out)


def test_trajectory_fps_not_a_number_is_named(case):
    path = case.shard.traj_paths[case.keys[3]]
    _edit_traj(path, fps=lambda _: "25 Hz")
    res = run_cli(case.argv)
    assert_refused(res, code=1, names=[str(path), "fps"])
    assert_absent(case.out)


def test_nan_min_progress_is_a_usage_error(case):
    res = run_cli([*case.argv, "--min_progress", "nan"])
    assert_refused(res, code=2, names=["--min_progress"], fix=False)
    assert_absent(case.out)


def test_failed_reexport_keeps_the_previous_export(case):
    res = run_cli(case.argv)
    assert res.code == 0, res.text
    before = snapshot(case.out)
    case.shard.traj_paths[case.keys[0]].write_bytes(b"\x80\x04garbage")
    res = run_cli(case.argv)
    assert_refused(res, code=1, names=[str(case.shard.traj_paths[case.keys[0]])])
    assert_unchanged(before, case.out)  # the old, complete export is still the one at the path


# -- by hand, from the contracts: GRAIL's upstream release with continuous hand actions ---------
def _write_upstream_library(root: Path, keys: list[str], T: int = 60) -> dict[str, np.ndarray]:
    """§1.2-1.5 by hand: joblib pickles, single-key robot/objects dicts, flat meta, wxyz root_rot,
    and continuous hand actions (mean |hand joint position|, as the upstream release exports them)."""
    rng = np.random.default_rng(7)
    hands = {}
    for sub in ("robot", "objects", "meta", "object_usd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for key in keys:
        t = np.linspace(0, 1, T, dtype=np.float32)
        left = (0.05 + 0.02 * np.sin(6 * t)).astype(np.float32)           # mostly open
        right = (0.1 + 1.1 * np.clip(2 * t - 0.6, 0, 1)).astype(np.float32)  # closes while lifting
        hands[key] = np.stack([left, right])
        dof = (0.1 * rng.standard_normal((T, 29))).astype(np.float32)
        robot = {"root_trans_offset": np.column_stack([0.01 * np.arange(T), np.zeros(T), np.full(T, 0.79)]).astype(np.float32),
                 "pose_aa": np.zeros((T, 30, 3), np.float32), "dof": dof,
                 "root_rot": np.tile(np.array([1, 0, 0, 0], np.float32), (T, 1)),
                 "smpl_joints": np.zeros((T, 24, 3), np.float32), "fps": 30,
                 "hand_action_left": left, "hand_action_right": right}
        joblib.dump({key: robot}, root / "robot" / f"{key}.pkl", compress=3)
        objects = {"root_pos": np.tile(np.array([[0.5, 0.0, 0.8]], np.float32), (T, 1, 1)),
                   "root_quat": np.tile(np.array([[1, 0, 0, 0]], np.float32), (T, 1, 1)), "fps": 30.0, "scale": 1.0}
        joblib.dump({key: objects}, root / "objects" / f"{key}.pkl", compress=3)
        joblib.dump({"object_name": "mug", "table_pos": [0.6, 0.0, 0.75], "table_quat": [1, 0, 0, 0]},
                    root / "meta" / f"{key}.pkl", compress=3)
        (root / "object_usd" / f"{key}.usda").write_text('#usda 1.0\ndef Xform "mug" {}\n')
    return hands


def _write_hand_shard(shard: Path, keys: list[str], frames: int = 50) -> None:
    """§4.2 metrics and §4.3 trajectories by hand (the recorder's 43-DOF wxyz layout at 25 fps)."""
    shard.mkdir(parents=True)
    n = len(keys)
    table = {"motion_keys": keys, "terminated": [False] * n, "terminate_reason": [""] * n, "progress": [1.0] * n,
             "mpjpe_g": [30.0] * n, "mpjpe_l": [20.0] * n, "obj_pos_error": [0.02] * n, "obj_ori_error": [0.1] * n}
    (shard / "metrics_eval.json").write_text(json.dumps({"eval/success/success_rate": 1.0,
                                                         "eval/all_metrics_dict": table}))
    for key in keys:
        traj = {"dof_pos": np.zeros((frames, 43), np.float32),
                "root_pos_w": np.tile(np.array([0, 0, 0.79], np.float32), (frames, 1)),
                "root_quat_w": np.tile(np.array([1, 0, 0, 0], np.float32), (frames, 1)), "quat_format": "wxyz",
                "fps": 25.0, "num_joints": 43, "total_frames": frames, "object_pos_w": None, "object_quat_w": None,
                "table_pos_w": None, "table_quat_w": None}
        with open(shard / f"{key}.trajectory.pkl", "wb") as fh:
            pickle.dump(traj, fh)


def test_continuous_hand_actions_are_kept_and_recorded(tmp_path):
    keys = ["pickup_table__mug_0__000", "pickup_table__mug_0__001"]
    lib, shard, out = tmp_path / "upstream_ha", tmp_path / "shard", tmp_path / "out"
    hands = _write_upstream_library(lib, keys)
    _write_hand_shard(shard, keys)
    before = snapshot(lib, shard)
    res = run_cli(["export", "--eval_dir", shard, "--source_data", lib, "--output_dir", out])
    assert res.code == 0, res.text
    assert "hand actions: continuous" in res.stdout
    m = _strict_json(out / "export_manifest.json")
    assert m["hand_action_kind"] == "continuous" and m["hand_action_kinds"] == {"continuous": 2}
    assert {e["hand_action_kind"] for e in m["exported_motions"]} == {"continuous"}
    for key in keys:
        robot = safe_pickle.load(out / "robot" / f"{key}.pkl")[key]
        # not binarised: frame f of the 25 fps rollout holds source frame round(f * 30 / 25)
        src_idx = np.clip(np.rint(np.arange(50) * 30 / 25).astype(int), 0, 59)
        np.testing.assert_array_equal(robot["hand_action_left"], hands[key][0][src_idx])
        np.testing.assert_array_equal(robot["hand_action_right"], hands[key][1][src_idx])
        assert len(np.unique(robot["hand_action_right"])) > 2
    assert_unchanged(before, lib, shard)


def test_discrete_hand_actions_are_recorded_as_discrete(case):
    res = run_cli(case.argv)
    assert res.code == 0, res.text
    m = _strict_json(case.out / "export_manifest.json")
    assert m["hand_action_kind"] == "discrete" and "hand actions: discrete" in res.stdout
    robot = safe_pickle.load(case.out / "robot" / f"{case.keys[0]}.pkl")[case.keys[0]]
    assert set(np.unique(robot["hand_action_right"]).tolist()) <= {-1.0, 1.0}


def test_render_draws_continuous_hands_partly_closed(tmp_path):
    """The renderer's library reader takes the upstream signal as a degree of closure, and says so."""
    from grail_cluster.tools.replay.motion import RenderSettings, Task, motion_from_library
    from sonic.reference.scene import HAND_CLOSED

    key = "pickup_table__mug_0__000"
    hands = _write_upstream_library(tmp_path / "lib", [key])
    task = Task(key, "library", str(tmp_path / "o.mp4"), str(tmp_path / ".o.mp4"),
                robot=str(tmp_path / "lib" / "robot" / f"{key}.pkl"))
    motion = motion_from_library(task, RenderSettings(width=64, height=64))
    assert "hand_action: continuous" in motion.notes
    full = np.mean(np.abs(HAND_CLOSED[7:]))
    got = np.mean(np.abs(motion.hand_dof[:, 7:]), axis=1)  # mean |joint| of the drawn right hand
    np.testing.assert_allclose(got, np.clip(hands[key][1], 0, full), atol=1e-5)
    assert 0 < got.min() < got.max()  # neither all open nor all closed


# ----------------------------------------------------------------------------------------------
# Merge
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(library, tmp_path_factory) -> Path:
    """exp/exported/step_001000/shard_{0,1,2}: real exports (with sha256 outputs) of 3 eval shards."""
    root = tmp_path_factory.mktemp("exp")
    ha = library / "lib_ha"
    keys = sorted(p.stem for p in (ha / "robot").glob("*.pkl"))
    splits = [keys[0:2], keys[2:3], keys[3:4]]
    for r, part in enumerate(splits):
        shard = make_eval_shard(root / "eval" / f"shard_{r}", ha, part)
        export_shard(shard.shard_dir, ha, root / "exp" / "exported" / f"step_{STEP:06d}" / f"shard_{r}")
    return root / "exp"


@pytest.fixture
def exp(exported, tmp_path) -> Path:
    shutil.copytree(exported, tmp_path / "exp")
    return tmp_path / "exp"


def _step(exp: Path) -> Path:
    return exp / "exported" / f"step_{STEP:06d}"


def _merge(exp: Path, *extra) -> object:
    return run_cli(["merge", "--exp_dir", exp, "--step", str(STEP), "--num_shards", "3", *extra])


def _assert_unsound(exp: Path, res, names, before) -> dict:
    """Exit 1, named with a fix, inputs unchanged, nothing at merged/, the verdict at merged.unsound/."""
    assert_refused(res, code=1, names=names)
    shards = [p for p in _step(exp).iterdir() if p.name.startswith("shard_")]
    assert_unchanged(before, *shards)
    assert_absent(_step(exp) / "merged")
    manifest = _strict_json(_step(exp) / "merged.unsound" / "export_manifest.json")
    assert manifest["sound"] is False and manifest["problems"] and all(f["fix"] for f in manifest["findings"])
    assert str(_step(exp) / "merged.unsound") in res.stdout
    assert not [p for p in _step(exp).iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    return manifest


def _snap(exp: Path) -> dict:
    return snapshot(*[p for p in _step(exp).iterdir() if p.name.startswith("shard_")])


def test_sound_merge_publishes_merged(exp):
    res = _merge(exp)
    assert res.code == 0, res.text
    assert_no_traceback(res)
    m = _strict_json(_step(exp) / "merged" / "export_manifest.json")
    assert m["sound"] is True and m["exported_count"] == 4 and m["hand_action_kind"] == "discrete"
    assert not (_step(exp) / "merged.unsound").exists()


def test_missing_shard(exp):
    shutil.rmtree(_step(exp) / "shard_1")
    before = _snap(exp)
    res = _merge(exp)
    m = _assert_unsound(exp, res, [str(_step(exp)), "missing shards: [1]"], before)
    assert m["missing_shards"] == [1]


def test_stale_shard_from_another_num_shards(exp):
    shutil.copytree(_step(exp) / "shard_2", _step(exp) / "shard_3")
    before = _snap(exp)
    res = _merge(exp)
    _assert_unsound(exp, res, ["shard_3 exists but --num_shards is 3"], before)


def test_overlapping_shard(exp):
    shutil.rmtree(_step(exp) / "shard_2")
    shutil.copytree(_step(exp) / "shard_0", _step(exp) / "shard_2")  # shard_2 left over from another split
    before = _snap(exp)
    res = _merge(exp)
    m = _assert_unsound(exp, res, ["shard_0 and shard_2 share 2", "stale shards"], before)
    assert m["duplicates"]


def test_duplicate_key_below_the_overlap_threshold(exp):
    """One motion of shard_0 also exported by shard_1 (1 of 2 = 50% < 0.9): counted twice otherwise."""
    s0, s1 = _step(exp) / "shard_0", _step(exp) / "shard_1"
    key = json.loads((s0 / "export_manifest.json").read_text())["exported_motions"][0]["motion_key"]
    for rel in (f"robot/{key}.pkl", f"objects/{key}.pkl", f"meta/{key}.pkl", f"object_usd/{key}.usd"):
        if (s0 / rel).exists():
            shutil.copyfile(s0 / rel, s1 / rel)
    man = json.loads((s1 / "export_manifest.json").read_text())
    man["exported_motions"].append({"motion_key": key, "env_idx": 9})
    man["exported_count"] += 1
    man["total_motions_evaluated"] += 1
    man.pop("outputs")  # as a hand-edited (or GRAIL-written) manifest would be
    (s1 / "export_manifest.json").write_text(json.dumps(man))
    before = _snap(exp)
    res = _merge(exp, "--overlap_threshold", "0.9")
    _assert_unsound(exp, res, [key, "more than one shard"], before)


def test_count_mismatch_missing_usd(exp):
    s0 = _step(exp) / "shard_0"
    usd = next((s0 / "object_usd").glob("*.usd*"))
    usd.unlink()
    before = _snap(exp)
    res = _merge(exp)
    _assert_unsound(exp, res, ["count mismatch", str(s0)], before)


def test_truncated_pickle_in_a_shard(exp):
    p = next((_step(exp) / "shard_1" / "robot").glob("*.pkl"))
    p.write_bytes(p.read_bytes()[:100])
    before = _snap(exp)
    res = _merge(exp)
    _assert_unsound(exp, res, [str(p), "sha256 differs"], before)


def test_truncated_pickle_in_a_shard_without_hashes(exp):
    """A GRAIL-written shard manifest has no `outputs`: the pickle's missing STOP opcode gives it away."""
    s2 = _step(exp) / "shard_2"
    man = json.loads((s2 / "export_manifest.json").read_text())
    man.pop("outputs")
    (s2 / "export_manifest.json").write_text(json.dumps(man))
    p = next((s2 / "objects").glob("*.pkl"))
    p.write_bytes(p.read_bytes()[:-7])
    before = _snap(exp)
    res = _merge(exp)
    _assert_unsound(exp, res, [str(p), "truncated"], before)


@pytest.mark.parametrize("breakage", ["not_json", "count_disagrees", "outputs_not_a_dict"])
def test_bad_shard_manifest(exp, breakage):
    path = _step(exp) / "shard_1" / "export_manifest.json"
    man = json.loads(path.read_text())
    if breakage == "not_json":
        path.write_text(path.read_text()[:40])
    else:
        if breakage == "count_disagrees":
            man["exported_count"] = 7
        else:
            man["outputs"] = ["robot/x.pkl"]
        path.write_text(json.dumps(man))
    before = _snap(exp)
    res = _merge(exp)
    _assert_unsound(exp, res, [str(path)], before)


def test_previous_merge_of_other_inputs_is_moved_aside(exp):
    assert _merge(exp).code == 0
    old = snapshot(_step(exp) / "merged")
    shutil.rmtree(_step(exp) / "shard_2")  # shard_2 lost, the old merged/ no longer matches the shards
    res = _merge(exp)
    assert_refused(res, code=1, names=["missing shards", "merged.superseded"])
    assert_absent(_step(exp) / "merged")
    moved = _step(exp) / "merged.superseded"
    assert snapshot(moved) == {k.replace(str(_step(exp) / "merged"), str(moved)): v for k, v in old.items()}
    assert (_step(exp) / "merged.unsound").is_dir()


def test_previous_merge_of_the_same_inputs_is_kept(exp):
    """A wrong --num_shards does not destroy a sound merge of exactly the shards on disk; the output
    says it is kept and is not this merge's result."""
    assert _merge(exp).code == 0
    old = snapshot(_step(exp) / "merged")
    res = run_cli(["merge", "--exp_dir", exp, "--step", str(STEP), "--num_shards", "4"])
    assert_refused(res, code=1, names=["missing shards: [3]", "is kept", "not this merge's result"])
    assert_unchanged(old, _step(exp) / "merged")
    assert (_step(exp) / "merged.unsound").is_dir()


def test_allow_unsound_writes_merged_marked_unsound_and_a_fixed_merge_cleans_up(exp):
    saved = _step(exp).parent / "shard_1.saved"
    shutil.move(_step(exp) / "shard_1", saved)
    res = _merge(exp)
    assert res.code == 1 and (_step(exp) / "merged.unsound").is_dir()
    res = _merge(exp, "--allow-unsound")
    assert_refused(res, code=1, names=["--allow_unsound"])
    m = _strict_json(_step(exp) / "merged" / "export_manifest.json")
    assert m["sound"] is False and m["allowed_unsound"] is True and m["missing_shards"] == [1]
    assert not (_step(exp) / "merged.unsound").exists()
    shutil.move(saved, _step(exp) / "shard_1")
    res = _merge(exp)
    assert res.code == 0, res.text
    assert _strict_json(_step(exp) / "merged" / "export_manifest.json")["sound"] is True
    assert not (_step(exp) / "merged.unsound").exists()


def test_merge_stage_does_not_mark_an_unsound_merge_done(tmp_path, sonic_root, hoi_pair):
    """The DAG's merge job: an export shard lost, the entry exits 1, writes no marker and no merged/."""
    from grail_cluster.core.markers import marker_path
    from tests.evalgen import evaluated_run

    plan, _ = evaluated_run(tmp_path, hoi_pair[1], sonic_root, "web.enabled=false")
    entry = [sys.executable, "-m", "grail_cluster.entry"]
    for i in range(3):  # checkpoint 0's three export shards, as the jobs run them
        proc = subprocess.run([*entry, "export", "--run-dir", plan.run_dir, "--index", str(i)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    step_dir = Path(plan.paths["experiment_dir"]) / "exported" / "step_001000"
    shutil.rmtree(step_dir / "shard_1")
    proc = subprocess.run([*entry, "merge", "--run-dir", plan.run_dir, "--index", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "merged.unsound" in proc.stderr and "fix:" in proc.stderr
    assert not marker_path(plan.run_dir, "merge", 0).exists()
    assert_absent(step_dir / "merged")


def test_metrics_without_terminated_are_refused_not_read_as_all_successes(tmp_path):
    """A metrics_eval.json whose all_metrics_dict has no `terminated` list cannot tell a success: it is
    refused by name (exporting every motion as a success would be a wrong answer with exit 0)."""
    shard = tmp_path / "eval" / "step_1000" / "phase1_shard_0"
    shard.mkdir(parents=True)
    metrics = shard / "metrics_eval.json"
    metrics.write_text(json.dumps({"eval/all_metrics_dict": {"motion_keys": ["a", "b"], "progress": [1.0, 0.4]}}))
    before = snapshot(shard)
    res = run_cli(["export", "--eval_dir", shard, "--source_data", tmp_path / "src", "--output_dir", tmp_path / "out"])
    assert_refused(res, code=(1, 2), names=[str(metrics), "terminated"])
    assert_unchanged(before, shard)
    assert_absent(tmp_path / "out")
