"""Train stage: ``accelerate launch`` of SONIC's ``train_agent_trl.py`` from the SONIC root.

The command is rendered literally into the job script, so what a user reads in ``--dry-run`` is
what runs. A requeued job (preemption, timeout) resumes from its own ``last.pt``; a first start
warm-starts from the fine-tune checkpoint when one is configured.
"""

from __future__ import annotations

from grail_cluster.jobspec import JobSpec
from grail_cluster.plan import RunPlan
from grail_cluster.sonic import commands

from .common import base_spec, data_overrides, entry_command


def finetune_args(plan: RunPlan) -> list[str]:
    ft = plan.config["train"]["finetune"]
    ckpt = ft.get("checkpoint")
    if ckpt == "release":
        ckpt = plan.pipeline.get("finetune_checkpoint")
    out = []
    if ft.get("resume"):
        out.append("++resume=True")
    if ckpt:
        out.append(f"++checkpoint={ckpt}")
    return out


def train_argv(plan: RunPlan) -> list[str]:
    cfg = plan.config
    tr = cfg["train"]
    iterations = tr.get("iterations")
    # The shorter fine-tune schedule applies to a warm start from a checkpoint, not to a plain resume.
    if iterations is None and plan.config["train"]["finetune"].get("checkpoint") and plan.pipeline.get("finetune_iterations"):
        iterations = plan.pipeline["finetune_iterations"]
    return commands.train_argv(
        nodes=tr["nodes"], gpus_per_node=tr["gpus_per_node"],
        launcher=cfg["sonic"].get("launcher") or ["accelerate", "launch"], device=tr.get("device", "gpu"),
        script=commands.resolve_script(cfg["sonic"]["root"], cfg["sonic"]["train_script"], "train_agent_trl.py"),
        exp=plan.pipeline["exp"], num_envs=tr["num_envs"], data_overrides=data_overrides(plan),
        experiment_dir=plan.paths["experiment_dir"], smoke=bool(tr["smoke"]), iterations=iterations,
        save_frequency=tr.get("save_frequency"),
        seed=tr.get("seed"), extra=cfg["sonic"].get("extra_overrides") or [],
    )


def spec(plan: RunPlan) -> JobSpec:
    s = base_spec(plan, "train", workdir=plan.config["sonic"]["root"], sonic=True)
    last = commands.shell_join([plan.paths["experiment_dir"] + "/last.pt"])
    s.comment = f"SONIC training: {plan.train['world_size']} processes, +exp={plan.pipeline['exp']}"
    if plan.config["rehearsal"]["enabled"]:
        s.comment = "rehearsal: digest every training motion (no SONIC)"
        s.body = [entry_command(plan, "train")]
        return s
    s.body = [
        "# A requeued job continues its own run; a first start warm-starts when fine-tuning.",
        f"if [ -f {last} ]; then",
        "  GRAIL_RESUME_ARGS=(++resume=True)",
        "else",
        f"  GRAIL_RESUME_ARGS=({commands.shell_join(finetune_args(plan))})",
        "fi",
        commands.shell_join(train_argv(plan)) + ' "${GRAIL_RESUME_ARGS[@]}"',
        "# Machine rank 0 checks the checkpoints and writes the stage's success marker.",
        'if [ "${GRAIL_MACHINE_RANK:-0}" = 0 ]; then',
        "  " + entry_command(plan, "train"),
        "fi",
    ]
    return s
