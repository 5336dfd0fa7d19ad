"""The in-job slice audit: SONIC's own log lines (contracts §3, written here by hand) judged against
plan.json, a real child process stopped on a mismatch, and end to end: a library that changes
between plan and run stops the reference tracker's training on the local executor with a signature.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from grail_cluster.stages.slice_audit import (
    Expectation,
    RankPlan,
    SliceAudit,
    read_audits,
    stage_summary,
    write_audit,
)

# Two ranks over T=6 sorted keys: SONIC's blocks [0:3) and [3:6) (floor(r*T/W), contracts §3.1).
HOI = Expectation("train", 0, "hoi_block", 2, {0: RankPlan(0, 0, 3, 6), 1: RankPlan(1, 3, 6, 6)})


def _terrain() -> Expectation:
    # 2 ranks, num_envs=4, ratio 1:1 -> 2 terrain envs per rank; rank 1's window starts at key 2.
    keys = ["t_a", "t_b", "t_c", "t_d", "t_e"]
    ranks = {r: RankPlan(r, num_envs=4, terrain_envs=2, ratio=1, terrain_motions=2, first_keys=keys[2 * r:2 * r + 2])
             for r in range(2)}
    return Expectation("train", 0, "terrain_window", 2, ranks, [keys[0:2], keys[2:4]])


def _audit(exp=HOI) -> SliceAudit:
    return SliceAudit(exp, timeout_s=60)


def test_contract_lines_that_match_the_plan_pass():
    a = _audit()
    for line in ("[Motion Shard] Enabled: rank 0/2", "[Motion Shard] Rank 0/2: motions [0:3] = 3/6",
                 "[rank1]: [Motion Shard] Rank 1/2: motions [3:6] = 3/6\n"):  # a launcher's prefix, a newline
        assert a.feed(line) is None
    rec = a.record(finished=True, exit_code=0)
    assert rec["verdict"] == "match" and rec["matched"] == [0, 1] and rec["missing"] == []


def test_a_motion_added_after_planning_names_rank_planned_taken_and_t():
    a = _audit()
    assert a.feed("[Motion Shard] Rank 0/2: motions [0:3] = 3/7") == (
        "slice mismatch: train 0: train rank 0/2 took motions [0:3] = 3/7, plan.json planned [0:3] = 3/6 "
        "(T planned 6, seen 7)")
    # The first mismatch is the signature; later ones are recorded, not re-announced.
    assert a.feed("[Motion Shard] Rank 1/2: motions [3:7] = 4/7") is None
    rec = a.record()
    assert rec["verdict"] == "mismatch" and rec["mismatched"] == [0, 1] and rec["matched"] == []


def test_ranks_glued_on_one_line_are_each_judged():
    # Two ranks on one pipe, unbuffered: each print's text and newline are separate writes.
    a = _audit()
    assert a.feed("[Motion Shard] Enabled: rank 0/2[Motion Shard] Enabled: rank 1/2") is None
    assert a.feed("[Motion Shard] Rank 1/2: motions [3:6] = 3/6[Motion Shard] Rank 0/2: motions [0:3] = 3/6") is None
    assert a.record()["verdict"] == "match"
    b = _audit()
    sig = b.feed("[Motion Shard] Rank 1/2: motions [3:6] = 3/6[Motion Shard] Rank 0/2: motions [0:3] = 3/7")
    assert sig and "rank 0/2 took motions [0:3] = 3/7" in sig and b.record()["matched"] == [1]
    # Another rank's digits glued onto T ("3/6" + "12 it/s") must not stop a correct job.
    c = _audit()
    assert c.feed("[Motion Shard] Rank 0/2: motions [0:3] = 3/612 it/s") is None and c.mismatch is None
    assert c.record()["missing"] == [0, 1]


def test_other_world_size_and_foreign_ranks():
    a = _audit()
    assert "SONIC runs 4 processes, plan.json planned 2" in a.feed("[Motion Shard] Enabled: rank 3/4")
    b = _audit()
    assert "sliced 3 ways, plan.json 2" in b.feed("[Motion Shard] Rank 0/3: motions [0:2] = 2/6")
    # A rank of another node (multi-node: this node's audit holds only its own ranks) is not judged here.
    node1 = Expectation("train", 0, "hoi_block", 2, {1: RankPlan(1, 3, 6, 6)})
    c = _audit(node1)
    assert c.feed("[Motion Shard] Rank 0/2: motions [0:3] = 3/6") is None
    assert c.record()["expected"] == [1] and c.record()["verdict"] == "watching"


def test_lines_that_are_not_markers_are_ignored():
    a = _audit()
    for line in ("[Motion Shard] Rank 0/2: motions [0:3] = 3/6 (cached)", "Motion Shard Rank 1/2: motions [3:9] = 6/9",
                 "[USD Shard] Rank 0/2: usds [0:4] = 4/8", "[PerRankUSD] something new in this SONIC version",
                 "iteration 10: reward 0.3", "x" * 100_000):
        assert a.feed(line) is None
    assert a.record()["verdict"] == "watching" and a.record()["matched"] == [0]


def test_terrain_per_rank_usd_keys_and_motion_lines():
    a = _audit(_terrain())
    ok = "[PerRankUSD] rank=1, num_envs=4, flat_envs=2, terrain_envs=2, ratio=1:1, unique_usd=3, terrain_motions=2, flat_motions=3"
    assert a.feed(ok) is None
    assert a.feed("[PerRankUSD] terrain_keys[0:3]=['t_c', 't_d']") is None
    assert a.feed("[PerRankUSD] terrain_usd[0:3]=['t_c.usd', 't_d.usd']") is None
    assert a.feed("[PerRankMotion] Loaded 5 motion keys from /tmp/rank_1_motion_keys.txt; forced motion_shard_world_size=1") is None
    # The terrain path logs "Rank 0/1" over each rank's own key file: not a rank's block, not judged.
    assert a.feed("[Motion Shard] Rank 0/1: motions [0:5] = 5/5") is None
    assert a.record()["matched"] == [1] and a.mismatch is None

    b = _audit(_terrain())
    sig = b.feed(ok.replace("rank=1", "rank=0").replace("terrain_motions=2", "terrain_motions=1"))
    assert sig and "train rank 0/2 took terrain_motions 1 (planned 2)" in sig
    c = _audit(_terrain())
    assert "no planned rank's window" in c.feed("[PerRankUSD] terrain_keys[0:3]=['t_b', 't_c']")
    d = _audit(_terrain())
    d.feed(ok)
    # Another job on the node rewrote /tmp/rank_1_motion_keys.txt (contracts §3.2: named by rank only).
    assert "loaded 9 motion keys" in d.feed("[PerRankMotion] Loaded 9 motion keys from /tmp/rank_1_motion_keys.txt; forced")
    # The keys list is read as a literal, never evaluated: code in it is an unparsed line.
    e = _audit(_terrain())
    assert e.feed("[PerRankUSD] terrain_keys[0:3]=[__import__('os').getpid()]") is None and e.mismatch is None
    # A SONIC that takes the terrain path where the plan has HOI blocks.
    assert "took the terrain path, plan.json planned HOI blocks" in _audit().feed(ok)


def test_missing_marker_is_a_warning_after_the_timeout_not_a_failure():
    early = SliceAudit(HOI, timeout_s=60)
    assert early.check_timeout() is None  # before the timeout nothing is said
    a2 = SliceAudit(HOI, timeout_s=0.05)
    a2.feed("[Motion Shard] Rank 0/2: motions [0:3] = 3/6")
    time.sleep(0.1)
    warning = a2.check_timeout()
    assert warning and "ranks 1 within" in warning and "not checked" in warning
    assert a2.check_timeout() is None  # once
    assert a2.record(finished=True, exit_code=0)["verdict"] == "incomplete"


CHILD = textwrap.dedent("""
    import os, subprocess, sys, time
    # A worker in the same process group, like accelerate's ranks: it must be stopped too.
    w = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    open(sys.argv[1], "w").write(str(w.pid))
    print("[Motion Shard] Enabled: rank 0/2", flush=True)
    print("loading...", flush=True)
    print(sys.argv[2], flush=True)
    time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped by its dead parent yet) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _watch_script(tmp_path, line: str, timeout_s: float = 60):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    pidfile, audit_file = tmp_path / "worker.pid", tmp_path / "logs" / "0.slices.json"
    code = f"""
import sys
from grail_cluster.stages.slice_audit import SliceAudit
from grail_cluster.stages.slice_watch import run_watched
from tests.test_slice_audit import HOI
sys.exit(run_watched([sys.executable, {str(script)!r}, {str(pidfile)!r}, {line!r}], ".",
                     SliceAudit(HOI, timeout_s={timeout_s}), __import__("pathlib").Path({str(audit_file)!r})))
"""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent)
    return proc, time.time() - t0, int(pidfile.read_text()), audit_file


def test_watcher_stops_the_child_group_on_a_mismatch(tmp_path):
    proc, wall, worker, audit_file = _watch_script(tmp_path, "[Motion Shard] Rank 1/2: motions [3:7] = 4/7")
    assert proc.returncode == 1
    assert wall < 30  # the child would sleep 120 s
    assert not _alive(worker)
    assert "loading..." in proc.stdout and "[Motion Shard] Enabled" in proc.stdout  # streamed through
    err = proc.stderr.strip().splitlines()
    assert err[-2] == ("error: slice mismatch: train 0: train rank 1/2 took motions [3:7] = 4/7, plan.json planned "
                       "[3:6] = 3/6 (T planned 6, seen 7)")
    assert err[-1].startswith("  fix: re-plan the run") and "Traceback" not in proc.stderr
    audit = json.loads(audit_file.read_text())
    assert audit["verdict"] == "mismatch" and audit["exit_code"] == 1 and audit["mismatched"] == [1]


def test_watcher_passes_a_child_whose_slices_match_and_warns_on_missing(tmp_path):
    script = tmp_path / "ok.py"
    script.write_text("print('[Motion Shard] Rank 0/2: motions [0:3] = 3/6', flush=True)\n"
                      "import time; time.sleep(1.5)\nprint('done', flush=True)\n")
    audit_file = tmp_path / "0.slices.json"
    code = f"""
import sys, pathlib
from grail_cluster.stages.slice_audit import SliceAudit
from grail_cluster.stages.slice_watch import run_watched
from tests.test_slice_audit import HOI
sys.exit(run_watched([sys.executable, {str(script)!r}], ".", SliceAudit(HOI, timeout_s=0.5), pathlib.Path({str(audit_file)!r})))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert "slice audit warning: no slice marker from ranks 1 within 0 s" in proc.stdout and "done" in proc.stdout
    audit = json.loads(audit_file.read_text())
    assert audit["verdict"] == "incomplete" and audit["matched"] == [0] and audit["missing"] == [1]
    assert stage_summary(tmp_path.parent, "x", {}) is None


def test_status_summary_reads_only_the_ledgers_attempt(tmp_path):
    a = _audit()
    a.feed("[Motion Shard] Rank 0/2: motions [0:3] = 3/6")
    a.feed("[Motion Shard] Rank 1/2: motions [3:6] = 3/6")
    base = tmp_path / "logs" / "train" / "0"
    write_audit(base / "1.slices.json", a.record(finished=True, exit_code=0))
    (base / "0.slices.json").write_text("{torn")
    assert read_audits(tmp_path, "train", 0, 0) == []
    s = stage_summary(tmp_path, "train", {0: 1})
    assert (s["matched"], s["expected"], s["mismatches"]) == (2, 2, [])


# -- end to end: the reference tracker plays SONIC, the local executor runs the rendered job --------------
def _status(run_dir: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "grail_cluster", "status", str(run_dir), "--json"],
                          capture_output=True, text=True, timeout=120)
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_library_changed_after_planning_stops_training_early(tmp_path):
    pytest.importorskip("accelerate")
    from grail_cluster.cli.main import main
    from grail_cluster.core.plan import read_plan
    from grail_cluster.runs.control import submit_run
    from tests.adversarial.harness import run_cli

    assert main(["demo-data", "--out", str(tmp_path / "data"), "--motions", "6", "--seed", "3",
                 "--name", "demo_pickup"]) == 0
    lib = tmp_path / "data" / "demo_pickup_ha"
    res = run_cli(["run", "trainer=reference", "pipeline=pnp_table", "cluster=local", f"data.motion_lib={lib}",
                   f"run.root={tmp_path / 'runs'}", "run.id=changed", f"job.python={sys.executable}",
                   "eval.num_shards=2", "select.k=1", "render.enabled=false", "web.enabled=false",
                   "train.gpus_per_node=2", "cluster.gpus=[0,1]", "train.num_envs=4", "train.iterations=400",
                   "--dry-run"])
    assert res.code == 0, res.stderr
    run_dir = tmp_path / "runs" / "changed"
    plan = read_plan(run_dir)
    assert [r["stop"] for r in plan.train["ranks"]] == [3, 6]

    # After planning, a motion joins the library (sorted last, so T goes 6 -> 7 and rank 1 takes [3:7]).
    keys = sorted(p.stem for p in (lib / "robot").glob("*.pkl"))
    for sub in ("robot", "objects", "meta"):
        src = lib / sub / f"{keys[-1]}.pkl"
        if src.exists():
            (lib / sub / "zzz_added_after_plan.pkl").write_bytes(src.read_bytes())
    usd_dir = Path(plan.library["usd_dir"])
    for src in usd_dir.glob(f"{keys[-1]}.usd*"):
        (usd_dir / f"zzz_added_after_plan{src.suffix}").write_bytes(src.read_bytes())

    t0 = time.time()
    submit_run(plan)
    deadline = time.time() + 240
    while not (data := _status(run_dir))["finished"]:
        assert time.time() < deadline, data
        time.sleep(1)
    wall = time.time() - t0
    stages = {s["name"]: s for s in data["stages"]}
    assert stages["train"]["counts"] == {"failed": 1}
    sig = stages["train"]["failures"][0]["signature"]
    assert sig.startswith("slice mismatch: train 0: train rank ") and "(T planned 6, seen 7)" in sig, sig
    assert "plan.json planned [0:3] = 3/6" in sig or "plan.json planned [3:6] = 3/6" in sig
    # Stopped at the markers, long before 400 iterations; nothing was checkpointed or marked done.
    assert wall < 120
    assert not list(Path(plan.paths["experiment_dir"]).glob("model_step_*.pt"))
    assert not (run_dir / "markers" / "train").exists() or not list((run_dir / "markers" / "train").iterdir())
    assert data["slices"]["train"]["mismatches"][0]["signature"] == sig
    assert data["slices"]["train"]["expected"] == 2

    # The same as a person reads it: status by absolute path, not a TTY.
    text = run_cli(["status", str(run_dir)])
    assert text.code == 1 and "train: slices 0/2 ranks match plan; 1 mismatch: slice mismatch" in text.stdout
    logs = run_cli(["logs", str(run_dir), "--stage", "train", "--index", "0"])
    assert "slice audit (train 0): mismatch" in logs.stdout and "MISMATCH" in logs.stdout


def test_a_killed_watcher_does_not_orphan_sonic(tmp_path):
    """The child has its own session (so a mismatch can stop its whole group); a SIGKILL of the job's
    group (executor time limit, cancel) reaches only the watcher, and the child must still stop."""
    pidfile = tmp_path / "child.pid"
    sleeper = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    code = f"""
import sys, pathlib
from grail_cluster.stages.slice_audit import SliceAudit
from grail_cluster.stages.slice_watch import run_watched
from tests.test_slice_audit import HOI
run_watched([sys.executable, "-c", {sleeper!r}], ".", SliceAudit(HOI, timeout_s=60), pathlib.Path({str(tmp_path / 'a.json')!r}))
"""
    watcher = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent.parent)
    deadline = time.time() + 60
    while not pidfile.exists() or not pidfile.read_text():
        assert time.time() < deadline
        time.sleep(0.1)
    child = int(pidfile.read_text())
    watcher.kill()
    watcher.wait()
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        os.kill(child, 9)
    assert not alive
