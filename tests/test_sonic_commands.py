"""Golden SONIC training commands the job-file goldens (tests/test_render.py) do not already pin down:
fine-tune from a release checkpoint (HOI and terrain), resume of an existing experiment dir, and
2-node HOI training. Each golden shows the command of a first start and of a requeued job, with what
SONIC will load and where it writes (the §2.2 rule, sonic/experiment.resolve_resume).

Already covered as job files under tests/golden/: full training and HOI block-sharded eval
(<pipeline>_<backend>), smoke (slurm_gres_smoke), fine-tune + resume + balanced eval
(slurm_finetune_balanced), 4-node HOI (slurm_multinode), 2-node terrain (kubernetes_multinode),
terrain train/eval (terrain_tracking_*). Regenerate with GRAIL_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from grail_cluster.core import config
from grail_cluster.core.library import scan_library
from grail_cluster.runs.job_files import render_files
from grail_cluster.runs.planner import build_plan
from grail_cluster.sonic import registry
from grail_cluster.sonic.commands import shell_join
from grail_cluster.sonic.experiment import resolve_resume
from grail_cluster.stages import train as train_launcher
from tests.conftest import make_sonic_root
from tests.libgen import make_ha_pair, make_terrain_library

GOLDEN = Path(__file__).parent / "golden" / "sonic_commands"
UPDATE = os.environ.get("GRAIL_UPDATE_GOLDEN") == "1"

# (case, pipeline, backend, extra overrides; @WORLD@ is the test world's root)
CASES = [
    ("train_finetune_release_hoi", "pnp_ground", "slurm", ["train.finetune.checkpoint=release"]),
    ("train_finetune_release_terrain", "terrain_tracking", "slurm", ["train.finetune.checkpoint=release"]),
    ("train_finetune_weights_only", "pnp_table", "slurm",
     ["train.finetune.checkpoint=release", "train.finetune.mode=weights_only"]),
    ("train_resume_experiment_dir", "advanced_manip_ground", "slurm",
     ["train.finetune.resume=true", "train.experiment_dir=@WORLD@/old/experiment"]),
    ("train_multinode_2", "pnp_table", "slurm", ["train.nodes=2"]),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sonic_cmds")
    make_ha_pair(root / "data", "pickup_table", 9, seed=3)
    make_terrain_library(root / "terrain", 7, seed=3)
    make_sonic_root(root / "SONIC")
    old = root / "old" / "experiment"  # an earlier run to resume: last.pt and its W&B id
    old.mkdir(parents=True)
    (old / "last.pt").write_bytes(b"weights")
    (old / "meta.yaml").write_text("wandb_run: oldrun01\nmax_train_steps: 20000\n")
    return root


def build(world: Path, pipeline: str, backend: str, extra: list[str]):
    lib = world / ("terrain" if pipeline == "terrain_tracking" else "data/pickup_table_ha")
    overrides = [f"pipeline={pipeline}", f"cluster={backend}", f"data.motion_lib={lib}", f"sonic.root={world / 'SONIC'}",
                 f"run.root={world / 'runs'}", "run.id=golden", "eval.num_shards=3", "select.k=2"]
    c = config.load(overrides + [e.replace("@WORLD@", str(world)) for e in extra])
    layout = "terrain" if c["pipeline"]["kind"] == "terrain" else "auto"
    return build_plan(c, scan_library(c["data"]["motion_lib"], layout=layout))


def _decision(plan, args: list[str]) -> str:
    ckpt = next((a.split("=", 1)[1] for a in args if a.startswith("++checkpoint=")), None)
    resume = "++resume=True" in args
    r = resolve_resume(plan.paths["experiment_dir"], ckpt, resume, sonic_root=plan.config["sonic"]["root"])
    wandb = f"reuses W&B run {r.wandb_run}" if r.wandb_run else "new W&B run"
    load = (f"loads {r.load}" + ("" if r.load_exists else " (missing)")) if r.load else "random init"
    return f"{r.mode}: {load}; writes {r.output_dir}; {wandb}"


def golden_text(plan) -> str:
    """Both branches of the train job's resume switch, and which one runs now with what effect."""
    argv = train_launcher.train_argv(plan)
    first = train_launcher.finetune_args(plan)
    requeue = ["++resume=True"]
    last = os.path.join(plan.paths["experiment_dir"], "last.pt")
    present = os.path.isfile(last)
    lines = [
        f"# +exp={plan.pipeline['exp']}, {plan.train['world_size']} processes on {plan.train['nodes']} node(s)",
        "# when <experiment_dir>/last.pt is absent (first start):",
        shell_join(argv + first),
        "# when it exists (requeued job, or resuming an existing experiment_dir):",
        shell_join(argv + requeue),
        f"# now: last.pt {'exists' if present else 'is absent'} -> "
        + _decision(plan, requeue if present else first),
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case,pipeline,backend,extra", CASES, ids=[c[0] for c in CASES])
def test_sonic_train_command_golden(world, case, pipeline, backend, extra):
    plan = build(world, pipeline, backend, extra)
    got = golden_text(plan).replace(str(world), "<TMP>")
    path = GOLDEN / f"{case}.sh"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert path.is_file(), f"no golden file for {case}: run with GRAIL_UPDATE_GOLDEN=1 and review the diff"
    assert got == path.read_text(), f"{path.name} differs from the golden file"
    # What the golden shows is what the rendered job runs.
    train_sh = render_files(plan)["train.sh"]
    assert shell_join(train_launcher.train_argv(plan)) + ' "${GRAIL_RESUME_ARGS[@]}"' in train_sh
    assert registry.missing_overrides(registry.lookup(plan.pipeline["exp"]), train_launcher.train_argv(plan)) == []


def test_finetune_uses_the_release_checkpoint_and_iterations(world):
    """The documented recipe by default (contracts §2.2): ++resume=True ++checkpoint=<pt> plus the
    experiment dir, i.e. weights and optimizer into a new run."""
    for pipeline in ("pnp_table", "pnp_ground", "terrain_tracking"):
        plan = build(world, pipeline, "slurm", ["train.finetune.checkpoint=release"])
        release = registry.by_name(pipeline)
        first = train_launcher.finetune_args(plan)
        assert first == ["++resume=True", f"++checkpoint={release.finetune_checkpoint}"]
        argv = train_launcher.train_argv(plan)
        assert f"++algo.config.num_learning_iterations={release.finetune_iterations}" in argv
        assert f"++experiment_dir={plan.paths['experiment_dir']}" in argv
        assert f"{train_launcher.commands.shell_join(first)})" in render_files(plan)["train.sh"]
        r = resolve_resume(plan.paths["experiment_dir"], release.finetune_checkpoint, True,
                           sonic_root=plan.config["sonic"]["root"])
        assert r.mode == "warm" and r.load_exists and r.new_wandb_run


def test_weights_only_finetune_is_an_explicit_choice(world):
    plan = build(world, "pnp_ground", "slurm", ["train.finetune.checkpoint=release", "train.finetune.mode=weights_only"])
    assert train_launcher.finetune_args(plan) == ["++checkpoint=models/pnp_ground_warmstart/last.pt"]
    r = resolve_resume(plan.paths["experiment_dir"], "models/pnp_ground_warmstart/last.pt", False,
                       sonic_root=plan.config["sonic"]["root"])
    assert r.mode == "weights"
    with pytest.raises(config.ConfigError, match="train.finetune.mode"):
        build(world, "pnp_ground", "slurm", ["train.finetune.checkpoint=release", "train.finetune.mode=weights"])


def test_save_frequency_renders_the_key_sonic_reads(world):
    """contracts §2.2: SONIC's model-save callback reads callbacks.model_save.save_frequency only."""
    plan = build(world, "pnp_table", "slurm", ["train.save_frequency=250"])
    argv = train_launcher.train_argv(plan)
    assert "++callbacks.model_save.save_frequency=250" in argv
    assert not any("algo.config.save_frequency" in a for a in argv)
    assert not any("save_frequency" in a for a in train_launcher.train_argv(build(world, "pnp_table", "slurm", [])))


def test_two_node_training_uses_the_multi_machine_launch(world):
    plan = build(world, "pnp_table", "slurm", ["train.nodes=2"])
    argv = train_launcher.train_argv(plan)
    assert argv[:9] == ["accelerate", "launch", "--multi_gpu", "--num_machines=2", "--num_processes=16",
                        "--machine_rank=$GRAIL_MACHINE_RANK", "--main_process_ip=$GRAIL_MASTER_ADDR",
                        "--main_process_port=$GRAIL_MASTER_PORT", "gear_sonic/train_agent_trl.py"]
    assert plan.train["world_size"] == 16 and [r["node"] for r in plan.train["ranks"]].count(1) == 8


def test_resume_only_keeps_the_configs_iteration_count(world):
    plan = build(world, "pnp_table", "slurm", ["train.finetune.resume=true", "train.experiment_dir=@WORLD@/old/experiment"])
    assert not any(a.startswith("++algo.config.num_learning_iterations=") for a in train_launcher.train_argv(plan))
