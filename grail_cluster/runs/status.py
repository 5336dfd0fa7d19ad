"""Summarise a run from its ledger: per stage, the shard counts, wall time and failures.

The ledger is brought up to date first by :func:`grail_cluster.backends.refresh.refresh`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from grail_cluster.core.ledger import Ledger
from grail_cluster.core.markers import read_marker
from grail_cluster.core.plan import RunPlan
from grail_cluster.core.states import ACTIVE, FAILED, ShardState


@dataclass
class StageStatus:
    name: str
    size: int
    counts: dict[str, int]
    wall_s: float | None
    failures: list[dict[str, Any]] = field(default_factory=list)
    # Index -> where the shard's latest attempt ran: the scheduler's word (SLURM: a node list), else its marker's.
    nodes: dict[int, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return not any(self.counts.get(s) for s in (*ACTIVE, ShardState.UNSUBMITTED))


def summarise(plan: RunPlan, ledger: Ledger) -> list[StageStatus]:
    out = []
    shards = {(s.stage, s.idx): s for s in ledger.shards()}
    jobs = ledger.jobs()
    for st in plan.stages:
        counts: Counter[str] = Counter()
        failures = []
        nodes: dict[int, str] = {}
        for idx in range(st.size):
            s = shards.get((st.name, idx))
            state = s.state if s else ShardState.UNSUBMITTED
            counts[state] += 1
            if s and s.node:
                nodes[idx] = s.node
            elif state == ShardState.DONE and (m := read_marker(plan.run_dir, st.name, idx)) and m.get("node"):
                nodes[idx] = str(m["node"])  # it finished between two polls: the job's marker says where
            if s and state in FAILED:
                failures.append({"index": idx, "state": state, "attempt": s.attempt, "job_id": s.job_id,
                                 "exit_code": s.exit_code, "node": s.node, "signature": s.signature})
        stage_jobs = [j for j in jobs if j.stage == st.name]
        wall = None
        if stage_jobs:
            # From the stage's first submission to its last finished shard (markers carry the time).
            start = min(j.submitted_at for j in stage_jobs)
            if counts.get(ShardState.RUNNING) or counts.get(ShardState.PENDING):
                end = time.time()
            else:
                ends = [m["finished_at"] for i in range(st.size)
                        if (m := read_marker(plan.run_dir, st.name, i)) and "finished_at" in m]
                ends += [s.updated_at for (name, _), s in shards.items() if name == st.name and s.state != ShardState.DONE]
                end = max(ends) if ends else start
            wall = max(0.0, end - start)
        out.append(StageStatus(st.name, st.size, dict(counts), wall, failures, nodes))
    return out


def run_finished(stages: list[StageStatus]) -> bool:
    return all(s.finished for s in stages)
