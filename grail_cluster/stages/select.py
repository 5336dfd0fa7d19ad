"""Select stage: rank the trained checkpoints and write ``select/selection.json`` (top-k)."""

from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.plan import RunPlan
from grail_cluster.stages.common import entry_spec


def spec(plan: RunPlan) -> JobSpec:
    k = plan.eval["num_checkpoints"]
    return entry_spec(plan, "select", f"rank checkpoints by eval/success/success_rate, keep the top {k}")
