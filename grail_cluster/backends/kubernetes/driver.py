"""``grail-cluster drive <run>``: chain a Kubernetes run's stages in the cluster, so no laptop stays up.

The driver Job (``specs/kubernetes/driver.yaml``, started by ``run`` and by ``resubmit``) runs this in a
pod under its own ServiceAccount and Role. One pass (``Driver.step``)::

    refresh the ledger from the API (the run's Jobs and pods: two list calls) and the markers
    apply cancel requests (the annotation `grail-cluster cancel --stage` puts on the driver Job)
    for each ledger job of this round not created yet, in stage order:
        an upstream ledger job (its dependency text) not settled  -> wait
        afterok:   an upstream shard not done -> all its shards cancelled (DEPENDENCY_FAILED)
        aftercorr: upstream shard i not done  -> shard i cancelled (DEPENDENCY_FAILED)
        a shard whose success marker is valid -> done, never run again
        the rest -> one Indexed Job carrying only them (an existing Job of that name is adopted)

and between passes it waits for a Job event (a watch) or ``cluster.driver.poll_seconds``. It ends when
every ledger job of its round is settled: exit 0 if every shard is done, 3 if some failed (the Job
then fails at once, by its podFailurePolicy; `status` and `resubmit` read the ledger it kept).

Idempotent: Job names are deterministic, creation adopts an existing Job of the same name (a driver
restarted after a crash finds what it created), and the ledger records each creation. While it runs
it is the only writer of the ledger; other machines' `status` reads it without writing.

A ledger job moves: pending (waiting for its dependencies) -> created -> settled by refresh, or
pending -> settled at once (every shard blocked upstream or already done).
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

from grail_cluster.backends.base import gate, parse_depends
from grail_cluster.backends.kubernetes.client import KubernetesBackend
from grail_cluster.backends.kubernetes.names import ANN_CANCEL, DRIVER_FINISHED_WITH_FAILURES
from grail_cluster.backends.refresh import refresh
from grail_cluster.core.errors import EXIT_OK, GrailError
from grail_cluster.core.ledger import Ledger
from grail_cluster.core.markers import validate_marker
from grail_cluster.core.states import ACTIVE, ShardState


def readiness(row: Any, jobs_by_id: dict[str, Any], shards: dict[tuple[str, int], Any]
              ) -> tuple[str, set[int], dict[int, str]]:
    """("wait", ...) while an upstream ledger job is unsettled, else ("go", runnable, {blocked: why})."""
    mine = {i for i in row.indices
            if (s := shards.get((row.stage, i))) is not None and s.job_id == row.job_id and s.state in ACTIVE}
    upstreams = []
    for kind, upstream in parse_depends(row.depends):
        for up_id in upstream:
            up = jobs_by_id.get(up_id)
            if up is None:
                continue
            if not up.settled:
                return "wait", set(), {}
            states = {i: shards[(up.stage, i)].state if (up.stage, i) in shards else ShardState.UNSUBMITTED
                      for i in up.indices}
            upstreams.append((kind, up.stage, states))
    blocked = {i: verdict.why for i in mine if (verdict := gate(i, upstreams)).state == "blocked"}
    return "go", mine - set(blocked), blocked


class Driver:
    """Drives one submission round of a run dir (the latest by default)."""

    def __init__(self, run_dir: str, round_: int | None = None, *, backend: KubernetesBackend | None = None,
                 log: Any = None):
        from grail_cluster.core.plan import read_plan

        self.plan = read_plan(run_dir)
        if self.plan.backend != "kubernetes":
            raise GrailError(f"run {self.plan.run_id} is for cluster={self.plan.backend}; `drive` chains Kubernetes runs",
                             fix=f"follow it with `grail-cluster watch {self.plan.run_dir}`")
        self.backend = backend or KubernetesBackend(driving=True)
        self.backend.driving = True
        with Ledger(self.plan.run_dir) as ledger:
            last = ledger.next_round() - 1
        if last < 0:
            raise GrailError(f"nothing was submitted for run {self.plan.run_id}", path=self.plan.run_dir,
                             fix="submit it with `grail-cluster run ... cluster=kubernetes`")
        self.round = last if round_ is None else int(round_)
        self.stopped = False
        self.log = log or (lambda msg: print(f"[grail drive] {msg}", flush=True))

    # ------------------------------------------------------------------ one pass

    def step(self) -> bool:
        """One pass; True once every ledger job of this round is settled."""
        plan = self.plan
        order = {name: i for i, name in enumerate(plan.stage_names)}
        with Ledger(plan.run_dir) as ledger:
            refresh(plan, ledger, self.backend)
            self._cancel_requests(ledger)
            mine = sorted((j for j in ledger.jobs() if j.round == self.round), key=lambda j: (order[j.stage], j.chunk))
            for row in mine:
                if row.job_id in self.backend.created_jobs:
                    continue
                # Re-read: rows settled earlier in this pass change what their dependants see.
                jobs_by_id = {j.job_id: j for j in ledger.jobs()}
                if jobs_by_id[row.job_id].settled:
                    continue
                shards = {(s.stage, s.idx): s for s in ledger.shards()}
                verdict, runnable, blocked = readiness(jobs_by_id[row.job_id], jobs_by_id, shards)
                if verdict == "wait":
                    continue
                self._create(ledger, row, runnable, blocked)
            return all(j.settled for j in ledger.jobs() if j.round == self.round)

    def _create(self, ledger: Ledger, row: Any, runnable: set[int], blocked: dict[int, str]) -> None:
        plan = self.plan
        for idx, why in sorted(blocked.items()):
            ledger.update_shard(row.stage, idx, ShardState.CANCELLED, sched_state="DEPENDENCY_FAILED", signature=why)
        todo = []
        for idx in sorted(runnable):
            if validate_marker(plan.run_dir, row.stage, idx, plan.plan_hash):
                # Never run a done shard again, whatever asked for it.
                ledger.update_shard(row.stage, idx, ShardState.DONE, sched_state="ALREADY_DONE")
            else:
                todo.append(idx)
        if blocked:
            self.log(f"{row.stage}: {len(blocked)} shard(s) cancelled, an upstream shard did not finish "
                     f"(e.g. {next(iter(blocked.values()))})")
        if not todo:
            ledger.set_meta(f"k8s_created:{row.job_id}", {"indices": "", "skipped": True, "at": time.time()})
            ledger.settle(row.job_id)
            self.log(f"{row.stage}: nothing to run for {row.job_id}")
            return
        table, created = self.backend.create_stage_job(plan, row, todo)
        ledger.set_meta(f"k8s_created:{row.job_id}", {"indices": table, "at": time.time()})
        ledger.event("k8s-created", row.stage, None, row.round, job_id=row.job_id, indices=table, adopted=not created)
        self.log(f"{row.stage}: {'created' if created else 'adopted'} Job {row.job_id} with shards {table}")

    def _cancel_requests(self, ledger: Ledger) -> None:
        snap = self.backend.last_snapshot
        if snap is None:
            return
        wanted: set[str] = set()
        for job in snap.drivers.values():
            wanted |= set(filter(None, ((job["metadata"].get("annotations") or {}).get(ANN_CANCEL) or "").split(",")))
        for row in ledger.jobs(unsettled=True):
            if row.job_id in wanted:
                self.backend.settle_row(ledger, row, ShardState.CANCELLED, "CANCELLED",
                                        "cancelled (grail-cluster cancel)")
                self.backend.created_jobs.add(row.job_id)  # never create it now
                ledger.event("cancel", row.stage, None, row.round, job_id=row.job_id, by="driver")
                self.log(f"{row.stage}: {row.job_id} cancelled on request")

    # ------------------------------------------------------------------ the loop

    def outcome(self) -> dict[str, Any]:
        with Ledger(self.plan.run_dir) as ledger:
            rows = [j for j in ledger.jobs() if j.round == self.round]
            states: dict[str, int] = {}
            for row in rows:
                for idx in row.indices:
                    s = ledger.shard(row.stage, idx)
                    if s is not None and s.job_id == row.job_id:
                        states[str(s.state)] = states.get(str(s.state), 0) + 1  # plain words: it is printed
        return {"round": self.round, "settled": all(j.settled for j in rows), "shards": states}

    def check_alone(self) -> None:
        """Refuse to drive next to an active driver Job of this run (two writers of one ledger)."""
        snap = self.backend.snapshot(self.plan, pods=False)
        me = os.environ.get("HOSTNAME", "")
        others = [n for n in self.backend.driver_active(snap) if not me.startswith(f"{n}-")]
        if others:
            raise GrailError(f"driver Job {others[0]} is already driving run {self.plan.run_id}",
                             fix=f"follow it with `grail-cluster watch {self.plan.run_dir}`, or delete that Job first")

    def run(self, interval: float | None = None) -> int:
        interval = float(interval or self.plan.settings.cluster.driver.poll_seconds)
        self.log(f"driving run {self.plan.run_id} round {self.round} (namespace "
                 f"{self.plan.settings.cluster.namespace}, looks at least every {interval:g} s)")
        while not self.stopped:
            if self.step():
                break
            self.backend.wait_for_change(self.plan, interval)
        result = self.outcome()
        if self.stopped:
            self.log("stopped (SIGTERM); a restarted driver continues from the ledger")
            return 143
        ok = set(result["shards"]) <= {ShardState.DONE}
        self.log(f"round {self.round} settled: {result['shards']}"
                 + ("" if ok else f"; see `grail-cluster status {self.plan.run_dir}`, repair with `grail-cluster resubmit`"))
        return EXIT_OK if ok else DRIVER_FINISHED_WITH_FAILURES


# ----------------------------------------------------------------------------- CLI


def cmd_drive(args: argparse.Namespace) -> int:
    from grail_cluster.core.run_dir import load_run

    plan = load_run(args.run)
    driver = Driver(plan.run_dir, args.round)
    if args.once:
        done = driver.step()
        driver.log(f"one pass: {'settled' if done else 'not settled yet'} {driver.outcome()['shards']}")
        return EXIT_OK
    if not args.force:
        driver.check_alone()
    signal.signal(signal.SIGTERM, lambda *_: setattr(driver, "stopped", True))
    return driver.run(args.interval)


def register(sub: Any) -> None:
    p = sub.add_parser("drive", help="chain a Kubernetes run's stages (what the in-cluster driver Job runs)",
                       description="Create each stage's Indexed Job when the Jobs it depends on have finished, and "
                                   "keep the run's ledger, until every stage of the submission round is settled. "
                                   "`run` and `resubmit` start it in the cluster as a Job; run it by hand only to "
                                   "repair a run whose driver Job is gone. Exit 0: all done; 3: some shards failed.")
    p.add_argument("run", help="run dir (runs/<run_id>) or run id")
    p.add_argument("--round", type=int, help="submission round to drive (default: the latest)")
    p.add_argument("--interval", type=float, help="longest wait between passes (default cluster.driver.poll_seconds)")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--force", action="store_true", help="drive even if a driver Job of this run is active")
    p.set_defaults(func=cmd_drive)
