"""Resume and waiting: which jobs of a batch are done (returned from their result, not rerun),
still queued or running (waited on), or to submit; then the wait until every waited job has a
result, asking the scheduler at most once per refresh."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from grail_cluster.core.errors import GrailError
from grail_cluster.launchers.keys import code_change, describe_code
from grail_cluster.launchers.ledger import SweepJob, SweepLedger, settled_event
from grail_cluster.launchers.payloads import read_result
from grail_cluster.launchers.submission import Submitter

log = logging.getLogger(__name__)

# Scheduler queries back off from POLL_FIRST_S to POLL_MAX_S; result files (a stat each, no
# scheduler load) are looked at every RESULT_TICK_S growing to RESULT_TICK_MAX_S.
POLL_FIRST_S = 0.5
POLL_MAX_S = 5.0
RESULT_TICK_S = 0.05
RESULT_TICK_MAX_S = 0.5
# Refreshes a job may be absent from the scheduler without a result before it counts as lost: the
# result is renamed into place before the job exits, the second look covers a slow shared filesystem.
GONE_REFRESHES = 2


def reconcile(jobs: list[SweepJob], ledger: SweepLedger, submitter: Submitter, *, resume: bool,
              code: dict[str, Any] | None, code_key: str
              ) -> tuple[dict[int, dict], dict[int, dict], list[SweepJob]]:
    """Split the batch into done (result file says completed), still in the scheduler, to submit."""
    current = ledger.records()
    done: dict[int, dict] = {}
    waiting: dict[int, dict] = {}
    to_submit: list[SweepJob] = []
    unsettled: list[SweepJob] = []
    events = []
    changed: Counter[str] = Counter()
    for job in jobs:
        job.record = rec = current.get(job.num)
        why = code_change(rec.get("code"), code, code_key) if rec is not None else None
        if why and rec.get("key") == job.key and resume and rec.get("result"):
            changed[why] += 1
        if not resume or rec is None or rec.get("key") != job.key or not rec.get("result") or why:
            to_submit.append(job)
            continue
        result = read_result(ledger.state_dir / rec["result"])
        if result is not None and rec["state"] == "submitted":
            events.append(settled_event(rec, result))
        if result is not None and result["status"] == "completed":
            done[job.num] = result
        elif result is None and rec["state"] == "submitted":
            unsettled.append(job)
        else:
            to_submit.append(job)
    if unsettled:
        alive = submitter.alive([j.record for j in unsettled if j.record])
        for job in unsettled:
            assert job.record is not None
            result = read_result(ledger.state_dir / job.record["result"])  # it may have ended meanwhile
            if result is not None:
                events.append(settled_event(job.record, result))
            if result is not None and result["status"] == "completed":
                done[job.num] = result
            elif result is None and job.record["sched_id"] in alive:
                waiting[job.num] = job.record
            else:
                to_submit.append(job)
    ledger.append(events)
    to_submit.sort(key=lambda j: j.num)
    name = f"grail_{submitter.backend}"
    for why, n in sorted(changed.items()):
        log.warning(f"{name}: {n} job(s) of this sweep ran under other code ({why}): "
                    f"run again, not reused (code_key={code_key}; now: {describe_code(code)})")
    if current and resume:
        log.info(f"{name}: resuming: {len(done)} done (returned from the ledger, not "
                 f"rerun), {len(waiting)} still queued or running, {len(to_submit)} to submit")
    return done, waiting, to_submit


def wait(waiting: dict[int, dict], ledger: SweepLedger, submitter: Submitter) -> dict[int, dict]:
    """Until every waited job has a result. Result files are looked at often (a stat each);
    the scheduler is asked at most once per refresh for all the jobs left, backing off from
    POLL_FIRST_S to POLL_MAX_S; a job it no longer lists without a result is lost."""
    results: dict[int, dict] = {}
    gone: Counter[int] = Counter()
    tick, delay, refreshes, t0 = RESULT_TICK_S, POLL_FIRST_S, 0, time.monotonic()
    next_query = t0 + delay
    state = ledger.state_dir
    try:
        while True:
            events = []
            for num, rec in list(waiting.items()):
                result = read_result(state / rec["result"])
                if result is not None:
                    results[num] = result
                    events.append(settled_event(rec, result))
                    del waiting[num]
            ledger.append(events)
            if not waiting:
                break
            time.sleep(tick)
            tick = min(tick * 1.2, RESULT_TICK_MAX_S)
            if time.monotonic() < next_query:
                continue
            refreshes += 1
            delay = min(delay * 1.5, POLL_MAX_S)
            next_query = time.monotonic() + delay
            try:
                alive = submitter.alive(list(waiting.values()))
            except GrailError as exc:  # slurmctld busy or restarting: a long wait outlives that
                log.warning(f"grail_{submitter.backend}: could not ask the scheduler ({exc.problem}); "
                            "retrying")
                continue
            lost = []
            for num, rec in waiting.items():
                if rec["sched_id"] in alive:
                    gone.pop(num, None)
                    continue
                gone[num] += 1
                if gone[num] >= GONE_REFRESHES and read_result(state / rec["result"]) is None:
                    lost.append(rec)
            if lost:
                _settle_lost(lost, waiting, results, ledger, submitter)
    except KeyboardInterrupt:
        submitter.interrupted(waiting)
        raise
    finally:
        submitter.reap()
    log.info(f"grail_{submitter.backend}: all jobs ended after {time.monotonic() - t0:.1f} s "
             f"({refreshes} scheduler refreshes)")
    return results


def _settle_lost(lost: list[dict], waiting: dict[int, dict], results: dict[int, dict], ledger: SweepLedger,
                 submitter: Submitter) -> None:
    why = submitter.ended(lost)
    for rec in lost:
        result = {"status": "lost", "overrides": rec["overrides"],
                  "error": {"type": "JobLost", "traceback": "", "message":
                            f"{submitter.backend} job {rec['sched_id']} ended without writing a result "
                            f"({why.get(rec['sched_id'], 'no longer known to the scheduler')})"}}
        results[rec["num"]] = result
        ledger.append([settled_event(rec, result)])
        del waiting[rec["num"]]
