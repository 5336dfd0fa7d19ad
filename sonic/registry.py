"""The five SONIC release experiment configs (contracts §2.3), as data.

``gear_sonic/config/exp/manager/universal_token/`` ships four HOI configs and one terrain config.
This module is the reference for what each of them needs from a motion library, what it defaults to,
which warm-start checkpoint its fine-tune uses, and how its checkpoints are ranked.

Single source of truth: ``configs/pipeline/<name>.yaml`` keeps its keys (users override them with
``pipeline.iterations=...`` like any Hydra value, and the launchers read them from the plan), and
``tests/test_sonic_registry.py`` fails whenever a shipped yaml disagrees with the entry here. That
keeps Hydra composition and the plan format unchanged while the numbers are defined once.

A pipeline whose ``exp`` is not listed here is a user's private config: grail-cluster plans it with
a warning (it cannot check its data needs or defaults), never an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from grail_cluster.sonic.commands import MEC, MLC

EXP_PREFIX = "manager/universal_token/"
HF_DATASET = "nvidia/PhysicalAI-Robotics-Locomanipulation-GRAIL"
HF_MODELS_PREFIX = "checkpoint/SONIC/"  # models/... lives under this prefix of the HF dataset

# The data-path overrides each kind of config must receive (§2.2). The terrain config's default
# motion_file is internal to NVIDIA, so it must be overridden too.
HOI_OVERRIDES = (f"{MLC}motion_file", f"{MLC}object_motion_file", f"{MEC}object_usd_path", f"{MLC}bps_dir")
TERRAIN_OVERRIDES = (f"{MLC}motion_file", f"{MEC}terrain_motion_dir")


def _frozen(d: dict[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class ReleaseConfig:
    """One ``+exp=`` release config and what grail-cluster must know about it."""

    name: str  # pipeline name: configs/pipeline/<name>.yaml
    exp: str  # the full +exp= value
    kind: str  # hoi | terrain
    sweep_tag: str  # the paper's sweep prefix (bp3, g22, g25tha, g25g, tn*)
    scenes: tuple[str, ...]  # scene configs of the sweep
    # Defaults baked into the config (per process for num_envs).
    num_envs: int
    iterations: int  # algo.config.num_learning_iterations
    save_frequency: int  # callbacks.model_save.save_frequency: a model_step_NNNNNN.pt every this many iterations
    project_name: str  # W&B project and logs_rl/<project_name>/
    robot: str
    motion_shard_by_rank: bool  # HOI per-rank block slicing (§3.1); terrain relies on RANK (§3.2)
    use_motion_hand_actions: bool
    table: bool
    flat_to_terrain_ratio: int | None
    # Data: what doctor and plan require of the library (error | warn | no), and the data the
    # config reads, in words, for messages.
    needs: Mapping[str, str]
    required_data: tuple[str, ...]
    required_overrides: tuple[str, ...]  # ++ keys the trainer/evaluator must be given
    # Fine-tuning (§2.3): the warm-start checkpoint, relative to the SONIC root, and its iterations.
    finetune_checkpoint: str | None
    finetune_iterations: int | None
    release_bundle: str | None  # models/<x>_release/{last.pt,config.yaml}: the released tracker
    tiebreak: str  # select-top tiebreak after the success rate: obj_pos_error (HOI) | mpjpe_l
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def short_exp(self) -> str:
        """``hoi/pnp_table``: the name the docs' tables use."""
        return self.exp.removeprefix(EXP_PREFIX)

    def pipeline_values(self) -> dict[str, object]:
        """The values a ``configs/pipeline/<name>.yaml`` must carry for this config."""
        out: dict[str, object] = {
            "name": self.name, "exp": self.exp, "kind": self.kind, "project_name": self.project_name,
            "release_num_envs": self.num_envs, "iterations": self.iterations,
            "save_frequency": self.save_frequency, "sweep_tag": self.sweep_tag, "needs": dict(self.needs),
            "finetune_checkpoint": self.finetune_checkpoint, "finetune_iterations": self.finetune_iterations,
            "tiebreak": self.tiebreak,
        }
        if self.flat_to_terrain_ratio is not None:
            out["flat_to_terrain_ratio"] = self.flat_to_terrain_ratio
        return out


def _hoi(name: str, sweep: str, scene: str, *, hands: bool, table: bool, contacts: str,
         finetune: str | None, bundle: str | None) -> ReleaseConfig:
    needs = {"objects": "error", "object_usd": "error", "bps": "error",
             "hand_actions": "error" if hands else "warn", "contacts": contacts,
             "table": "error" if table else "no"}
    data = ("robot/", "objects/", "object_usd/", "bps/") + (("hand_action_left/right in robot/",) if hands else ()) \
        + (("meta/ (table pose)",) if table else ())
    return ReleaseConfig(
        name=name, exp=f"{EXP_PREFIX}hoi/{name}", kind="hoi", sweep_tag=sweep, scenes=(scene,),
        num_envs=4096, iterations=20000, save_frequency=500, project_name="GRAB_Tracking", robot="g1_43dof",
        motion_shard_by_rank=True, use_motion_hand_actions=hands, table=table, flat_to_terrain_ratio=None,
        needs=_frozen(needs), required_data=data, required_overrides=HOI_OVERRIDES,
        finetune_checkpoint=finetune, finetune_iterations=10000 if finetune else None, release_bundle=bundle,
        tiebreak="obj_pos_error",
        notes=("frozen base models/sonic_manipulation_base/{model_config.yaml,last.pt} must exist under the SONIC root",),
    )


RELEASE_CONFIGS: tuple[ReleaseConfig, ...] = (
    _hoi("pnp_table", "bp3", "indoor2-pickup-table", hands=True, table=True, contacts="error",
         finetune="models/pnp_table_warmstart/last.pt", bundle="models/pnp_table_release"),
    _hoi("pnp_ground", "g22", "indoor2-pickup-ground", hands=False, table=False, contacts="error",
         finetune="models/pnp_ground_warmstart/last.pt", bundle="models/pnp_ground_release"),
    _hoi("advanced_manip_table", "g25tha", "indoor2-manipulation", hands=False, table=True, contacts="warn",
         finetune=None, bundle=None),
    _hoi("advanced_manip_ground", "g25g", "indoor1-manipulation", hands=False, table=False, contacts="warn",
         finetune=None, bundle=None),
    ReleaseConfig(
        name="terrain_tracking", exp=f"{EXP_PREFIX}scene/terrain_tracking", kind="terrain", sweep_tag="tn",
        # The docs' table abbreviates the last four as -terrain-curb etc.; the indoor1 prefix is assumed.
        scenes=("indoor1-sitting", "indoor1-terrain-curb", "indoor1-terrain-slope", "indoor1-syn-stairs",
                "indoor1-gen-stairs"),
        num_envs=4096, iterations=30000, save_frequency=500, project_name="TRL_G1_Track", robot="g1_model_12",
        motion_shard_by_rank=False, use_motion_hand_actions=False, table=False, flat_to_terrain_ratio=0,
        needs=_frozen({"objects": "warn", "object_usd": "error", "bps": "no", "hand_actions": "no",
                       "contacts": "no", "table": "no"}),
        required_data=("terrain root with robot/ and object_usd/ (one USD per robot key)",
                       "flat_placeholder.usd (root, object_usd/, or data.flat_usd_path)"),
        required_overrides=TERRAIN_OVERRIDES,
        finetune_checkpoint="models/terrain_stairs_warmstart/last.pt", finetune_iterations=20000,
        release_bundle="models/terrain_release", tiebreak="mpjpe_l",
        notes=("use_height_map: true; terrain_aware_sampling: false; exp_var: test",),
    ),
)

_BY_EXP = {r.exp: r for r in RELEASE_CONFIGS}
_BY_NAME = {r.name: r for r in RELEASE_CONFIGS}


def normalise_exp(exp: str) -> str:
    """``+exp=`` values are accepted with or without ``manager/universal_token/`` and a ``.yaml``."""
    exp = exp.strip().removesuffix(".yaml").strip("/")
    return exp if exp.startswith(EXP_PREFIX) else EXP_PREFIX + exp


def lookup(exp: str | None) -> ReleaseConfig | None:
    """The release config of an ``+exp=`` value, or None for a private config."""
    if not exp:
        return None
    return _BY_EXP.get(normalise_exp(exp))


def by_name(name: str) -> ReleaseConfig:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no release config named {name!r}; known: {', '.join(_BY_NAME)}") from None


def names() -> list[str]:
    return [r.name for r in RELEASE_CONFIGS]


def unknown_exp_warning(exp: str | None) -> str | None:
    """A warning (not an error: users have private configs) when ``exp`` is not a release config."""
    if lookup(exp) is not None:
        return None
    known = ", ".join(r.short_exp for r in RELEASE_CONFIGS)
    return (f"pipeline.exp={exp!r} is not one of the SONIC release configs ({known}); grail-cluster cannot check "
            "its data needs, defaults or fine-tune checkpoint; fine if it is your own config under "
            "gear_sonic/config/exp/")


def missing_overrides(release: ReleaseConfig, argv: list[str] | tuple[str, ...]) -> list[str]:
    """The ``required_overrides`` an argv does not set (``++key=``, ``+key=`` or ``key=``)."""
    given = {a.lstrip("+").split("=", 1)[0] for a in argv if "=" in a}
    return [k for k in release.required_overrides if k not in given]
