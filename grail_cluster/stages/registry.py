"""The DAG's one source: every stage, in the order the plan lists them and jobs are submitted.

Adding a stage is one module (a :class:`~grail_cluster.stages.base.Stage` subclass) and one line here.
"""

from __future__ import annotations

from grail_cluster.core.plan import RunPlan
from grail_cluster.stages import eval as eval_stage
from grail_cluster.stages import export, merge, render, select, train, web
from grail_cluster.stages.base import Stage

STAGES: tuple[Stage, ...] = (
    train.STAGE,
    select.STAGE,
    eval_stage.STAGE,
    render.STAGE,
    export.STAGE,
    merge.STAGE,
    web.STAGE,
)
_BY_NAME = {s.name: s for s in STAGES}


def names() -> list[str]:
    return [s.name for s in STAGES]


def get(name: str) -> Stage:
    """The stage called ``name``; KeyError for a name no stage has."""
    return _BY_NAME[name]


def arrays(plan: RunPlan) -> dict[str, bool]:
    """Stage name -> whether its job is an array, for each stage of ``plan`` (what a backend's
    submission needs and the plan does not store)."""
    return {st.name: get(st.name).is_array(st.size) for st in plan.stages}
