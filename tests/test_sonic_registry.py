"""The release-config registry (contracts §2.3) is the reference: the shipped pipeline yaml must agree
with it, and every command the adapter builds must carry the overrides each config needs."""

from __future__ import annotations

import pytest
import yaml

from grail_cluster.core import config
from grail_cluster.core.library import scan_library
from grail_cluster.runs.planner import build_plan
from grail_cluster.sonic import registry
from grail_cluster.stages import eval as eval_launcher
from grail_cluster.stages import train as train_launcher
from tests.conftest import PIPELINES, base_overrides


def test_five_release_configs_with_the_contract_numbers():
    assert registry.names() == list(PIPELINES)
    pnp_t, pnp_g, adv_t, adv_g, terrain = registry.RELEASE_CONFIGS
    for hoi in (pnp_t, pnp_g, adv_t, adv_g):
        assert hoi.exp == f"manager/universal_token/hoi/{hoi.name}" and hoi.kind == "hoi"
        assert (hoi.num_envs, hoi.iterations, hoi.save_frequency) == (4096, 20000, 500)
        assert hoi.project_name == "GRAB_Tracking" and hoi.robot == "g1_43dof" and hoi.motion_shard_by_rank
        assert hoi.tiebreak == "obj_pos_error"
        assert {hoi.needs[k] for k in ("objects", "object_usd", "bps")} == {"error"}
    # Only pnp_table uses the motions' hand actions; table configs need meta/ (table pose).
    assert [r.name for r in registry.RELEASE_CONFIGS if r.use_motion_hand_actions] == ["pnp_table"]
    assert [r.name for r in registry.RELEASE_CONFIGS if r.needs["hand_actions"] == "error"] == ["pnp_table"]
    assert [r.name for r in registry.RELEASE_CONFIGS if r.table] == ["pnp_table", "advanced_manip_table"]
    assert [r.sweep_tag for r in registry.RELEASE_CONFIGS] == ["bp3", "g22", "g25tha", "g25g", "tn"]
    assert terrain.exp == "manager/universal_token/scene/terrain_tracking"
    assert (terrain.num_envs, terrain.iterations, terrain.save_frequency) == (4096, 30000, 500)
    assert terrain.project_name == "TRL_G1_Track" and terrain.robot == "g1_model_12"
    assert not terrain.motion_shard_by_rank and terrain.flat_to_terrain_ratio == 0 and terrain.tiebreak == "mpjpe_l"
    assert terrain.needs["bps"] == "no" and terrain.needs["object_usd"] == "error"
    # Fine-tuning (§2.3): pnp 10000 iterations from *_warmstart, terrain 20000 from terrain_stairs_warmstart.
    assert (pnp_t.finetune_checkpoint, pnp_t.finetune_iterations) == ("models/pnp_table_warmstart/last.pt", 10000)
    assert (pnp_g.finetune_checkpoint, pnp_g.finetune_iterations) == ("models/pnp_ground_warmstart/last.pt", 10000)
    assert (terrain.finetune_checkpoint, terrain.finetune_iterations) == ("models/terrain_stairs_warmstart/last.pt", 20000)
    assert adv_t.finetune_checkpoint is None and adv_g.finetune_iterations is None


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_yaml_agrees_with_the_registry(name):
    """The single source of truth: configs/pipeline/<name>.yaml carries exactly the registry's values."""
    shipped = yaml.safe_load((config.config_dir() / "pipeline" / f"{name}.yaml").read_text())
    expected = registry.by_name(name).pipeline_values()
    for key, value in expected.items():
        assert shipped.get(key) == value, f"configs/pipeline/{name}.yaml: {key} is {shipped.get(key)!r}, registry says {value!r}"
    extra = set(shipped) - set(expected)
    assert not extra, f"configs/pipeline/{name}.yaml has keys the registry does not know: {sorted(extra)}"


def test_every_shipped_pipeline_is_a_release_config():
    shipped = sorted(p.stem for p in (config.config_dir() / "pipeline").glob("*.yaml"))
    assert shipped == sorted(registry.names())


def test_lookup_accepts_short_and_full_names():
    full = "manager/universal_token/hoi/pnp_table"
    assert registry.lookup(full).name == "pnp_table"
    assert registry.lookup("hoi/pnp_table").name == "pnp_table"
    assert registry.lookup("hoi/pnp_table.yaml").exp == full
    assert registry.lookup("hoi/my_private_cfg") is None and registry.lookup(None) is None
    assert registry.unknown_exp_warning(full) is None
    assert "not one of the SONIC release configs" in registry.unknown_exp_warning("hoi/my_private_cfg")
    with pytest.raises(KeyError, match="known: pnp_table"):
        registry.by_name("nope")


def _plan(tmp_path, lib, sonic, *extra):
    c = config.load(base_overrides(tmp_path, lib, sonic, *extra))
    layout = "terrain" if c["pipeline"]["kind"] == "terrain" else "auto"
    return build_plan(c, scan_library(c["data"]["motion_lib"], layout=layout))


@pytest.mark.parametrize("name", PIPELINES)
def test_built_commands_carry_the_overrides_each_config_needs(tmp_path, hoi_pair, terrain_lib, sonic_root, name):
    lib = terrain_lib.root if name == "terrain_tracking" else hoi_pair[1].root
    plan = _plan(tmp_path, lib, sonic_root, f"pipeline={name}", "eval.num_shards=2")
    release = registry.by_name(name)
    train = train_launcher.train_argv(plan)
    assert f"+exp={release.exp}" in train
    assert registry.missing_overrides(release, train) == []
    ev = eval_launcher.sonic_argv(plan, 1, "/ckpt/model_step_000500.pt", 500)
    assert registry.missing_overrides(release, ev) == []
    # Eval always overrides the shard keys (trained configs bake in the training world size).
    assert any("motion_shard_world_size=" in a for a in ev) and any("motion_shard_rank=" in a for a in ev)
    assert not [w for w in plan.warnings if w.startswith("sonic:")], plan.warnings


def test_missing_overrides_names_what_is_absent():
    release = registry.by_name("pnp_table")
    argv = ["+exp=x", f"++{registry.MLC}motion_file=/l/robot", f"{registry.MEC}object_usd_path=/l/usd"]
    assert registry.missing_overrides(release, argv) == [f"{registry.MLC}object_motion_file", f"{registry.MLC}bps_dir"]


def test_private_exp_config_is_a_warning_not_an_error(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    plan = _plan(tmp_path, ha.root, sonic_root, "pipeline.exp=manager/universal_token/hoi/my_private_pnp")
    assert any("my_private_pnp" in w and "not one of the SONIC release configs" in w for w in plan.warnings)
    assert "+exp=manager/universal_token/hoi/my_private_pnp" in train_launcher.train_argv(plan)


@pytest.mark.parametrize("name", PIPELINES)
def test_composed_needs_are_levels_not_booleans(name):
    """A bare `no` in YAML is false: every level must reach the plan as the string error|warn|no
    (the export stage tests `needs.hand_actions != "no"`)."""
    from omegaconf import OmegaConf

    needs = OmegaConf.to_container(config.compose([f"pipeline={name}"]).pipeline.needs)
    assert needs == dict(registry.by_name(name).needs)
    assert set(needs.values()) <= {"error", "warn", "no"}
