"""States from the API (pure): each pod's outcome, each completion index's state from its Job's
status and newest pod, and each shard's state through the Job's index table. Read from
``status.completedIndexes`` / ``failedIndexes``, the Job conditions and the pods; markers decide
"done" as everywhere else.
"""

from __future__ import annotations

import time
from typing import Any

from grail_cluster.backends.base import TaskInfo
from grail_cluster.backends.kubernetes.names import (
    ANN_COMPLETION_INDEX,
    ANN_INDICES,
    ANN_MULTINODE,
    parse_ranges,
)
from grail_cluster.core.states import JobState

# How a pod can fail by itself (as opposed to being stopped because other shards failed).
_OWN_FAILURES = (JobState.FAILED, JobState.TIMEOUT, JobState.OUT_OF_MEMORY, JobState.NODE_FAIL)


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def pod_index(pod: dict[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    value = (meta.get("labels") or {}).get(ANN_COMPLETION_INDEX) or (meta.get("annotations") or {}).get(ANN_COMPLETION_INDEX)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _main_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for s in statuses:
        if s.get("name") in ("main", "driver"):
            return s
    return statuses[0] if statuses else {}


def pod_outcome(pod: dict[str, Any] | None) -> tuple[JobState, str, str | None, float | None, str | None]:
    """(state, scheduler word, exit code, elapsed, node) of one pod."""
    if pod is None:
        return JobState.PENDING, "Pending", None, None, None
    st = pod.get("status") or {}
    node = (pod.get("spec") or {}).get("nodeName")
    cs = _main_status(pod)
    term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
    started = parse_time(st.get("startTime"))
    finished = parse_time(term.get("finishedAt"))
    elapsed = finished - started if started and finished else None
    exit_code = f"{term['exitCode']}:0" if term.get("exitCode") is not None else None
    phase = st.get("phase") or "Pending"
    if phase == "Failed" or term.get("exitCode"):
        if term.get("reason") == "OOMKilled":
            return JobState.OUT_OF_MEMORY, "OOMKilled", exit_code, elapsed, node
        if st.get("reason") == "DeadlineExceeded":
            return JobState.TIMEOUT, "DeadlineExceeded", exit_code, elapsed, node
        if st.get("reason") == "Evicted":
            return JobState.NODE_FAIL, "Evicted", exit_code, elapsed, node
        return JobState.FAILED, term.get("reason") or "Failed", exit_code, elapsed, node
    if phase == "Succeeded":
        return JobState.COMPLETED, "Succeeded", exit_code or "0:0", elapsed, node
    if phase == "Running":
        return JobState.RUNNING, "Running", None, time.time() - started if started else None, node
    waiting = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
    return JobState.PENDING, waiting or "Pending", None, None, node


def index_states(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[int, TaskInfo]:
    """Completion index -> state of one Indexed Job, from its status and its pods (newest per index)."""
    spec = job.get("spec") or {}
    st = job.get("status") or {}
    completions = int(spec.get("completions") or 1)
    completed = set(parse_ranges(st.get("completedIndexes")))
    failed = set(parse_ranges(st.get("failedIndexes")))
    conditions = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
    job_failed = conditions.get("Failed") or conditions.get("FailureTarget")
    job_complete = conditions.get("Complete") or conditions.get("SuccessCriteriaMet")
    newest: dict[int, dict[str, Any]] = {}
    for pod in pods:
        k = pod_index(pod)
        if k is None:
            continue
        created = parse_time((pod.get("metadata") or {}).get("creationTimestamp")) or 0.0
        if k not in newest or created >= (parse_time((newest[k].get("metadata") or {}).get("creationTimestamp")) or 0.0):
            newest[k] = pod
    out: dict[int, TaskInfo] = {}
    for k in range(completions):
        state, sched, exit_code, elapsed, node = pod_outcome(newest.get(k))
        if k in completed or (job_complete and not failed):
            out[k] = TaskInfo(JobState.COMPLETED, "Succeeded", exit_code if state == JobState.COMPLETED else "0:0", elapsed,
                              node)
        elif k in failed:
            if state not in _OWN_FAILURES:
                state, sched = JobState.FAILED, "FailedIndex"
            out[k] = TaskInfo(state, sched, exit_code, elapsed, node)
        elif job_failed:
            reason = job_failed.get("reason") or "Failed"
            if reason == "DeadlineExceeded":
                out[k] = TaskInfo(JobState.TIMEOUT, reason, exit_code, elapsed, node)
            elif reason == "MaxFailedIndexesExceeded" or state not in _OWN_FAILURES:
                # Stopped because other shards failed, not by its own failure.
                out[k] = TaskInfo(JobState.CANCELLED, reason, exit_code, elapsed, node)
            else:
                out[k] = TaskInfo(state, reason, exit_code, elapsed, node)
        elif spec.get("suspend"):
            out[k] = TaskInfo(JobState.PENDING, "Suspended", None, None, None)
        elif state in (JobState.RUNNING, JobState.PENDING):
            out[k] = TaskInfo(state, sched, None, elapsed, node)
        else:
            # The last pod failed but the index has retries left: the controller starts another.
            out[k] = TaskInfo(JobState.PENDING, f"Retrying ({sched})", exit_code, None, node)
    return out


def shard_states(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[int, TaskInfo]:
    """Shard index -> state, through the Job's index table (multi-node training is one shard: 0)."""
    ann = (job.get("metadata") or {}).get("annotations") or {}
    per_index = index_states(job, pods)
    if ann.get(ANN_MULTINODE) == "true":
        infos = list(per_index.values())
        # The node that decides the one shard: a failure first, then one still going.
        for state in (JobState.FAILED, JobState.OUT_OF_MEMORY, JobState.TIMEOUT, JobState.NODE_FAIL,
                      JobState.CANCELLED, JobState.RUNNING, JobState.PENDING):
            first = next((t for t in infos if t.state == state), None)
            if first:
                node = per_index.get(0, first).node
                return {0: TaskInfo(first.state, first.sched_state, first.exit_code, first.elapsed, node)}
        return {0: per_index.get(0) or TaskInfo(JobState.COMPLETED, "Succeeded", "0:0")}
    table = parse_ranges(ann.get(ANN_INDICES))
    return {table[k]: info for k, info in per_index.items() if k < len(table)}


def job_finished(job: dict[str, Any] | None) -> bool:
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)
