"""Export stage: successful rollouts of one eval shard back into a motion library."""

from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.plan import RunPlan
from grail_cluster.stages.common import entry_spec


def spec(plan: RunPlan) -> JobSpec:
    return entry_spec(plan, "export", "write exported/step_S/shard_i/{robot,objects,object_usd,meta}")
