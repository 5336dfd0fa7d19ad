"""Every SONIC command grail-cluster renders, composed against a SONIC-shaped Hydra tree written from
the contracts (tests/sonic_tree/, not the reference tracker's tree and not SONIC's own files).

A ``++key=value`` on a key the config does not hold is not an error in Hydra: it adds the key and
SONIC never reads it (``++algo.config.save_frequency`` did exactly that: checkpoints stayed at 500).
So each command is composed twice: once as Hydra runs it, and once with every ``++key=`` turned into
``key=``, which Hydra refuses for a key absent from the tree. Eval commands are composed over
``base_eval`` and checked against the trained config they merge into (contracts §4.1).

Commands come from the rendered train job script (both branches of its resume switch, and a sweep's
per-point arrays) and from the eval launcher the in-job entry calls, for all five pipelines: full,
smoke, fine-tune (documented recipe and weights only), resume, a user save period, 2 nodes, a sweep,
and eval sharded ``sonic_block`` and ``balanced``.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from grail_cluster.core import config
from grail_cluster.core.library import scan_library
from grail_cluster.core.sweep import expand
from grail_cluster.runs.job_files import render_files
from grail_cluster.runs.planner import build_plan
from grail_cluster.sonic import commands
from grail_cluster.stages import eval as eval_launcher
from tests.conftest import PIPELINES, make_sonic_root
from tests.libgen import make_ha_pair, make_terrain_library

TREE = Path(__file__).parent / "sonic_tree" / "gear_sonic" / "config"
TRAIN_SCRIPT, EVAL_SCRIPT = "train_agent_trl.py", "eval_agent_trl.py"
FINETUNE_PIPELINES = ("pnp_table", "pnp_ground", "terrain_tracking")  # those with a release warm start (§2.3)

# (case, pipelines, extra overrides); @WORLD@ is the test world's root.
VARIANTS = [
    ("full", PIPELINES, []),
    ("smoke", PIPELINES, ["train.smoke=true", "select.k=1", "train.gpus_per_node=1"]),
    ("finetune", FINETUNE_PIPELINES, ["train.finetune.checkpoint=release"]),
    ("finetune_weights_only", FINETUNE_PIPELINES, ["train.finetune.checkpoint=release",
                                                   "train.finetune.mode=weights_only"]),
    ("resume", PIPELINES, ["train.finetune.resume=true", "train.experiment_dir=@WORLD@/old/experiment"]),
    ("save_period", PIPELINES, ["train.save_frequency=250", "train.seed=7"]),
    ("save_period_override", ("pnp_table",), ["++train.overrides.callbacks.model_save.save_frequency=250"]),
    ("multinode", PIPELINES, ["train.nodes=2"]),
    ("balanced", PIPELINES, ["eval.sharding=balanced"]),
]
CASES = [(f"{name}-{p}", p, extra) for name, pipelines, extra in VARIANTS for p in pipelines]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    make_ha_pair(root / "data", "pickup_table", 9, seed=3)
    make_terrain_library(root / "terrain", 7, seed=3)
    make_sonic_root(root / "SONIC")
    (root / "old" / "experiment").mkdir(parents=True)
    return root


def _overrides(world: Path, pipeline: str, extra: list[str]) -> list[str]:
    lib = world / ("terrain" if pipeline == "terrain_tracking" else "data/pickup_table_ha")
    base = [f"pipeline={pipeline}", "cluster=slurm", f"data.motion_lib={lib}", f"sonic.root={world / 'SONIC'}",
            f"run.root={world / 'runs'}", "run.id=conformance", "eval.num_shards=3", "select.k=2"]
    return base + [e.replace("@WORLD@", str(world)) for e in extra]


def _plan(world: Path, overrides: list[str], sweep=None):
    c = sweep["configs"][0] if sweep else config.load(overrides)
    layout = "terrain" if c["pipeline"]["kind"] == "terrain" else "auto"
    return build_plan(c, scan_library(c["data"]["motion_lib"], layout=layout), sweep=sweep)


# ----------------------------------------------------------------------------- commands as rendered


def _after_script(tokens: list[str], script: str) -> list[str]:
    at = next(i for i, t in enumerate(tokens) if t.endswith(script))
    return [t for t in tokens[at + 1:] if not t.startswith("${GRAIL_")]


def _array(text: str, name: str) -> list[list[str]]:
    """Every ``NAME=(...)`` bash array assignment of a job script, as argument lists."""
    return [shlex.split(m) for m in re.findall(rf"^\s*{name}=\((.*)\)\s*$", text, flags=re.M)]


def train_commands(train_sh: str) -> list[list[str]]:
    """The trainer's Hydra arguments for every branch the job script can take."""
    starts = _array(train_sh, "GRAIL_RESUME_ARGS")
    if "GRAIL_TRAIN=(" in train_sh:  # a sweep: one command per point, its warm start or its own last.pt
        points = _array(train_sh, "GRAIL_TRAIN")
        warm = _array(train_sh, "GRAIL_WARM_START")
        return [_after_script(p, TRAIN_SCRIPT) + w for p, ws in zip(points, warm, strict=True)
                for w in (ws, ["++resume=True"])]
    line = next(ln for ln in train_sh.splitlines() if TRAIN_SCRIPT in ln and not ln.lstrip().startswith("#"))
    base = _after_script(shlex.split(line), TRAIN_SCRIPT)
    assert starts, "the train job has no resume switch"
    return [base + s for s in starts]


def eval_commands(plan) -> list[list[str]]:
    """What the in-job entry runs for every eval index (checkpoint bound as select would)."""
    ckpt = str(Path(plan.paths["experiment_dir"]) / "model_step_000500.pt")
    return [_after_script(eval_launcher.sonic_argv(plan, i, ckpt, 500), EVAL_SCRIPT)
            for i in range(plan.stage("eval").size)]


# ----------------------------------------------------------------------------- composing against the tree


def _parse(args: list[str]):
    return OverridesParser.create().parse_overrides(args)


def _has(tree: dict, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _compose(name: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(TREE), version_base=None):
        return OmegaConf.to_container(compose(config_name=name, overrides=overrides), resolve=False)


def unread_keys(args: list[str]) -> list[str]:
    """The ``++`` keys of one training command that SONIC's config does not hold (empty: conforms).

    Raises Hydra's own error for what Hydra itself refuses (``+`` on an existing key, a plain
    ``key=`` on a missing one, an unknown group)."""
    parsed = _parse(args)
    forced = [o for o in parsed if o.is_force_add()]
    rest = [o.input_line for o in parsed if not o.is_force_add()]
    view = _compose("base", rest)
    missing = [o.key_or_group for o in forced if not _has(view, o.key_or_group)]
    if not missing:
        # Hydra's own verdict: `key=` (not `++key=`) is refused for a key the tree does not hold.
        _compose("base", rest + [o.input_line[2:] for o in forced])
    return missing


@functools.cache
def _trained(exp: str) -> dict:
    return _compose("base", [f"+exp={exp}"])


def unread_eval_keys(args: list[str], exp: str) -> list[str]:
    """The same for an eval command: composed over ``base_eval`` as Hydra runs it, its ``++`` keys
    checked against the trained config they are merged into (the checkpoint's config.yaml, §4.1)."""
    parsed = _parse(args)
    forced = [o for o in parsed if o.is_force_add()]
    composed = _compose("base_eval", [o.input_line for o in parsed if not o.is_force_add()])
    view = _merge(_trained(exp), composed)
    return [o.key_or_group for o in forced if not _has(view, o.key_or_group)]


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("case,pipeline,extra", CASES, ids=[c[0] for c in CASES])
def test_every_rendered_sonic_command_uses_only_keys_sonic_reads(world, case, pipeline, extra):
    plan = _plan(world, _overrides(world, pipeline, extra))
    train = train_commands(render_files(plan)["train.sh"])
    assert len(train) == 2  # first start and requeue
    for args in train:
        assert unread_keys(args) == [], f"{case}: SONIC's training never reads these ++ keys: {shlex.join(args)}"
    evals = eval_commands(plan)
    assert len(evals) == plan.stage("eval").size > 0
    for args in evals:
        assert unread_eval_keys(args, plan.pipeline["exp"]) == [], f"{case}: SONIC's evaluator never reads these"


def test_a_sweeps_commands_conform(world):
    s = expand(_overrides(world, "pnp_ground", []) + ["train.seed=1,2", "train.save_frequency=100,200"])
    configs = [config.load(p) for p in s.points]
    plan = _plan(world, [], sweep={"configs": configs, "swept": s.swept})
    train = train_commands(render_files(plan)["train.sh"])
    assert len(train) == 2 * 4 and all("++wandb.wandb_group=conformance" in a or any(
        x.startswith("++wandb.wandb_group=") for x in a) for a in train)
    for args in train:
        assert unread_keys(args) == [], shlex.join(args)


def test_what_the_commands_set_is_what_sonic_composes(world):
    """The composed values, not only the keys: the period, the fine-tune recipe, HOI eval zeroing."""
    plan = _plan(world, _overrides(world, "pnp_table", ["train.finetune.checkpoint=release", "train.save_frequency=250"]))
    first = next(a for a in train_commands(render_files(plan)["train.sh"]) if any(x.startswith("++checkpoint=") for x in a))
    cfg = _compose("base", [o.input_line[2:] if o.is_force_add() else o.input_line for o in _parse(first)])
    assert cfg["callbacks"]["model_save"]["save_frequency"] == 250
    assert (cfg["resume"], cfg["checkpoint"]) == (True, "models/pnp_table_warmstart/last.pt")
    assert cfg["experiment_dir"] == plan.paths["experiment_dir"]
    # Left unset, the release +exp config's period applies (§2.3), which is what the plan counts.
    plain = _plan(world, _overrides(world, "pnp_table", []))
    args = train_commands(render_files(plain)["train.sh"])[0]
    assert _compose("base", [o.input_line for o in _parse(args) if not o.is_force_add()]
                    )["callbacks"]["model_save"]["save_frequency"] == plain.pipeline["save_frequency"] == 500
    for pipeline in PIPELINES:
        p = _plan(world, _overrides(world, pipeline, []))
        for args in eval_commands(p):
            ev = _compose("base_eval", [o.input_line for o in _parse(args) if not o.is_force_add()]
                          + [o.input_line for o in _parse(args) if o.is_force_add()])
            motion = ev.get("manager_env", {}).get("commands", {}).get("motion", {})
            zeroed = {a: motion.get("velocity_range", {}).get(a) for a in commands.VELOCITY_AXES}
            if p.pipeline["kind"] == "hoi":  # contracts §4.1
                assert zeroed == dict.fromkeys(commands.VELOCITY_AXES, [0, 0]) and motion["joint_velocity_range"] == [0, 0]
            else:
                assert "velocity_range" not in motion and "joint_velocity_range" not in motion


def test_the_check_catches_a_key_sonic_never_reads():
    """The old rendering: ++algo.config.save_frequency composes silently (Hydra adds the key), and
    this check is what refuses it. Written by hand, not by the renderer."""
    old = ["+exp=manager/universal_token/hoi/pnp_table", "num_envs=2048", "headless=True",
           "++algo.config.save_frequency=250", "++experiment_dir=/x"]
    assert _compose("base", [o for o in old])["algo"]["config"]["save_frequency"] == 250  # Hydra: no error
    assert unread_keys(old) == ["algo.config.save_frequency"]
    assert unread_keys([*old[:3], "++callbacks.model_save.save_frequency=250", "++experiment_dir=/x"]) == []
    with pytest.raises(HydraException):  # and Hydra itself, with ++ read as a plain override
        _compose("base", [*old[:3], "algo.config.save_frequency=250"])
    # Eval: a typo under the motion command and a key under a None recorder field.
    ev = ["+checkpoint=/x/model_step_000500.pt", "+headless=True", "++num_envs=4", "+manager_env/terminations=tracking/eval",
          "++manager_env.commands.motion.velocity_ranges.x=[0,0]", "++manager_env.commands.motion.joint_velocity_range=[0,0]"]
    assert unread_eval_keys(ev, "manager/universal_token/hoi/pnp_table") == ["manager_env.commands.motion.velocity_ranges.x"]
    with pytest.raises(HydraException):  # a termination group SONIC does not have is Hydra's own error
        unread_eval_keys(["+manager_env/terminations=tracking/evaluation"], "manager/universal_token/hoi/pnp_table")
