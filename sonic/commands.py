"""Command lines for SONIC's trainer and evaluator (contracts §2, §4.1).

Pure functions from plan facts to argv lists. Anything that is only known inside the job (machine
rank, master address, the checkpoint chosen by ``select``) is passed as a ``$GRAIL_*`` shell
reference, which :func:`shell_join` leaves for the job's shell to expand.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

MLC = "manager_env.commands.motion.motion_lib_cfg."
MEC = "manager_env.config."

SMOKE_OVERRIDES = (
    "++algo.config.num_learning_iterations=3",
    f"++{MEC}gpu_collision_stack_size_exp=28",
)
TRAJECTORY_RECORDER = "gear_sonic.envs.manager_env.mdp.recorders.TrajectoryRecorderCfg"
# The checkpoint period SONIC's model-save callback reads (contracts §2.2); algo.config.save_frequency
# is not read by SONIC, so a period given there would silently stay at the release config's 500.
SAVE_FREQUENCY_KEY = "callbacks.model_save.save_frequency"
MOTION_COMMAND = "manager_env.commands.motion."
# HOI eval zeroes the motion command's randomisation of the initial root and joint velocities
# (contracts §4.1). One key per axis: a brace form would be expanded by Hydra's parser.
VELOCITY_AXES = ("x", "y", "z", "roll", "pitch", "yaw")
HOI_EVAL_ZEROING = tuple(f"++{MOTION_COMMAND}velocity_range.{axis}=[0,0]" for axis in VELOCITY_AXES) + (
    f"++{MOTION_COMMAND}joint_velocity_range=[0,0]",)
FINETUNE_MODES = ("resume", "weights_only")

_SAFE = re.compile(r"[\w@%+=:,./-]+")
_SHELL_REF = re.compile(r"\$\{?GRAIL_[A-Z_]+\}?|\$\{?[A-Z_]+\}?")


def shell_join(argv: Sequence[str]) -> str:
    """Like shlex.join, but ``$GRAIL_*`` references stay expandable (double quotes)."""
    parts = []
    for tok in argv:
        if _SAFE.fullmatch(tok):
            parts.append(tok)
        elif "$" in tok and _SHELL_REF.search(tok) and not re.search(r"[`\\\"]", tok):
            parts.append(f'"{tok}"')
        else:
            parts.append(shlex.quote(tok))
    return " ".join(parts)


def resolve_script(sonic_root: str, setting: str, name: str) -> str:
    """``auto`` picks ``gear_sonic/<name>`` (upstream layout) unless only a top-level copy exists."""
    if setting != "auto":
        return setting
    root = Path(sonic_root)
    if not (root / "gear_sonic" / name).exists() and (root / name).exists():
        return name
    return f"gear_sonic/{name}"


def hoi_data_overrides(motion_lib: str, object_usd_dir: str, bps_dir: str | None) -> list[str]:
    out = [
        f"++{MLC}motion_file={motion_lib}/robot",
        f"++{MLC}object_motion_file={motion_lib}/objects",
        f"++{MEC}object_usd_path={object_usd_dir}",
    ]
    if bps_dir:
        out.append(f"++{MLC}bps_dir={bps_dir}")
    return out


def terrain_data_overrides(root: str, *, flat_usd_path: str | None, flat_motion_dir: str | None,
                           flat_to_terrain_ratio: int) -> list[str]:
    out = [
        f"++{MLC}motion_file={root}/robot",
        f"++{MLC}object_motion_file={root}/objects",
        f"++{MEC}terrain_motion_dir={root}",
        f"++{MEC}flat_to_terrain_ratio={flat_to_terrain_ratio}",
    ]
    if flat_usd_path:
        out.append(f"++{MEC}flat_usd_path={flat_usd_path}")
    if flat_motion_dir:
        out.append(f"++{MEC}flat_motion_dir={flat_motion_dir}")
    return out


def accelerate_prefix(nodes: int, gpus_per_node: int, launcher: Sequence[str] = ("accelerate", "launch"),
                      device: str = "gpu") -> list[str]:
    """``accelerate launch`` for one node (the documented 8-GPU form) or several (rank from the job).

    On CPUs (``device="cpu"``, the reference tracker) accelerate starts several processes only
    with ``--multi_gpu`` plus ``ACCELERATE_USE_CPU=1`` in the environment: it then uses gloo.
    """
    world = nodes * gpus_per_node
    launcher = list(launcher)
    if nodes == 1:
        cpu_ranks = ["--multi_gpu"] if device == "cpu" and world > 1 else []
        return launcher + cpu_ranks + [f"--num_processes={world}"]
    return launcher + [
        "--multi_gpu",
        f"--num_machines={nodes}", f"--num_processes={world}",
        "--machine_rank=$GRAIL_MACHINE_RANK",
        "--main_process_ip=$GRAIL_MASTER_ADDR",
        "--main_process_port=$GRAIL_MASTER_PORT",
    ]


def train_argv(*, nodes: int, gpus_per_node: int, script: str, exp: str, num_envs: int,
               launcher: Sequence[str] = ("accelerate", "launch"), device: str = "gpu",
               data_overrides: Sequence[str], experiment_dir: str, smoke: bool = False,
               iterations: int | None = None, save_frequency: int | None = None, seed: int | None = None,
               finetune_checkpoint: str | None = None, resume: bool = False, finetune_mode: str = "resume",
               extra: Sequence[str] = ()) -> list[str]:
    argv = accelerate_prefix(nodes, gpus_per_node, launcher, device) + [script, f"+exp={exp}"]
    argv += [f"num_envs={4 if smoke else num_envs}", "headless=True"]
    if smoke:
        argv += list(SMOKE_OVERRIDES)
    elif iterations is not None:
        argv.append(f"++algo.config.num_learning_iterations={iterations}")
    if save_frequency is not None and not smoke:
        argv.append(f"++{SAVE_FREQUENCY_KEY}={save_frequency}")
    if seed is not None:
        argv.append(f"++seed={seed}")
    argv += list(data_overrides)
    argv += finetune_overrides(finetune_checkpoint, mode=finetune_mode, resume=resume)
    argv.append(f"++experiment_dir={experiment_dir}")
    argv += list(extra)
    return argv


def finetune_overrides(checkpoint: str | None, *, mode: str = "resume", resume: bool = False) -> list[str]:
    """What a first start adds to the training command (§2.2).

    ``mode="resume"`` (the documented fine-tune recipe) loads weights and optimizer from
    ``checkpoint`` into a new experiment dir; ``mode="weights_only"`` loads the policy weights only,
    with a fresh optimizer (SONIC's reading of ``checkpoint`` without ``resume=True``). Without a
    checkpoint, ``resume`` continues the experiment dir's own ``last.pt``."""
    if mode not in FINETUNE_MODES:
        raise ValueError(f"fine-tune mode {mode!r} is not one of {', '.join(FINETUNE_MODES)}")
    out = []
    if resume or (checkpoint and mode == "resume"):
        out.append("++resume=True")
    if checkpoint:
        out.append(f"++checkpoint={checkpoint}")
    return out


def eval_argv(*, python: str, script: str, checkpoint: str, num_envs: int, output_dir: str,
              data_overrides: Sequence[str], shard_overrides: Sequence[str],
              record_trajectories: bool = True, zero_motion_randomisation: bool = False,
              extra: Sequence[str] = ()) -> list[str]:
    """One metrics shard (§4.1): always sets the shard keys, since trained configs bake in the
    training world size and would otherwise slice eval down to an empty shard. HOI shards
    (``zero_motion_randomisation``) start every episode without random root/joint velocities, as
    SONIC's own HOI eval does; user ``extra`` keys come last, so they can still override them."""
    argv = [
        python, "-u", script,
        f"+checkpoint={checkpoint}", "+headless=True",
        "++eval_callbacks=im_eval", "++run_eval_loop=False",
        f"++num_envs={num_envs}", f"++eval_output_dir={output_dir}",
        "+manager_env/terminations=tracking/eval",
        f"++{MLC}multi_thread=False",
    ]
    argv += list(shard_overrides)
    argv += list(data_overrides)
    if zero_motion_randomisation:
        argv += list(HOI_EVAL_ZEROING)
    if record_trajectories:
        argv += [
            f"++manager_env.recorders.trajectory._target_={TRAJECTORY_RECORDER}",
            f"++manager_env.recorders.trajectory.save_path={output_dir}",
        ]
    argv += list(extra)
    return argv


def block_shard_overrides(num_shards: int, shard: int) -> list[str]:
    return [f"++{MLC}motion_shard_world_size={num_shards}", f"++{MLC}motion_shard_rank={shard}"]


def keys_shard_overrides(keys: Sequence[str]) -> list[str]:
    """Exact keys with world size 1: SONIC keeps the order for exact keys; we pass them sorted."""
    return [
        f"++{MLC}motion_shard_world_size=1", f"++{MLC}motion_shard_rank=0",
        f"++{MLC}filter_motion_keys=[{','.join(_hydra_str(k) for k in keys)}]",
    ]


def _hydra_str(value: str) -> str:
    """A Hydra override string literal (quoted, so keys with any character survive the parser)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
