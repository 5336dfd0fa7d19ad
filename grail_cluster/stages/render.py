"""Render stage: kinematic replay videos of one eval shard (index i after eval index i)."""

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
from grail_cluster.stages.base import ShardStage
from grail_cluster.stages.checkpoints import resolve_checkpoint, shard_dir
from grail_cluster.stages.common import entry_spec, output_digests


class Render(ShardStage):
    name = "render"

    def enabled(self, config: Settings, train_enabled: bool) -> bool:
        return bool(config.render.enabled)

    def depends_on(self, enabled: Collection[str]) -> list[Dependency]:
        return [Dependency("eval", "aftercorr")]

    def spec(self, plan: RunPlan) -> JobSpec:
        return entry_spec(plan, self, "replay the shard's successful rollouts to vis/<motion_key>.mp4")

    def run(self, plan: RunPlan, index: int) -> int:
        """Replay videos of eval index ``index``'s successful motions into <shard_dir>/vis/<key>.mp4 (CPU, MuJoCo)."""
        from grail_cluster.tools.replay.render import DEFAULT_CAMERA_OFFSET, render_stage

        c, shard = plan.eval_index(index)
        checkpoint, step = resolve_checkpoint(plan, c)
        sdir = shard_dir(plan, step, shard.shard, checkpoint)
        render = plan.settings.render
        # One render worker per CPU the job was given, not per CPU of the node it shares with other jobs.
        summary = render_stage(sdir, usd_dir=plan.library.get("usd_dir"), source_data=plan.library["root"],
                               resolution=str(render.resolution),
                               workers=plan.stage("render").resources.cpus, lod_mm=render.lod_mm or 0.0,
                               camera_offset=tuple(render.camera_offset or DEFAULT_CAMERA_OFFSET))
        if summary["failed"]:
            first = summary["failed"][0]
            raise DataError(f"{len(summary['failed'])} of {summary['selected']} motion(s) failed to render; first: "
                            f"{first['key']}: {first['why']}"[:600], path=summary["output_dir"],
                            fix="fix the named trajectories/USDs, then resubmit the render stage (finished videos "
                                "are kept)")
        outputs = output_digests(sorted(os.path.join(summary["output_dir"], f"{k}.mp4")
                                        for k in [x["key"] for x in summary["videos"]] + summary["skipped_keys"]))
        write_marker(plan.run_dir, "render", index, plan.plan_hash, outputs)
        print(f"[grail] rendered {summary['rendered']} motion(s) ({summary['skipped']} kept) of "
              f"{summary['motions_in_input']} into {summary['output_dir']} in {summary['seconds']:.1f} s")
        return 0

    def rehearse(self, plan: RunPlan, index: int) -> dict[str, Any]:
        return rehearsal.derive_from_eval(plan, "render", index)


STAGE = Render()
