"""A compute node lost on the real multi-node SLURM cluster while two runs use it: a two-node
training of the reference tracker (train.nodes=2, --requeue) and a rehearsal eval array whose shards
spread over both nodes (--no-requeue).

node2 loses power (every process of the host SIGKILLed); SLURM marks it DOWN. The training must be
requeued, wait for the node, and resume from its own last.pt once node2 is back (the step count goes
on); the eval shards that were on node2 must be node-fail in `status --json` with the NODE_FAIL
signature, every other shard done, and `resubmit` must re-run exactly the node2 shards: nothing that
finished runs again (ledger attempts, markers' finished_at, the scheduler's own accounting).

What the scheduler did is read from squeue/sacct/sinfo by the test itself, never from grail-cluster.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grail_cluster.core.errors import EXIT_UNREACHABLE
from grail_cluster.core.ledger import Ledger
from grail_cluster.core.markers import read_marker
from tests.conftest import make_sonic_root
from tests.libgen import make_library
from tests.test_slurm_faults_ctl import cli, status, wait_finished

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]
TRAIN_ITERATIONS = 40
SAVE_EVERY = 5
EVAL_SHARDS = 8  # one fake GPU each, two GPUs per node: two waves of four, two shards per node
WORK_S = 10  # each eval shard's rehearsal work: long enough to kill node2 in the middle of wave two


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodefail")
    make_library(root / "lib", 32, fast=True)
    make_sonic_root(root / "SONIC")
    (root / "cwd").mkdir()
    ckpt = root / "ckpt" / "model_step_000100.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"stand-in checkpoint for a rehearsal eval\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "grail-cluster"), "demo-data", "--out",
                           str(root / "data"), "--motions", "6", "--seed", "3", "--name", "demo_pickup"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def train_args(world: Path, run_id: str) -> list[str]:
    return ["trainer=reference", "pipeline=pnp_table", "cluster=slurm", f"data.motion_lib={world / 'data' / 'demo_pickup_ha'}",
            f"run.root={world / 'runs'}", f"run.id={run_id}", f"job.python={sys.executable}", "train.nodes=2",
            "train.gpus_per_node=1", "train.num_envs=6", f"train.iterations={TRAIN_ITERATIONS}",
            f"train.save_frequency={SAVE_EVERY}", "select.k=1", "eval.num_shards=1", "render.enabled=false",
            "web.enabled=false", "resources.train.cpus=1", "resources.train.mem=2"]


def eval_args(world: Path, run_id: str) -> list[str]:
    args = ["pipeline=advanced_manip_table", "cluster=slurm", f"data.motion_lib={world / 'lib'}",
            f"sonic.root={world / 'SONIC'}", f"run.root={world / 'runs'}", f"run.id={run_id}",
            f"job.python={sys.executable}", "rehearsal.enabled=true", f"rehearsal.work_seconds={WORK_S}",
            f"eval.num_shards={EVAL_SHARDS}", f"select.checkpoints=[{world / 'ckpt' / 'model_step_000100.pt'}]",
            "render.enabled=false", "web.enabled=false"]
    return args + [f"resources.{st}.{key}=1" for st in ("eval", "export", "merge") for key in ("cpus", "mem")]


def submit(cluster, world: Path, args: list[str]) -> tuple[Path, dict[str, str]]:
    """The run's dir and {stage: job id} as `run --json` returned them."""
    proc = cli(cluster, world, "run", *args, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    return Path(out["run_dir"]), {j["stage"]: str(j["job_id"]) for j in out["jobs"]}


def queue(cluster) -> dict[str, tuple[str, str]]:
    """{job id or <id>_<task>: (state, node list)} as squeue says, one row per array task."""
    out = cluster.client("squeue", "-h", "-r", "-o", "%i|%T|%N").stdout
    return {p[0]: (p[1], p[2]) for line in out.splitlines() if len(p := line.split("|")) == 3}


def eval_done(run_dir: Path) -> dict[int, float]:
    """{eval shard: its marker's finished_at}."""
    out = {}
    for i in range(EVAL_SHARDS):
        m = read_marker(str(run_dir), "eval", i)
        if m:
            out[i] = m["finished_at"]
    return out


def power_off(cluster, host: str) -> None:
    """kill-host until nothing of the host is left: one pass misses a process forked between its
    listing and its SIGKILL (a job slurmd was launching), which then runs on a host without power."""
    for _ in range(5):
        if "killed nothing" in cluster.script("kill-host", host):
            return
    raise AssertionError(f"{host} still has processes after five kill-host passes")


def started_on(run_dir: Path, index: int, node: str) -> bool:
    """The shard's job runs on ``node``: its log's header line is written (before its work starts)."""
    log = run_dir / "logs" / "eval" / str(index) / "0.out"
    return log.exists() and f"attempt 0 on {node}" in log.read_text()


def wait_for(what: str, check, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def test_node_loss_requeues_training_and_resubmit_repairs_exactly_the_lost_shards(multinode_cluster, world):
    cluster = multinode_cluster
    train_dir, train_jobs = submit(cluster, world, train_args(world, "nf-train"))
    train_id = train_jobs["train"]
    last_pt = train_dir / "experiment" / "last.pt"
    # The trainer's start-up time varies with the machine's load: the eval run starts once last.pt exists.
    wait_for("the training's first last.pt", last_pt.exists, timeout=240)
    eval_dir, eval_jobs = submit(cluster, world, eval_args(world, "nf-eval"))
    eval_id = eval_jobs["eval"]

    # The moment: training has a last.pt and still runs on both nodes; eval's first wave is done and
    # its second wave runs, part of it on node2.
    def moment():
        q = queue(cluster)
        done = eval_done(eval_dir)
        # A task whose marker is written may still be listed RUNNING for a moment: it has finished.
        on2 = sorted(i for k, (st, node) in q.items() if k.startswith(eval_id + "_") and st == "RUNNING"
                     and node == "gnode2" and (i := int(k.split("_")[1])) not in done and started_on(eval_dir, i, node))
        assert q.get(train_id, ("", ""))[0] in ("RUNNING", "PENDING", "CONFIGURING"), \
            f"training ended before the node could be killed: {q.get(train_id)}"
        if len(done) >= 4 and on2 and q[train_id] == ("RUNNING", "gnode[1-2]"):
            return on2, done
        return None

    on_node2_at_kill, done_before = wait_for("eval's second wave on node2", moment, timeout=120, every=0.3)
    running_node1 = sorted(i for k, (st, node) in queue(cluster).items() if k.startswith(eval_id + "_")
                           and st == "RUNNING" and node == "gnode1" and (i := int(k.split("_")[1])) not in done_before)
    t_kill = time.monotonic()
    power_off(cluster, "node2")

    # SLURM notices (DOWN after ~30 s) and requeues the training; node2 comes back as soon as it is DOWN.
    # Until then squeue still lists node2's tasks as running, also one launched there just before the kill.
    seen_on_node2 = set(on_node2_at_kill)

    def node2_down():
        seen_on_node2.update(int(k.split("_")[1]) for k, (st, node) in queue(cluster).items()
                             if k.startswith(eval_id + "_") and st == "RUNNING" and node == "gnode2")
        return "down" in cluster.node_states().get("gnode2", "")
    wait_for("gnode2 DOWN", node2_down, timeout=120)
    t_down = time.monotonic()
    train_state = queue(cluster).get(train_id, ("gone", ""))[0]
    # Requeued, not finished: the training's first attempt must have left no success marker.
    code, requeued, _ = status(cluster, world, train_dir)
    train_counts = next(s for s in requeued["stages"] if s["name"] == "train")["counts"]
    assert code != EXIT_UNREACHABLE and "done" not in train_counts, (train_state, train_counts)
    cluster.start_slurmd("node2")
    t_revive = time.monotonic()
    wait_for("training RUNNING again", lambda: queue(cluster).get(train_id, ("", ""))[0] == "RUNNING", timeout=180)
    t_running = time.monotonic()
    restarts = re.findall(r"Restarts=(\d+)", cluster.client("scontrol", "show", "job", train_id).stdout)
    # A shard of node2 that wrote its marker just before the kill has finished: it stays done.
    on_node2 = sorted(seen_on_node2 - set(eval_done(eval_dir)))
    figures = {"node_loss_to_down_s": round(t_down - t_kill, 1), "revive_at_s": round(t_revive - t_kill, 1),
               "node_loss_to_training_running_s": round(t_running - t_kill, 1),
               "revive_to_training_running_s": round(t_running - t_revive, 1),
               "train_state_when_down": train_state, "eval_on_node2": sorted(seen_on_node2), "eval_lost_on_node2": on_node2, "eval_on_node1": running_node1,
               "eval_done_before": sorted(done_before)}
    print("\n[nodefail] " + json.dumps(figures), flush=True)
    assert restarts and int(restarts[0]) >= 1, restarts
    assert on_node2, "every node2 shard finished before the kill: nothing was lost"

    # The eval run: exactly the node2 shards are node-fail with the NODE_FAIL signature.
    settled = wait_finished(cluster, world, eval_dir, timeout=240)
    ev = next(s for s in settled["stages"] if s["name"] == "eval")
    failed = {f["index"]: f for f in ev["failures"]}
    assert sorted(failed) == on_node2, (ev, on_node2)
    for f in failed.values():
        assert f["state"] == "node-fail" and f["signature"] == "NODE_FAIL" and f["node"] == "gnode2", f
    assert ev["counts"] == {"done": EVAL_SHARDS - len(on_node2), "node-fail": len(on_node2)}, ev
    done_mid = eval_done(eval_dir)
    assert set(done_mid) == set(range(EVAL_SHARDS)) - set(on_node2)
    assert all(done_mid[i] == t for i, t in done_before.items())

    # resubmit re-runs exactly them; nothing that finished runs again.
    proc = cli(cluster, world, "resubmit", str(eval_dir), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Ledger(eval_dir, create=False) as ledger:
        again = [j for j in ledger.jobs() if j.round == 1]
    rerun = sorted(i for j in again if j.stage == "eval" for i in j.indices)
    assert rerun == on_node2, again
    final = wait_finished(cluster, world, eval_dir, timeout=240)
    assert final["ok"], final["stages"]
    done_after = eval_done(eval_dir)
    assert all(done_after[i] == t for i, t in done_mid.items()), "a finished eval shard ran again"
    with Ledger(eval_dir, create=False) as ledger:
        attempts = {s.idx: s.attempt for s in ledger.shards("eval")}
    assert attempts == {i: int(i in on_node2) for i in range(EVAL_SHARDS)}, attempts
    figures.update(eval_rerun=rerun, eval_rerun_outside_node2=sorted(set(rerun) - set(on_node2)))
    # The scheduler's own count: one accounting row per eval task and attempt.
    acct = cluster.client("sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j",
                          ",".join(j.job_id for j in again if j.stage == "eval") + "," + eval_id).stdout
    rows = [line.split("|") for line in acct.splitlines() if "|" in line]
    assert len(rows) == EVAL_SHARDS + len(on_node2), rows

    # The training resumed from its own last.pt and finished the schedule.
    final_train = wait_finished(cluster, world, train_dir, timeout=420)
    assert final_train["ok"], final_train["stages"]
    log = (train_dir / "logs" / "train" / "0" / "0.out").read_text()
    resumed = re.findall(r"\[resume\] continuing from (\S+) \(iteration (\d+)\)", log)
    assert resumed and Path(resumed[-1][0]) == last_pt and int(resumed[-1][1]) > 0, log[-3000:]
    step = int(resumed[-1][1])
    assert (train_dir / "experiment" / f"model_step_{TRAIN_ITERATIONS:06d}.pt").exists()
    assert f"[train] iteration {TRAIN_ITERATIONS}/{TRAIN_ITERATIONS}" in log
    figures.update(resumed_from_iteration=step)
    print("[nodefail] " + json.dumps(figures), flush=True)
