"""Merge stage: one merged motion library per selected checkpoint (index = checkpoint rank)."""

from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.plan import RunPlan
from grail_cluster.stages.common import entry_spec


def spec(plan: RunPlan) -> JobSpec:
    return entry_spec(plan, "merge", "merge every export shard of one step into exported/step_S/merged")
