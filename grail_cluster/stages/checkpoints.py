"""Where a selected checkpoint's results live: the late-bound checkpoint of a checkpoint rank, its
step, and the eval/export directories every stage after select reads and writes."""

from __future__ import annotations

import json
import os
import re

from grail_cluster.core.errors import DataError
from grail_cluster.core.plan import RunPlan

_STEP = re.compile(r"model_step_(\d+)\.pt$")


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


def require_step(checkpoint: str, step: int | None) -> None:
    if step is None:
        raise DataError("the checkpoint's training step is unknown, and exported/merged libraries are keyed by step",
                        path=checkpoint, fix="evaluate model_step_NNNNNN.pt files (or copy last.pt to that name)")
