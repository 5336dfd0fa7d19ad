"""Web stage: the static viewer of the merged libraries.

One job (``python -m grail_cluster.entry web``) runs ``grail_cluster.tools.web.generate`` over
``<export_dir>/step_<S:06d>/merged`` of every selected checkpoint into ``<run>/web/step_<S:06d>/``
plus an index page; view it with ``grail-cluster serve <run>/web``.
"""

from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.plan import RunPlan
from grail_cluster.stages.common import entry_spec


def spec(plan: RunPlan) -> JobSpec:
    return entry_spec(plan, "web", "publish the static web viewer of the merged motion libraries")
