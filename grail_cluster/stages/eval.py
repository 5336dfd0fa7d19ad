"""Eval stage: one SONIC metrics shard per index (index = checkpoint rank * N + shard).

The checkpoint is bound late: the job reads ``select/selection.json`` when it starts, so the whole
DAG can be submitted before training ends. The SONIC command is built here, from the plan, in the
job; ``grail-cluster render`` also writes every shard's command for people to read.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Collection
from typing import Any

from grail_cluster.core.errors import DataError
from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.markers import write_marker
from grail_cluster.core.plan import Dependency, RunPlan
from grail_cluster.sonic import commands
from grail_cluster.stages import rehearsal
from grail_cluster.stages.base import ShardStage
from grail_cluster.stages.checkpoints import resolve_checkpoint, shard_dir, step_of
from grail_cluster.stages.child import run_child
from grail_cluster.stages.common import data_overrides, entry_spec, output_digests

CHECKPOINT_PLACEHOLDER = "<checkpoint {rank} of select/selection.json>"


def sonic_argv(plan: RunPlan, index: int, checkpoint: str, step: int | None) -> list[str]:
    _, shard = plan.eval_index(index)
    cfg = plan.settings
    return commands.eval_argv(
        python=cfg.sonic.python,
        script=commands.resolve_script(cfg.sonic.root, cfg.sonic.eval_script, "eval_agent_trl.py"),
        checkpoint=checkpoint, num_envs=shard.num_envs, output_dir=shard_dir(plan, step, shard.shard, checkpoint),
        data_overrides=data_overrides(plan, for_eval=True), shard_overrides=shard.sonic_overrides,
        record_trajectories=bool(cfg.eval.record_trajectories),
        zero_motion_randomisation=plan.pipeline.get("kind") == "hoi",
        extra=cfg.sonic.eval_overrides or [],
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


class Eval(ShardStage):
    name = "eval"

    def depends_on(self, enabled: Collection[str]) -> list[Dependency]:
        return [Dependency("select", "afterok")] if "select" in enabled else []

    def spec(self, plan: RunPlan) -> JobSpec:
        k, n = plan.eval["num_checkpoints"], plan.eval["num_shards"]
        s = entry_spec(plan, self, f"SONIC eval: {k} checkpoint(s) x {n} shard(s), {plan.eval['strategy']} sharding",
                       sonic=True)
        s.workdir = plan.settings.sonic.root
        return s

    def run(self, plan: RunPlan, index: int) -> int:
        """One SONIC metrics shard; done when its metrics_eval.json covers exactly the shard's motions."""
        c, shard = plan.eval_index(index)
        checkpoint, step = resolve_checkpoint(plan, c)
        argv = sonic_argv(plan, index, checkpoint, step)
        out_dir = shard_dir(plan, step, shard.shard, checkpoint)
        metrics = os.path.join(out_dir, "metrics_eval.json")
        if os.path.exists(metrics):  # a stale shard from an earlier attempt must not pass for this one
            os.remove(metrics)
        print("[grail] " + commands.shell_join(argv), flush=True)
        code = run_child(argv, plan.settings.sonic.root, plan, "eval", index)
        if code != 0:
            print(f"[grail] SONIC eval exited with {code}", file=sys.stderr)
            return code if code > 0 else 128 - code
        try:
            with open(metrics) as fh:
                keys = json.load(fh)["eval/all_metrics_dict"]["motion_keys"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"SONIC eval exited 0 but its metrics_eval.json is missing or unreadable ({exc})",
                            path=metrics, fix="check the eval log; the shard must write metrics_eval.json") from None
        if sorted(keys) != sorted(shard.motion_keys):
            raise DataError(f"metrics_eval.json covers {len(keys)} motions, the shard has {len(shard.motion_keys)}",
                            path=metrics, fix="the evaluator sliced the library differently from the plan; check "
                                              "the shard overrides in the log")
        write_marker(plan.run_dir, "eval", index, plan.plan_hash,
                     output_digests([metrics]))
        print(f"[grail] eval shard {shard.shard} of checkpoint step {step}: {len(keys)} motions -> {out_dir}")
        return 0

    def rehearse(self, plan: RunPlan, index: int) -> dict[str, Any]:
        """Read the shard's motion files and digest them."""
        c, shard = plan.eval_index(index)
        motions = rehearsal.motion_digest(plan, shard.motion_keys)
        return {"checkpoint_rank": c, "shard": shard.shard, "motions": motions, "digest": rehearsal.combine(c, motions)}


STAGE = Eval()
