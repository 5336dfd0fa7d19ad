"""Tests of the real single-node Slurm cluster (tests/infra/slurm/up.sh) on localhost.

The cluster must already be up (``bash tests/infra/slurm/up.sh``), or set
``GRAIL_SLURM_AUTOSTART=1`` to let these tests start it. If it is not up, the tests are skipped,
or fail when ``GRAIL_REQUIRE_SLURM=1``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
from pathlib import Path

import pytest

try:
    from tests.infra.slurm import cluster
except ImportError:  # tests/ not importable as a package (plain `pytest` without rootdir on path)
    _spec = importlib.util.spec_from_file_location(
        "grail_slurm_cluster", Path(__file__).resolve().parent / "infra" / "slurm" / "cluster.py"
    )
    assert _spec is not None and _spec.loader is not None
    cluster = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(cluster)

pytestmark = pytest.mark.slurm

SACCT_WAIT_S = 90.0  # jobs start within ~1 s; sacct lags squeue by up to several seconds


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> None:
    """Skips (or fails, with GRAIL_REQUIRE_SLURM=1) the module when the cluster is not up."""
    start_error = ""
    state = cluster.node_state()
    if state not in cluster.USABLE_NODE_STATES and _truthy("GRAIL_SLURM_AUTOSTART"):
        try:
            cluster.ensure_slurm()
        except RuntimeError as exc:
            start_error = f"\nensure_slurm() failed:\n{exc}"
        state = cluster.node_state()
    if state in cluster.USABLE_NODE_STATES:
        return
    reason = (
        f"local Slurm cluster is not up (node state {state!r}); "
        f"start it with `bash tests/infra/slurm/up.sh`{start_error}"
    )
    if _truthy("GRAIL_REQUIRE_SLURM"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _run(*cmd: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\nset -eu\n" + body)
    path.chmod(0o755)
    return path


def _sbatch(*args: str, cwd: Path) -> str:
    out = _run("sbatch", "--parsable", *args, cwd=cwd).stdout.strip()
    job_id = out.split(";")[0]  # --parsable prints "jobid" or "jobid;cluster"
    assert job_id.isdigit(), out
    return job_id


def _sacct_states(job_id: str) -> dict[str, str]:
    out = _run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State", check=False).stdout
    states = {}
    for line in out.splitlines():
        if "|" in line:
            jid, state = line.split("|", 1)
            states[jid] = state.split()[0]  # "CANCELLED by 0" -> "CANCELLED"
    return states


def _wait_for_sacct(job_id: str, expected_ids: set[str], timeout: float = SACCT_WAIT_S) -> dict[str, str]:
    """Waits until sacct lists every id in expected_ids in a final state; returns the states."""
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL"}
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = _sacct_states(job_id)
        if expected_ids <= states.keys() and all(states[j] in final for j in expected_ids):
            return states
        time.sleep(0.5)
    squeue = _run("squeue", "-h", "-j", job_id, "-o", "%i %T %r", check=False).stdout
    raise AssertionError(f"job {job_id} not finished in sacct after {timeout}s: {states}\nsqueue:\n{squeue}")


def _gpus_configured() -> int:
    out = _run("scontrol", "show", "node", "localhost", check=False).stdout
    for token in out.split():
        if token.startswith("Gres=gpu:"):
            count = token.split(":")[-1].split("(")[0]
            return int(count) if count.isdigit() else 0
    return 0


def test_array_job_runs_and_is_accounted(tmp_path: Path) -> None:
    script = _write_script(
        tmp_path / "array.sh",
        'echo "task=${SLURM_ARRAY_TASK_ID} of=${SLURM_ARRAY_JOB_ID} count=${SLURM_ARRAY_TASK_COUNT}"\n',
    )
    job_id = _sbatch(
        "--array=0-2",
        "--job-name=grail-infra-array",
        f"--output={tmp_path}/out_%A_%a.txt",
        f"--chdir={tmp_path}",
        str(script),
        cwd=tmp_path,
    )
    expected = {f"{job_id}_{i}" for i in range(3)}
    states = _wait_for_sacct(job_id, expected)
    assert {j: states[j] for j in expected} == {j: "COMPLETED" for j in expected}
    for i in range(3):
        out = tmp_path / f"out_{job_id}_{i}.txt"
        assert out.read_text().strip() == f"task={i} of={job_id} count=3"


def test_failed_job_is_reported_failed(tmp_path: Path) -> None:
    script = _write_script(tmp_path / "fail.sh", "echo about to fail\nexit 3\n")
    job_id = _sbatch(f"--output={tmp_path}/fail_%j.txt", f"--chdir={tmp_path}", str(script), cwd=tmp_path)
    states = _wait_for_sacct(job_id, {job_id})
    assert states[job_id] == "FAILED"
    out = _run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "ExitCode").stdout.strip()
    assert out == "3:0"


def test_gpu_requests_are_accepted(tmp_path: Path) -> None:
    gpus = _gpus_configured()
    if gpus < 8:
        pytest.skip(f"node advertises {gpus} GPUs (GRAIL_SLURM_GPUS < 8?)")
    script = _write_script(
        tmp_path / "gpu.sh", 'echo "gpus=${SLURM_GPUS_ON_NODE} cvd=${CUDA_VISIBLE_DEVICES}"\n'
    )
    for request in ("--gpus-per-node=8", "--gres=gpu:8"):
        proc = _run("sbatch", "--test-only", request, str(script), cwd=tmp_path)
        assert "to start at" in proc.stderr, proc.stderr
    too_many = _run(
        "sbatch", "--test-only", f"--gpus-per-node={gpus + 1}", str(script), check=False, cwd=tmp_path
    )
    assert too_many.returncode != 0

    job_id = _sbatch(
        "--gpus-per-node=8",
        "--partition=gpu",
        f"--output={tmp_path}/gpu_%j.txt",
        f"--chdir={tmp_path}",
        str(script),
        cwd=tmp_path,
    )
    states = _wait_for_sacct(job_id, {job_id})
    assert states[job_id] == "COMPLETED"
    assert (tmp_path / f"gpu_{job_id}.txt").read_text().strip() == "gpus=8 cvd=0,1,2,3,4,5,6,7"
    tres = _run("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "AllocTRES").stdout
    assert "gres/gpu=8" in tres


def test_max_array_size_matches_config() -> None:
    config = cluster.scontrol_config()
    slurm_conf = cluster.state_dir() / "etc" / "slurm.conf"
    if slurm_conf.exists():
        lines = [ln for ln in slurm_conf.read_text().splitlines() if ln.startswith("MaxArraySize=")]
        assert lines, slurm_conf
        assert config["MaxArraySize"] == lines[-1].split("=", 1)[1]
    assert config["ClusterName"] == os.environ.get("GRAIL_SLURM_CLUSTER", "grail-local")
    assert config["SelectType"] == "select/cons_tres"
    assert config["AccountingStorageType"] == "accounting_storage/slurmdbd"


@pytest.mark.slow
def test_restart_with_small_max_array_size(tmp_path: Path) -> None:
    """restart.sh applies a new MaxArraySize; sbatch then rejects larger arrays."""
    original = int(cluster.scontrol_config()["MaxArraySize"])
    small = 5 if original != 5 else 6
    script = _write_script(tmp_path / "noop.sh", "true\n")
    try:
        cluster.ensure_slurm(max_array_size=small)
        assert cluster.scontrol_config()["MaxArraySize"] == str(small)
        ok = _run("sbatch", "--test-only", f"--array=0-{small - 1}", str(script), check=False, cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        too_big = _run("sbatch", "--test-only", f"--array=0-{small}", str(script), check=False, cwd=tmp_path)
        assert too_big.returncode != 0
        assert "array" in too_big.stderr.lower(), too_big.stderr
    finally:
        cluster.ensure_slurm(max_array_size=original)
    assert cluster.scontrol_config()["MaxArraySize"] == str(original)
    assert cluster.slurm_is_up()
