"""A full disk under export and merge: the lifecycle (the demo on the local executor, called as a user
calls it) writes its exports into a real, nearly full tmpfs. The stage fails with an ENOSPC signature,
nothing that looks finished is left at the final path, and once the mount has room `resubmit` finishes
the run without running again anything that had finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grail_cluster.core.ledger import Ledger
from grail_cluster.core.markers import read_marker, validate_marker
from grail_cluster.core.plan import read_plan
from grail_cluster.core.signatures import EDQUOT, ENOSPC, signature
from grail_cluster.stages.checkpoints import resolve_checkpoint

SMALL = ["train.iterations=6", "train.save_frequency=3", "train.num_envs=4", "eval.num_shards=2",
         "render.resolution=160x120"]
FREE_KB = 24  # less than one exported motion (its robot pickle alone is ~36 KiB), more than an empty export


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("grail-cluster")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "grail_cluster"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[1])


def test_signature_names_a_full_disk(tmp_path):
    err = tmp_path / "0.err"
    err.write_text("[grail] export index 1 attempt 0 on host\nerror: /data/exported/step_000003/shard_1: no space "
                   "left on device (ENOSPC, errno 28) while writing the export; the partial output was removed\n"
                   "  fix: free space on that file system\n")
    sig = signature([err], "failed")
    assert sig.startswith(ENOSPC) and "/data/exported/step_000003/shard_1" in sig
    # A bare Python traceback from any writer (render, eval, a marker) names it too.
    err.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "OSError: [Errno 28] No space left on device: '/scratch/out.pkl'\n")
    assert signature([err], "failed") == f"{ENOSPC}: OSError: [Errno 28] No space left on device: '/scratch/out.pkl'"
    err.write_text("OSError: [Errno 122] Disk quota exceeded: '/home/u/x'\n")
    assert signature([err], "failed").startswith(EDQUOT)
    err.write_text("ValueError: spaces left in the key\n")  # not every 'space' is a disk
    assert signature([err], "failed") == "ValueError: spaces left in the key"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MiB tmpfs at the run's exported/ dir, filled so only FREE_KB KiB are left."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (this test makes a real full file system)")
    run_dir = tmp_path / "demo" / "runs" / "diskfull"
    exported = run_dir / "experiment" / "exported"
    exported.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(exported)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {proc.stderr.strip()}")
    try:
        st = os.statvfs(exported)
        filler = exported / ".filler"
        with open(filler, "wb") as fh:
            fh.write(b"\0" * (st.f_bavail * st.f_frsize - FREE_KB * 1024))
        yield run_dir, exported
    finally:
        subprocess.run(["umount", "-l", str(exported)], check=False)


def wait_finished(run_dir: Path, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        proc = cli("status", str(run_dir), "--json")
        data = json.loads(proc.stdout)
        if data["finished"]:
            return data
        time.sleep(1)
    raise AssertionError(f"not finished after {timeout} s: {data}")


@pytest.mark.slow
def test_export_into_a_full_disk_fails_clearly_and_resubmit_finishes(small_tmpfs):
    pytest.importorskip("torch")
    run_dir, exported = small_tmpfs
    out = run_dir.parent.parent
    proc = cli("demo", "--out", str(out), "--motions", "6", "run.id=diskfull", *SMALL)
    assert proc.returncode != 0, proc.stdout[-2000:]

    data = json.loads(cli("status", str(run_dir), "--json").stdout)
    stages = {s["name"]: s for s in data["stages"]}
    assert data["finished"] and not data["ok"]
    assert all(stages[st]["counts"] == {"done": stages[st]["size"]} for st in ("train", "select", "eval", "render"))
    full = [f for f in stages["export"]["failures"] if f["state"] == "failed"]
    assert full, f"no export hit the full disk: {stages['export']}"
    plan = read_plan(run_dir)
    for f in full:
        assert f["signature"].startswith(ENOSPC), f
        assert "no space left on device" in f["signature"]
        # Nothing complete-looking: no marker and nothing at the final path.
        _, step = resolve_checkpoint(plan, f["index"] // 2)
        assert read_marker(run_dir, "export", f["index"]) is None
        assert not (exported / f"step_{step:06d}" / f"shard_{f['index'] % 2}").exists()
    # No temp tree or temp marker beside a final path; every export dir there is a finished one.
    leftovers = [p for p in exported.rglob("*") if ".tmp-" in p.name or p.name.startswith(".success.")]
    assert not leftovers, leftovers
    with Ledger(run_dir) as ledger:
        done_exports = [s.idx for s in ledger.shards("export") if s.state == "done"]
    assert len(list(exported.glob("step_*/shard_*"))) == len(done_exports)
    # With FREE_KB left only an export of no motion fits: each that got through is empty.
    assert all(json.loads(p.read_text())["exported_count"] == 0
               for p in exported.glob("step_*/shard_*/export_manifest.json"))
    assert all(validate_marker(run_dir, "export", i, plan.plan_hash) for i in done_exports)
    assert not list(exported.glob("step_*/merged*"))

    text = cli("status", str(run_dir)).stdout
    assert ENOSPC in text and f"grail-cluster resubmit {run_dir}" in text
    assert "nodes" not in text  # the local executor's shards all ran here: no column of `localhost`
    logs = cli("logs", str(run_dir), "--stage", "export", "--index", str(full[0]["index"])).stdout
    assert "no space left on device" in logs and "df -h" in logs and "Traceback" not in logs

    with Ledger(run_dir) as ledger:
        before = {(s.stage, s.idx): s.attempt for s in ledger.shards() if s.state == "done"}
    finished_at = {k: read_marker(run_dir, *k)["finished_at"] for k in before}

    subprocess.run(["mount", "-o", "remount,size=64m", str(exported)], check=True)
    proc = cli("resubmit", str(run_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    assert {j["stage"] for j in json.loads(proc.stdout)["jobs"]} >= {"export", "merge", "web"}
    data = wait_finished(run_dir)
    assert data["ok"], data
    with Ledger(run_dir) as ledger:
        for (stage, idx), attempt in before.items():
            assert ledger.shard(stage, idx).attempt == attempt, (stage, idx)
            assert [a["state"] for a in ledger.attempts(stage, idx)] == ["done"], (stage, idx)
        for f in full:
            assert [a["state"] for a in ledger.attempts("export", f["index"])] == ["failed", "done"]
    assert {k: read_marker(run_dir, *k)["finished_at"] for k in before} == finished_at
    assert len(list(exported.glob("step_*/merged/export_manifest.json"))) == 2
