"""Web stage: the static viewer of the merged libraries.

One job (``python -m grail_cluster.entry web``) runs ``grail_cluster.tools.web.generate`` over
``<export_dir>/step_<S:06d>/merged`` of every selected checkpoint into ``<run>/web/step_<S:06d>/``
plus an index page; view it with ``grail-cluster serve <run>/web``.
"""

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
from grail_cluster.stages.checkpoints import export_dir, require_step, resolve_checkpoint
from grail_cluster.stages.common import entry_spec, output_digests


class Web(Stage):
    name = "web"

    def enabled(self, config: Settings, train_enabled: bool) -> bool:
        return bool(config.web.enabled)

    def depends_on(self, enabled: Collection[str]) -> list[Dependency]:
        return [Dependency("merge", "afterok")]

    def spec(self, plan: RunPlan) -> JobSpec:
        return entry_spec(plan, self, "publish the static web viewer of the merged motion libraries")

    def run(self, plan: RunPlan, index: int) -> int:
        """The viewer of every selected checkpoint's merged library: <web_dir>/step_<S:06d>/ + an index page."""
        from grail_cluster.tools.web.generate import generate_run_site

        libraries = []
        for rank in range(plan.eval["num_checkpoints"]):
            checkpoint, step = resolve_checkpoint(plan, rank)
            require_step(checkpoint, step)
            merged = os.path.join(export_dir(plan, checkpoint), f"step_{step:06d}", "merged")
            if not os.path.isdir(os.path.join(merged, "robot")):
                raise DataError("merged library not found", path=merged, fix="run (or resubmit) the merge stage first")
            # A sweep's winners may share a step; their sites are named by point too.
            name = f"{os.path.basename(os.path.dirname(checkpoint))}_step_{step:06d}" if plan.is_sweep else None
            libraries.append((step, merged, name) if name else (step, merged))
        title = plan.settings.web.title or plan.run_id
        result = generate_run_site(plan.paths["web_dir"], libraries, title=title)
        manifests = [result["manifest"]] + [os.path.join(result["output"], s["path"], "manifest.json")
                                            for s in result["sites"]]
        write_marker(plan.run_dir, "web", index, plan.plan_hash,
                     output_digests(manifests))
        print(f"[grail] web viewer of {len(libraries)} checkpoint(s) in {result['output']} "
              f"(view: grail-cluster serve {result['output']})")
        return 0

    def rehearse(self, plan: RunPlan, index: int) -> dict[str, Any]:
        """Index the merges."""
        k = plan.eval["num_checkpoints"]
        merges = [rehearsal.read_upstream(plan, "merge", c) for c in range(k)]
        return {"libraries": [{"checkpoint_rank": m["checkpoint_rank"], "count": m["count"],
                               "digest": rehearsal.combine(m["motions"])} for m in merges]}


STAGE = Web()
