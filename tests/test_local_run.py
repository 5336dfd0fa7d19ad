"""The local executor: the same rendered jobs, a CPU/GPU slot queue, the same ledger and commands."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grail_cluster.cli.main import main
from grail_cluster.core.ledger import Ledger
from grail_cluster.core.plan import read_plan
from tests.conftest import make_sonic_root
from tests.libgen import make_library

STAGES = ("train", "select", "eval", "render", "export", "merge", "web")


@pytest.fixture
def world(tmp_path):
    make_library(tmp_path / "lib", 16, fast=True)
    make_sonic_root(tmp_path / "SONIC")
    return tmp_path


def overrides(root: Path, run_id: str, *extra: str) -> list[str]:
    return ["pipeline=advanced_manip_table", "cluster=local", f"data.motion_lib={root / 'lib'}",
            f"sonic.root={root / 'SONIC'}", f"run.root={root / 'runs'}", f"run.id={run_id}", "eval.num_shards=4",
            "select.k=2", "rehearsal.enabled=true", f"job.python={sys.executable}", "train.gpus_per_node=1",
            "cluster.gpus=[0,1]", "cluster.cpus=4", *extra]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grail_cluster", *args], capture_output=True, text=True, timeout=300)


def wait_finished(run_dir: Path, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        proc = cli("status", str(run_dir), "--json")
        data = json.loads(proc.stdout)
        if data["finished"]:
            return data
        time.sleep(0.5)
    raise AssertionError(f"not finished: {data}")


def test_foreground_run_faults_status_logs_and_resubmit(world, capsys):
    faults = "rehearsal.faults=[eval/1:exit1,eval/6:kill,export/2:no_marker]"
    proc = cli("run", *overrides(world, "local1", faults), "--json")
    assert proc.returncode == 1, proc.stderr
    run_dir = world / "runs" / "local1"
    data = wait_finished(run_dir)
    assert data["scheduler_calls"] == {}  # local polling costs no scheduler calls
    stages = {s["name"]: s for s in data["stages"]}
    failures = {f["index"]: f for f in stages["eval"]["failures"]}
    assert failures[1]["state"] == "failed" and "injected failure" in failures[1]["signature"]
    assert failures[6]["state"] == "failed" and "signal 9" in failures[6]["signature"]
    export_failures = {f["index"]: f for f in stages["export"]["failures"]}
    assert export_failures[2]["state"] == "missing-output"
    assert export_failures[1]["state"] == "cancelled"  # its eval shard failed
    # Every job ran with one GPU slot of cluster.gpus.
    log = (run_dir / "logs" / "eval" / "0" / "0.out").read_text()
    assert "[grail] eval index 0 attempt 0" in log

    assert main(["logs", str(run_dir), "--stage", "eval", "--failed"]) == 0
    text = capsys.readouterr().out
    assert "injected failure" in text and "eval 1 attempt 0" in text

    proc = cli("resubmit", str(run_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    jobs = json.loads(proc.stdout)["jobs"]
    assert {j["stage"] for j in jobs} == {"eval", "render", "export", "merge", "web"}
    data = wait_finished(run_dir)
    assert data["ok"], data
    assert json.loads(cli("resubmit", str(run_dir), "--json").stdout)["jobs"] == []
    with Ledger(run_dir) as ledger:
        assert ledger.shard("eval", 0).attempt == 0 and ledger.shard("eval", 1).attempt == 1
        assert [a["state"] for a in ledger.attempts("eval", 6)] == ["failed", "done"]


def test_detach_returns_at_once_and_cancel_stops_it(world):
    proc = cli("run", *overrides(world, "local2", "rehearsal.work_seconds=20"), "--detach", "--json")
    assert proc.returncode == 0, proc.stderr
    run_dir = world / "runs" / "local2"
    time.sleep(1.5)
    data = json.loads(cli("status", str(run_dir), "--json").stdout)
    assert not data["finished"]
    assert cli("cancel", str(run_dir)).returncode == 0
    data = wait_finished(run_dir, timeout=60)
    counts = {s["name"]: s["counts"] for s in data["stages"]}
    assert counts["train"] == {"cancelled": 1} and counts["web"] == {"cancelled": 1}


def test_ctrl_c_cancels_a_foreground_run_cleanly(world):
    proc = subprocess.Popen([sys.executable, "-m", "grail_cluster", "run",
                             *overrides(world, "local3", "rehearsal.work_seconds=30")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = world / "runs" / "local3"
    deadline = time.time() + 30
    while time.time() < deadline:
        if (run_dir / "logs" / "train" / "0" / "0.out").exists():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    plan = read_plan(run_dir)
    with Ledger(run_dir) as ledger:
        states = {(s.stage, s.idx): s.state for s in ledger.shards()}
    assert set(states.values()) == {"cancelled"} and len(states) == sum(s.size for s in plan.stages)
    # No job process is left behind.
    out = subprocess.run(["pgrep", "-f", f"--run-dir {run_dir}"], capture_output=True, text=True).stdout
    assert out.strip() == "", out


def test_gpu_slots_hand_out_distinct_devices(world):
    proc = cli("run", *overrides(world, "local4", "resources.eval.cpus=1",
                                 'sonic.setup=["echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; sleep 0.5"]'))
    assert proc.returncode == 0, proc.stderr
    seen = set()
    for out in (world / "runs" / "local4" / "logs" / "eval").glob("*/0.out"):
        line = next(ln for ln in out.read_text().splitlines() if ln.startswith("CUDA_VISIBLE_DEVICES="))
        seen.add(line.split("=", 1)[1])
    # One device per GPU slot, and with two slots both were in use.
    assert seen == {"0", "1"}


def test_rerunning_a_done_shard_is_a_no_op_unless_forced(world):
    proc = cli("run", *overrides(world, "local5"))
    assert proc.returncode == 0, proc.stderr
    run_dir = world / "runs" / "local5"
    output = run_dir / "rehearsal" / "eval" / "2.json"
    before = output.stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "grail_cluster.entry", "eval", "--run-dir", str(run_dir),
                            "--index", "2"], capture_output=True, text=True)
    assert again.returncode == 0 and "already done" in again.stdout
    assert output.stat().st_mtime_ns == before
    forced = subprocess.run([sys.executable, "-m", "grail_cluster.entry", "eval", "--run-dir", str(run_dir),
                             "--index", "2", "--force"], capture_output=True, text=True)
    assert forced.returncode == 0 and output.stat().st_mtime_ns != before
