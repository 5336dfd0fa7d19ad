"""Merge stage: one merged motion library per selected checkpoint (index = checkpoint rank)."""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from grail_cluster.core.errors import DataError
from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.markers import write_marker
from grail_cluster.core.plan import Dependency, RunPlan
from grail_cluster.stages import rehearsal
from grail_cluster.stages.base import Stage
from grail_cluster.stages.checkpoints import require_step, resolve_checkpoint, results_dir
from grail_cluster.stages.common import entry_spec, output_digests, resubmit_hint


class Merge(Stage):
    name = "merge"

    def depends_on(self, enabled: Collection[str]) -> list[Dependency]:
        return [Dependency("export", "afterok")]

    def size(self, k: int, n: int, points: int) -> int:
        return k

    def is_array(self, size: int) -> bool:
        return True

    def spec(self, plan: RunPlan) -> JobSpec:
        return entry_spec(plan, self, "merge every export shard of one step into exported/step_S/merged")

    def run(self, plan: RunPlan, index: int) -> int:
        """Merge every export shard of checkpoint rank ``index`` into exported/step_S/merged."""
        from grail_cluster.core.provenance import read_provenance
        from grail_cluster.tools.data.merge import merge_step

        checkpoint, step = resolve_checkpoint(plan, index)
        require_step(checkpoint, step)
        report = merge_step(results_dir(plan, checkpoint), step, num_shards=plan.eval["num_shards"],
                            source_data=plan.library["root"], provenance=read_provenance(plan.run_dir),
                            retry=resubmit_hint(plan))
        if not report["sound"]:
            raise DataError(f"the merge of step {step} is not sound: {'; '.join(report.get('problems', []))[:300]}",
                            path=report.get("output"), fix="it was written there, not to merged/; read the findings "
                                                             "in its export_manifest.json (or `grail-cluster merge "
                                                             "--json`), then resubmit the export shards it names")
        manifest = os.path.join(report["output"], "export_manifest.json")
        write_marker(plan.run_dir, "merge", index, plan.plan_hash,
                     output_digests([manifest]))
        print(f"[grail] merged step {step}: {report.get('exported_count')} motions in {report['output']}")
        return 0

    def rehearse(self, plan: RunPlan, index: int) -> dict[str, Any]:
        """Combine every export shard of checkpoint rank ``index``, each motion exactly once."""
        n = plan.eval["num_shards"]
        merged: dict[str, str] = {}
        for i in range(index * n, (index + 1) * n):
            part = rehearsal.read_upstream(plan, "export", i)
            for key, value in part["motions"].items():
                if key in merged:
                    raise DataError(f"motion {key} appears in two export shards",
                                    path=str(rehearsal.output_path(plan, "export", i)))
                merged[key] = value
        if "render" in plan.stage_names:
            for i in range(index * n, (index + 1) * n):
                rehearsal.read_upstream(plan, "render", i)
        return {"checkpoint_rank": index, "motions": dict(sorted(merged.items())), "count": len(merged)}


STAGE = Merge()
