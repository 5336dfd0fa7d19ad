"""Export stage: successful rollouts of one eval shard back into a motion library."""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.markers import write_marker
from grail_cluster.core.plan import Dependency, RunPlan
from grail_cluster.stages import rehearsal
from grail_cluster.stages.base import ShardStage
from grail_cluster.stages.checkpoints import export_dir, require_step, resolve_checkpoint, shard_dir
from grail_cluster.stages.common import entry_spec, output_digests, resubmit_hint


class Export(ShardStage):
    name = "export"

    def depends_on(self, enabled: Collection[str]) -> list[Dependency]:
        # Export copies the shard's replay videos into vis/ (as GRAIL's export does), so with rendering on
        # it must follow the shard's render, or the library would miss the videos still being rendered.
        return [Dependency("render" if "render" in enabled else "eval", "aftercorr")]

    def spec(self, plan: RunPlan) -> JobSpec:
        return entry_spec(plan, self, "write exported/step_S/shard_i/{robot,objects,object_usd,meta}")

    def run(self, plan: RunPlan, index: int) -> int:
        """Export the successful rollouts of eval index ``index`` (GRAIL layout exported/step_S/shard_i)."""
        from grail_cluster.tools.data.export import export_shard

        c, shard = plan.eval_index(index)
        checkpoint, step = resolve_checkpoint(plan, c)
        require_step(checkpoint, step)
        out = os.path.join(export_dir(plan, checkpoint), f"step_{step:06d}", f"shard_{shard.shard}")
        ex = plan.settings.export
        manifest = export_shard(shard_dir(plan, step, shard.shard, checkpoint), plan.library["root"], out,
                                obj_pos_threshold=ex.obj_pos_threshold, min_progress=float(ex.min_progress),
                                hand_actions=(plan.pipeline.get("needs") or {}).get("hand_actions", "no") != "no",
                                checkpoint=checkpoint, step=step, retry=resubmit_hint(plan))
        path = os.path.join(out, "export_manifest.json")
        write_marker(plan.run_dir, "export", index, plan.plan_hash,
                     output_digests([path]))
        print(f"[grail] exported {manifest['exported_count']}/{manifest['total_motions_evaluated']} to {out}")
        return 0

    def rehearse(self, plan: RunPlan, index: int) -> dict[str, Any]:
        return rehearsal.derive_from_eval(plan, "export", index)


STAGE = Export()
