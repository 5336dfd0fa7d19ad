"""Whole runs on the real local SLURM cluster, in rehearsal mode (small real CPU work per shard):
submit, status against sacct and the markers, fault injection and resubmit, array chunking, and
the polling budget."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grail_cluster.backends.refresh import refresh
from grail_cluster.backends.slurm import SlurmBackend
from grail_cluster.cli.main import main
from grail_cluster.core import config
from grail_cluster.core.ledger import Ledger
from grail_cluster.core.library import scan_library
from grail_cluster.core.plan import write_plan
from grail_cluster.runs.control import cancel, resubmit, submit_run
from grail_cluster.runs.job_files import render_files, write_files
from grail_cluster.runs.planner import build_plan
from grail_cluster.runs.status import run_finished, summarise
from tests.conftest import make_sonic_root
from tests.libgen import make_library

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]
STAGES = ("train", "select", "eval", "render", "export", "merge", "web")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurmrun")
    lib = make_library(root / "lib", 32, fast=True)
    make_sonic_root(root / "SONIC")
    return root, lib


def overrides(root: Path, run_id: str, cluster: str = "slurm", *extra: str) -> list[str]:
    out = [
        "pipeline=advanced_manip_table", f"cluster={cluster}", f"data.motion_lib={root / 'lib'}",
        f"sonic.root={root / 'SONIC'}", f"run.root={root / 'runs'}", f"run.id={run_id}", "eval.num_shards=8",
        "select.k=2", "rehearsal.enabled=true", f"job.python={sys.executable}", "train.gpus_per_node=1",
    ]
    for st in STAGES:
        out += [f"resources.{st}.mem=1", f"resources.{st}.cpus=1"]
    return out + list(extra)


def make(root: Path, run_id: str, *extra: str, cluster: str = "slurm"):
    c = config.load(overrides(root, run_id, cluster, *extra))
    plan = build_plan(c, scan_library(c["data"]["motion_lib"]))
    write_plan(plan)
    write_files(render_files(plan), Path(plan.paths["specs_dir"]) / plan.backend)
    return plan


def wait_settled(plan, timeout: float = 240.0, backend=None):
    backend = backend or SlurmBackend()
    deadline = time.time() + timeout
    while time.time() < deadline:
        with Ledger(plan.run_dir) as ledger:
            refresh(plan, ledger, backend)
            stages = summarise(plan, ledger)
        if run_finished(stages):
            return {s.name: s for s in stages}
        time.sleep(2)
    raise AssertionError(f"run {plan.run_id} did not settle in {timeout} s: {[(s.name, s.counts) for s in stages]}")


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=True).stdout
    return {line.split("|")[0]: line.split("|")[1].split()[0] for line in out.splitlines() if "|" in line}


def merged_outputs(plan) -> dict[str, bytes]:
    base = Path(plan.run_dir) / "rehearsal" / "merge"
    return {p.name: p.read_bytes() for p in sorted(base.glob("*.json"))}


def test_full_dag_status_agrees_with_sacct_and_markers(world, capsys):
    root, lib = world
    plan = make(root, "clean")
    result = submit_run(plan)
    assert [j["stage"] for j in result.jobs] == list(STAGES)
    stages = wait_settled(plan)
    assert all(s.counts == {"done": s.size} for s in stages.values()), {k: s.counts for k, s in stages.items()}
    assert main(["status", plan.run_dir, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["finished"]
    # Where each shard ran: the scheduler's node, in status (JSON, table), in `logs` and in the job's own log.
    cluster_nodes = set(subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True,
                                       check=True).stdout.split())
    for s in data["stages"]:
        assert sorted(map(int, s["nodes"])) == list(range(s["size"])), s
        assert set(s["nodes"].values()) <= cluster_nodes, s
    assert main(["status", plan.run_dir]) == 0
    text = capsys.readouterr().out
    assert "nodes" in text and any(n in text for n in cluster_nodes)
    node = next(s for s in data["stages"] if s["name"] == "eval")["nodes"]["1"]
    assert main(["logs", plan.run_dir, "--stage", "eval", "--index", "1"]) == 0
    text = capsys.readouterr().out
    assert f"eval 1 attempt 0 on node {node}" in text
    assert f"[grail] eval index 1 attempt 0 on {socket.gethostname()} (slurm node {node}) at " in text
    with Ledger(plan.run_dir) as ledger:
        jobs = ledger.jobs()
    expected_rows = sum(len(j.indices) for j in jobs)
    deadline = time.time() + 30
    while True:  # accounting lags the markers by up to a few seconds
        states = sacct_states([j.job_id for j in jobs])
        if len(states) >= expected_rows or time.time() > deadline:
            break
        time.sleep(1)
    assert states and set(states.values()) == {"COMPLETED"}
    assert len(states) == expected_rows  # one sacct row per task: every shard ran exactly once
    for st in plan.stages:
        for i in range(st.size):
            assert (Path(plan.run_dir) / "markers" / st.name / str(i) / "_SUCCESS.json").exists()
    merge = json.loads((Path(plan.run_dir) / "rehearsal" / "merge" / "0.json").read_text())
    assert merge["count"] == len(lib.keys) and sorted(merge["motions"]) == sorted(lib.keys)
    # Idempotent submit: the same run again is refused, nothing new queued.
    with pytest.raises(Exception) as exc:
        submit_run(plan)
    assert "already submitted" in str(exc.value)


def test_faults_are_named_and_resubmit_repairs_exactly_them(world, capsys):
    root, _ = world
    reference = make(root, "reference-local", "cluster.gpus=[0]", cluster="local")
    proc = subprocess.run([sys.executable, "-m", "grail_cluster", "run",
                           *overrides(root, "reference-local", "local", "cluster.gpus=[0]"), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    faults = "rehearsal.faults=[eval/3:exit1,eval/5:kill,eval/7:hang,eval/9:hang,eval/11:no_marker]"
    plan = make(root, "faulty", faults, "resources.eval.time=1")
    submit_run(plan)
    eval_job = next(j for j in Ledger(plan.run_dir).jobs() if j.stage == "eval")
    # eval 7 is cancelled by hand once it runs; eval 9 hangs until its 1-minute limit.
    deadline = time.time() + 60
    while time.time() < deadline:
        with Ledger(plan.run_dir) as ledger:
            refresh(plan, ledger, SlurmBackend())
            if ledger.shard("eval", 7).state == "running":
                break
        time.sleep(1)
    subprocess.run(["scancel", f"{eval_job.job_id}_7"], check=True)
    stages = wait_settled(plan, timeout=300)
    ev = {f["index"]: f for f in stages["eval"].failures}
    assert ev[3]["state"] == "failed" and "injected failure" in ev[3]["signature"]
    assert ev[5]["state"] == "failed" and "signal 9" in ev[5]["signature"]
    assert ev[7]["state"] == "cancelled"
    assert ev[9]["state"] == "timeout" and "TIMEOUT" in ev[9]["signature"]
    assert ev[11]["state"] == "missing-output" and "no valid success marker" in ev[11]["signature"]
    assert stages["eval"].counts["done"] == 11
    # Downstream work of the failed shards was cancelled by SLURM (aftercorr + kill-on-invalid-dep).
    assert stages["merge"].counts.get("done", 0) == 0 and stages["web"].counts.get("cancelled") == 1
    assert main(["status", plan.run_dir]) == 1
    text = capsys.readouterr().out
    for needle in ("failed", "timeout", "cancelled", "missing-output"):
        assert needle in text

    done_before = {(s.stage, s.idx): s.attempt for s in Ledger(plan.run_dir).shards() if s.state == "done"}
    mtimes = {p: p.stat().st_mtime_ns for p in (Path(plan.run_dir) / "rehearsal").rglob("*.json")}
    result = resubmit(plan)
    resubmitted = {(j["stage"]) for j in result.jobs}
    assert resubmitted == {"eval", "render", "export", "merge", "web"}
    eval_groups = [j for j in result.jobs if j["stage"] == "eval"]
    assert sum(j["indices"] for j in eval_groups) == 5 and eval_groups[0]["array"].startswith("3,5,7,9,11")
    assert resubmit(plan, dry_run=True).jobs == []  # idempotent: everything selected is queued now
    stages = wait_settled(plan, timeout=240)
    assert all(s.counts == {"done": s.size} for s in stages.values()), {k: s.counts for k, s in stages.items()}
    with Ledger(plan.run_dir) as ledger:
        for (stage, idx), attempt in done_before.items():
            assert ledger.shard(stage, idx).attempt == attempt == 0  # never ran again
        assert [a["attempt"] for a in ledger.attempts("eval", 9)] == [0, 1]
    for path, before in mtimes.items():
        if path.parts[-2] in ("train", "select") or (path.parts[-2] == "eval" and path.stem not in {"3", "5", "7", "9", "11"}):
            assert path.stat().st_mtime_ns == before, path
    # Earlier attempts' logs are kept beside the new ones.
    assert (Path(plan.run_dir) / "logs" / "eval" / "3" / "0.err").exists()
    assert (Path(plan.run_dir) / "logs" / "eval" / "3" / "1.out").exists()
    # The merged result is byte-identical to a run that had no faults.
    assert merged_outputs(plan) == merged_outputs(reference) != {}


@pytest.fixture
def small_max_array_size():
    from tests.infra.slurm.cluster import ensure_slurm

    ensure_slurm(max_array_size=5)
    try:
        yield 5
    finally:
        ensure_slurm(max_array_size=1001)


def test_arrays_are_chunked_under_max_array_size(world, small_max_array_size):
    root, lib = world
    plan = make(root, "chunked", "eval.num_shards=6", "select.k=2", "cluster.array_parallelism=4")
    submit_run(plan)
    with Ledger(plan.run_dir) as ledger:
        assert ledger.meta("max_array_size") == 5
        evals = ledger.jobs(stage="eval")
        renders = ledger.jobs(stage="render")
    # 12 eval indices under MaxArraySize 5: chunks [0,5), [5,10), [10,12) with task ids 0..4.
    assert [(j.index_offset, j.indices) for j in evals] == [(0, list(range(5))), (5, list(range(5, 10))),
                                                           (10, [10, 11])]
    assert [j.array_spec.split("%")[0] for j in evals] == ["0-4", "0-4", "0-1"]
    assert sum(int(j.array_spec.split("%")[1]) for j in evals) <= 4 + len(evals)  # one %P shared by chunks
    assert [j.name for j in evals] == [f"chunked:eval:{i}" for i in range(3)]
    # render chunk i waits on eval chunk i, task by task.
    assert [r.depends for r in renders] == [f"aftercorr:{e.job_id}" for e in evals]
    stages = wait_settled(plan)
    assert all(s.counts == {"done": s.size} for s in stages.values())


def test_status_polling_budget_is_constant(world):
    """O(1) scheduler calls per refresh: 8 and 64 eval shards cost the same."""
    root, _ = world
    counts = {}
    for n in (4, 32):
        plan = make(root, f"budget{n}", f"eval.num_shards={n}", "rehearsal.work_seconds=5")
        submit_run(plan)
        backend = SlurmBackend()
        with Ledger(plan.run_dir) as ledger:
            refresh(plan, ledger, backend)
        counts[n] = sum(backend.calls.values())
        assert backend.calls["squeue"] == 1 and backend.calls["sacct"] <= 1
        cancel(plan)
    assert counts[4] == counts[32] <= 2


def test_cancel_stops_a_stage_and_its_dependants(world):
    root, _ = world
    plan = make(root, "cancelme", "rehearsal.work_seconds=30")
    submit_run(plan)
    ids = cancel(plan, stage="eval")
    with Ledger(plan.run_dir) as ledger:
        stage_of = {j.job_id: j.stage for j in ledger.jobs()}
    assert {stage_of[i] for i in ids} == {"eval", "render", "export", "merge", "web"}
    cancel(plan)  # and the rest, so the test does not wait for the 30-second rehearsal jobs
    stages = wait_settled(plan, timeout=120)
    assert stages["eval"].counts.get("cancelled") == stages["eval"].size
    assert stages["web"].counts.get("cancelled") == 1


def test_a_crashed_submitter_is_reconciled_not_doubled(world):
    """A submitter that died after sbatch but before writing the ledger: the next `run` finds the
    job by its name and adopts it instead of queueing the stage twice."""
    from grail_cluster.backends.groups import plan_groups
    from grail_cluster.stages import registry

    root, _ = world
    plan = make(root, "crashed", "rehearsal.work_seconds=20")
    backend = SlurmBackend()
    groups = plan_groups(plan, {st.name: list(range(st.size)) for st in plan.stages}, arrays=registry.arrays(plan),
                         max_array_size=None, parallelism=None)
    train = groups[0]
    backend.prepare(plan, ["train"])
    orphan = backend.submit_group(plan, train, name=train.name(plan.run_id, 0), dependency=None, attempt=0,
                                  spec_dir=Path(plan.paths["specs_dir"]) / "slurm")
    result = submit_run(plan)
    assert result.adopted == 1
    with Ledger(plan.run_dir) as ledger:
        assert [j.job_id for j in ledger.jobs(stage="train")] == [orphan]
        assert any(e["kind"] == "adopted" for e in ledger.events())
    out = subprocess.run(["squeue", "--me", "-h", "-o", "%i", f"--name={train.name(plan.run_id, 0)}"],
                         capture_output=True, text=True).stdout.split()
    assert out == [orphan]
    assert next(j for j in result.jobs if j["stage"] == "select")["dependency"] == f"afterok:{orphan}"
    cancel(plan)
    wait_settled(plan, timeout=120)


def _status_json(plan, *flags: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "grail_cluster", "status", plan.run_dir, "--json", *flags],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


def _attempts(plan) -> dict[tuple[str, int], int]:
    with Ledger(plan.run_dir) as ledger:
        return {(s.stage, s.idx): s.attempt for s in ledger.shards()}


def _failures(data: dict, stage: str) -> dict[int, dict]:
    return {f["index"]: f for s in data["stages"] if s["name"] == stage for f in s["failures"]}


def test_done_stays_true_lost_evidence_is_repaired_with_dependants(world):
    """A finished run loses an eval marker, then an export output is truncated, then an eval output
    changes at the same size: each is caught (the last only by --verify), named, and resubmit re-runs
    exactly that shard and the done work made from it, on the real cluster."""
    root, _ = world
    plan = make(root, "evidence")
    submit_run(plan)
    stages = wait_settled(plan)
    assert all(s.counts == {"done": s.size} for s in stages.values())
    n = plan.eval["num_shards"]
    base = _attempts(plan)

    # 1. eval 3's marker is deleted (a scratch clean-up).
    (Path(plan.run_dir) / "markers" / "eval" / "3" / "_SUCCESS.json").unlink()
    code, data = _status_json(plan)
    assert code == 1 and not data["ok"]
    assert {s["name"]: s["counts"] for s in data["stages"]}["eval"] == {"done": 2 * n - 1, "missing-output": 1}
    assert "markers/eval/3/_SUCCESS.json" in _failures(data, "eval")[3]["signature"]
    result = resubmit(plan)
    rerun = {j["stage"]: j["indices"] for j in result.jobs}
    assert rerun == {"eval": 1, "render": 1, "export": 1, "merge": 1, "web": 1}, result.jobs
    stages = wait_settled(plan)
    assert all(s.counts == {"done": s.size} for s in stages.values()), {k: s.counts for k, s in stages.items()}
    after = _attempts(plan)
    changed = {k for k in after if after[k] != base[k]}
    assert changed == {("eval", 3), ("render", 3), ("export", 3), ("merge", 0), ("web", 0)}
    # The re-run dependants did their work again (not skipped on their old markers, which are kept aside).
    assert (Path(plan.run_dir) / "markers" / "render" / "3" / f"_SUCCESS.json.retired-r{result.round}").exists()
    assert json.loads((Path(plan.run_dir) / "markers" / "merge" / "0" / "_SUCCESS.json").read_text())["attempt"] \
        == result.round
    assert _status_json(plan)[0] == 0

    # 2. An output of export n+1 (checkpoint 1) is truncated.
    marker = json.loads((Path(plan.run_dir) / "markers" / "export" / str(n + 1) / "_SUCCESS.json").read_text())
    rel = next(iter(marker["outputs"]))
    out = Path(plan.run_dir) / rel
    out.write_bytes(out.read_bytes()[:10])
    code, data = _status_json(plan)
    assert code == 1 and rel in _failures(data, "export")[n + 1]["signature"]
    before = _attempts(plan)
    result = resubmit(plan)
    assert {j["stage"] for j in result.jobs} == {"export", "merge", "web"}
    stages = wait_settled(plan)
    assert all(s.counts == {"done": s.size} for s in stages.values())
    after = _attempts(plan)
    assert {k for k in after if after[k] != before[k]} == {("export", n + 1), ("merge", 1), ("web", 0)}

    # 3. eval 2's output changes content at the same size: a stat cannot see it, --verify can.
    marker = json.loads((Path(plan.run_dir) / "markers" / "eval" / "2" / "_SUCCESS.json").read_text())
    rel = next(iter(marker["outputs"]))
    out = Path(plan.run_dir) / rel
    data = bytearray(out.read_bytes())
    data[-3] = ord("0") if data[-3] != ord("0") else ord("1")
    out.write_bytes(bytes(data))
    assert _status_json(plan)[0] == 0
    code, data = _status_json(plan, "--verify")
    assert code == 1 and "changed content" in _failures(data, "eval")[2]["signature"]
    result = resubmit(plan)
    assert {j["stage"] for j in result.jobs} == {"eval", "render", "export", "merge", "web"}
    wait_settled(plan)
    code, data = _status_json(plan, "--verify")
    assert code == 0 and data["ok"]


def test_repair_ledger_reattaches_queued_jobs_by_name(world):
    """The ledger of a run still in the queue is destroyed; repair-ledger finds the run's jobs by name
    with one squeue and one sacct, re-attaches them, and the run finishes under the rebuilt ledger."""
    root, _ = world
    plan = make(root, "relost", "eval.num_shards=2", "select.k=1", "rehearsal.work_seconds=4")
    submit_run(plan)
    with Ledger(plan.run_dir) as ledger:
        original = {j.name: j.job_id for j in ledger.jobs()}
    ledger_path = Path(plan.run_dir) / "ledger.sqlite"
    for side in ("-wal", "-shm"):
        Path(f"{ledger_path}{side}").unlink(missing_ok=True)
    ledger_path.write_bytes(b"\x00garbage after a full disk\x00" * 100)
    proc = subprocess.run([sys.executable, "-m", "grail_cluster", "status", plan.run_dir], capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "repair-ledger" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "grail_cluster", "repair-ledger", plan.run_dir, "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {j["name"]: j["job_id"] for j in report["jobs_found"]} == original
    calls = report["scheduler_calls"]
    # One query each; scontrol (MaxArraySize) only when accounting has not yet seen a job's submit line.
    assert calls["sacct"] == 1 and calls["squeue"] == 1 and calls.get("scontrol", 0) <= 1, calls
    assert report["attached"], report  # still queued or running when repaired
    assert Path(report["kept_aside"]).read_bytes().startswith(b"\x00garbage")
    with Ledger(plan.run_dir) as ledger:
        assert {j.name: j.job_id for j in ledger.jobs()} == original
    stages = wait_settled(plan)
    assert all(s.counts == {"done": s.size} for s in stages.values()), {k: s.counts for k, s in stages.items()}
    # A later resubmit round is numbered above every round the scheduler knows.
    with Ledger(plan.run_dir) as ledger:
        assert ledger.next_round() >= 1
