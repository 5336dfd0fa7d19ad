"""Whole runs on the real local SLURM cluster, in rehearsal mode (small real CPU work per shard):
submit, status against sacct and the markers, fault injection and resubmit, array chunking, and
the polling budget."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grail_cluster import config
from grail_cluster.backends.slurm import SlurmBackend
from grail_cluster.cli import main
from grail_cluster.control import cancel, resubmit, submit_run
from grail_cluster.ledger import Ledger
from grail_cluster.library import scan_library
from grail_cluster.plan import build_plan, write_plan
from grail_cluster.render import render_files, write_files
from grail_cluster.status import refresh, run_finished, summarise
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
    from grail_cluster.submission import plan_groups

    root, _ = world
    plan = make(root, "crashed", "rehearsal.work_seconds=20")
    backend = SlurmBackend()
    groups = plan_groups(plan, {st.name: list(range(st.size)) for st in plan.stages}, max_array_size=None,
                         parallelism=None)
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
