"""What every stage launcher shares: the job preamble and the in-job entry command."""

from __future__ import annotations

import os

from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.plan import RunPlan
from grail_cluster.sonic.commands import shell_join


def entry_command(plan: RunPlan, stage: str) -> str:
    """The in-job entry: reads this index's slice from plan.json and checks the plan hash."""
    python = plan.config["job"]["python"]
    return shell_join([python, "-m", "grail_cluster.entry", stage, "--run-dir", plan.run_dir,
                       "--index", "$GRAIL_INDEX", "--plan-hash", plan.plan_hash])


def base_spec(plan: RunPlan, stage: str, *, workdir: str | None = None, sonic: bool = False) -> JobSpec:
    st = plan.stage(stage)
    cfg = plan.config
    # Stable tracking identities: every W&B run a job starts (each sweep point's training, evals)
    # lands in the run's group with its stage as job type; the user's job.env may still override.
    env = {"WANDB_RUN_GROUP": plan.run_id, "WANDB_JOB_TYPE": stage}
    env.update({k: str(v) for k, v in (cfg["job"].get("env") or {}).items()})
    setup = list(cfg["job"].get("setup") or [])
    if sonic:
        env.update({k: str(v) for k, v in (cfg["sonic"].get("env") or {}).items()})
        if cfg["sonic"].get("wandb_mode"):
            env["WANDB_MODE"] = str(cfg["sonic"]["wandb_mode"])
        setup += list(cfg["sonic"].get("setup") or [])
    return JobSpec(
        run_id=plan.run_id,
        stage=stage,
        size=st.size,
        array=st.is_array,
        resources=st.resources,
        depends_on=list(st.depends_on),
        workdir=workdir or plan.run_dir,
        run_dir=plan.run_dir,
        plan_hash=plan.plan_hash,
        setup=setup,
        env=dict(sorted(env.items())),
        requeue=st.requeue,
    )


def entry_spec(plan: RunPlan, stage: str, comment: str, *, sonic: bool = False) -> JobSpec:
    spec = base_spec(plan, stage, sonic=sonic)
    spec.comment = comment
    spec.body = [entry_command(plan, stage)]
    return spec


def data_overrides(plan: RunPlan, *, for_eval: bool = False) -> list[str]:
    """SONIC's ``++`` data-path overrides for this plan's library (contracts §2.2).

    Eval of a terrain library makes every env a terrain env (ratio 0, no flat motions): its window
    of ``num_envs // (R+1)`` keys must be the whole shard, or part of the shard is never rolled out.
    """
    from grail_cluster.sonic import commands

    lib = plan.library
    data = plan.config["data"]
    if lib["layout"] == "terrain":
        # The plan holds data.flat_usd_path or the one the index found; SONIC finds the root one itself,
        # so only a placeholder elsewhere (legacy object_usd/, or the user's) is named explicitly.
        placeholder = lib.get("flat_placeholder")
        if placeholder == os.path.join(lib["root"], "flat_placeholder.usd"):
            placeholder = None
        return commands.terrain_data_overrides(
            lib["root"], flat_usd_path=placeholder,
            flat_motion_dir=None if for_eval else data.get("flat_motion_dir"),
            flat_to_terrain_ratio=0 if for_eval else int(plan.pipeline.get("flat_to_terrain_ratio", 0)))
    return commands.hoi_data_overrides(lib["root"], lib["usd_dir"], lib["bps_dir"])
