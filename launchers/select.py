"""Select stage: rank the trained checkpoints and write ``select/selection.json`` (top-k)."""

from grail_cluster.jobspec import JobSpec
from grail_cluster.plan import RunPlan

from .common import entry_spec


def spec(plan: RunPlan) -> JobSpec:
    k = plan.eval["num_checkpoints"]
    return entry_spec(plan, "select", f"rank checkpoints by eval/success/success_rate, keep the top {k}")
