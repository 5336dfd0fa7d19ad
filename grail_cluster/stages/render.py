"""Render stage: kinematic replay videos of one eval shard (index i after eval index i)."""

from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.plan import RunPlan
from grail_cluster.stages.common import entry_spec


def spec(plan: RunPlan) -> JobSpec:
    return entry_spec(plan, "render", "replay the shard's successful rollouts to vis/<motion_key>.mp4")
