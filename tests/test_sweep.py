"""Sweeps: `grail-cluster run -m` expands Hydra multiruns into training points of one run.

Expansion, validation and planning are checked as pure functions; the whole DAG of a 6-point sweep
runs on the local executor (rehearsal jobs); and select-top ranks across points from the
experiment dirs' own logs. The reference-trainer sweep on the real SLURM cluster (one array, one
W&B group, a point killed and resumed alone) is in test_sweep_slurm.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from grail_cluster.cli.main import main
from grail_cluster.core.config import load
from grail_cluster.core.errors import ConfigError, DataError
from grail_cluster.core.library import scan_library
from grail_cluster.core.plan import read_plan
from grail_cluster.core.sweep import check_points, expand
from grail_cluster.runs.planner import build_plan
from grail_cluster.stages import registry
from grail_cluster.tools.data.select_top import select_across
from tests.conftest import base_overrides, make_sonic_root
from tests.libgen import make_library

SWEEP = ["train.seed=1,2,3", "++train.overrides.algo.config.learning_rate=1e-3,3e-4"]


def test_expand_is_hydras_multirun():
    sweep = expand(["pipeline=pnp_table", *SWEEP])
    assert sweep.base == ["pipeline=pnp_table"]
    assert len(sweep.swept) == 6
    assert sweep.swept[0] == ["train.seed=1", "++train.overrides.algo.config.learning_rate=0.001"]
    assert sweep.swept[5] == ["train.seed=3", "++train.overrides.algo.config.learning_rate=0.0003"]
    assert [s[0] for s in expand(["train.seed=range(0,4)"]).swept] == [f"train.seed={i}" for i in range(4)]


def test_sweep_file(tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_text("params:\n  train.seed: 1,2\n  train.num_envs: [8, 16]\noverrides: [pipeline=pnp_ground]\n")
    sweep = expand([], str(f))
    assert sweep.base == ["pipeline=pnp_ground"] and len(sweep.swept) == 4
    f.write_text("seeds: [1, 2]\n")
    with pytest.raises(ConfigError, match="sweep file holds"):
        expand([], str(f))


def test_expand_without_a_sweep_is_refused():
    with pytest.raises(ConfigError, match="no override sweeps"):
        expand(["train.seed=1"])


def _configs(tmp_path, hoi_lib, sonic_root, *sweep: str):
    s = expand(base_overrides(tmp_path, hoi_lib.root, sonic_root, "pipeline=advanced_manip_table", "train.gpus_per_node=2",
                              "eval.num_shards=3", "select.k=2") + list(sweep))
    return [load(p) for p in s.points], s


def test_points_may_differ_only_in_training(tmp_path, hoi_lib, sonic_root):
    configs, sweep = _configs(tmp_path, hoi_lib, sonic_root, "eval.num_shards=2,3")
    with pytest.raises(ConfigError, match="changes `eval.num_shards`"):
        check_points(configs, sweep)
    configs, sweep = _configs(tmp_path, hoi_lib, sonic_root, "train.gpus_per_node=1,2")
    with pytest.raises(ConfigError, match="one allocation"):
        check_points(configs, sweep)
    configs, sweep = _configs(tmp_path, hoi_lib, sonic_root, "train.num_envs=4,6", "train.seed=1,2")
    check_points(configs, sweep)  # training-only differences are a sweep


def test_sweep_plan(tmp_path, hoi_lib, sonic_root):
    configs, sweep = _configs(tmp_path, hoi_lib, sonic_root, "train.num_envs=4,6", "train.seed=1,2")
    index = scan_library(str(hoi_lib.root))
    plan = build_plan(configs[0], index, sweep={"configs": configs, "swept": sweep.swept})
    assert plan.is_sweep and plan.run_id.startswith("advanced_manip_table-sweep-")
    train = plan.stage("train")
    assert train.size == 4 and registry.get("train").is_array(train.size)
    dirs = [p["experiment_dir"] for p in plan.train["points"]]
    assert len(set(dirs)) == 4 and all(Path(d).parent == Path(plan.run_dir) / "experiments" for d in dirs)
    # Each point's rank slices follow its own num_envs (HOI slicing keeps motions past num_envs unused).
    assert [p["world_size"] for p in plan.train["points"]] == [2, 2, 2, 2]
    assert plan.point_config(0)["train"]["num_envs"] == 4 and plan.point_config(2)["train"]["num_envs"] == 6
    assert plan.point_config(3)["train"]["seed"] == 2
    # Same inputs, same run id and hash; another sweep, another run.
    again = build_plan(configs[0], index, sweep={"configs": configs, "swept": sweep.swept})
    assert again.plan_hash == plan.plan_hash
    other, osweep = _configs(tmp_path, hoi_lib, sonic_root, "train.seed=1,2,3")
    assert build_plan(other[0], index, sweep={"configs": other, "swept": osweep.swept}).run_id != plan.run_id
    # One eval plan for the sweep: k winners x N shards, wherever they come from.
    assert plan.stage("eval").size == 2 * 3 and plan.stage("select").size == 1


def test_train_script_holds_every_points_command(tmp_path, hoi_lib, sonic_root):
    from grail_cluster.stages import train as train_launcher

    configs, sweep = _configs(tmp_path, hoi_lib, sonic_root, *SWEEP)
    plan = build_plan(configs[0], scan_library(str(hoi_lib.root)), sweep={"configs": configs, "swept": sweep.swept})
    body = "\n".join(registry.get("train").spec(plan).body)
    for n, p in enumerate(plan.train["points"]):
        argv = train_launcher.train_argv(plan, n)
        assert f"++experiment_dir={p['experiment_dir']}" in argv
        assert f"++wandb.wandb_group={plan.run_id}" in argv
        assert f"  {n})  # p{n:03d}:" in body
    assert "++seed=3" in train_launcher.train_argv(plan, 5)
    assert "++algo.config.learning_rate=0.0003" in train_launcher.train_argv(plan, 5)
    assert "++algo.config.learning_rate=0.001" in train_launcher.train_argv(plan, 4)
    assert '"${GRAIL_TRAIN[@]}" "${GRAIL_RESUME_ARGS[@]}"' in body


def _exp(root: Path, rows: dict[int, tuple[float, float]]) -> Path:
    """An experiment dir with the eval watcher's metrics per step and the checkpoints they name."""
    root.mkdir(parents=True)
    for step, (sr, mpjpe) in rows.items():
        d = root / "eval" / f"{step:06d}" / "train"
        d.mkdir(parents=True)
        (d / "metrics_eval.json").write_text(json.dumps({"eval/success/success_rate": sr, "eval/all/mpjpe_l": mpjpe}))
        (root / f"model_step_{step:06d}.pt").write_bytes(b"x")
    return root


def test_select_across_points(tmp_path):
    a = _exp(tmp_path / "p000", {10: (0.5, 30.0), 20: (0.75, 25.0)})
    b = _exp(tmp_path / "p001", {10: (0.75, 20.0), 20: (0.25, 10.0)})
    res = select_across(experiment_dirs=[a, b], group="sw", k=3)
    top = [(Path(e["experiment_dir"]).name, e["eval_step"]) for e in res["top"]]
    # SR desc, then mpjpe_l asc; both points' step 10 count (one row per step *per point*).
    assert top == [("p001", 10), ("p000", 20), ("p000", 10)]
    assert res["top"][0]["checkpoint_path"] == str(b / "model_step_000010.pt")
    assert res["group"] == "sw" and res["experiment_dir"] is None and len(res["runs"]) == 2
    assert [e["rank"] for e in res["top"]] == [1, 2, 3]
    (b / "model_step_000010.pt").unlink()
    with pytest.raises(DataError, match="missing"):
        select_across(experiment_dirs=[a, b], k=1)


def test_select_top_group_of_a_sweep_run_dir(tmp_path, hoi_lib, sonic_root, capsys):
    configs, sweep = _configs(tmp_path, hoi_lib, sonic_root, "train.seed=1,2")
    plan = build_plan(configs[0], scan_library(str(hoi_lib.root)), sweep={"configs": configs, "swept": sweep.swept})
    from grail_cluster.core.plan import write_plan

    write_plan(plan)
    _exp(Path(plan.experiment_dir(0)), {10: (0.5, 1.0)})
    _exp(Path(plan.experiment_dir(1)), {10: (0.9, 1.0), 20: (0.1, 1.0)})
    assert main(["select-top", "--group", plan.run_dir, "--k", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["group"] == plan.run_id
    assert [(e["experiment_dir"], e["eval_step"]) for e in res["top"]] == [
        (plan.experiment_dir(1), 10), (plan.experiment_dir(0), 10)]


@pytest.fixture
def world(tmp_path):
    make_library(tmp_path / "lib", 12, fast=True)
    make_sonic_root(tmp_path / "SONIC")
    return tmp_path


def test_whole_sweep_dag_on_the_local_executor(world, capsys):
    args = ["run", "-m", "pipeline=advanced_manip_table", "cluster=local", f"data.motion_lib={world / 'lib'}",
            f"sonic.root={world / 'SONIC'}", f"run.root={world / 'runs'}", "eval.num_shards=2", "select.k=2",
            "rehearsal.enabled=true", f"job.python={sys.executable}", "train.gpus_per_node=1", "cluster.cpus=4", "cluster.gpus=[0,1]",
            "render.enabled=false", *SWEEP, "--json"]
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()
    run_dir = next((world / "runs").iterdir())
    plan = read_plan(run_dir)
    assert main(["status", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"], data
    assert {s["name"]: s["counts"] for s in data["stages"]}["train"] == {"done": 6}
    assert [p["state"] for p in data["points"]] == ["done"] * 6
    assert [p["overrides"] for p in data["points"]] == [p["overrides"] for p in plan.train["points"]]
    # Each point trained its own rehearsal motions into its own marker; select saw all six.
    markers = sorted((run_dir / "markers" / "train").glob("*"))
    assert len(markers) == 6
    assert main(["status", str(run_dir), "--point", "p002"]) == 0
    text = capsys.readouterr().out
    assert "p002" in text and "p001" not in text.split("sweep")[-1]
    assert main(["status", str(run_dir), "--point", "9"]) == 2  # no such point: usage error, no traceback
    assert "points 0..5" in capsys.readouterr().err


def test_point_flags_on_a_plain_run_are_refused(world, capsys):
    args = ["plan", "pipeline=advanced_manip_table", "cluster=local", f"data.motion_lib={world / 'lib'}",
            f"sonic.root={world / 'SONIC'}", f"run.root={world / 'runs'}", "eval.num_shards=2", "run.id=plain"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["cancel", str(world / "runs" / "plain"), "--point", "1"]) == 2
    assert "not a sweep" in capsys.readouterr().err
    # A comma list without -m is Hydra's ambiguity error, with the fix.
    assert main([*args[:-1], "run.id=x", "train.seed=1,2"]) == 2
    assert "-m" in capsys.readouterr().err
