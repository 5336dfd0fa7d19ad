"""A run's headlines: :mod:`grail_cluster.tools.data.headline` for each selected checkpoint of a plan,
found through the stages' checkpoint paths, with each shard's row cached in the run dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grail_cluster.tools.data.headline import checkpoint_headline, read_manifest

CACHE_FILE = ".headline_cache.json"


def _sigs(cache: dict[str, Any]) -> dict[str, Any]:
    return {k: v.get("sig") for k, v in cache.items() if isinstance(v, dict)}


def run_headlines(plan) -> list[dict[str, Any]]:
    """One headline per selected checkpoint of a run (those whose checkpoint is known yet).

    ``status`` asks on every refresh: each shard's row is cached in the run dir by its
    ``metrics_eval.json``'s size and mtime, so a metrics file is parsed once, not once per refresh."""
    from grail_cluster.core.errors import DataError
    from grail_cluster.stages.checkpoints import export_dir, resolve_checkpoint, shard_dir
    from grail_cluster.tools.data.io import write_json

    cache_path = Path(plan.run_dir) / CACHE_FILE
    cache = read_manifest(cache_path) or {}
    before = _sigs(cache)
    out = []
    for rank in range(plan.eval["num_checkpoints"]):
        try:
            checkpoint, step = resolve_checkpoint(plan, rank)
        except DataError:
            continue  # the select stage has not written its choice yet: nothing evaluated
        eval_step = Path(shard_dir(plan, step, 0, checkpoint)).parent
        merged = Path(export_dir(plan, checkpoint)) / (f"step_{step:06d}" if step is not None else "step_last") / "merged"
        h = checkpoint_headline(eval_step, step=step, num_shards=plan.eval["num_shards"], merged=merged, cache=cache)
        out.append({"checkpoint": checkpoint, **h})
    if _sigs(cache) != before:  # a shard was parsed: keep its row for the next refresh
        try:
            write_json(cache_path, cache)
        except OSError:
            pass  # a read-only run dir: the numbers are right, only slower next time
    return out


def evaluated_headlines(plan) -> list[dict[str, Any]]:
    """The headlines of a run's checkpoints that have eval metrics to show (for ``status``): none for
    a rehearsal (its eval writes no metrics) or before any eval shard finished."""
    if plan.settings.rehearsal.enabled or "eval" not in plan.stage_names:
        return []
    return [h for h in run_headlines(plan) if h["shards_ok"] > 0]
