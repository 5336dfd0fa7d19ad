"""SONIC root checks: plan/run refuse a checkout without the trainer, evaluator or fine-tune checkpoint
(exit 2, naming the file), doctor lists the same problems (exit 1), private configs only warn."""

from __future__ import annotations

import json
import shutil

import pytest

from grail_cluster.cli.main import main
from grail_cluster.core import config
from grail_cluster.core.errors import EXIT_PROBLEMS, EXIT_USAGE, ConfigError
from grail_cluster.core.library import scan_library
from grail_cluster.runs.planner import build_plan
from grail_cluster.sonic import root as sonic_root_mod
from tests.conftest import base_overrides, make_sonic_root


def plan_cli(capsys, tmp_path, lib, sonic, *extra):
    rc = main(["plan", *base_overrides(tmp_path, lib, sonic, *extra), "--json"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_stand_in_root_passes(tmp_path, hoi_pair, sonic_root, capsys):
    _, ha = hoi_pair
    rc, out, err = plan_cli(capsys, tmp_path, ha.root, sonic_root)
    assert rc == 0, err
    assert not [w for w in json.loads(out)["warnings"] if w.startswith("sonic:")]


def test_missing_root(tmp_path, hoi_pair, capsys, chdir_tmp):
    _, ha = hoi_pair
    rc, _, err = plan_cli(capsys, tmp_path, ha.root, tmp_path / "no-such-SONIC")
    assert rc == EXIT_USAGE
    assert "no-such-SONIC" in err and "sonic.root is not a directory" in err and "fix:" in err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_missing_trainer_names_the_file(tmp_path, hoi_pair, sonic_root, capsys):
    _, ha = hoi_pair
    (sonic_root / "gear_sonic" / "train_agent_trl.py").unlink()
    rc, _, err = plan_cli(capsys, tmp_path, ha.root, sonic_root)
    assert rc == EXIT_USAGE
    assert f"{sonic_root}/gear_sonic/train_agent_trl.py" in err and "trainer is missing" in err
    assert not (tmp_path / "runs").exists()
    # The older docs' top-level copy is accepted (and the command builder picks it).
    (sonic_root / "train_agent_trl.py").write_text("# top-level trainer\n")
    rc, _, err = plan_cli(capsys, tmp_path, ha.root, sonic_root)
    assert rc == 0, err


def test_missing_evaluator_even_without_training(tmp_path, hoi_pair, sonic_root, capsys):
    _, ha = hoi_pair
    ckpt = tmp_path / "model_step_000500.pt"
    ckpt.write_bytes(b"w")
    (sonic_root / "gear_sonic" / "eval_agent_trl.py").unlink()
    (sonic_root / "gear_sonic" / "train_agent_trl.py").unlink()
    rc, _, err = plan_cli(capsys, tmp_path, ha.root, sonic_root, f"select.checkpoints=[{ckpt}]")
    assert rc == EXIT_USAGE
    # Training is skipped (explicit checkpoints), so only the evaluator is reported.
    assert "eval_agent_trl.py" in err and "evaluator is missing" in err and "train_agent_trl" not in err.split("fix:")[0]


def test_explicit_script_setting_is_checked(tmp_path, hoi_pair, sonic_root, capsys):
    _, ha = hoi_pair
    rc, _, err = plan_cli(capsys, tmp_path, ha.root, sonic_root, "sonic.train_script=scripts/my_train.py")
    assert rc == EXIT_USAGE and f"{sonic_root}/scripts/my_train.py" in err and "sonic.train_script" in err
    (sonic_root / "scripts").mkdir()
    (sonic_root / "scripts" / "my_train.py").write_text("#\n")
    rc, _, err = plan_cli(capsys, tmp_path, ha.root, sonic_root, "sonic.train_script=scripts/my_train.py")
    assert rc == 0, err


def test_missing_release_finetune_checkpoint(tmp_path, hoi_pair, capsys):
    _, ha = hoi_pair
    sonic = make_sonic_root(tmp_path / "SONIC", models=False)
    rc, _, err = plan_cli(capsys, tmp_path, ha.root, sonic, "train.finetune.checkpoint=release")
    assert rc == EXIT_USAGE
    expected = f"{sonic}/models/pnp_table_warmstart/last.pt"
    assert expected in err and "fine-tune checkpoint models/pnp_table_warmstart/last.pt not found" in err
    assert "nvidia/PhysicalAI-Robotics-Locomanipulation-GRAIL" in err  # where to get it
    assert not (tmp_path / "runs").exists()


def test_finetune_checkpoint_relative_and_absolute(tmp_path, hoi_pair, sonic_root, capsys):
    _, ha = hoi_pair
    rc, _, err = plan_cli(capsys, tmp_path, ha.root, sonic_root, "train.finetune.checkpoint=models/mine/last.pt")
    assert rc == EXIT_USAGE and f"{sonic_root}/models/mine/last.pt" in err
    own = sonic_root / "models" / "mine" / "last.pt"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"w")
    assert plan_cli(capsys, tmp_path, ha.root, sonic_root, "train.finetune.checkpoint=models/mine/last.pt")[0] == 0
    elsewhere = tmp_path / "elsewhere" / "model_step_001000.pt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"w")
    assert plan_cli(capsys, tmp_path, ha.root, sonic_root, f"train.finetune.checkpoint={elsewhere}")[0] == 0


def test_release_without_a_release_checkpoint(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    c = config.load(base_overrides(tmp_path, ha.root, sonic_root, "pipeline=advanced_manip_table",
                                   "train.finetune.checkpoint=release"))
    with pytest.raises(ConfigError, match="has no release warm-start checkpoint") as exc:
        build_plan(c, scan_library(ha.root))
    assert "pnp_table, pnp_ground, terrain_tracking" in exc.value.problem and exc.value.fix


def test_finetune_not_checked_when_training_is_skipped_or_rehearsed(tmp_path, hoi_pair):
    _, ha = hoi_pair
    sonic = make_sonic_root(tmp_path / "SONIC", models=False)
    ckpt = tmp_path / "model_step_000500.pt"
    ckpt.write_bytes(b"w")
    for extra in ([f"select.checkpoints=[{ckpt}]"], ["rehearsal.enabled=true"]):
        c = config.load(base_overrides(tmp_path, ha.root, sonic, "train.finetune.checkpoint=release", *extra))
        build_plan(c, scan_library(ha.root))  # no error
    # Rehearsal jobs never start SONIC: scripts are not required either, only the root.
    shutil.rmtree(sonic / "gear_sonic")
    c = config.load(base_overrides(tmp_path, ha.root, sonic, "rehearsal.enabled=true"))
    build_plan(c, scan_library(ha.root))


def test_missing_hoi_base_model_is_a_warning(tmp_path, hoi_pair):
    _, ha = hoi_pair
    sonic = make_sonic_root(tmp_path / "SONIC", models=False)
    c = config.load(base_overrides(tmp_path, ha.root, sonic))
    plan = build_plan(c, scan_library(ha.root))
    (w,) = [w for w in plan.warnings if w.startswith("sonic:")]
    assert "models/sonic_manipulation_base" in w and "last.pt" in w


def doctor(capsys, *args):
    rc = main(["doctor", *map(str, args), "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_doctor_checks_the_sonic_root_when_given(hoi_pair, tmp_path, capsys):
    _, ha = hoi_pair
    sonic = make_sonic_root(tmp_path / "SONIC")
    rc, rep = doctor(capsys, ha.root, "pipeline=pnp_table", f"sonic.root={sonic}", "train.finetune.checkpoint=release")
    assert rc == 0 and rep["ok"], rep["problems"]
    (sonic / "models" / "pnp_table_warmstart" / "last.pt").unlink()
    (sonic / "gear_sonic" / "eval_agent_trl.py").unlink()
    rc, rep = doctor(capsys, ha.root, "pipeline=pnp_table", f"sonic.root={sonic}", "train.finetune.checkpoint=release")
    assert rc == EXIT_PROBLEMS and not rep["ok"]
    errors = {p["check"]: p for p in rep["problems"] if p["severity"] == "error"}
    assert errors["finetune"]["path"] == str(sonic / "models" / "pnp_table_warmstart" / "last.pt")
    assert errors["sonic_root"]["path"] == str(sonic / "gear_sonic" / "eval_agent_trl.py")
    # Without sonic.root doctor stays a library check.
    rc, rep = doctor(capsys, ha.root, "pipeline=pnp_table")
    assert rc == 0 and not [p for p in rep["problems"] if p["check"].startswith(("sonic", "finetune"))]


def test_doctor_rich_output_names_the_missing_checkpoint(hoi_pair, tmp_path, capsys, monkeypatch):
    from grail_cluster.cli import common as cli

    monkeypatch.setattr(cli.out, "width", 400)  # no folding of long paths in the table
    _, ha = hoi_pair
    sonic = make_sonic_root(tmp_path / "SONIC", models=False)
    rc = main(["doctor", str(ha.root), "pipeline=pnp_ground", f"sonic.root={sonic}", "train.finetune.checkpoint=release"])
    out = capsys.readouterr().out
    assert rc == EXIT_PROBLEMS and str(sonic / "models" / "pnp_ground_warmstart" / "last.pt") in out
    assert "finetune" in out and "1 error(s)" in out


def test_sonic_problems_unit(tmp_path):
    sonic = make_sonic_root(tmp_path / "SONIC")
    assert sonic_root_mod.sonic_problems(sonic, pipeline={"name": "pnp_table",
                                                          "exp": "manager/universal_token/hoi/pnp_table"}) == []
    private = sonic_root_mod.sonic_problems(sonic, pipeline={"name": "x", "exp": "hoi/private"})
    assert [(p.severity, p.check) for p in private] == [("warn", "sonic_exp")]
    assert sonic_root_mod.find_script(sonic, "auto", "train_agent_trl.py") == sonic / "gear_sonic" / "train_agent_trl.py"
    assert sonic_root_mod.release_checkpoint({"exp": "scene/terrain_tracking"}) == "models/terrain_stairs_warmstart/last.pt"
    assert sonic_root_mod.release_checkpoint({"exp": "hoi/private"}) is None


def test_exp_config_checked_where_the_root_has_a_config_tree(tmp_path):
    sonic = make_sonic_root(tmp_path / "SONIC")
    pipeline = {"name": "pnp_table", "exp": "manager/universal_token/hoi/pnp_table"}
    exp_dir = sonic / "gear_sonic" / "config" / "exp" / "manager" / "universal_token" / "hoi"
    exp_dir.mkdir(parents=True)
    (problem,) = sonic_root_mod.sonic_problems(sonic, pipeline=pipeline)
    assert problem.severity == "warn" and problem.path == str(exp_dir / "pnp_table.yaml")
    assert "no config for +exp=manager/universal_token/hoi/pnp_table" in problem.problem
    (exp_dir / "pnp_table.yaml").write_text("defaults: [base]\npolicy: models/sonic_manipulation_base/last.pt\n")
    assert sonic_root_mod.sonic_problems(sonic, pipeline=pipeline) == []


def test_base_model_warning_follows_the_roots_own_config(tmp_path):
    sonic = make_sonic_root(tmp_path / "SONIC", models=False)
    pipeline = {"name": "pnp_ground", "exp": "manager/universal_token/hoi/pnp_ground"}
    assert [p.check for p in sonic_root_mod.sonic_problems(sonic, pipeline=pipeline)] == ["sonic_base"]
    # A root whose config does not build on the frozen base (the CPU reference tracker's) needs no models/.
    cfg = sonic_root_mod.exp_config_path(sonic, pipeline["exp"])
    cfg.parent.mkdir(parents=True)
    cfg.write_text("algo: {config: {num_learning_iterations: 150}}\n")
    assert sonic_root_mod.sonic_problems(sonic, pipeline=pipeline) == []
    cfg.write_text("base_model: models/sonic_manipulation_base/last.pt\n")
    assert [p.check for p in sonic_root_mod.sonic_problems(sonic, pipeline=pipeline)] == ["sonic_base"]


def test_reference_trainer_root_passes(tmp_path, hoi_pair):
    """trainer=reference plays SONIC with the embedded CPU tracker's root: no SONIC problems."""
    _, ha = hoi_pair
    for pipeline in ("pnp_table", "advanced_manip_ground"):
        c = config.load(["trainer=reference", f"pipeline={pipeline}", f"data.motion_lib={ha.root}",
                         f"run.root={tmp_path / 'runs'}"])
        assert sonic_root_mod.config_problems(c) == []


def test_private_exp_outside_universal_token_is_looked_up_verbatim(tmp_path):
    sonic = make_sonic_root(tmp_path / "SONIC")
    (sonic / "gear_sonic" / "config" / "exp" / "mine").mkdir(parents=True)
    (sonic / "gear_sonic" / "config" / "exp" / "mine" / "pnp_v2.yaml").write_text("x: 1\n")
    problems = sonic_root_mod.sonic_problems(sonic, pipeline={"name": "pnp_table", "exp": "mine/pnp_v2"})
    # Only the "not a release config" warning: the config itself is there.
    assert [(p.severity, p.check) for p in problems] == [("warn", "sonic_exp")]
    assert problems[0].path == str(sonic / "gear_sonic" / "config" / "exp" / "mine" / "pnp_v2.yaml")
