"""A 3 x 2 sweep of the CPU reference trainer on the real local SLURM cluster.

`grail-cluster run -m` returns once queued; the six points train in ONE array, each into its own
experiment dir and its own offline W&B run of one group (the run id); select ranks across all of
them; one point is cancelled mid-training and, once the rest settled, resubmitted alone: it
resumes from its own last.pt while the other points' checkpoints stay untouched; then the
winners are evaluated, exported and merged, and `select-top --group` agrees with the select stage
whether it reads the experiment dirs or the offline W&B runs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from grail_cluster.cli.main import main
from grail_cluster.core.ledger import Ledger
from grail_cluster.core.plan import read_plan

pytest.importorskip("torch")
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _status(run_dir: Path, capsys) -> dict:
    capsys.readouterr()
    main(["status", str(run_dir), "--json"])
    return json.loads(capsys.readouterr().out)


def _wait(run_dir: Path, capsys, done, timeout: float = 420) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        data = _status(run_dir, capsys)
        if done(data):
            return data
        time.sleep(3)
    raise AssertionError(f"timed out: {json.dumps(data['stages'])}")


def test_reference_sweep_on_slurm_one_point_killed_and_resumed_alone(tmp_path, capsys, slurm_cluster):
    assert main(["demo-data", "--out", str(tmp_path / "data"), "--motions", "6", "--seed", "3",
                 "--name", "demo_pickup"]) == 0
    args = ["run", "-m", "trainer=reference", "pipeline=pnp_table", "cluster=slurm",
            f"data.motion_lib={tmp_path / 'data' / 'demo_pickup_ha'}", f"run.root={tmp_path / 'runs'}",
            f"job.python={sys.executable}", "eval.num_shards=2", "select.k=2", "render.enabled=false",
            "web.enabled=false", "train.gpus_per_node=1", "train.num_envs=6", "train.iterations=40",
            "train.save_frequency=10", "sonic.wandb_mode=offline", "++train.overrides.use_wandb=true",
            "train.seed=1,2,3", "++train.overrides.algo.config.learning_rate=1e-4,1e-3", "--json"]
    capsys.readouterr()
    t0 = time.time()
    assert main(args) == 0
    submitted = json.loads(capsys.readouterr().out)
    returned_s = time.time() - t0
    run_dir = Path(submitted["run_dir"])
    plan = read_plan(run_dir)
    assert returned_s < 30  # it queues and returns; it does not wait for training
    # One array for the six points; six experiment dirs; one W&B group.
    train_jobs = [j for j in submitted["jobs"] if j["stage"] == "train"]
    assert len(train_jobs) == 1 and train_jobs[0]["array"] == "0-5%6"
    exps = [Path(p["experiment_dir"]) for p in plan.train["points"]]
    assert len(set(exps)) == 6

    # Kill point 1 once it has its first checkpoint (and last.pt).
    deadline = time.time() + 300
    while not (exps[1] / "model_step_000010.pt").exists():
        assert time.time() < deadline, "point 1 never reached its first checkpoint"
        time.sleep(1)
    capsys.readouterr()
    assert main(["cancel", str(run_dir), "--point", "1", "--json"]) == 0
    ids = json.loads(capsys.readouterr().out)["cancelled_jobs"]
    assert f"{train_jobs[0]['job_id']}_1" in ids and train_jobs[0]["job_id"] not in ids

    settled = _wait(run_dir, capsys, lambda d: d["finished"])
    counts = {s["name"]: s["counts"] for s in settled["stages"]}
    assert counts["train"] == {"done": 5, "cancelled": 1}
    assert not (exps[1] / "model_step_000040.pt").exists()
    assert [p["state"] for p in settled["points"]] == ["done", "cancelled", "done", "done", "done", "done"]
    others = {p: (p.stat().st_mtime_ns, p.read_bytes()) for i, e in enumerate(exps) if i != 1
              for p in sorted(e.glob("*.pt"))}

    # Resume point 1 alone (plus the select/eval/export/merge that wait on it).
    capsys.readouterr()
    assert main(["resubmit", str(run_dir), "--point", "1", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["jobs"]
    assert [j["indices"] for j in again if j["stage"] == "train"] == [1]
    final = _wait(run_dir, capsys, lambda d: d["finished"])
    assert final["ok"], final["stages"]
    assert (exps[1] / "model_step_000040.pt").exists()
    resumed_log = (run_dir / "logs" / "train" / "1" / "1.out").read_text()
    assert "[resume] continuing from" in resumed_log and "last.pt" in resumed_log
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in others} == others  # untouched
    with Ledger(run_dir) as ledger:
        attempts = {s.idx: s.attempt for s in ledger.shards("train")}
    assert attempts[1] == 1 and all(attempts[i] == 0 for i in (0, 2, 3, 4, 5))

    # Select ranked across the sweep; the winners were evaluated and merged under their own points.
    selection = json.loads((run_dir / "select" / "selection.json").read_text())
    assert selection["group"] == plan.run_id and len(selection["runs"]) == 6
    for entry in selection["top"]:
        exp = Path(entry["experiment_dir"])
        assert exp in exps and entry["point"] == exps.index(exp)
        merged = exp / "exported" / f"step_{entry['eval_step']:06d}" / "merged"
        assert (merged / "export_manifest.json").is_file()
        shards = sorted((exp / "eval" / f"step_{entry['eval_step']:06d}").glob("phase1_shard_*/metrics_eval.json"))
        assert len(shards) == 2

    # Every point logged an offline W&B run in the sweep's group, with job type train.
    for e in exps:
        runs = list((e / "wandb").glob("offline-run-*"))
        assert runs, e
    top_of = lambda res: [(e["experiment_dir"], e["eval_step"]) for e in res["top"]]  # noqa: E731
    assert main(["select-top", "--group", plan.run_id, "--wandb_dir", str(run_dir), "--k", "2", "--hoi", "--json"]) == 0
    from_wandb = json.loads(capsys.readouterr().out)
    assert main(["select-top", "--group", str(run_dir), "--k", "2", "--hoi", "--json"]) == 0
    from_dirs = json.loads(capsys.readouterr().out)
    assert top_of(from_wandb) == top_of(from_dirs) == top_of(selection)
    assert {r["experiment_dir"] for r in from_wandb["runs"]} == {str(e) for e in exps}
