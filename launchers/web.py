"""Web stage: the static viewer of the merged libraries."""

from grail_cluster.jobspec import JobSpec
from grail_cluster.plan import RunPlan

from .common import entry_spec


def spec(plan: RunPlan) -> JobSpec:
    return entry_spec(plan, "web", "publish the static web viewer of the merged motion libraries")
