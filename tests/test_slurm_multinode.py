"""What runs on the real multi-node SLURM cluster (tests/infra/slurm/multi.sh): a 2-node training of
the CPU reference tracker (srun starts one launcher per node, accelerate rendezvous over gloo across
the two hosts, each node's ranks train and audit their own slices of plan.json, checkpoints written
once), then select -> eval -> render -> export -> merge -> web, with the eval array spread over both
nodes and every shard's node agreeing between sacct, the shard's own log, `status --json` and `logs`.

The CLI is called as a user calls it: the venv's console script, the cluster's client environment,
a working directory outside the repository."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from grail_cluster.stages.slice_audit import read_audits

pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytestmark = [pytest.mark.slurm, pytest.mark.multinode]

GRAIL = Path(sys.executable).with_name("grail-cluster")
NODES = ("gnode1", "gnode2")
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"  # date -u +%FT%T.%3NZ


def cli(cluster, cwd: Path, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, **cluster.env}
    return subprocess.run([str(GRAIL), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def status(cluster, cwd: Path, run_dir: Path) -> tuple[int, dict]:
    proc = cli(cluster, cwd, "status", str(run_dir), "--json")
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"status --json gave no JSON (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}") from None


def sacct_rows(cluster, job_ids: list[str]) -> dict[str, dict[str, str]]:
    """JobID -> State, Elapsed, NodeList of every allocation (array tasks one row each)."""
    proc = cluster.client("sacct", "-n", "-P", "-X", "-o", "JobID,State,Elapsed,NodeList", "-j", ",".join(job_ids))
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        jid, state, elapsed, nodes = line.split("|")[:4]
        rows[jid] = {"state": state.split()[0], "elapsed": elapsed, "nodes": nodes}
    return rows


def hostnames(cluster, nodelist: str) -> list[str]:
    proc = cluster.client("scontrol", "show", "hostnames", nodelist)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def elapsed_s(text: str) -> int:
    days, _, hms = text.rpartition("-")
    parts = [int(p) for p in hms.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def stamp(text: str) -> float:
    """``2026-01-02T03:04:05.678Z`` (the job's ``date -u +%FT%T.%3NZ``) as seconds since the epoch."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def test_two_node_training_and_eval_array_spread_over_nodes(multinode_cluster, tmp_path):
    cluster = multinode_cluster
    assert GRAIL.is_file(), f"no console script {GRAIL}: pip install -e . into this venv"
    work = tmp_path / "work"  # the user's shell: outside the repository
    work.mkdir()
    proc = cli(cluster, work, "demo-data", "--out", str(tmp_path / "data"), "--motions", "8", "--seed", "3",
               "--name", "demo_pickup")
    assert proc.returncode == 0, proc.stderr
    # 2 nodes x 2 CPU ranks = 4 ranks of 2 motions each. Eval shards ask for half a node's CPUs, so
    # SLURM cannot pack the 4 shards on one node: the array spreads over both.
    args = ["run", "trainer=reference", "pipeline=pnp_table", "cluster=slurm",
            f"data.motion_lib={tmp_path / 'data' / 'demo_pickup_ha'}", f"run.root={tmp_path / 'runs'}", "run.id=mn",
            f"job.python={sys.executable}", "train.nodes=2", "train.gpus_per_node=2", "train.num_envs=4",
            "train.iterations=10", "train.save_frequency=5", "select.k=1", "eval.num_shards=4",
            "resources.eval.cpus=4", "render.resolution=160x120", *cluster.overrides, "--json"]
    proc = cli(cluster, work, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    submitted = json.loads(proc.stdout)
    run_dir = Path(submitted["run_dir"])
    job_of = {j["stage"]: str(j["job_id"]) for j in submitted["jobs"]}
    assert set(job_of) == {"train", "select", "eval", "render", "export", "merge", "web"}

    # No status while the training runs, so the first one finds it done with no live scheduler row:
    # its node list then comes from the success marker written on machine rank 0 (a user who looks
    # only after training), not from squeue's %N of a running job.
    deadline = time.time() + 300
    while cluster.client("squeue", "-h", "-j", job_of["train"]).stdout.strip():
        assert time.time() < deadline, "the 2-node training did not leave the queue"
        time.sleep(2)
    deadline = time.time() + 420
    while True:
        code, data = status(cluster, work, run_dir)
        if data["finished"]:
            break
        assert time.time() < deadline, json.dumps(data["stages"])
        time.sleep(3)
    counts = {s["name"]: s["counts"] for s in data["stages"]}
    assert code == 0 and data["ok"], counts
    assert all(s["counts"] == {"done": s["size"]} for s in data["stages"]), counts

    # sacct: the training held both nodes; one row per allocation, all COMPLETED.
    deadline = time.time() + 30
    while True:  # accounting lags the markers by a few seconds
        rows = sacct_rows(cluster, list(job_of.values()))
        if all(r["state"] == "COMPLETED" for r in rows.values()) and len(rows) >= 1 + 1 + 4 + 4 + 4 + 1 + 1:
            break
        assert time.time() < deadline, rows
        time.sleep(1)
    train_row = rows[job_of["train"]]
    assert hostnames(cluster, train_row["nodes"]) == list(NODES), train_row
    print(f"\n[measured] 2-node training job {job_of['train']}: sacct Elapsed {train_row['elapsed']} "
          f"({elapsed_s(train_row['elapsed'])} s) on {train_row['nodes']}")

    # One launcher per node, and every rank joined the one gloo group from the node plan.json gave it.
    plan = json.loads((run_dir / "plan.json").read_text())
    node_of_rank = {r["rank"]: NODES[int(r["node"])] for r in plan["train"]["ranks"]}
    assert sorted(node_of_rank) == [0, 1, 2, 3] and set(node_of_rank.values()) == set(NODES)
    log = (run_dir / "logs" / "train" / "0" / "0.out").read_text()
    started = {}
    for m, node in enumerate(NODES):
        found = re.search(rf"\[grail\] train machine rank {m} of 2 on {node} \(slurm node {node}\), "
                          rf"rendezvous at {NODES[0]}:\d+, started ({STAMP})", log)
        assert found, log[:3000]
        started[node] = stamp(found.group(1))
    joined = {int(r): (host, float(s), stamp(at)) for r, host, s, at in re.findall(
        rf"\[reference\] rank (\d+)/4 on (\S+): gloo process group up in ([\d.]+) s, at ({STAMP})", log)}
    assert {r: j[0] for r, j in joined.items()} == node_of_rank, log[:3000]
    print(f"[measured] node launchers started {abs(started[NODES[1]] - started[NODES[0]]):.2f} s apart; "
          f"last launcher start -> every rank in the gloo group: "
          f"{max(j[2] for j in joined.values()) - max(started.values()):.2f} s; init_process_group per rank: "
          + ", ".join(f"rank {r} on {h} {s:.2f} s" for r, (h, s, _) in sorted(joined.items())))

    # Each node audited its own ranks' slices against plan.json, on that node.
    audits = {a["machine_rank"]: a for a in read_audits(run_dir, "train", 0, 0)}
    assert sorted(audits) == [0, 1], audits
    for m, node in enumerate(NODES):
        a = audits[m]
        mine = sorted(r for r, n in node_of_rank.items() if n == node)
        assert (a["node"], a["host"], a["verdict"]) == (node, node, "match"), a
        assert a["expected"] == a["matched"] == mine and a["exit_code"] == 0, a
    assert data["slices"]["train"] == {"expected": 4, "matched": 4, "mismatches": [], "unchecked": [], "unit": "ranks"}
    proc = cli(cluster, work, "logs", str(run_dir), "--stage", "train", "--index", "0")
    assert proc.returncode == 0, proc.stderr
    for m, node in enumerate(NODES):
        assert f"slice audit (train 0): match, 2/2 ranks match plan, machine rank {m} on {node}" in proc.stdout, \
            proc.stdout[-3000:]

    # Checkpoints were written once, by rank 0, into the one experiment dir.
    exp = Path(plan["paths"]["experiment_dir"])
    pts = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.pt"))
    assert pts == sorted(p.relative_to(tmp_path) for p in (exp / "model_step_000005.pt", exp / "model_step_000010.pt",
                                                           exp / "last.pt")), pts
    assert len(list(exp.glob("events.out.tfevents.*"))) == 1
    assert not [p for p in exp.iterdir() if p.name.endswith(".tmp")]
    marker = json.loads((run_dir / "markers" / "train" / "0" / "_SUCCESS.json").read_text())
    assert sorted(Path(p).name for p in marker["outputs"]) == ["last.pt", "model_step_000005.pt", "model_step_000010.pt"]

    # status names the training's nodes as sacct does, not only the node that wrote the marker.
    assert (marker["host"], marker["node"]) == (NODES[0], train_row["nodes"]), marker
    nodes_of = {s["name"]: s["nodes"] for s in data["stages"]}
    assert nodes_of["train"] == {"0": train_row["nodes"]}, nodes_of["train"]
    assert f"train 0 attempt 0 on node {train_row['nodes']}" in proc.stdout, proc.stdout[:500]

    # The eval array ran on both nodes; each shard's node agrees in sacct, its log, status and logs.
    eval_nodes = {}
    for jid, row in rows.items():
        base, _, task = jid.partition("_")
        if base == job_of["eval"]:
            eval_nodes[int(task)] = row["nodes"]
    assert sorted(eval_nodes) == [0, 1, 2, 3] and set(eval_nodes.values()) == set(NODES), eval_nodes
    assert nodes_of["eval"] == {str(i): n for i, n in eval_nodes.items()}, (nodes_of["eval"], eval_nodes)
    for i, node in eval_nodes.items():
        own = (run_dir / "logs" / "eval" / str(i) / "0.out").read_text()
        assert f"[grail] eval index {i} attempt 0 on {node} (slurm node {node}) at " in own, own[:500]
        proc = cli(cluster, work, "logs", str(run_dir), "--stage", "eval", "--index", str(i))
        assert proc.returncode == 0, proc.stderr
        assert f"eval {i} attempt 0 on node {node}" in proc.stdout, proc.stdout[:500]
    proc = cli(cluster, work, "status", str(run_dir))
    assert proc.returncode == 0 and "gnode1" in proc.stdout and "gnode2" in proc.stdout, proc.stdout
