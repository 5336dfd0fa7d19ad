"""Control-plane faults on a real multi-node SLURM cluster: slurmctld killed (SIGKILL) right after a
submission, slurmctld stopped and restarted, slurmdbd stopped and restarted, in the middle of a run.

These need a cluster whose daemons a test may stop: never the shared single-node one. The
``multinode_cluster`` fixture (tests/conftest.py, the lead's) gives an object with ``.env`` (the
environment that points SLURM clients at that cluster, e.g. SLURM_CONF), ``.kill_slurmctld()``
(SIGKILL), ``.stop_slurmctld()`` (clean), ``.start_slurmctld()``, ``.stop_slurmdbd()``,
``.start_slurmdbd()``, and optionally ``.overrides`` (extra Hydra overrides that cluster needs, e.g.
its partitions). Until that fixture exists these tests error at setup ("fixture 'multinode_cluster'
not found").

Every check compares grail-cluster's answer with the scheduler's own view (squeue and sacct, by id
and name), through the CLI as a user runs it (the venv's console script, its own cwd).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grail_cluster.core.errors import EXIT_UNREACHABLE
from grail_cluster.core.ledger import Ledger
from grail_cluster.core.markers import read_marker
from grail_cluster.core.run_dir import load_run
from tests.conftest import make_sonic_root
from tests.libgen import make_library
from tests.test_slurm_run import overrides

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]
CLI = Path(sys.executable).parent / "grail-cluster"
GRACE_S = 12.0  # grail_cluster.backends.slurm.LOST_GRACE_S (10 s) and a margin
ACTIVE = ("pending", "running")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctlfaults")
    make_library(root / "lib", 32, fast=True)
    make_sonic_root(root / "SONIC")
    (root / "cwd").mkdir()
    return root


def _env(cluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "COLUMNS")}
    env.update(cluster.env, WANDB_MODE="offline")
    return env


def cli(cluster, world: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(CLI), *args], cwd=world / "cwd", env=_env(cluster), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def submit(cluster, world: Path, run_id: str, *extra: str) -> Path:
    args = [*overrides(world, run_id), *getattr(cluster, "overrides", []), *extra]
    proc = cli(cluster, world, "run", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return world / "runs" / run_id


def status(cluster, world: Path, run_dir: Path) -> tuple[int, dict, float]:
    start = time.monotonic()
    proc = cli(cluster, world, "status", str(run_dir), "--json")
    took = time.monotonic() - start
    assert proc.returncode in (0, 1, EXIT_UNREACHABLE), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout), took


def shard_states(run_dir: Path) -> dict[tuple[str, int], tuple[str, str | None]]:
    with Ledger(run_dir, create=False) as ledger:
        return {(s.stage, s.idx): (str(s.state), s.signature) for s in ledger.shards()}


def _client(env: dict[str, str], *argv: str) -> str:
    """A Slurm client's output; a controller that has just restarted may refuse a call or two."""
    for _ in range(10):
        proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            return proc.stdout
        time.sleep(1)
    raise AssertionError(f"{argv[0]} keeps failing: {proc.stderr}")


def scheduler_view(cluster, ids: list[str]) -> dict[str, set[str]]:
    """{job id: the names queue and accounting know it under} (what the scheduler says, not us)."""
    env = _env(cluster)
    seen: dict[str, set[str]] = {i: set() for i in ids}
    queue = _client(env, "squeue", "-h", "-r", "--states=all", "-o", "%i|%j")
    acct = _client(env, "sacct", "-n", "-P", "-X", "-o", "JobID,JobName", "-j", ",".join(ids))
    for line in (queue + acct).splitlines():
        jid, _, name = line.partition("|")
        base = jid.split("_", 1)[0]
        if base in seen:
            seen[base].add(name.strip())
    return seen


def wait_finished(cluster, world: Path, run_dir: Path, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        code, data, _ = status(cluster, world, run_dir)
        if code != EXIT_UNREACHABLE and data["finished"]:
            return data
        time.sleep(3)
    raise AssertionError(f"{run_dir.name} did not finish in {timeout} s")


def test_controller_crash_after_submission(multinode_cluster, world):
    """slurmctld SIGKILLed right after `run` returned: ids it had not saved are gone or handed to
    later jobs. Status must call exactly those jobs lost (judged against squeue/sacct by id and
    name), resubmit must queue them again, and nothing that survived runs twice."""
    cluster = multinode_cluster
    run_dir = submit(cluster, world, "ctlcrash", "rehearsal.work_seconds=5")
    cluster.kill_slurmctld()
    cluster.start_slurmctld()
    # Later submissions (another user's) take the ids the controller forgot, if it forgot any.
    env = _env(cluster)
    intruders = []
    for _ in range(4):
        out = subprocess.run(["sbatch", "--parsable", "--job-name=intruder", "--output=/dev/null", "--wrap=sleep 120"], env=env,
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            intruders.append(out.stdout.strip().split(";")[0])
    time.sleep(GRACE_S)
    with Ledger(run_dir, create=False) as ledger:
        jobs = ledger.jobs()
    view = scheduler_view(cluster, [j.job_id.split("~")[0] for j in jobs])
    gone = {j.name for j in jobs if j.name not in view[j.job_id.split("~")[0]]}
    code, data, _ = status(cluster, world, run_dir)
    assert code != EXIT_UNREACHABLE, data["scheduler"]
    states = shard_states(run_dir)
    with Ledger(run_dir, create=False) as ledger:
        by_key = {j.job_id: j for j in ledger.jobs()}
        for (stage, idx), (state, sig) in states.items():
            job = by_key[ledger.shard(stage, idx).job_id]
            if job.name in gone and state != "done":
                assert state == "lost" and ("vanished" in sig or "now belongs to" in sig), (stage, idx, state, sig)
            else:
                assert state != "lost", (stage, idx, state, sig, view)
    print(f"\ncontroller crash: {len(gone)} of {len(jobs)} jobs lost ({sorted(gone)}); intruders {intruders}")
    subprocess.run(["scancel", *intruders], env=env, capture_output=True, timeout=60)
    # Let what survived settle, then repair; the run finishes and no done shard ran again.
    # A job the dead controller had launched without saving it is launched twice: slurmctld requeues it
    # held ("launch failed requeued held"). status must say so and how to release it, or the run would
    # wait forever while looking merely pending; the user follows that hint.
    released = []
    deadline = time.time() + 600
    while time.time() < deadline:
        code, data, _ = status(cluster, world, run_dir)
        for note in data["notes"]:
            if "held by the scheduler" in note:
                m = re.search(r"`scontrol release (\d+)`", note)
                assert m, note
                if m.group(1) not in released:
                    assert cluster.client("scontrol", "release", m.group(1)).returncode == 0
                    released.append(m.group(1))
        if not any(data["stages"][i]["counts"].get(s) for i in range(len(data["stages"])) for s in ACTIVE):
            break
        time.sleep(3)
    print(f"held after the crash and released as status said: {released}")
    plan = load_run(str(run_dir))
    done_before = {(st.name, i): read_marker(plan.run_dir, st.name, i) for st in plan.stages for i in range(st.size)
                   if states.get((st.name, i), ("",))[0] == "done"}
    if any(s["counts"].get("lost") or s["counts"].get("failed") for s in data["stages"]):
        res = cli(cluster, world, "resubmit", str(run_dir))
        assert res.returncode == 0, res.stdout + res.stderr
    data = wait_finished(cluster, world, run_dir)
    assert data["ok"], [(s["name"], s["counts"], s["failures"][:2]) for s in data["stages"]]
    for (stage, idx), marker in done_before.items():
        assert read_marker(plan.run_dir, stage, idx) == marker, f"{stage} {idx} ran again"


def test_controller_restart_mid_run_status_and_watch_ride_through(multinode_cluster, world):
    """slurmctld stopped cleanly mid-run and restarted: status exits 3 with the notice, keeps every
    state (nothing failed or lost for the silence), costs seconds not minutes; watch keeps polling
    and finishes with the run; the jobs survive via the state save location."""
    cluster = multinode_cluster
    run_dir = submit(cluster, world, "ctlrestart", "rehearsal.work_seconds=20")
    time.sleep(3)
    code, data, _ = status(cluster, world, run_dir)
    assert code == 0
    watch = subprocess.Popen([str(CLI), "watch", str(run_dir), "--interval", "2"], cwd=world / "cwd",
                             env=_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        before = shard_states(run_dir)
        cluster.stop_slurmctld()
        calls, took = [], []
        for _ in range(2):
            code, data, secs = status(cluster, world, run_dir)
            assert code == EXIT_UNREACHABLE and not data["scheduler"]["reachable"], data["scheduler"]
            assert "Unable to contact slurm controller" in data["scheduler"]["error"]
            calls.append(data["scheduler"]["calls"])
            took.append(secs)
        after = shard_states(run_dir)
        # Only markers may move a shard while the controller is down (a job that finished and wrote
        # its marker is done); nothing becomes failed or lost.
        for key, (state, _) in after.items():
            assert state == before[key][0] or state == "done", (key, before[key], state)
        human = cli(cluster, world, "status", str(run_dir))
        assert human.returncode == EXIT_UNREACHABLE
        assert any(ln.startswith("scheduler unreachable: ") and "showing states as of" in ln
                   for ln in human.stdout.splitlines()), human.stdout
        print(f"\nduring the controller outage: scheduler calls per status refresh {calls}, seconds {took}")
        assert max(took) < 30
        cluster.start_slurmctld()
        out, err = watch.communicate(timeout=600)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, out + err
    assert "Traceback" not in err
    assert any("scheduler unreachable: " in ln and "still watching" in ln for ln in out.splitlines()), out
    data = wait_finished(cluster, world, run_dir)
    assert data["ok"]


def test_slurmdbd_outage_mid_run(multinode_cluster, world):
    """slurmdbd stopped while jobs end: accounting cannot say how they ended, so nothing is settled
    on its silence; once it is back the run finishes with every shard done."""
    cluster = multinode_cluster
    run_dir = submit(cluster, world, "dbdoutage", "rehearsal.work_seconds=5")
    cluster.stop_slurmdbd()
    try:
        for _ in range(5):
            code, data, _ = status(cluster, world, run_dir)
            assert code in (0, EXIT_UNREACHABLE)
            assert not any(s["counts"].get(k) for s in data["stages"] for k in ("lost", "failed", "missing-output"))
            time.sleep(4)
    finally:
        cluster.start_slurmdbd()
    data = wait_finished(cluster, world, run_dir)
    assert data["ok"], [(s["name"], s["counts"]) for s in data["stages"]]
