"""Jobs run the interpreter that submitted them, and `doctor --cluster` asks a compute node (issue 13 §4).

The probe runs for real: on the local SLURM cluster (its node advertises gpu:8 through GRES, and
SLURM sets CUDA_VISIBLE_DEVICES for what it hands out) and on the local executor. The whole-run
test calls the installed ``grail-cluster`` by absolute path with the venv off PATH and no
``job.python``, as a cron job would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grail_cluster.core import config
from grail_cluster.core.signatures import JOB_PYTHON, signature
from tests.adversarial.harness import run_cli
from tests.conftest import make_sonic_root
from tests.libgen import make_library

SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe")
    make_library(root / "lib", 6, fast=True)
    make_sonic_root(root / "SONIC")
    return root


def _findings(report: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in report["findings"]:
        out.setdefault(f["check"], []).append(f)
    return out


def test_job_python_defaults_to_the_submitting_interpreter(world):
    c = config.load([f"data.motion_lib={world / 'lib'}", f"sonic.root={world / 'SONIC'}",
                     f"run.root={world / 'runs'}", "cluster=slurm"])
    assert c["job"]["python"] == str(Path(sys.executable).absolute())
    # Not resolved through the venv's symlink: the target interpreter would not see the venv.
    assert Path(c["job"]["python"]).parent == Path(sys.executable).absolute().parent
    pinned = config.load([f"data.motion_lib={world / 'lib'}", f"sonic.root={world / 'SONIC'}",
                          f"run.root={world / 'runs'}", f"job.python={SYSTEM_PYTHON}"])
    assert pinned["job"]["python"] == SYSTEM_PYTHON
    k8s = config.load([f"data.motion_lib={world / 'lib'}", f"sonic.root={world / 'SONIC'}",
                       f"run.root={world / 'runs'}", "cluster=kubernetes", "cluster.image=x:1"])
    assert k8s["job"]["python"] == "python"  # the image's interpreter: this machine's path is not in the pod
    ref = config.load([f"data.motion_lib={world / 'lib'}", "trainer=reference", f"run.root={world / 'runs'}"])
    assert ref["sonic"]["python"] == ref["job"]["python"] == c["job"]["python"]


def test_a_job_whose_interpreter_lacks_grail_cluster_fails_with_the_signature(world, tmp_path):
    """The rendered guard runs for real under bash with an interpreter that has no grail-cluster."""
    from grail_cluster.core.library import scan_library
    from grail_cluster.runs.job_files import render_files, write_files
    from grail_cluster.runs.planner import build_plan

    assert SYSTEM_PYTHON and subprocess.run([SYSTEM_PYTHON, "-c", "import grail_cluster"], cwd=tmp_path,
                                            capture_output=True).returncode != 0
    c = config.load([f"data.motion_lib={world / 'lib'}", f"sonic.root={world / 'SONIC'}", f"run.root={tmp_path}",
                     "cluster=local", "pipeline=advanced_manip_table", "select.k=2", "eval.num_shards=2",
                     f"job.python={SYSTEM_PYTHON}", "cluster.gpus=[0]"])
    plan = build_plan(c, scan_library(c["data"]["motion_lib"]))
    (script,) = [p for p in write_files(render_files(plan), tmp_path / "specs") if p.name == "select.sh"]
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "GRAIL_INDEX": "0"})
    assert proc.returncode == 3
    err = Path(plan.run_dir) / "logs" / "select" / "0" / "0.err"
    sig = signature([err])
    assert sig.startswith(JOB_PYTHON) and "job.python=/path/to/python-with-grail-cluster" in sig
    assert "No module named 'grail_cluster'" in sig and SYSTEM_PYTHON in sig


@pytest.mark.slurm
def test_probe_on_real_slurm_reports_a_healthy_node(world, slurm_cluster):
    res = run_cli(["doctor", "--cluster", "cluster=slurm", "trainer=reference", f"data.motion_lib={world / 'lib'}",
                   f"run.root={world / 'runs'}", "probe.gpus=2", "--json"])
    assert res.code == 0, res.text
    report = json.loads(res.stdout)
    found = _findings(report)
    assert report["job_id"] and report["state"].startswith("COMPLETED")
    assert found["job.python"][0]["severity"] == "ok"
    # The submitting interpreter, although the venv was not on PATH when grail-cluster ran.
    assert str(Path(sys.executable).absolute()) in found["job.python"][0]["finding"]
    assert found["gpus"][0]["severity"] == "ok" and "sees 2" in found["gpus"][0]["finding"]
    assert found["data.motion_lib"][0]["severity"] == "ok" and found["run.root"][0]["severity"] == "ok"
    assert report["errors"] == 0


@pytest.mark.slurm
def test_probe_on_real_slurm_names_an_interpreter_without_grail_cluster(world, tmp_path, slurm_cluster):
    res = run_cli(["doctor", "--cluster", "cluster=slurm", f"data.motion_lib={world / 'lib'}",
                   f"sonic.root={world / 'SONIC'}", f"run.root={world / 'runs'}", f"job.python={SYSTEM_PYTHON}",
                   "sonic.wandb_mode=offline", "probe.gpus=1", "--json"],
                  env={"WANDB_API_KEY": "secret-value-never-printed"})
    assert res.code == 1, res.text
    report = json.loads(res.stdout)
    found = _findings(report)
    bad = found["job.python"][0]
    assert bad["severity"] == "error" and "No module named 'grail_cluster'" in bad["finding"]
    assert "job.python=" in bad["fix"]
    # trainer=sonic: the stand-in SONIC root has its entry scripts but no Isaac Lab anywhere here.
    assert all(f["severity"] == "ok" for f in found["sonic scripts"])
    assert found["isaac lab"][0]["severity"] == "error"
    assert found["wandb"][0]["severity"] == "ok" and "secret-value" not in res.text


def test_probe_on_the_local_executor(world):
    res = run_cli(["doctor", str(world / "lib"), "--cluster", "cluster=local", "trainer=reference",
                   f"run.root={world / 'runs'}", "cluster.gpus=[0]", "probe.gpus=2"])
    # Two GPUs asked, the local executor hands out one: the table says so and the exit is 1.
    assert res.code == 1, res.text
    assert "requested 2 GPU(s), the job sees 1" in res.stdout and "Traceback" not in res.text


def test_run_by_absolute_path_without_the_venv_on_path(tmp_path):
    """A small real run (rehearsal on the local executor) with no job.python and the venv off PATH."""
    make_library(tmp_path / "lib", 8, fast=True)
    make_sonic_root(tmp_path / "SONIC")
    res = run_cli(["run", "pipeline=advanced_manip_table", "cluster=local", f"data.motion_lib={tmp_path / 'lib'}",
                   f"sonic.root={tmp_path / 'SONIC'}", f"run.root={tmp_path / 'runs'}", "run.id=nopath",
                   "eval.num_shards=2", "select.k=2", "rehearsal.enabled=true", "train.gpus_per_node=1",
                   "cluster.gpus=[0]", "cluster.cpus=2", "--json"], cwd=tmp_path)
    assert res.code == 0, res.text
    status = run_cli(["status", str(tmp_path / "runs" / "nopath"), "--json"])
    data = json.loads(status.stdout)
    assert data["finished"] and all(s["counts"].get("done") == s["size"] for s in data["stages"]), data
