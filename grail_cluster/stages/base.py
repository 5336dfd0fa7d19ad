"""The stage interface: everything the planner, the job renderer and the in-job entry ask of a stage.

A stage module defines one subclass of :class:`Stage` and its registry line
(:mod:`grail_cluster.stages.registry`) makes it part of the DAG. The plan stores only what a stage
decided (size, dependencies, resources, requeue); the rules themselves live here and in the
subclasses, so plan.json and the hash do not change when a rule is read from code instead.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

from grail_cluster.core.jobspec import JobSpec
from grail_cluster.core.plan import Dependency, Resources, RunPlan
from grail_cluster.core.settings import Settings


class Stage:
    """One stage of the DAG; the defaults describe a single job that always runs and follows nothing."""

    name: ClassVar[str]
    requeue: ClassVar[bool] = False  # preemptible: SLURM --requeue and a USR2 warning

    def enabled(self, config: Settings, train_enabled: bool) -> bool:
        """Whether the run has this stage; ``train_enabled`` is false when training is off or the
        checkpoints are given (``select.checkpoints``)."""
        return True

    def depends_on(self, enabled: Collection[str]) -> list[Dependency]:
        """What this stage waits for, given the names of the stages the run has."""
        return []

    def size(self, k: int, n: int, points: int) -> int:
        """Number of indices: ``k`` selected checkpoints, ``n`` eval shards, ``points`` sweep points."""
        return 1

    def is_array(self, size: int) -> bool:
        """An array/Indexed Job even when size == 1 (so resubmits can name indices)."""
        return False

    def resources(self, config: Settings) -> Resources:
        """One node with ``resources.<name>``."""
        r = getattr(config.resources, self.name)
        return Resources(1, int(r.gpus or 0), int(r.cpus), float(r.mem), int(r.time))

    def spec(self, plan: RunPlan) -> JobSpec:
        """The backend-neutral job spec of this stage."""
        raise NotImplementedError

    def run(self, plan: RunPlan, index: int) -> int:
        """The in-job work of one index, after the entry checked the plan hash; writes the success
        marker and returns the exit status."""
        raise NotImplementedError

    def rehearse(self, plan: RunPlan, index: int) -> dict[str, Any]:
        """The rehearsal work of one index (small, real CPU work of the same shape): its output record."""
        raise NotImplementedError


class ShardStage(Stage):
    """A stage with one index per (selected checkpoint, eval shard): index = checkpoint * N + shard."""

    def size(self, k: int, n: int, points: int) -> int:
        return k * n

    def is_array(self, size: int) -> bool:
        return True
