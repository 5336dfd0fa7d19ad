"""What every stage shares: the job preamble, the in-job entry command and the success marker's outputs."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.markers import file_digest
from grail_cluster.core.plan import RunPlan
from grail_cluster.sonic.commands import shell_join
from grail_cluster.stages.base import Stage


def entry_command(plan: RunPlan, stage: str) -> str:
    """The in-job entry: reads this index's slice from plan.json and checks the plan hash."""
    python = plan.settings.job.python
    return shell_join([python, "-m", "grail_cluster.entry", stage, "--run-dir", plan.run_dir,
                       "--index", "$GRAIL_INDEX", "--plan-hash", plan.plan_hash])


def base_spec(plan: RunPlan, stage: Stage, *, workdir: str | None = None, sonic: bool = False) -> JobSpec:
    st = plan.stage(stage.name)
    cfg = plan.settings
    # Stable tracking identities: every W&B run a job starts (each sweep point's training, evals)
    # lands in the run's group with its stage as job type; the user's job.env may still override.
    env = {"WANDB_RUN_GROUP": plan.run_id, "WANDB_JOB_TYPE": stage.name}
    env.update({k: str(v) for k, v in (cfg.job.env or {}).items()})
    setup = list(cfg.job.setup or [])
    if sonic:
        env.update({k: str(v) for k, v in (cfg.sonic.env or {}).items()})
        if cfg.sonic.wandb_mode:
            env["WANDB_MODE"] = str(cfg.sonic.wandb_mode)
        setup += list(cfg.sonic.setup or [])
    return JobSpec(
        run_id=plan.run_id,
        stage=stage.name,
        size=st.size,
        array=stage.is_array(st.size),
        resources=st.resources,
        depends_on=list(st.depends_on),
        workdir=workdir or plan.run_dir,
        run_dir=plan.run_dir,
        plan_hash=plan.plan_hash,
        setup=setup,
        env=dict(sorted(env.items())),
        requeue=st.requeue,
    )


def entry_spec(plan: RunPlan, stage: Stage, comment: str, *, sonic: bool = False) -> JobSpec:
    spec = base_spec(plan, stage, sonic=sonic)
    spec.comment = comment
    spec.body = [entry_command(plan, stage.name)]
    return spec


def resubmit_hint(plan: RunPlan) -> str:
    """What a stage's fix says to run once the cause (a full disk, say) is gone."""
    return (f"`grail-cluster resubmit {plan.run_dir}` (another directory is a new run: "
            "train.experiment_dir=DIR)")


def output_digests(paths: Iterable[str]) -> dict[str, dict[str, Any]]:
    """A marker's outputs: size and sha256 of each file the stage produced."""
    return {p: {"size": os.path.getsize(p), "sha256": file_digest(p)} for p in paths}


def data_overrides(plan: RunPlan, *, for_eval: bool = False) -> list[str]:
    """SONIC's ``++`` data-path overrides for this plan's library (contracts §2.2).

    Eval of a terrain library makes every env a terrain env (ratio 0, no flat motions): its window
    of ``num_envs // (R+1)`` keys must be the whole shard, or part of the shard is never rolled out.
    """
    from grail_cluster.sonic import commands

    lib = plan.library
    data = plan.settings.data
    if lib["layout"] == "terrain":
        # The plan holds data.flat_usd_path or the one the index found; SONIC finds the root one itself,
        # so only a placeholder elsewhere (legacy object_usd/, or the user's) is named explicitly.
        placeholder = lib.get("flat_placeholder")
        if placeholder == os.path.join(lib["root"], "flat_placeholder.usd"):
            placeholder = None
        return commands.terrain_data_overrides(
            lib["root"], flat_usd_path=placeholder,
            flat_motion_dir=None if for_eval else data.flat_motion_dir,
            flat_to_terrain_ratio=0 if for_eval else int(plan.pipeline.get("flat_to_terrain_ratio", 0)))
    return commands.hoi_data_overrides(lib["root"], lib["usd_dir"], lib["bps_dir"])
