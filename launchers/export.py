"""Export stage: successful rollouts of one eval shard back into a motion library."""

from grail_cluster.jobspec import JobSpec
from grail_cluster.plan import RunPlan

from .common import entry_spec


def spec(plan: RunPlan) -> JobSpec:
    return entry_spec(plan, "export", "write exported/step_S/shard_i/{robot,objects,object_usd,meta}")
