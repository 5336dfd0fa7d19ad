"""Select stage: rank the trained checkpoints and write ``select/selection.json`` (top-k)."""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from grail_cluster.core.errors import DataError
from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.markers import write_marker
from grail_cluster.core.plan import Dependency, RunPlan
from grail_cluster.core.settings import Settings
from grail_cluster.stages import rehearsal
from grail_cluster.stages.base import Stage
from grail_cluster.stages.common import entry_spec, output_digests


class Select(Stage):
    name = "select"

    def enabled(self, config: Settings, train_enabled: bool) -> bool:
        return train_enabled

    def depends_on(self, enabled: Collection[str]) -> list[Dependency]:
        return [Dependency("train", "afterok")]

    def spec(self, plan: RunPlan) -> JobSpec:
        k = plan.eval["num_checkpoints"]
        return entry_spec(plan, self, f"rank checkpoints by eval/success/success_rate, keep the top {k}")

    def run(self, plan: RunPlan, index: int) -> int:
        """Rank the run's own checkpoints (TensorBoard events / eval metrics of its experiment dir); in a
        sweep, every point's together."""
        from grail_cluster.tools.data.io import write_json
        from grail_cluster.tools.data.select_top import select_across, select_top

        k = plan.eval["num_checkpoints"]
        opts = {"k": k, "hoi": plan.pipeline.get("tiebreak") == "obj_pos_error",
                "min_sr": float(plan.settings.select.min_sr or 0.0)}
        if plan.is_sweep:
            dirs = [p["experiment_dir"] for p in plan.train["points"]]
            result = select_across(experiment_dirs=dirs, group=plan.run_id, **opts)
            point_of = {os.path.abspath(d): n for n, d in enumerate(dirs)}
            for entry in result["top"]:
                entry["point"] = point_of.get(entry["experiment_dir"])
        else:
            result = select_top(experiment_dir=plan.paths["experiment_dir"], **opts)
        if len(result["top"]) < k:
            raise DataError(f"only {len(result['top'])} checkpoint(s) qualify; the plan evaluates {k}",
                            path=plan.paths["experiment_dir"], fix="lower select.k or select.min_sr, and re-plan")
        path = plan.paths["selection"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, result)
        write_marker(plan.run_dir, "select", index, plan.plan_hash,
                     output_digests([path]))
        print(f"[grail] selected {k} checkpoint(s): {[(t.get('point', ''), t['eval_step']) for t in result['top']]}")
        return 0

    def rehearse(self, plan: RunPlan, index: int) -> dict[str, Any]:
        """The top k as digests of the training's; across a sweep, every point's training feeds it."""
        points = plan.stage("train").size if "train" in plan.stage_names else 0
        if not points:
            train = {"digest": "explicit"}
        elif not plan.is_sweep:
            train = rehearsal.read_upstream(plan, "train", 0)
        else:
            train = {"digest": rehearsal.combine([rehearsal.read_upstream(plan, "train", p)["digest"]
                                                  for p in range(points)])}
        k = plan.eval["num_checkpoints"]
        return {"top": [{"rank": r, "digest": rehearsal.combine(train["digest"], r)} for r in range(k)]}


STAGE = Select()
