"""Hostile overrides and sweep files for `plan` / `run --dry-run`, called as a user calls the CLI.

Each refusal: exit 2 (configuration), no traceback, the override (or sweep file) named with a fix,
the library unchanged, nothing written under run.root. The overrides are what SONIC users really
type at grail-cluster (``+exp=...``, ``++algo.config.*``), typos, Hydra syntax errors, and sweeps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.adversarial.harness import assert_absent, assert_refused, assert_unchanged, run_cli, snapshot
from tests.conftest import make_sonic_root
from tests.libgen import make_library


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("overrides")
    lib = make_library(root / "lib", 4, fast=True)
    sonic = make_sonic_root(root / "SONIC")
    return root, lib.root, sonic


def _base(world, runs: Path) -> list[str]:
    _, lib, sonic = world
    return [f"data.motion_lib={lib}", f"sonic.root={sonic}", f"run.root={runs}", "pipeline=pnp_ground",
            "eval.num_shards=2"]


# (overrides, words the message must name, words of the fix)
CASES = {
    "sonic_exp_flag": (["+exp=hoi/pnp_table"], ["+exp=hoi/pnp_table"], ["pipeline=pnp_table"]),
    "sonic_exp_full_path": (["+exp=manager/universal_token/hoi/pnp_table"], ["exp"], ["pipeline="]),
    "sonic_key_top_level": (["++algo.config.learning_rate=1e-4"], ["algo.config.learning_rate"],
                            ["++train.overrides.algo.config.learning_rate"]),
    "sonic_num_envs_added": (["+num_envs=16"], ["num_envs"], ["train.overrides"]),
    "typo_added_key": (["+eval.nmu_shards=3"], ["eval.nmu_shards"], ["did you mean `eval.num_shards`"]),
    "typo_force_added_key": (["++train.overides.seed=1"], ["train.overides.seed"], ["never reads"]),
    "typo_changed_key": (["eval.nmu_shards=3"], ["eval.nmu_shards"], ["spelling"]),
    "unknown_group_option": (["pipeline=pnp_tabel"], ["pipeline/pnp_tabel"], ["pnp_table"]),
    "unknown_cluster": (["cluster=slurmm"], ["cluster/slurmm"], ["slurm"]),
    "unclosed_list": (["eval.num_shards=[1,2"], ["[1,2"], ["key=[a,b]"]),
    "no_key": (["=3"], ["'=3'"], ["key=value"]),
    "no_value_sign": (["eval.num_shards"], ["eval.num_shards"], []),
    "delete_group": (["~pipeline"], ["~pipeline"], ["pipeline=<value>"]),
    "delete_required_key": (["~eval.num_shards"], ["eval.num_shards"], ["set it instead"]),
    "sweep_without_m": (["train.seed=1,2,3"], ["train.seed=1,2,3"], ["-m"]),
    "non_integer_shards": (["eval.num_shards=two"], ["eval.num_shards"], []),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_override_is_refused(world, tmp_path, name):
    overrides, names, fixes = CASES[name]
    root, lib, _ = world
    runs = tmp_path / "runs"
    before = snapshot(lib)
    res = run_cli(["plan", *_base(world, runs), *overrides], cwd=tmp_path)
    assert_refused(res, code=2, names=names, fix=True)
    for word in fixes:
        assert word in res.text, f"fix {word!r} missing:\n{res.text}"
    assert_unchanged(before, lib)
    assert_absent(runs)


def test_dry_run_refuses_sonic_exp_before_writing(world, tmp_path):
    runs = tmp_path / "runs"
    res = run_cli(["run", *_base(world, runs), "+exp=hoi/pnp_table", "--dry-run"], cwd=tmp_path)
    assert_refused(res, code=2, names=["+exp=hoi/pnp_table"])
    assert_absent(runs)


def test_open_maps_stay_open(world, tmp_path):
    """The control: SONIC keys under train.overrides, env vars, Hydra's own keys are accepted."""
    runs = tmp_path / "runs"
    res = run_cli(["plan", *_base(world, runs), "++train.overrides.algo.config.learning_rate=1e-4",
                   "+sonic.env.MY_VAR=1", "~sonic.env.HYDRA_FULL_ERROR", "++eval.num_shards=2", "--json"],
                  cwd=tmp_path)
    assert res.code == 0, res.text
    assert json.loads(res.stdout)["eval"]["num_shards"] == 2


# ----------------------------------------------------------------------------- sweep files

SWEEP_FILES = {
    "not_yaml": ("params: {train.seed: [1, 2\n", ["not valid YAML", "line"]),
    "a_list": ("- train.seed=1\n- train.seed=2\n", ["params:"]),
    "unknown_top_key": ("sweep:\n  train.seed: 1,2\n", ["params:"]),
    "params_not_mapping": ("params: [train.seed]\n", ["`params` must be a mapping"]),
    "empty_list": ("params:\n  train.seed: []\n", ["params.train.seed is an empty list"]),
    "null_param": ("params:\n  train.seed:\n", ["params.train.seed has no values"]),
    "nested_value": ("params:\n  train.seed: [[1, 2], 3]\n", ["params.train.seed"]),
    "overrides_mapping": ("params:\n  train.seed: 1,2\noverrides:\n  - pipeline: pnp_ground\n", ["overrides"]),
    "single_values_only": ("params:\n  train.seed: 1\n", ["nothing to sweep"]),
    "sweeps_shared_key": ("params:\n  eval.num_shards: [1, 2]\n", ["eval.num_shards"]),
}


@pytest.mark.parametrize("name", sorted(SWEEP_FILES))
def test_bad_sweep_file_is_refused(world, tmp_path, name):
    text, words = SWEEP_FILES[name]
    root, lib, _ = world
    f = tmp_path / "sweep.yaml"
    f.write_text(text)
    runs = tmp_path / "runs"
    before = snapshot(lib, f)
    res = run_cli(["plan", *_base(world, runs), "--sweep-file", f], cwd=tmp_path)
    names = words if name == "sweeps_shared_key" else [str(f), *words]
    assert_refused(res, code=2, names=names)
    assert_unchanged(before, lib, f)
    assert_absent(runs)


@pytest.mark.parametrize("kind", ["missing", "directory", "binary"])
def test_sweep_file_that_is_not_a_file(world, tmp_path, kind):
    f = tmp_path / "sweep.yaml"
    if kind == "directory":
        f.mkdir()
    elif kind == "binary":
        f.write_bytes(bytes(range(256)) * 4)
    runs = tmp_path / "runs"
    res = run_cli(["plan", *_base(world, runs), "--sweep-file", f], cwd=tmp_path)
    assert_refused(res, code=2, names=[str(f)])
    assert_absent(runs)


def test_multirun_without_a_sweep(world, tmp_path):
    runs = tmp_path / "runs"
    res = run_cli(["plan", "-m", *_base(world, runs), "train.seed=1"], cwd=tmp_path)
    assert_refused(res, code=2, names=["no override sweeps"])
    assert_absent(runs)


def test_sweep_file_item_with_a_comma_stays_one_point(world, tmp_path):
    """YAML list items are values: 'a,b' must not split into two points (it made 3 points of 2)."""
    f = tmp_path / "sweep.yaml"
    f.write_text("params:\n  ++train.overrides.tag: ['a,b', c]\n  train.seed: [null, 7]\n")
    res = run_cli(["plan", *_base(world, tmp_path / "runs"), "--sweep-file", f, "--json"], cwd=tmp_path)
    assert res.code == 0, res.text
    points = json.loads(res.stdout)["points"]
    assert sorted(tuple(p["overrides"]) for p in points) == [
        ("++train.overrides.tag='a,b'", "train.seed=7"), ("++train.overrides.tag='a,b'", "train.seed=null"),
        ("++train.overrides.tag=c", "train.seed=7"), ("++train.overrides.tag=c", "train.seed=null")]
