"""Train stage: ``accelerate launch`` of SONIC's ``train_agent_trl.py`` from the SONIC root.

The command is rendered literally into the job script, so what a user reads in ``--dry-run`` is
what runs. A requeued job (preemption, timeout) resumes from its own ``last.pt``; a first start
warm-starts from the fine-tune checkpoint when one is configured. A sweep's train stage is one
array: the script holds every point's command and picks its own by ``GRAIL_INDEX``.
"""

from __future__ import annotations

import os
from typing import Any

from grail_cluster.core.errors import DataError
from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.markers import file_digest, write_marker
from grail_cluster.core.plan import Resources, RunPlan
from grail_cluster.core.settings import Settings, TrainSettings
from grail_cluster.core.sweep import flatten
from grail_cluster.sonic import commands
from grail_cluster.stages import rehearsal
from grail_cluster.stages.base import Stage
from grail_cluster.stages.common import base_spec, data_overrides, entry_command


def finetune_args(plan: RunPlan, point: int = 0) -> list[str]:
    ft = plan.point_settings(point).train.finetune
    ckpt = ft.checkpoint
    if ckpt == "release":
        ckpt = plan.pipeline.get("finetune_checkpoint")
    # Default: the documented recipe, weights and optimizer (++resume=True ++checkpoint=<pt>).
    return commands.finetune_overrides(ckpt, mode=ft.mode or "resume", resume=bool(ft.resume))


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    return str(value)


def sonic_overrides(train: TrainSettings) -> list[str]:
    """``train.overrides`` (a nested mapping of SONIC keys) as ``++a.b.c=value`` arguments."""
    flat = flatten(train.overrides or {})
    return [f"++{key}={_hydra_value(value)}" for key, value in sorted(flat.items()) if key and value != {}]


def train_argv(plan: RunPlan, point: int = 0) -> list[str]:
    cfg = plan.point_settings(point)
    tr = cfg.train
    iterations = tr.iterations
    # The shorter fine-tune schedule applies to a warm start from a checkpoint, not to a plain resume.
    if iterations is None and tr.finetune.checkpoint and plan.pipeline.get("finetune_iterations"):
        iterations = plan.pipeline["finetune_iterations"]
    # Every point of a sweep logs into one W&B group, the run id (the env sets it too, for tools
    # that read WANDB_RUN_GROUP; SONIC passes its own wandb_group to wandb.init).
    group = [f"++wandb.wandb_group={plan.run_id}"] if plan.is_sweep else []
    return commands.train_argv(
        nodes=tr.nodes, gpus_per_node=tr.gpus_per_node,
        launcher=cfg.sonic.launcher or ["accelerate", "launch"], device=tr.device,
        script=commands.resolve_script(cfg.sonic.root, cfg.sonic.train_script, "train_agent_trl.py"),
        exp=plan.pipeline["exp"], num_envs=tr.num_envs, data_overrides=data_overrides(plan),
        experiment_dir=plan.experiment_dir(point), smoke=bool(tr.smoke), iterations=iterations,
        save_frequency=tr.save_frequency,
        seed=tr.seed, extra=group + sonic_overrides(tr) + list(cfg.sonic.extra_overrides or []),
    )


def _sweep_body(plan: RunPlan) -> list[str]:
    lines = ["# One training run per sweep point; this array task runs point $GRAIL_INDEX.",
             'case "$GRAIL_INDEX" in']
    for p in plan.train["points"]:
        n = p["point"]
        lines += [f"  {n})  # {p['name']}: {' '.join(p['overrides'])}",
                  f"    GRAIL_EXPERIMENT_DIR={commands.shell_join([p['experiment_dir']])}",
                  f"    GRAIL_TRAIN=({commands.shell_join(train_argv(plan, n))})",
                  f"    GRAIL_WARM_START=({commands.shell_join(finetune_args(plan, n))})",
                  "    ;;"]
    lines += ['  *) echo "[grail] no sweep point $GRAIL_INDEX in this plan" >&2; exit 2 ;;', "esac"]
    return lines


def audit_prefix(plan: RunPlan) -> str:
    """The trainer runs under the in-job slice audit: SONIC's [Motion Shard]/[PerRankUSD]/[PerRankMotion]
    lines are compared with plan.json and a mismatch stops the job early (grail_cluster/stages/slice_watch.py)."""
    return commands.shell_join([plan.settings.job.python, "-m", "grail_cluster.entry", "audit-slices", "train",
                                "--run-dir", plan.run_dir, "--index", "$GRAIL_INDEX", "--plan-hash", plan.plan_hash,
                                "--"])


class Train(Stage):
    """SONIC's training, one index per sweep point; preemptible (a requeue resumes from last.pt)."""

    name = "train"
    requeue = True

    def enabled(self, config: Settings, train_enabled: bool) -> bool:
        return train_enabled

    def size(self, k: int, n: int, points: int) -> int:
        return points

    def is_array(self, size: int) -> bool:
        # A sweep's train stage is an array: one index per point, so homogeneous points share it.
        return size > 1

    def resources(self, config: Settings) -> Resources:
        r = config.resources.train
        gpus = 0 if config.train.device == "cpu" else config.train.gpus_per_node
        return Resources(config.train.nodes, gpus, int(r.cpus), float(r.mem), int(r.time))

    def spec(self, plan: RunPlan) -> JobSpec:
        s = base_spec(plan, self, workdir=plan.settings.sonic.root, sonic=True)
        s.comment = f"SONIC training: {plan.train['world_size']} processes, +exp={plan.pipeline['exp']}"
        if plan.is_sweep:
            s.comment += f", sweep of {len(plan.train['points'])} points"
        if plan.settings.rehearsal.enabled:
            s.comment = "rehearsal: digest every training motion (no SONIC)"
            s.body = [entry_command(plan, "train")]
            return s
        if not plan.is_sweep:
            last = commands.shell_join([plan.experiment_dir() + "/last.pt"])
            s.body = [
                "# A requeued job continues its own run; a first start warm-starts when fine-tuning.",
                f"if [ -f {last} ]; then",
                "  GRAIL_RESUME_ARGS=(++resume=True)",
                "else",
                f"  GRAIL_RESUME_ARGS=({commands.shell_join(finetune_args(plan))})",
                "fi",
                audit_prefix(plan) + " " + commands.shell_join(train_argv(plan)) + ' "${GRAIL_RESUME_ARGS[@]}"',
            ]
        else:
            s.body = _sweep_body(plan) + [
                "# A requeued or resubmitted point continues its own run; a first start warm-starts when fine-tuning.",
                'if [ -f "$GRAIL_EXPERIMENT_DIR/last.pt" ]; then',
                "  GRAIL_RESUME_ARGS=(++resume=True)",
                "else",
                '  GRAIL_RESUME_ARGS=("${GRAIL_WARM_START[@]}")',
                "fi",
                audit_prefix(plan) + ' "${GRAIL_TRAIN[@]}" "${GRAIL_RESUME_ARGS[@]}"',
            ]
        s.body += [
            "# Machine rank 0 checks the checkpoints and writes the stage's success marker.",
            'if [ "${GRAIL_MACHINE_RANK:-0}" = 0 ]; then',
            "  " + entry_command(plan, "train"),
            "fi",
        ]
        return s

    def run(self, plan: RunPlan, index: int) -> int:
        """After SONIC's trainer exits 0: the experiment dir must hold checkpoints, then mark done."""
        from grail_cluster.sonic.experiment import list_checkpoints

        exp = plan.experiment_dir(index)
        ckpts = [c.path for c in list_checkpoints(exp)]
        if not ckpts:
            raise DataError("training exited 0 but wrote no model_step_*.pt or last.pt", path=exp,
                            fix="check the trainer log (logs/train/0/) and that ++experiment_dir reached SONIC")
        outputs = {os.path.abspath(p): {"size": os.path.getsize(p), "sha256_head_tail": file_digest(p, full=False)}
                   for p in ckpts}
        write_marker(plan.run_dir, "train", index, plan.plan_hash, outputs)
        print(f"[grail] train done: {len(ckpts)} checkpoint(s) in {exp}")
        return 0

    def rehearse(self, plan: RunPlan, index: int) -> dict[str, Any]:
        """Digest every motion the point's ranks train."""
        keys = sorted(k for r in plan.point_train(index)["ranks"] for k in r["motion_keys"]) or []
        motions = rehearsal.motion_digest(plan, sorted(set(keys)))
        digest = rehearsal.combine(index, motions) if plan.is_sweep else rehearsal.combine(motions)
        return {"motions": len(motions), "digest": digest}


STAGE = Train()
