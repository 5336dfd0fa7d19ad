"""Web stage: the static viewer of the merged libraries.

One job (``python -m grail_cluster.entry web``) runs ``grail_cluster.web.generate`` over
``<export_dir>/step_<S:06d>/merged`` of every selected checkpoint into ``<run>/web/step_<S:06d>/``
plus an index page; view it with ``grail-cluster serve <run>/web``.
"""

from grail_cluster.jobspec import JobSpec
from grail_cluster.plan import RunPlan

from .common import entry_spec


def spec(plan: RunPlan) -> JobSpec:
    return entry_spec(plan, "web", "publish the static web viewer of the merged motion libraries")
