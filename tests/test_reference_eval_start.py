"""The reference evaluator honours the motion command's initial-velocity keys the way SONIC's command
does (contracts §4.1): the HOI eval command grail-cluster renders zeroes them, and every episode then
starts on the reference; left at the config's ranges, episodes start with random root and joint
velocities and the tracking error changes. The commands come from the real renderer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from grail_cluster.sonic import commands
from tests.test_reference_sim import write_motion

torch = pytest.importorskip("torch")
from grail_cluster.sonic.reference import evaluate  # noqa: E402
from grail_cluster.sonic.reference.env import ACT_DIM, OBS_DIM, StartVelocity  # noqa: E402
from grail_cluster.sonic.reference.ppo import ActorCritic, Normalizer  # noqa: E402

KEYS = ("stand_a", "stand_b")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalstart")
    lib = root / "lib"
    for key in KEYS:
        write_motion(lib, key, seconds=1.2)
    # A policy with no residual: the PD targets are the reference's, so what differs between runs is
    # only how each episode starts.
    model = ActorCritic(OBS_DIM, ACT_DIM, [32], -2.5)
    with torch.no_grad():
        for p in model.actor.parameters():
            p.zero_()
    ckpt = root / "model_step_000001.pt"
    torch.save({"policy_state_dict": model.state_dict(), "env_state_dict": {"obs_normalizer": Normalizer(OBS_DIM).state_dict()},
                "args": {"obs_dim": OBS_DIM, "act_dim": ACT_DIM, "hidden_dims": [32], "init_log_std": -2.5,
                         "action_scale": 0.1}}, ckpt)
    return root, lib, ckpt


def _run(world, name: str, zero: bool, capsys) -> tuple[dict, str]:
    root, lib, ckpt = world
    out = root / name
    argv = commands.eval_argv(
        python="python", script="gear_sonic/eval_agent_trl.py", checkpoint=str(ckpt), num_envs=len(KEYS),
        output_dir=str(out), data_overrides=commands.hoi_data_overrides(str(lib), str(lib / "object_usd"), None),
        shard_overrides=commands.block_shard_overrides(1, 0), record_trajectories=False,
        zero_motion_randomisation=zero)
    assert evaluate.main(argv[3:]) == 0
    metrics = json.loads((out / "metrics_eval.json").read_text())["eval/all_metrics_dict"]
    return metrics, capsys.readouterr().out


def test_zeroed_ranges_start_every_episode_on_the_reference(world, capsys):
    zeroed, log = _run(world, "zeroed", True, capsys)
    assert "initial velocities: zeroed" in log
    again, _ = _run(world, "zeroed_again", True, capsys)
    assert zeroed["mpjpe_l"] == again["mpjpe_l"]  # no draw at all: deterministic
    # The same rollout with no start velocities (at rest), computed without the command line.
    from omegaconf import OmegaConf

    from grail_cluster.sonic.reference.env import Terminations, prepare
    from grail_cluster.sonic.reference.setup import load_motions, motion_keys

    root, lib, ckpt = world
    cfg = OmegaConf.create({"manager_env": {"config": {"object_usd_path": str(lib / "object_usd")}, "commands": {"motion": {
        "motion_lib_cfg": {"motion_file": f"{lib}/robot", "object_motion_file": f"{lib}/objects",
                           "filter_motion_keys": None, "remove_motion_keys": None}}}}})
    keys, files = motion_keys(cfg)
    policy, args = evaluate.load_policy(ckpt)
    rows = evaluate.rollout([prepare(m) for m in load_motions(cfg, keys, files)], policy, Terminations(0.25, 1.0, 0.25, None),
                            args["action_scale"])
    assert [r["mpjpe_l"] for r in rows] == pytest.approx(zeroed["mpjpe_l"], rel=0, abs=1e-9)


def test_unzeroed_ranges_randomise_the_start(world, capsys):
    zeroed, _ = _run(world, "z", True, capsys)
    randomised, log = _run(world, "r", False, capsys)
    assert "initial velocities: randomised" in log
    assert zeroed["motion_keys"] == randomised["motion_keys"] == sorted(KEYS)
    # Every motion's tracking differs once its episode starts with random velocities.
    assert all(abs(a - b) > 1e-6 for a, b in zip(zeroed["mpjpe_l"], randomised["mpjpe_l"], strict=True))
    assert np.mean(randomised["mpjpe_l"]) > np.mean(zeroed["mpjpe_l"])


def test_start_velocity_reads_sonics_keys():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"velocity_range": {a: [-0.5, 0.5] for a in commands.VELOCITY_AXES},
                            "joint_velocity_range": [-1.0, 1.0]})
    assert not StartVelocity.from_config(cfg).zero
    # The rendered HOI eval overrides, applied as Hydra applies them, zero all seven ranges.
    for arg in commands.HOI_EVAL_ZEROING:
        key, value = arg.removeprefix("++").removeprefix(commands.MOTION_COMMAND).split("=")
        OmegaConf.update(cfg, key, json.loads(value))
    assert StartVelocity.from_config(cfg).zero
    from grail_cluster.core.errors import ConfigError

    with pytest.raises(ConfigError, match="joint_velocity_range"):
        StartVelocity.from_config(OmegaConf.create({"joint_velocity_range": [1.0, -1.0]}))
