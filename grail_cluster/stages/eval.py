"""Eval stage: one SONIC metrics shard per index (index = checkpoint rank * N + shard).

The checkpoint is bound late: the job reads ``select/selection.json`` when it starts, so the whole
DAG can be submitted before training ends. The SONIC command is built here, from the plan, in the
job; ``grail-cluster render`` also writes every shard's command for people to read.
"""

from __future__ import annotations

import json
import os
import re

from grail_cluster.core.errors import DataError
from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.plan import RunPlan
from grail_cluster.sonic import commands
from grail_cluster.stages.common import data_overrides, entry_spec

_STEP = re.compile(r"model_step_(\d+)\.pt$")
CHECKPOINT_PLACEHOLDER = "<checkpoint {rank} of select/selection.json>"


def spec(plan: RunPlan) -> JobSpec:
    k, n = plan.eval["num_checkpoints"], plan.eval["num_shards"]
    s = entry_spec(plan, "eval", f"SONIC eval: {k} checkpoint(s) x {n} shard(s), {plan.eval['strategy']} sharding",
                   sonic=True)
    s.workdir = plan.config["sonic"]["root"]
    return s


def step_of(checkpoint: str) -> int | None:
    m = _STEP.search(os.path.basename(checkpoint))
    return int(m.group(1)) if m else None


def resolve_checkpoint(plan: RunPlan, rank: int) -> tuple[str, int | None]:
    """(checkpoint path, step) of the ``rank``-th selected checkpoint."""
    explicit = plan.eval.get("checkpoints") or []
    if explicit:
        return explicit[rank], step_of(explicit[rank])
    path = plan.paths["selection"]
    try:
        with open(path) as fh:
            selection = json.load(fh)
        top = selection["top"]
    except FileNotFoundError:
        raise DataError("selection.json not found: the select stage has not finished", path=path,
                        fix="run the select stage first (it is a dependency of eval)") from None
    except (ValueError, KeyError) as exc:
        raise DataError(f"selection.json is malformed: {exc}", path=path, fix="re-run the select stage") from None
    if rank >= len(top):
        raise DataError(f"selection.json lists {len(top)} checkpoints; eval wants rank {rank}", path=path,
                        fix="lower select.k or lower select.min_sr so enough checkpoints qualify")
    entry = top[rank]
    # select-top names checkpoints as GRAIL does: file names relative to the experiment dir.
    # In a sweep's selection each entry names its own point's experiment dir.
    exp = entry.get("experiment_dir") or selection.get("experiment_dir") or plan.paths["experiment_dir"]
    checkpoint = os.path.join(exp, entry["checkpoint"])
    return checkpoint, int(entry["eval_step"]) if entry.get("eval_step") is not None else step_of(checkpoint)


def results_dir(plan: RunPlan, checkpoint: str) -> str:
    """The experiment dir whose eval/ and exported/ hold a selected checkpoint's results: in a sweep,
    the winner's own point (two points may both win at the same step), else the run's."""
    if not plan.is_sweep:
        return plan.paths["experiment_dir"]
    if not checkpoint:
        raise ValueError("a sweep's results dir depends on the checkpoint's point")
    if checkpoint.startswith("<"):  # a preview: the winner is not known yet
        return os.path.join(plan.paths["experiment_dir"], "<point>")
    return os.path.dirname(os.path.abspath(checkpoint))


def shard_dir(plan: RunPlan, step: int | None, shard: int, checkpoint: str = "") -> str:
    step_name = f"step_{step:06d}" if step is not None else "step_last"
    return os.path.join(results_dir(plan, checkpoint), "eval", step_name, f"phase1_shard_{shard}")


def export_dir(plan: RunPlan, checkpoint: str) -> str:
    return os.path.join(results_dir(plan, checkpoint), "exported")


def sonic_argv(plan: RunPlan, index: int, checkpoint: str, step: int | None) -> list[str]:
    _, shard = plan.eval_index(index)
    cfg = plan.config
    return commands.eval_argv(
        python=cfg["sonic"]["python"],
        script=commands.resolve_script(cfg["sonic"]["root"], cfg["sonic"]["eval_script"], "eval_agent_trl.py"),
        checkpoint=checkpoint, num_envs=shard.num_envs, output_dir=shard_dir(plan, step, shard.shard, checkpoint),
        data_overrides=data_overrides(plan, for_eval=True), shard_overrides=shard.sonic_overrides,
        record_trajectories=bool(cfg["eval"]["record_trajectories"]),
        zero_motion_randomisation=plan.pipeline.get("kind") == "hoi",
        extra=cfg["sonic"].get("eval_overrides") or [],
    )


def preview_commands(plan: RunPlan) -> list[str]:
    """Every eval index's command with the checkpoint left as a placeholder (late-bound)."""
    lines = []
    for index in range(plan.stage("eval").size):
        c, shard = plan.eval_index(index)
        explicit = plan.eval.get("checkpoints") or []
        ckpt = explicit[c] if explicit else CHECKPOINT_PLACEHOLDER.format(rank=c)
        step = step_of(ckpt) if explicit else None
        argv = sonic_argv(plan, index, ckpt, step)
        if not explicit:
            argv = [a.replace("step_last", "step_<S>") for a in argv]
        lines.append(f"# index {index}: checkpoint rank {c}, shard {shard.shard} ({len(shard.motion_keys)} motions, "
                     f"{shard.frames} frames)")
        lines.append(commands.shell_join(argv))
    return lines
