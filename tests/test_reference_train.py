"""The reference trainer and evaluator behind SONIC's entry points, launched the way grail-cluster
launches SONIC: ``accelerate launch`` with two CPU processes (gloo), SONIC's overrides, SONIC's
experiment-dir layout, resume, and the eval command of one shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_reference_sim import write_motion

pytest.importorskip("torch")
pytest.importorskip("accelerate")
from grail_cluster.sonic.commands import HOI_EVAL_ZEROING, MEC, MLC  # noqa: E402
from grail_cluster.sonic.reference.setup import reference_root  # noqa: E402
from grail_cluster.tools.data.experiment_logs import experiment_rows  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainlib")
    for i in range(2):
        write_motion(root, f"stand_box_{i}", seconds=1.5)
        write_motion(root, f"jump_box_{i}", seconds=1.5, jump_at=0.6)
    return root


def _data(lib: Path) -> list[str]:
    return [f"++{MLC}motion_file={lib}/robot", f"++{MLC}object_motion_file={lib}/objects",
            f"++{MEC}object_usd_path={lib}/object_usd"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GRAIL_RUN_DIR"}
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _train(lib: Path, exp: Path, iterations: int, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
            "gear_sonic/train_agent_trl.py", "+exp=manager/universal_token/hoi/pnp_table", "num_envs=2", "headless=True",
            f"++algo.config.num_learning_iterations={iterations}", "++callbacks.model_save.save_frequency=2",
            "++algo.config.num_steps_per_env=8", *_data(lib), f"++experiment_dir={exp}", *extra]
    return subprocess.run(argv, cwd=reference_root(), env=_env(), capture_output=True, text=True, timeout=300)


def _eval(lib: Path, checkpoint: Path, out: Path, world: int = 1, rank: int = 0) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-u", "gear_sonic/eval_agent_trl.py", f"+checkpoint={checkpoint}", "+headless=True",
            "++eval_callbacks=im_eval", "++run_eval_loop=False", "++num_envs=4", f"++eval_output_dir={out}",
            "+manager_env/terminations=tracking/eval", f"++{MLC}motion_shard_world_size={world}",
            f"++{MLC}motion_shard_rank={rank}", *_data(lib), *HOI_EVAL_ZEROING,
            f"++manager_env.recorders.trajectory.save_path={out}"]
    return subprocess.run(argv, cwd=reference_root(), env=_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(lib, tmp_path_factory):
    exp = tmp_path_factory.mktemp("exp") / "pnp_table_reference-20260101_000000"
    proc = _train(lib, exp, 4)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return exp, proc.stdout


def test_two_ranks_train_their_own_block_and_write_sonics_layout(trained):
    exp, log = trained
    # HOI slicing: sorted keys [jump_0, jump_1, stand_0, stand_1] -> rank 0 the jumps, rank 1 the stands.
    assert "[Motion Shard] Rank 0/2: motions [0:2] = 2/4" in log and "[Motion Shard] Rank 1/2: motions [2:4] = 2/4" in log
    assert "[reference] rank 0/2: 2 motions (jump_box_0 .. jump_box_1)" in log
    assert "[reference] rank 1/2: 2 motions (stand_box_0 .. stand_box_1)" in log
    names = {p.name for p in exp.iterdir()}
    assert {"config.yaml", "meta.yaml", "model_step_000002.pt", "model_step_000004.pt", "last.pt"} <= names
    assert any(n.startswith("events.out.tfevents.") for n in names)
    meta = yaml.safe_load((exp / "meta.yaml").read_text())
    assert meta["max_train_steps"] == 4 and meta["wandb_run"]
    assert yaml.safe_load((exp / "config.yaml").read_text())["algo"]["config"]["num_learning_iterations"] == 4


def test_logged_success_rate_is_the_evaluators(trained, lib, tmp_path):
    """The training-time eval logged to TensorBoard agrees with evaluating the saved checkpoint."""
    exp, _ = trained
    rows = {r["eval_step"]: r for r in experiment_rows(exp)}
    assert set(rows) == {2, 4}
    proc = _eval(lib, exp / "model_step_000004.pt", tmp_path / "shard")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "shard" / "metrics_eval.json").read_text())
    assert data["eval/success/success_rate"] == pytest.approx(rows[4]["eval/success/success_rate"])
    # Standing is trackable and an impossible jump is not, whatever the policy learned in 4 iterations.
    ok = dict(zip(data["eval/all_metrics_dict"]["motion_keys"], data["eval/all_metrics_dict"]["terminated"],
                  strict=True))
    assert ok == {"jump_box_0": True, "jump_box_1": True, "stand_box_0": False, "stand_box_1": False}
    assert sorted(p.name for p in (tmp_path / "shard").glob("*.trajectory.pkl")) == [
        f"{k}.trajectory.pkl" for k in sorted(ok)]


def test_eval_shard_keys_slice_like_sonic(trained, lib, tmp_path):
    exp, _ = trained
    proc = _eval(lib, exp / "model_step_000002.pt", tmp_path / "s1", world=2, rank=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    keys = json.loads((tmp_path / "s1" / "metrics_eval.json").read_text())["eval/all_metrics_dict"]["motion_keys"]
    assert keys == ["stand_box_0", "stand_box_1"]
    assert "[Motion Shard] Rank 1/2: motions [2:4] = 2/4" in proc.stdout  # SONIC's exact line (contracts §3.1)


def test_resume_continues_from_last_pt(trained, lib, tmp_path):
    exp, _ = trained
    proc = _train(lib, exp, 6, "++resume=True")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "continuing from" in proc.stdout and "(iteration 4)" in proc.stdout
    assert (exp / "model_step_000006.pt").is_file()


def test_eval_refuses_a_file_that_is_not_a_checkpoint(lib, tmp_path):
    bogus = tmp_path / "model_step_000001.pt"
    bogus.write_bytes(b"not a checkpoint")
    proc = _eval(lib, bogus, tmp_path / "out")
    assert proc.returncode != 0
    assert "not a reference-tracker checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "metrics_eval.json").exists()


def test_trainer_logs_sonic_slice_markers_from_its_data_not_the_plan(lib, tmp_path):
    """Like SONIC, the trainer slices the command's data and never reads plan.json; it logs what it
    took in SONIC's exact form (contracts §3.1), so the job's slice audit can judge it."""
    run = tmp_path / "run"
    run.mkdir()
    # A plan.json whose ranks hold other keys: the trainer must neither read nor obey it.
    plan = {"train": {"ranks": [{"motion_keys": ["other_0"]}, {"motion_keys": ["other_1"]}]}}
    (run / "plan.json").write_text(json.dumps(plan))
    env = _env()
    env["GRAIL_RUN_DIR"] = str(run)
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
            "gear_sonic/train_agent_trl.py", "+exp=manager/universal_token/hoi/pnp_table",
            "num_envs=2", "++algo.config.num_learning_iterations=1", "++algo.config.num_steps_per_env=4",
            *_data(lib), f"++experiment_dir={tmp_path / 'exp'}"]
    proc = subprocess.run(argv, cwd=reference_root(), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    total = len(list((lib / "robot").rglob("*.pkl")))
    # Written here from the contract's formula, not with the product's block_bounds.
    for rank in range(2):
        a, b = rank * total // 2, (rank + 1) * total // 2
        assert f"[Motion Shard] Enabled: rank {rank}/2" in proc.stdout
        assert f"[Motion Shard] Rank {rank}/2: motions [{a}:{b}] = {b - a}/{total}" in proc.stdout


def test_reference_eval_output_goes_through_export_merge_and_summarize(trained, lib, tmp_path):
    """The data tools cannot tell the reference evaluator's shards from SONIC's."""
    import joblib

    from grail_cluster.tools.data.export import export_shard
    from grail_cluster.tools.data.merge import merge_step
    from grail_cluster.tools.data.summarize import summarize

    exp, _ = trained
    work = tmp_path / "exp"
    step_dir = work / "eval" / "step_000004"
    for shard in range(2):
        proc = _eval(lib, exp / "model_step_000004.pt", step_dir / f"phase1_shard_{shard}", world=2, rank=shard)
        assert proc.returncode == 0, proc.stderr[-2000:]
        export_shard(step_dir / f"phase1_shard_{shard}", lib, work / "exported" / "step_000004" / f"shard_{shard}",
                     checkpoint=str(exp / "model_step_000004.pt"), step=4)
    report = merge_step(work, 4, num_shards=2, source_data=lib)
    assert report["sound"], report
    merged = Path(report["output"])
    assert sorted(p.stem for p in (merged / "robot").glob("*.pkl")) == ["stand_box_0", "stand_box_1"]
    robot = joblib.load(merged / "robot" / "stand_box_0.pkl")["stand_box_0"]
    assert robot["dof"].shape[1] == 29 and robot["hand_dof_pos"].shape[1] == 14 and robot["fps"] == 25.0
    summary = summarize(work)
    row = next(s for s in summary["steps"] if s["step"] == 4) if "steps" in summary else summary
    text = json.dumps(row)
    assert '"total_motions": 4' in text and '"total_success": 2' in text


def test_offline_wandb_run_is_ranked_by_select_top_group(lib, tmp_path):
    """With use_wandb, the trainer's offline W&B run (group, eval_step rows) is what select-top reads."""
    from grail_cluster.tools.data.select_top import select_top

    exp = tmp_path / "exp"
    env = {**_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    argv = [sys.executable, "gear_sonic/train_agent_trl.py", "+exp=manager/universal_token/hoi/pnp_table",
            "num_envs=2", "++algo.config.num_learning_iterations=2", "++callbacks.model_save.save_frequency=1",
            "++algo.config.num_steps_per_env=4", *_data(lib), f"++experiment_dir={exp}", "++use_wandb=true",
            "++wandb.wandb_group=sweep-a"]
    proc = subprocess.run(argv, cwd=reference_root(), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = select_top(group="sweep-a", wandb_dir=exp / "wandb", k=2)
    tb = {r["eval_step"]: r["eval/success/success_rate"] for r in experiment_rows(exp)}
    assert [t["eval_step"] for t in result["top"]] and {t["eval_step"] for t in result["top"]} == {1, 2}
    assert all(t["success_rate"] == pytest.approx(tb[t["eval_step"]]) for t in result["top"])
