"""SONIC fidelity (issue 14 §1) as a user meets it: ``grail-cluster`` by absolute path, venv off PATH,
output to pipes.

- A checkpoint period under a key SONIC never reads (``algo.config.save_frequency``, contracts §2.2)
  is refused at plan time, however it is passed, instead of training with SONIC's 500 silently.
- A fine-tune mode that does not exist is refused, naming the two that do.
- What ``run --dry-run`` shows for a fine-tune is the documented recipe, and every HOI eval command it
  writes carries the seven zeroing keys of §4.1 (typed from the contract's text, not our constants).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adversarial.harness import assert_refused, assert_unchanged, run_cli, snapshot
from tests.conftest import make_sonic_root
from tests.libgen import make_ha_pair

CACHE = (".grail_index.json",)
# Contracts §4.1, typed from its text.
ZEROING = ["++manager_env.commands.motion.velocity_range.x=[0,0]", "++manager_env.commands.motion.velocity_range.y=[0,0]",
           "++manager_env.commands.motion.velocity_range.z=[0,0]", "++manager_env.commands.motion.velocity_range.roll=[0,0]",
           "++manager_env.commands.motion.velocity_range.pitch=[0,0]", "++manager_env.commands.motion.velocity_range.yaw=[0,0]",
           "++manager_env.commands.motion.joint_velocity_range=[0,0]"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fidelity")
    make_ha_pair(root / "data", "pickup_table", 8, seed=11)
    make_sonic_root(root / "SONIC")
    return root


def _base(world: Path, runs: Path) -> list[str]:
    return [f"data.motion_lib={world / 'data' / 'pickup_table_ha'}", f"sonic.root={world / 'SONIC'}",
            f"run.root={runs}", "eval.num_shards=2", "select.k=2"]


@pytest.mark.parametrize("how", [
    '++sonic.extra_overrides=["++algo.config.save_frequency=250"]',
    "++train.overrides.algo.config.save_frequency=250",
])
def test_a_period_sonic_never_reads_is_refused(world, tmp_path, how):
    runs = tmp_path / "runs"
    before = snapshot(world / "data", ignore=CACHE)
    res = run_cli(["plan", *_base(world, runs), how])
    assert_refused(res, code=2, names=["algo.config.save_frequency=250", "callbacks.model_save.save_frequency",
                                       "train.save_frequency=250"])
    assert_unchanged(before, world / "data", ignore=CACHE)
    assert not runs.exists() or not any(runs.iterdir())


def test_an_unknown_finetune_mode_is_refused(world, tmp_path):
    res = run_cli(["plan", *_base(world, tmp_path / "runs"), "train.finetune.checkpoint=release",
                   "train.finetune.mode=weights"])
    assert_refused(res, code=2, names=["train.finetune.mode", "weights_only", "resume"])


def test_dry_run_shows_the_documented_recipe_and_hoi_zeroing(world, tmp_path):
    res = run_cli(["run", *_base(world, tmp_path / "runs"), "cluster=slurm", "cluster.check_limits=false", "train.finetune.checkpoint=release",
                   "train.save_frequency=250", "--dry-run"])
    assert res.code == 0, res.text
    text = res.stdout
    assert "++resume=True ++checkpoint=models/pnp_table_warmstart/last.pt" in text
    assert "++callbacks.model_save.save_frequency=250" in text and "algo.config.save_frequency" not in text
    # Every eval index's SONIC command, as the dry run writes it beside the job files.
    (preview,) = (tmp_path / "runs").glob("*/specs/slurm/eval_commands.sh")
    eval_lines = [ln for ln in preview.read_text().splitlines() if "eval_agent_trl.py" in ln and not ln.startswith("#")]
    assert len(eval_lines) == 2 * 2  # select.k checkpoints x eval.num_shards
    for line in eval_lines:
        for key in ZEROING:
            assert key in line, f"{key} missing from an HOI eval command: {line}"
