"""The submitter dies, or two shells submit at once, on the real local SLURM cluster, with the CLI
called the way a user calls it (the venv's console script, cwd outside the repo, output to a log).

A submitter is killed (SIGKILL, through the GRAIL_TEST_KILL_AFTER_SUBMITS hook in runs/control.py)
right after its k-th accepted sbatch, before or after the ledger recorded it; the repair (the same
`run` again, or `resubmit`) must leave every job name of the run exactly once in the scheduler (squeue
and sacct, not our ledger), the ledger naming the same job ids, and the jobs it submits waiting on the
adopted ones' ids. Where the check needs a still queue, every job sleeps 300 s
(rehearsal.work_seconds): train runs, everything after it waits on it, nothing ends during the check.
(SBATCH_HOLD would be neater, but sbatch reads it only from SLURM 23.02 on.)
"""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from grail_cluster.backends.groups import plan_groups
from grail_cluster.core.ledger import Ledger
from grail_cluster.core.run_dir import load_run
from grail_cluster.stages import registry
from tests.conftest import make_sonic_root
from tests.libgen import make_library
from tests.test_slurm_run import overrides

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]
CLI = Path(sys.executable).parent / "grail-cluster"
SINCE = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 120))
SECONDS_TO_RECONCILE: dict[str, float] = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("submitter")
    make_library(root / "lib", 32, fast=True)
    make_sonic_root(root / "SONIC")
    (root / "cwd").mkdir()
    return root


@pytest.fixture(scope="module", autouse=True)
def _report_reconcile_times():
    yield
    if SECONDS_TO_RECONCILE:
        print("\nrepair wall time (s): " + ", ".join(f"{k} {v:.2f}" for k, v in SECONDS_TO_RECONCILE.items()))


def cli(world: Path, log: str, *args: str, **env: str) -> tuple[int, str]:
    """The console script as a user runs it: its own cwd, stdout and stderr into a log file."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GRAIL_TEST_", "SBATCH_"))}
    environ.update(env)
    path = world / "cwd" / f"{log}.log"
    with open(path, "w") as fh:
        proc = subprocess.run([str(CLI), *args], cwd=world / "cwd", stdout=fh, stderr=subprocess.STDOUT, env=environ,
                              timeout=300)
    return proc.returncode, path.read_text()


SLOW = "rehearsal.work_seconds=300"


def run_args(world: Path, run_id: str, *extra: str) -> list[str]:
    return ["run", *overrides(world, run_id, "slurm", *extra)]


def expected_names(world: Path, run_id: str) -> dict[str, list[str]]:
    """{stage: [job names]} of the run's first round, as the planner and group rules make them."""
    plan = load_run(str(world / "runs" / run_id))
    groups = plan_groups(plan, {st.name: list(range(st.size)) for st in plan.stages}, arrays=registry.arrays(plan),
                         max_array_size=None, parallelism=None)
    names: dict[str, list[str]] = defaultdict(list)
    for g in groups:
        names[g.stage].append(g.name(run_id, 0))
    return dict(names)


def scheduler_jobs(run_id: str) -> dict[str, set[str]]:
    """{job name: base job ids} of this run as SLURM knows it: the queue and accounting together."""
    found: dict[str, set[str]] = defaultdict(set)
    queue = subprocess.run(["squeue", "--me", "-h", "-o", "%i|%j"], capture_output=True, text=True, check=True).stdout
    acct = subprocess.run(["sacct", "-n", "-P", "-X", "-u", getpass.getuser(), "-S", SINCE, "-o", "JobID,JobName"],
                          capture_output=True, text=True, check=True).stdout
    for line in (queue + acct).splitlines():
        jid, _, name = line.partition("|")
        if name.startswith(f"{run_id}:"):
            found[name].add(jid.split("_", 1)[0])
    return dict(found)


def queued_dependencies(run_id: str) -> dict[str, set[str]]:
    """{job name: ids it waits on}, from squeue's %E (held jobs keep their dependencies unfulfilled)."""
    out = subprocess.run(["squeue", "--me", "-h", "-o", "%j|%E"], capture_output=True, text=True, check=True).stdout
    deps: dict[str, set[str]] = {}
    for line in out.splitlines():
        name, _, dep = line.partition("|")
        if name.startswith(f"{run_id}:"):
            deps[name] = set(re.findall(r"after\w*:(\d+)", dep))
    return deps


def scancel_run(run_id: str) -> None:
    ids = sorted({i for v in scheduler_jobs(run_id).values() for i in v})
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def assert_queue_exact(world: Path, run_id: str) -> dict[str, str]:
    """Every job name of the run exactly once in the scheduler; the ledger names the same ids; each
    queued job waits on exactly its upstream stages' scheduler ids. Returns {name: job id}."""
    names = expected_names(world, run_id)
    want = {n for v in names.values() for n in v}
    deadline = time.time() + 20
    while True:  # a job that already ended may take a moment to reach accounting
        sched = scheduler_jobs(run_id)
        if set(sched) >= want or time.time() > deadline:
            break
        time.sleep(1)
    duplicates = {n: ids for n, ids in sched.items() if len(ids) != 1}
    assert not duplicates, f"names queued more than once: {duplicates}"
    assert set(sched) == want, f"missing in the scheduler: {want - set(sched)}; foreign: {set(sched) - want}"
    ids = {n: next(iter(v)) for n, v in sched.items()}
    with Ledger(world / "runs" / run_id, create=False) as ledger:
        recorded = {j.name: j.job_id for j in ledger.jobs()}
        assert ledger.meta("open_round") is None
    assert recorded == ids, f"ledger {recorded} != scheduler {ids}"
    plan = load_run(str(world / "runs" / run_id))
    deps = queued_dependencies(run_id)
    for st in plan.stages:
        for name in names[st.name]:
            if name not in deps:
                continue  # left the queue already (only in the unheld case)
            upstream = {ids[n] for d in st.depends_on for n in names[d.stage]}
            assert deps[name] == upstream, f"{name} waits on {deps[name]}, its upstream jobs are {upstream}"
    return ids


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


KILL_CASES = [("run", "sbatch", k) for k in (1, 4, 7)] + [("run", "ledger", k) for k in (1, 4, 7)] + [
    ("resubmit", "sbatch", 1), ("resubmit", "sbatch", 4), ("resubmit", "ledger", 7), ("resubmit", "sbatch", 7)]


@pytest.mark.parametrize(("repair", "moment", "k"), KILL_CASES, ids=[f"{r}-{m}-{k}" for r, m, k in KILL_CASES])
def test_killed_submitter_is_finished_without_duplicates(world, repair, moment, k):
    run_id = f"kill-{repair}-{moment}-{k}-{uuid.uuid4().hex[:6]}"
    args = run_args(world, run_id, SLOW)
    try:
        rc, text = cli(world, f"{run_id}-killed", *args, GRAIL_TEST_KILL_AFTER_SUBMITS=str(k),
                       GRAIL_TEST_KILL_AT=moment)
        assert rc == -9, f"the hook did not kill the submitter (rc {rc}):\n{text}"
        names = expected_names(world, run_id)
        assert len(names) == 7 and all(len(v) == 1 for v in names.values())  # 7 stages, one job each
        before = scheduler_jobs(run_id)
        assert len(before) == k and all(len(v) == 1 for v in before.values()), before
        with Ledger(world / "runs" / run_id, create=False) as ledger:
            assert len(ledger.jobs()) == (k if moment == "ledger" else k - 1)
        started = time.perf_counter()
        if repair == "run":
            rc, text = cli(world, f"{run_id}-repair", *args, "--json")
        else:
            rc, text = cli(world, f"{run_id}-repair", "resubmit", str(world / "runs" / run_id), "--json")
        SECONDS_TO_RECONCILE[f"{repair}-{moment}-{k}"] = time.perf_counter() - started
        assert rc == 0, text
        no_traceback(text)
        data = json.loads(text[text.index("{"):])
        assert data["resumed"] is True
        assert data["submitted"] == 7 - k, data
        assert data["adopted"] == (0 if moment == "ledger" else 1), data
        ids = assert_queue_exact(world, run_id)
        for name, before_ids in before.items():
            assert {ids[name]} == before_ids  # the dead submitter's jobs were kept, not replaced
        # A third call finds the round complete: `run` refuses, resubmit has nothing to do while it waits.
        rc, text = cli(world, f"{run_id}-again", *args)
        assert rc != 0 and "already submitted" in text, text
        no_traceback(text)
        rc, text = cli(world, f"{run_id}-again2", "resubmit", str(world / "runs" / run_id))
        assert rc != 0 and "still pending or running" in text, text
        assert_queue_exact(world, run_id)
    finally:
        scancel_run(run_id)


def wait_status(world: Path, run_id: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rc, text = cli(world, f"{run_id}-status", "status", str(world / "runs" / run_id), "--json")
        data = json.loads(text[text.index("{"):])
        if data["finished"]:
            return data
        time.sleep(3)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s: {data['stages']}")


def test_killed_submitter_whose_first_job_already_ended_runs_to_the_end(world):
    """Killed after the first sbatch, before the ledger heard of it; the train job runs and leaves the
    queue before the repair: only accounting still knows it, and it must not be submitted again."""
    run_id = f"ended-{uuid.uuid4().hex[:6]}"
    args = run_args(world, run_id)
    try:
        rc, text = cli(world, f"{run_id}-killed", *args, GRAIL_TEST_KILL_AFTER_SUBMITS="1")
        assert rc == -9, text
        train = expected_names(world, run_id)["train"][0]
        deadline = time.time() + 120
        while time.time() < deadline:
            queue = subprocess.run(["squeue", "--me", "-h", "-o", "%j"], capture_output=True, text=True).stdout.split()
            if train not in queue and train in scheduler_jobs(run_id):
                break
            time.sleep(1)
        else:
            raise AssertionError("the orphaned train job did not finish")
        rc, text = cli(world, f"{run_id}-repair", *args, "--json")
        assert rc == 0, text
        data = json.loads(text[text.index("{"):])
        assert data["adopted"] == 1 and data["submitted"] == 6, data
        data = wait_status(world, run_id)
        assert data["ok"], data["stages"]
        assert all(s["counts"] == {"done": s["size"]} for s in data["stages"]), data["stages"]
        assert_queue_exact(world, run_id)
    finally:
        scancel_run(run_id)


def test_same_run_id_in_another_run_root_is_not_adopted(world):
    """Run ids repeat across run roots: jobs of another root's run with the same id are not ours."""
    run_id = f"twin-{uuid.uuid4().hex[:6]}"
    other = world / "other-root"
    try:
        rc, text = cli(world, f"{run_id}-a", *run_args(world, run_id, SLOW))
        assert rc == 0, text
        rc, text = cli(world, f"{run_id}-b", *run_args(world, run_id, SLOW, f"run.root={other}"), "--json")
        assert rc == 0, text
        data = json.loads(text[text.index("{"):])
        assert data["adopted"] == 0 and data["submitted"] == 7, data
        sched = scheduler_jobs(run_id)
        assert all(len(v) == 2 for v in sched.values()) and len(sched) == 7, sched
        with Ledger(world / "runs" / run_id, create=False) as a, Ledger(other / run_id, create=False) as b:
            assert not {j.job_id for j in a.jobs()} & {j.job_id for j in b.jobs()}
    finally:
        scancel_run(run_id)


def _together(world: Path, logs: list[str], argv: list[list[str]]) -> list[tuple[int, str]]:
    """Start the commands at the same moment; their exit codes and logs."""
    def one(i: int) -> tuple[int, str]:
        return cli(world, logs[i], *argv[i])

    with ThreadPoolExecutor(len(argv)) as pool:
        return list(pool.map(one, range(len(argv))))


def test_two_runs_of_one_run_id_at_once(world):
    for attempt in range(2):
        run_id = f"twoshells-{attempt}-{uuid.uuid4().hex[:6]}"
        args = run_args(world, run_id, SLOW)
        try:
            results = _together(world, [f"{run_id}-1", f"{run_id}-2"], [args, args])
            for _, text in results:
                no_traceback(text)
            codes = sorted(rc for rc, _ in results)
            assert codes[0] == 0 and codes[1] != 0, results
            loser = next(text for rc, text in results if rc != 0)
            assert ("another grail-cluster process is submitting" in loser or "already submitted" in loser), loser
            assert_queue_exact(world, run_id)
        finally:
            scancel_run(run_id)


@pytest.fixture
def failed_run(world):
    """A run whose eval shard 3 failed, settled: render/export/merge/web were cancelled after it."""
    run_id = f"partly-failed-{uuid.uuid4().hex[:6]}"
    rc, text = cli(world, f"{run_id}-run", *run_args(world, run_id, "rehearsal.faults=[eval/3:exit1]"))
    assert rc == 0, text
    data = wait_status(world, run_id)
    assert not data["ok"]
    return run_id


@pytest.mark.parametrize("wait", [False, True])
def test_two_resubmits_at_once_submit_once(world, failed_run, wait):
    run_id = failed_run
    run_dir = str(world / "runs" / run_id)
    with Ledger(run_dir, create=False) as ledger:
        before = {j.name for j in ledger.jobs()}
    argv = ["resubmit", run_dir, *(["--wait"] if wait else [])]
    try:
        results = _together(world, [f"{run_id}-rs{int(wait)}-1", f"{run_id}-rs{int(wait)}-2"], [argv, argv])
        for _, text in results:
            no_traceback(text)
        codes = sorted(rc for rc, _ in results)
        assert codes[0] == 0 and codes[1] != 0, results
        loser = next(text for rc, text in results if rc != 0)
        assert ("another grail-cluster process is submitting" in loser or "still pending or running" in loser), loser
        sched = scheduler_jobs(run_id)
        assert all(len(v) == 1 for v in sched.values()), sched
        with Ledger(run_dir, create=False) as ledger:
            new = {j.name: j.job_id for j in ledger.jobs() if j.name not in before}
        assert new and {n for n in sched if n not in before} == set(new), (sched, new)
        assert {n: next(iter(sched[n])) for n in new} == new
    finally:
        scancel_run(run_id)
