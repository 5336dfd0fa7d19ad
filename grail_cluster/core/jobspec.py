"""Backend-neutral job specs: what a stage runs, with which resources, after what.

Each stage (``stages/<stage>.py``, its ``spec``) turns the plan into one :class:`JobSpec` per stage; a backend
template (``job_templates/<backend>/``) turns the spec into a script or manifest. The body is plain
shell that may use these variables, which every backend defines the same way:

``GRAIL_INDEX`` (array index of this job), ``GRAIL_ATTEMPT``, ``GRAIL_RUN_DIR``, ``GRAIL_STAGE``,
``GRAIL_PLAN_HASH``, and for multi-node training ``GRAIL_MACHINE_RANK``, ``GRAIL_NUM_MACHINES``,
``GRAIL_MASTER_ADDR``, ``GRAIL_MASTER_PORT``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grail_cluster.core.plan import Dependency, Resources


@dataclass
class JobSpec:
    run_id: str
    stage: str
    size: int  # indices 0..size-1
    array: bool  # an array/Indexed Job even when size == 1 (so resubmits can name indices)
    resources: Resources
    depends_on: list[Dependency]
    workdir: str
    run_dir: str
    plan_hash: str
    setup: list[str] = field(default_factory=list)  # shell lines run first
    env: dict[str, str] = field(default_factory=dict)
    body: list[str] = field(default_factory=list)  # shell lines doing the work
    requeue: bool = False
    comment: str = ""  # what the command does, for people reading the script
    # job.python: checked first in the job, so a wrong interpreter fails in seconds with its own message
    # instead of a bare ModuleNotFoundError after training ("": no check).
    python: str = ""

    @property
    def name(self) -> str:
        # <run>:<stage> lets a crashed submitter find its jobs by name instead of resubmitting.
        return f"{self.run_id}:{self.stage}"

    @property
    def multinode(self) -> bool:
        return self.resources.nodes > 1
