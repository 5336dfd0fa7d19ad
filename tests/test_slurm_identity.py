"""A SLURM job is its id *and* its name; a scheduler that does not answer changes nothing.

slurmctld killed with SIGKILL can lose job ids that sbatch already returned and hand them to later
jobs. These tests drive the real ``SlurmBackend`` (and the CLI as a user runs it) against small
stand-in ``squeue``/``sacct``/``sbatch`` executables first on PATH, which print canned, hostile
output: an id reused under another name, rows missing from queue and accounting, array task rows,
job steps, another user's job name holding the separator, a controller and a slurmdbd that refuse
connections or hang. They are stand-ins: the controller-kill scenario on a real cluster is
tests/test_slurm_faults_ctl.py; the real-client outage check is the last test here (it points a
copy of slurm.conf at ports where nothing listens, never touching the shared controller).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grail_cluster.backends import slurm
from grail_cluster.backends.base import SchedulerUnreachable
from grail_cluster.backends.slurm import SlurmBackend
from grail_cluster.backends.slurm_rows import parse_accounting, parse_duration, parse_queue, split_job_id
from grail_cluster.core.errors import EXIT_UNREACHABLE
from grail_cluster.core.ledger import JobRow, Ledger
from grail_cluster.core.markers import write_marker
from grail_cluster.core.run_dir import load_run
from grail_cluster.core.states import JobState, ShardState
from tests.conftest import make_sonic_root
from tests.libgen import make_library

CLI = Path(sys.executable).parent / "grail-cluster"
CTL_DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
DBD_DOWN = ("sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection to "
            "host:localhost:6819: Connection refused\nsacct: error: Sending PersistInit msg: Connection refused\n"
            "sacct: error: Problem talking to the database: Connection refused")


# ----------------------------------------------------------------------------- parsing, hostile lines


def test_job_ids_steps_and_array_ranges():
    assert split_job_id("123") == ("123", (None,))
    assert split_job_id(" 123_4 ") == ("123", (4,))
    assert split_job_id("123_[0-3,7%2]") == ("123", (0, 1, 2, 3, 7))
    for not_one_allocation in ("123.batch", "123_4.extern", "123+0", "123_[0-3", "abc", "", "123_", "_4"):
        assert split_job_id(not_one_allocation) is None, not_one_allocation


def test_queue_lines_name_last_and_foreign_lines_skipped():
    rows = parse_queue("\n".join([
        "101_[4-7%2]|PENDING|0:00||Priority|run:eval:0",
        "101_3|RUNNING|1:02|node-b|None|run:eval:0",
        "555|RUNNING|2-01:00:00|node-a|None|someone's|job|with|bars",  # another user's name holds the separator
        "556.batch|RUNNING|0:01|node-a|None|batch",
        "garbage line",
        "557|RUNNING|12:34:56:78|node-a|None|bad elapsed",
        "",
    ]))
    assert [(r.job_id, r.tasks, r.name, r.state, r.node) for r in rows] == [
        ("101", (4, 5, 6, 7), "run:eval:0", "PENDING", None),
        ("101", (3,), "run:eval:0", "RUNNING", "node-b"),
        ("555", (None,), "someone's|job|with|bars", "RUNNING", "node-a"),
        ("557", (None,), "bad elapsed", "RUNNING", "node-a"),
    ]
    assert rows[1].elapsed == 62 and rows[2].elapsed == 2 * 86400 + 3600 and rows[3].elapsed is None
    assert not any(r.held for r in rows)
    # After a controller crash slurmctld requeues a twice-launched job held: it waits until released.
    held, = parse_queue("2|PENDING|0:00||launch failed requeued held|run:train:0")
    assert held.held and held.reason == "launch failed requeued held" and held.name == "run:train:0"


def test_accounting_lines_skip_steps_and_keep_exit_codes():
    rows = parse_accounting("\n".join([
        "101_0|COMPLETED|0:0|00:00:05|node-a|run:eval:0",
        "101_0.batch|COMPLETED|0:0|00:00:05|node-a|batch",  # a step is never "another job under this id"
        "101_0.extern|COMPLETED|0:0|00:00:05|node-a|extern",
        "101_[2-3]|CANCELLED by 0|0:0|00:00:00|None assigned|run:eval:0",
        "101_1|FAILED|1:0|00:00:01|node-b|run:eval:0",
        "102|PENDING|0:0|INVALID||x",
    ]))
    assert [(r.job_id, r.tasks, r.state, r.exit_code, r.node) for r in rows] == [
        ("101", (0,), "COMPLETED", "0:0", "node-a"),
        ("101", (2, 3), "CANCELLED", "0:0", None),
        ("101", (1,), "FAILED", "1:0", "node-b"),
        ("102", (None,), "PENDING", "0:0", None),
    ]
    assert parse_duration("1-00:00:01") == 86401 and parse_duration("05:01.5") == 301.5
    assert parse_duration("x:y") is None and parse_duration("UNLIMITED") is None


# ----------------------------------------------------------------------------- stand-in scheduler

_SQUEUE = """#!/bin/bash
echo "squeue $*" >> "$FAKE/calls"
n=$(($(cat "$FAKE/squeue_n" 2>/dev/null || echo 0) + 1)); echo $n > "$FAKE/squeue_n"
if [ -e "$FAKE/hang" ]; then sleep 60; fi
if [ -e "$FAKE/ctl_down" ] && [ "$n" -gt "$(cat "$FAKE/ctl_up_after" 2>/dev/null || echo 1000000)" ]; then rm -f "$FAKE/ctl_down"; fi
if [ -e "$FAKE/ctl_down" ]; then echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2; exit 1; fi
case " $* " in *" --states=all "*) cat "$FAKE/held" 2>/dev/null; cat "$FAKE/queue" 2>/dev/null;; *) cat "$FAKE/queue" 2>/dev/null;; esac
exit 0
"""
_SACCT = """#!/bin/bash
echo "sacct $*" >> "$FAKE/calls"
if [ -e "$FAKE/ctl_down" ] || [ -e "$FAKE/dbd_down" ]; then
  echo "sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection to host:localhost:6819: Connection refused" >&2
  echo "sacct: error: Sending PersistInit msg: Connection refused" >&2
  echo "sacct: error: Problem talking to the database: Connection refused" >&2
  exit 1
fi
cat "$FAKE/acct" 2>/dev/null
exit 0
"""
# sbatch hands out ids from a counter the test may rewind (a controller that lost its state); the
# job is queued PENDING under the name it was given.
_SBATCH = """#!/bin/bash
echo "sbatch $*" >> "$FAKE/calls"
if [ -e "$FAKE/ctl_down" ]; then echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)" >&2; exit 1; fi
id=$(cat "$FAKE/next_id"); echo $((id + 1)) > "$FAKE/next_id"
name=""; arr=""
for a in "$@"; do case "$a" in --job-name=*) name="${a#--job-name=}";; --array=*) arr="${a#--array=}";; esac; done
if [ -n "$arr" ]; then echo "${id}_[${arr}]|PENDING|0:00||None|$name" >> "$FAKE/queue"; else echo "$id|PENDING|0:00||None|$name" >> "$FAKE/queue"; fi
echo "$id|$name" >> "$FAKE/submitted"
echo "Submitted batch job $id"
"""
_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$FAKE/calls"
echo "MaxArraySize = 1001"
"""
_SINFO = """#!/bin/bash
exit 1
"""


class FakeSlurm:
    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        for name, text in (("squeue", _SQUEUE), ("sacct", _SACCT), ("sbatch", _SBATCH), ("scontrol", _SCONTROL),
                           ("sinfo", _SINFO), ("scancel", '#!/bin/bash\necho "scancel $*" >> "$FAKE/calls"\n')):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        (root / "next_id").write_text("1\n")
        self.env = {"FAKE": str(root), "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}"}

    def write(self, name: str, *lines: str) -> None:
        (self.root / name).write_text("".join(f"{ln}\n" for ln in lines))

    def flag(self, name: str, on: bool = True) -> None:
        (self.root / name).touch() if on else (self.root / name).unlink(missing_ok=True)

    def calls(self, command: str | None = None) -> list[str]:
        path = self.root / "calls"
        lines = path.read_text().splitlines() if path.exists() else []
        return [ln for ln in lines if command is None or ln.startswith(command + " ")]

    def submitted(self) -> list[tuple[str, str]]:
        path = self.root / "submitted"
        return [tuple(ln.split("|", 1)) for ln in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeSlurm:
    f = FakeSlurm(tmp_path / "fake-slurm")
    for k, v in f.env.items():
        monkeypatch.setenv(k, v)
    return f


def job(job_id: str, name: str, *, indices=(0, 1, 2, 3), offset: int = 0, array: bool = True, age: float = 60.0):
    return JobRow(job_id=job_id, backend="slurm", stage="eval", chunk=0, round=0, name=name, indices=list(indices),
                  index_offset=offset, array_spec=f"0-{len(indices) - 1}%4" if array else None, depends=None,
                  submitted_at=time.time() - age, settled=False)


# ----------------------------------------------------------------------------- the backend's answers


def test_a_reused_id_in_the_queue_is_not_our_job_and_makes_it_lost(fake):
    ours = job("101", "run:eval:0")
    fake.write("queue", "101|RUNNING|1:00|localhost|None|someone-else", "102_[0-1]|PENDING|0:00||None|run:render:0")
    backend = SlurmBackend()
    assert backend.live_states([ours]) == {}  # not RUNNING: that is another job
    fake.write("acct")  # accounting never heard of ours (the controller died before it told slurmdbd)
    final = backend.final_states([ours])
    assert set(final) == {("101", t) for t in range(4)}
    t = final[("101", 2)]
    assert t.state == JobState.LOST and t.sched_state == "ID_REUSED"
    assert t.why.startswith("job id 101 now belongs to someone-else")
    assert backend.calls["squeue"] == 2 and backend.calls["sacct"] == 1  # one more squeue, only for the unsure


def test_a_reused_id_seen_only_in_accounting(fake):
    ours = job("101", "run:eval:0", array=False, indices=(0,))
    fake.write("acct", "101|COMPLETED|0:0|00:01:00|localhost|another:stage:0")  # the most recent job with id 101
    final = SlurmBackend().final_states([ours])
    assert final[("101", None)].state == JobState.LOST
    assert "now belongs to another:stage:0" in final[("101", None)].why


def test_a_job_in_neither_queue_nor_accounting_vanished(fake):
    final = SlurmBackend().final_states([job("101", "run:eval:0")])
    assert {t.sched_state for t in final.values()} == {"VANISHED"} and len(final) == 4
    assert "job 101 vanished from the scheduler (controller lost it)" in final[("101", 0)].why


def test_pending_in_accounting_but_unknown_to_the_controller_is_lost(fake):
    fake.write("acct", "101_[0-3]|PENDING|0:0|00:00:00|None assigned|run:eval:0")
    final = SlurmBackend().final_states([job("101", "run:eval:0")])
    assert {t.state for t in final.values()} == {JobState.LOST}
    assert "is PENDING in accounting but the controller no longer holds it" in final[("101", 1)].why


def test_accounting_lag_is_not_a_loss(fake):
    """The job just left the queue; accounting still says RUNNING; the controller still holds it
    (ended within MinJobAge): wait, do not call it lost."""
    fake.write("acct", "101_[0-3]|RUNNING|0:0|00:00:10|localhost|run:eval:0")
    fake.write("held", "101_0|COMPLETED|0:10|localhost|None|run:eval:0")
    final = SlurmBackend().final_states([job("101", "run:eval:0")])
    assert {t.state for t in final.values()} == {JobState.RUNNING}


def test_a_young_job_is_never_lost_and_costs_no_extra_call(fake):
    backend = SlurmBackend()
    assert backend.final_states([job("101", "run:eval:0", age=1.0)]) == {}
    assert backend.calls == {"sacct": 1}


def test_array_rows_steps_and_other_users_lines(fake):
    fake.write("acct",
               "101_0|COMPLETED|0:0|00:00:05|node-a|run:eval:0",
               "101_0.batch|COMPLETED|0:0|00:00:05|node-a|batch",
               "101_1|FAILED|1:0|00:00:01|node-b|run:eval:0",
               "101_1.batch|FAILED|1:0|00:00:01|node-b|batch",
               "101_[2-3]|CANCELLED by 0|0:0|00:00:00|None assigned|run:eval:0",
               "9999|RUNNING|0:0|00:00:05|node-a|evil|name")
    fake.write("queue", "9999|RUNNING|0:05|node-a|None|evil|name", "101_5|RUNNING|0:05|node-a|None|run:eval:0")
    backend = SlurmBackend()
    final = backend.final_states([job("101", "run:eval:0")])
    assert {k: t.state for k, t in final.items()} == {
        ("101", 0): JobState.COMPLETED, ("101", 1): JobState.FAILED, ("101", 2): JobState.CANCELLED,
        ("101", 3): JobState.CANCELLED}
    assert final[("101", 1)].exit_code == "1:0" and final[("101", 0)].node == "node-a"
    assert backend.calls["squeue"] == 0  # every task settled by accounting: no controller question
    # A chunk with an index offset: task 5 is shard 9 (offset 4); ours, under our name.
    live = backend.live_states([job("101", "run:eval:0", indices=(4, 5, 6, 7, 8, 9), offset=4)])
    assert list(live) == [("101", 5)] and live[("101", 5)].node == "node-a"


def test_a_retired_ledger_key_is_judged_by_its_scheduler_id_and_never_cancelled(fake):
    old, new = job("101~1", "run:eval:0"), job("101", "run:eval:0:r1")
    fake.write("queue", "101_[0-3]|PENDING|0:00||None|run:eval:0:r1")
    backend = SlurmBackend()
    live = backend.live_states([old, new])
    assert set(live) == {("101", t) for t in range(4)}  # the new job's, under its own key
    final = backend.final_states([old])
    assert {k[0] for k in final} == {"101~1"} and "now belongs to run:eval:0:r1" in final[("101~1", 0)].why
    backend.cancel(["101~1", "101~1_2", "101"])
    assert fake.calls("scancel") == ["scancel 101"]


@pytest.mark.parametrize("down", ["ctl_down", "dbd_down"])
def test_an_unreachable_scheduler_raises_instead_of_reading_as_empty(fake, down):
    fake.flag(down)
    backend = SlurmBackend()
    ours = job("101", "run:eval:0")
    if down == "ctl_down":
        with pytest.raises(SchedulerUnreachable) as info:
            backend.live_states([ours])
        assert info.value.first_line == CTL_DOWN
        with pytest.raises(SchedulerUnreachable):
            backend.find_by_name(["run:eval:0"])  # an empty answer would submit every job twice
    with pytest.raises(SchedulerUnreachable) as info:
        backend.final_states([ours])
    assert info.value.first_line == "sacct: error: Problem talking to the database: Connection refused"
    assert info.value.exit_code == EXIT_UNREACHABLE


def test_a_hung_controller_costs_the_query_timeout_not_two_minutes(fake, monkeypatch):
    monkeypatch.setattr(slurm, "QUERY_TIMEOUT_S", 1.0)
    fake.flag("hang")
    start = time.monotonic()
    with pytest.raises(SchedulerUnreachable, match="did not answer in 1 s"):
        SlurmBackend().live_states([job("101", "run:eval:0")])
    assert time.monotonic() - start < 5


# ----------------------------------------------------------------------------- the CLI, as a user runs it


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    make_library(root / "lib", 16, fast=True)
    make_sonic_root(root / "SONIC")
    (root / "cwd").mkdir()
    return root


def cli(fake: FakeSlurm, world: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "COLUMNS")}
    env.update(fake.env, WANDB_MODE="offline")
    return subprocess.run([str(CLI), *args], cwd=world / "cwd", env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def submit(fake: FakeSlurm, world: Path, run_id: str) -> Path:
    args = ["pipeline=advanced_manip_table", "cluster=slurm", "cluster.check_limits=false",
            f"data.motion_lib={world / 'lib'}", f"sonic.root={world / 'SONIC'}", f"run.root={world / 'runs'}",
            f"run.id={run_id}", "eval.num_shards=4", "select.k=2", "rehearsal.enabled=true",
            f"job.python={sys.executable}", "train.gpus_per_node=1"]
    proc = cli(fake, world, "run", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return world / "runs" / run_id


def age_jobs(run_dir: Path, seconds: float = 120) -> None:
    """The jobs were submitted ``seconds`` ago (past the grace in which a missing job is not judged)."""
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    with db:
        db.execute("UPDATE jobs SET submitted_at = submitted_at - ?", (seconds,))
    db.close()


def status(fake: FakeSlurm, world: Path, run_dir: Path) -> tuple[int, dict]:
    proc = cli(fake, world, "status", str(run_dir), "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def counts(data: dict) -> dict[str, dict[str, int]]:
    return {s["name"]: s["counts"] for s in data["stages"]}


def test_controller_lost_jobs_are_lost_and_resubmit_queues_only_them(fake, world):
    run_dir = submit(fake, world, "crash1")
    first = fake.submitted()
    assert [n for _, n in first][:3] == ["crash1:train:0", "crash1:select:0", "crash1:eval:0"]
    # The controller crashed: train had finished (its marker is there), select survived in the queue,
    # eval's id 3 now belongs to someone else's job, everything after eval vanished.
    plan = load_run(str(run_dir))
    write_marker(plan.run_dir, "train", 0, plan.marker_hash("train", 0), {})
    ids = dict((n, i) for i, n in first)
    fake.write("queue", f"{ids['crash1:select:0']}|PENDING|0:00||None|crash1:select:0",
               f"{ids['crash1:eval:0']}|RUNNING|0:03|localhost|None|someone-else")
    fake.write("acct", f"{ids['crash1:train:0']}|COMPLETED|0:0|00:00:05|localhost|crash1:train:0")
    age_jobs(run_dir)
    code, data = status(fake, world, run_dir)
    assert code == 0 and data["scheduler"]["reachable"]
    c = counts(data)
    n_eval = plan.stage("eval").size  # shards x selected checkpoints
    assert c["train"] == {"done": 1} and c["select"] == {"pending": 1} and c["eval"] == {"lost": n_eval}
    assert all(v == {"lost": n} for k, v in c.items() for n in v.values() if k not in ("train", "select", "eval"))
    sigs = {f["signature"] for s in data["stages"] for f in s["failures"]}
    assert f"job id {ids['crash1:eval:0']} now belongs to someone-else: the scheduler lost this job " \
           "(controller crash?)" in sigs
    assert any("vanished from the scheduler (controller lost it)" in s for s in sigs)
    # Human output names the state and the repair.
    human = cli(fake, world, "status", str(run_dir))
    assert f"lost {n_eval}" in human.stdout and "Traceback" not in human.stderr
    # select is still queued: resubmit waits for it (nothing duplicated while it may still run).
    held = cli(fake, world, "resubmit", str(run_dir))
    assert held.returncode != 0 and "still pending or running" in held.stderr and "Traceback" not in held.stderr
    # select finished; the controller (restarted with lost state) hands out ids from 3 again.
    fake.write("queue", f"{ids['crash1:eval:0']}|RUNNING|0:03|localhost|None|someone-else")
    fake.write("acct", f"{ids['crash1:train:0']}|COMPLETED|0:0|00:00:05|localhost|crash1:train:0",
               f"{ids['crash1:select:0']}|COMPLETED|0:0|00:00:05|localhost|crash1:select:0")
    write_marker(plan.run_dir, "select", 0, plan.marker_hash("select", 0), {})
    (fake.root / "next_id").write_text(f"{ids['crash1:eval:0']}\n")
    before = len(first)
    res = cli(fake, world, "resubmit", str(run_dir), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    again = fake.submitted()[before:]
    stages = [n.split(":")[1] for _, n in again]
    assert "train" not in stages and "select" not in stages  # done work is not run again
    assert stages == [st for st in plan.stage_names if st not in ("train", "select")]
    assert len({n for _, n in again}) == len(again) and all(n.endswith(":r1") for _, n in again)
    # The reused ids are recorded: the lost jobs keep theirs under <id>~1, the new ones are live.
    with Ledger(run_dir, create=False) as ledger:
        keys = {j.name: j.job_id for j in ledger.jobs()}
        assert keys["crash1:eval:0"] == f"{ids['crash1:eval:0']}~1"
        assert keys["crash1:eval:0:r1"] == ids["crash1:eval:0"]
        assert {s.state for s in ledger.shards("eval")} == {ShardState.PENDING}
        assert {s.job_id for s in ledger.shards("eval")} == {ids["crash1:eval:0"]}
    code, data = status(fake, world, run_dir)
    c = counts(data)
    assert code == 0 and c["train"] == c["select"] == {"done": 1} and c["eval"] == {"pending": n_eval}
    # Nothing lost is left unsettled: a second resubmit has nothing to do but wait.
    again2 = cli(fake, world, "resubmit", str(run_dir))
    assert again2.returncode != 0 and "still pending or running" in again2.stderr
    assert len(fake.submitted()) == before + len(again)


def test_status_rides_through_an_outage_with_exit_3_and_the_last_known_states(fake, world):
    run_dir = submit(fake, world, "outage1")
    ok, data = status(fake, world, run_dir)
    n_eval = load_run(str(run_dir)).stage("eval").size
    assert ok == 0 and counts(data)["eval"] == {"pending": n_eval} and data["scheduler"]["states_as_of"]
    as_of = data["scheduler"]["states_as_of"]
    age_jobs(run_dir)
    with Ledger(run_dir, create=False) as ledger:
        before = [(s.stage, s.idx, s.state, s.signature) for s in ledger.shards()]
    for down in ("ctl_down", "dbd_down"):
        fake.flag(down)
        if down == "dbd_down":
            fake.write("queue")  # every job left the queue: only accounting could say how they ended
        start = time.monotonic()
        code, data = status(fake, world, run_dir)
        assert code == EXIT_UNREACHABLE and not data["scheduler"]["reachable"]
        assert time.monotonic() - start < 30
        assert counts(data)["eval"] == {"pending": n_eval}  # never failed or lost for the scheduler's silence
        assert data["scheduler"]["states_as_of"] == as_of and data["scheduler"]["calls"] >= 1
        human = cli(fake, world, "status", str(run_dir))
        assert human.returncode == EXIT_UNREACHABLE and "Traceback" not in human.stderr
        line = next(ln for ln in human.stdout.splitlines() if ln.startswith("scheduler unreachable: "))
        want = CTL_DOWN if down == "ctl_down" else "sacct: error: Problem talking to the database: Connection refused"
        assert want in line and "; showing states as of " in line
        sub = cli(fake, world, "resubmit", str(run_dir))
        assert sub.returncode == EXIT_UNREACHABLE and "Traceback" not in sub.stderr
        assert "scheduler unreachable" in sub.stderr and "fix:" in sub.stderr
        fake.flag(down, False)
    with Ledger(run_dir, create=False) as ledger:
        assert [(s.stage, s.idx, s.state, s.signature) for s in ledger.shards()] == before
    assert len(fake.submitted()) == len({n for _, n in fake.submitted()})


def test_watch_keeps_polling_through_an_outage_and_finishes_with_the_run(fake, world):
    run_dir = submit(fake, world, "outage2")
    plan = load_run(str(run_dir))
    ids = dict((n, i) for i, n in fake.submitted() if n.startswith("outage2:"))
    # Every job ended while the controller was down; it answers again from the 4th squeue on.
    fake.write("queue")
    fake.write("acct", *[f"{i}|COMPLETED|0:0|00:00:01|localhost|{n}" for n, i in ids.items()])
    for st in plan.stages:
        for idx in range(st.size):
            write_marker(plan.run_dir, st.name, idx, plan.marker_hash(st.name, idx), {})
    fake.write("squeue_n", "0")
    fake.write("ctl_up_after", "3")
    fake.flag("ctl_down")
    proc = cli(fake, world, "watch", str(run_dir), "--interval", "0.2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notices = [ln for ln in proc.stdout.splitlines() if "scheduler unreachable: " in ln]
    assert len(notices) == 3 and all("still watching" in ln for ln in notices), proc.stdout
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- the real SLURM client


@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
def test_real_clients_against_a_controller_and_slurmdbd_that_refuse(tmp_path, monkeypatch):
    """The real squeue/sacct, pointed (SLURM_CONF) at a copy of the cluster's slurm.conf whose
    controller and accounting ports have nothing listening: the shared daemons are never touched."""
    from tests.infra.slurm.cluster import _slurm_conf_path

    conf = _slurm_conf_path().read_text()
    lines = []
    for ln in conf.splitlines():
        if ln.startswith("SlurmctldPort="):
            ln = "SlurmctldPort=6897"
        elif ln.startswith("AccountingStoragePort="):
            ln = "AccountingStoragePort=6898"
        lines.append(ln)
    (tmp_path / "slurm.conf").write_text("\n".join(lines) + "\n")
    for extra in ("gres.conf", "plugstack.conf"):
        if (_slurm_conf_path().parent / extra).exists():
            (tmp_path / extra).write_text((_slurm_conf_path().parent / extra).read_text())
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    backend = SlurmBackend()
    ours = job("1", "nobody:eval:0")
    start = time.monotonic()
    with pytest.raises(SchedulerUnreachable) as info:
        backend.live_states([ours])
    took = time.monotonic() - start
    assert "Unable to contact slurm controller" in info.value.first_line
    assert took <= slurm.QUERY_TIMEOUT_S + 2
    with pytest.raises(SchedulerUnreachable) as info:
        backend.final_states([ours])
    assert "Connection refused" in info.value.first_line
    print(f"\nreal squeue against a refused controller: {took:.1f} s; calls {dict(backend.calls)}")
