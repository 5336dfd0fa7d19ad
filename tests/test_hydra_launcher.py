"""The Hydra launcher plugin (hydra/launcher=grail_local|grail_slurm): Hydra's own launcher test
suites on both backends (grail_slurm on the real local SLURM cluster), resume of an interrupted
sweep, wait=false, the payload digest check and option errors."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

from grail_cluster.core.errors import ConfigError, GrailError
from grail_cluster.launchers.errors import JobFailedError
from grail_cluster.launchers.hydra_launcher import SubmittedJob
from grail_cluster.launchers.payloads import ReturnRepr
from grail_cluster.launchers.sweep import render_sbatch, sweep_status

# Small requests, so arrays start at once on the shared one-node cluster.
SLURM_FIT = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=0.25", "hydra.launcher.time=5"]
slurm = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


@pytest.fixture(autouse=True)
def _fresh_hydra_version_base():
    """Hydra's launcher suites expect a fresh process's version base (unspecified: hydra.job.chdir is
    on, so each job's log sits in its working dir). Other tests of the session compose with
    ``version_base=None``, which sets the process-wide VersionBase singleton; reset it around each test."""
    from hydra.version import _UNSPECIFIED_, VersionBase

    base = VersionBase.instance()
    saved = base.version_base
    base.version_base = _UNSPECIFIED_
    yield
    base.version_base = saved


# ----------------------------------------------------------------------------- discovery


@pytest.mark.parametrize("name", ["GrailLocalLauncher", "GrailSlurmLauncher"])
def test_discovery(name: str) -> None:
    found = [c for c in Plugins.instance().discover(Launcher) if c.__name__ == name]
    want = f"hydra_plugins.grail_cluster_launcher.grail_launcher.{name}"
    assert [f"{c.__module__}.{c.__name__}" for c in found] == [want]


def test_configs_registered() -> None:
    group = ConfigStore.instance().repo["hydra"]["launcher"]
    assert {"grail_local.yaml", "grail_slurm.yaml"} <= set(group)


# ----------------------------------------------------------------------------- Hydra's own suites


@pytest.mark.parametrize("launcher_name, overrides", [("grail_local", [])])
class TestGrailLocalLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides", [("grail_local", ["hydra.sweeper.max_batch_size=2"])])
class TestGrailLocalBatched(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [(
    {}, ["-m", "hydra/hydra_logging=disabled", "hydra/job_logging=disabled", "hydra/launcher=grail_local"])])
class TestGrailLocalIntegration(IntegrationTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides", [("grail_slurm", SLURM_FIT)])
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
class TestGrailSlurmLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides",
                         [("grail_slurm", [*SLURM_FIT, "hydra.sweeper.max_batch_size=2"])])
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
class TestGrailSlurmBatched(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [(
    {}, ["-m", "hydra/hydra_logging=disabled", "hydra/job_logging=disabled", "hydra/launcher=grail_slurm",
         *SLURM_FIT])])
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_cluster")
class TestGrailSlurmIntegration(IntegrationTestSuite):
    pass


# ----------------------------------------------------------------------------- helpers


def multirun(task_function: Any, overrides: list[str], sweep_dir: Path) -> list:
    """``app.py -m <overrides>`` in this process (as Hydra's sweep runner does), with a config of
    keys ``a`` and ``b``; returns the flattened JobReturns (raises what the sweep raises)."""
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra

    ConfigStore.instance().store(name="grail_launcher_test", node={"a": 0, "b": "x"})
    hydra_ = Hydra.create_main_hydra_file_or_module(calling_file=None, calling_module=__name__,
                                                    config_path=None, job_name="sweep_app")
    try:
        batches = hydra_.multirun(config_name="grail_launcher_test", task_function=task_function,
                                  overrides=[*overrides, f"hydra.sweep.dir={sweep_dir}"],
                                  with_log_configuration=False)
    finally:
        GlobalHydra().clear()
    return [ret for batch in batches for ret in batch]


def make_task(root: Path, *, fail_first: int | None = None, slow: dict[int, float] | None = None,
              fast_after_first: bool = False):
    """A task that records each start in ``root/starts`` and returns ``{"a": a, "b": b}``.

    ``fail_first``: the job with that ``a`` raises on its first start only (a marker file says it
    started before). ``slow``: seconds to sleep per ``a``; with ``fast_after_first`` only on the
    first start. A closure, so it travels by value in the payload (as Hydra's suites' tasks do)."""
    slow = dict(slow or {})

    def task(cfg: Any) -> Any:
        marker = root / f"started-{cfg.a}"
        first = not marker.exists()
        marker.touch()
        with open(root / "starts", "a") as fh:
            fh.write(f"{cfg.a}\n")
        if first or not fast_after_first:
            time.sleep(slow.get(cfg.a, 0.0))
        if cfg.a == fail_first and first:
            raise ValueError(f"a={cfg.a} fails on its first try")
        return {"a": cfg.a, "b": cfg.b}

    return task


def starts(root: Path) -> list[int]:
    path = root / "starts"
    return sorted(int(x) for x in path.read_text().split()) if path.exists() else []


def wait_results(state: Path, nums: list[int], timeout: float = 60.0) -> dict[int, dict]:
    """Until jobs ``nums`` have a result (a cancelled job never writes one)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs = sweep_status(state)
        if all(n in jobs and jobs[n]["state"] != "submitted" for n in nums):
            return jobs
        time.sleep(0.3)
    raise AssertionError(f"jobs {nums} of {state} did not end in {timeout} s: {sweep_status(state)}")


# ----------------------------------------------------------------------------- resume


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_resume_reruns_only_the_failed_job_local(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    task = make_task(tmp_path, fail_first=2)
    args = ["hydra/launcher=grail_local", "a=1,2,3"]
    with pytest.raises(JobFailedError, match="a=2 fails on its first try") as info:
        multirun(task, args, sweep)
    assert info.value.num == 1 and "ValueError" in info.value.error_type
    assert starts(tmp_path) == [1, 2, 3]
    first = {n: j for n, j in sweep_status(sweep / ".grail").items()}
    assert [first[n]["state"] for n in range(3)] == ["done", "failed", "done"]

    rets = multirun(task, args, sweep)
    assert starts(tmp_path) == [1, 2, 2, 3]  # only a=2 ran again
    assert [r.status for r in rets] == [JobStatus.COMPLETED] * 3
    assert [r.return_value for r in rets] == [{"a": a, "b": "x"} for a in (1, 2, 3)]
    assert [r.overrides for r in rets] == [["a=1"], ["a=2"], ["a=3"]]
    assert rets[0].cfg == {"a": 1, "b": "x"} and rets[0].hydra_cfg.hydra.job.num == 0
    again = sweep_status(sweep / ".grail")
    for n in (0, 2):  # returned from the ledger unchanged: same result file, same scheduler id, attempt 1
        assert again[n]["result"] == first[n]["result"]
        assert again[n]["scheduler_id"] == first[n]["scheduler_id"]
        assert again[n]["attempt"] == 1
    assert again[1]["attempt"] == 2 and again[1]["state"] == "done"

    multirun(task, args, sweep)  # everything done: nothing runs
    assert starts(tmp_path) == [1, 2, 2, 3]
    multirun(task, [*args, "hydra.launcher.resume=false"], sweep)  # resume off: everything runs
    assert starts(tmp_path) == [1, 1, 2, 2, 2, 3, 3]


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_changed_app_config_is_not_taken_as_done(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    task = make_task(tmp_path)
    multirun(task, ["hydra/launcher=grail_local", "a=1,2"], sweep)
    rets = multirun(task, ["hydra/launcher=grail_local", "a=1,2", "b=y"], sweep)
    assert starts(tmp_path) == [1, 1, 2, 2]
    assert [r.return_value["b"] for r in rets] == ["y", "y"]


@pytest.mark.usefixtures("hydra_restore_singletons", "slurm_cluster")
@pytest.mark.slurm
def test_resume_slurm_resubmits_a_cancelled_job_alone(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # a=2 runs long on its first start (then gets scancel'ed), briefly on its second.
    task = make_task(tmp_path, slow={1: 0.5, 2: 60.0, 3: 0.5}, fast_after_first=True)
    args = ["hydra/launcher=grail_slurm", *SLURM_FIT, "a=1,2,3"]
    rets = multirun(task, [*args, "hydra.launcher.wait=false"], sweep)
    victim = rets[1].return_value
    assert isinstance(victim, SubmittedJob) and victim.overrides == ("a=2",)
    deadline = time.time() + 60
    while not (tmp_path / "started-2").exists():  # mid-run: the task has started
        assert time.time() < deadline, "a=2 never started"
        time.sleep(0.2)
    subprocess.run(["scancel", victim.scheduler_id], check=True)
    # With -j, squeue lists ended jobs too: ask for the live states.
    live = ["squeue", "-h", "-t", "PD,R,CG,CF,S", "-j", victim.scheduler_id]
    while subprocess.run(live, capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, "the cancelled task stays in the queue"
        time.sleep(0.2)
    first = wait_results(sweep / ".grail", [0, 2])
    assert first[0]["state"] == first[2]["state"] == "done"

    rets = multirun(task, args, sweep)
    assert [r.return_value for r in rets] == [{"a": a, "b": "x"} for a in (1, 2, 3)]
    assert starts(tmp_path) == [1, 2, 2, 3]
    again = sweep_status(sweep / ".grail")
    assert again[1]["attempt"] == 2
    assert again[1]["scheduler_id"].split("_")[0] != victim.scheduler_id.split("_")[0]  # a new array, of one
    assert [again[n]["scheduler_id"] for n in (0, 2)] == [first[n]["scheduler_id"] for n in (0, 2)]


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_switching_launcher_while_jobs_run_is_refused(tmp_path: Path) -> None:
    """One backend cannot read the other's job ids: a grail_slurm re-run of a sweep whose grail_local
    jobs still run is refused, naming them and the fix, and leaves the local jobs running."""
    sweep = tmp_path / "sweep"
    task = make_task(tmp_path, slow={1: 8.0})
    multirun(task, ["hydra/launcher=grail_local", "a=1", "hydra.launcher.wait=false"], sweep)
    with pytest.raises(GrailError, match="still queued or running under grail_local") as info:
        multirun(task, ["hydra/launcher=grail_slurm", *SLURM_FIT, "a=1"], sweep)
    assert "hydra/launcher=grail_local" in (info.value.fix or "")
    assert wait_results(sweep / ".grail", [0], timeout=90)[0]["state"] == "done"
    assert starts(tmp_path) == [1]


# ----------------------------------------------------------------------------- wait=false


def _check_no_wait(tmp_path: Path, launcher: list[str], job_s: float) -> None:
    sweep = tmp_path / "sweep"
    task = make_task(tmp_path, slow={1: job_s, 2: job_s})
    t0 = time.monotonic()
    rets = multirun(task, [*launcher, "a=1,2", "hydra.launcher.wait=false"], sweep)
    returned_after = time.monotonic() - t0
    assert returned_after < job_s, f"wait=false took {returned_after:.1f} s, jobs take {job_s} s"
    assert [r.status for r in rets] == [JobStatus.UNKNOWN] * 2
    assert all(isinstance(r.return_value, SubmittedJob) for r in rets)
    jobs = wait_results(sweep / ".grail", [0, 1])
    assert [jobs[n]["return"] for n in (0, 1)] == [{"json": {"a": a, "b": "x"}} for a in (1, 2)]
    assert all(json.loads(Path(r.return_value.result_path).read_text())["status"] == "completed"
               for r in rets)
    rets = multirun(task, [*launcher, "a=1,2"], sweep)  # collecting: from the ledger, nothing reruns
    assert [r.return_value for r in rets] == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert starts(tmp_path) == [1, 2]


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_no_wait_local(tmp_path: Path) -> None:
    _check_no_wait(tmp_path, ["hydra/launcher=grail_local", "hydra.launcher.max_parallel=2"], 4.0)


@pytest.mark.usefixtures("hydra_restore_singletons", "slurm_cluster")
@pytest.mark.slurm
def test_no_wait_slurm(tmp_path: Path) -> None:
    _check_no_wait(tmp_path, ["hydra/launcher=grail_slurm", *SLURM_FIT], 4.0)


# ----------------------------------------------------------------------------- SLURM: one array, one squeue


def _wrap_slurm_clients(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir()
    for name in ("sbatch", "squeue", "sacct", "scontrol"):
        real = shutil.which(name)
        (bin_dir / name).write_text(f'#!/bin/bash\necho "{name} $*" >> {log}\nexec {real} "$@"\n')
        (bin_dir / name).chmod(0o755)


@pytest.mark.usefixtures("hydra_restore_singletons", "slurm_cluster")
@pytest.mark.slurm
def test_slurm_one_array_and_one_squeue_per_refresh(tmp_path: Path, monkeypatch) -> None:
    from grail_cluster.backends.slurm import SlurmBackend

    if SlurmBackend().max_array_size() <= 12:  # test_slurm_infra shrinks it for a while; the launcher chunks then
        pytest.skip("the shared cluster's MaxArraySize is below 13 right now")
    calls = tmp_path / "calls.log"
    _wrap_slurm_clients(tmp_path / "bin", calls)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    task = make_task(tmp_path, slow={a: 2.0 for a in range(12)})
    rets = multirun(task, ["hydra/launcher=grail_slurm", *SLURM_FIT, "a=range(0,12)",
                           "hydra.launcher.array_parallelism=6"], tmp_path / "sweep")
    assert [r.return_value["a"] for r in rets] == list(range(12))
    lines = [line.split(" ", 1) for line in calls.read_text().splitlines()]
    sbatch = [args for name, args in lines if name == "sbatch"]
    squeue = [args for name, args in lines if name == "squeue"]
    assert len(sbatch) == 1 and "--array=0-11%6" in sbatch[0]
    # Two rounds of 2 s jobs: a per-job poll would make >= 12 squeue calls per refresh.
    assert 1 <= len(squeue) < 12, squeue
    # Accounting is asked only about jobs that left the queue without a result.
    assert not [args for name, args in lines if name == "sacct"]


# ----------------------------------------------------------------------------- payload trust


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _run_job(payload: Path, digest: str, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grail_cluster.launchers.hydra_job", "run",
                           "--payload", str(payload), "--sha256", digest, "--result-dir", str(results),
                           "--index", "0", "--job-id", "t_0"], capture_output=True, text=True, timeout=60)


def test_job_refuses_a_tampered_payload(tmp_path: Path) -> None:
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pickle.dumps({"jobs": []}))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    pwned = tmp_path / "pwned"
    payload.write_bytes(pickle.dumps(_Evil(pwned)))  # replaced after the launcher "wrote" the script
    proc = _run_job(payload, digest, tmp_path)
    assert proc.returncode == 3
    assert "changed after the launcher wrote it" in proc.stderr
    assert not pwned.exists()  # never unpickled
    result = json.loads((tmp_path / "0.json").read_text())
    assert result["status"] == "refused" and result["error"]["type"] == "PayloadRefused"

    payload.unlink()
    proc = _run_job(payload, digest, tmp_path)
    assert proc.returncode == 3 and "is missing" in proc.stderr
    proc = _run_job(tmp_path / "x.pkl", "not-a-digest", tmp_path)
    assert proc.returncode == 3 and "not a SHA-256" in proc.stderr


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_tampered_payload_fails_the_job_then_a_rerun_heals(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    task = make_task(tmp_path, slow={1: 3.0})
    args = ["hydra/launcher=grail_local", "hydra.launcher.max_parallel=1", "a=1,2"]
    multirun(task, [*args, "hydra.launcher.wait=false"], sweep)  # a=2 waits for a=1's slot
    deadline = time.time() + 60
    while not (tmp_path / "started-1").exists():  # a=1 has read the payload (else both are refused)
        assert time.time() < deadline, "a=1 never started"
        time.sleep(0.05)
    [payload] = (sweep / ".grail" / "payloads").glob("*.pkl")
    payload.write_bytes(payload.read_bytes() + b"\0")
    with pytest.raises(JobFailedError, match="PayloadRefused") as info:
        multirun(task, args, sweep)  # waits on both, a=2 is refused by its job
    assert info.value.num == 1
    rets = multirun(task, args, sweep)  # a fresh payload for a=2 only
    assert [r.return_value for r in rets] == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert starts(tmp_path) == [1, 2]


# ----------------------------------------------------------------------------- return values


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_non_json_return_values_come_back_as_repr(tmp_path: Path) -> None:
    def task(cfg: Any) -> Any:
        return (cfg.a, {1, 2}) if cfg.a == 1 else float("nan")

    rets = multirun(task, ["hydra/launcher=grail_local", "a=1,2"], tmp_path / "sweep")
    assert rets[0].return_value == ReturnRepr("tuple", "(1, {1, 2})")
    assert rets[1].return_value == ReturnRepr("float", "nan")


# ----------------------------------------------------------------------------- option errors


@pytest.mark.usefixtures("hydra_restore_singletons")
@pytest.mark.parametrize("launcher, override, message", [
    ("grail_local", "hydra.launcher.max_parallel=0", "hydra.launcher.max_parallel=0: must be at least 1"),
    ("grail_local", "hydra.launcher.python=/no/such/python", "python=/no/such/python: no such"),
    ("grail_slurm", "hydra.launcher.nodes=2", "hydra.launcher.nodes=2: grail_slurm runs each Hydra job"),
    ("grail_slurm", "hydra.launcher.time=0", "hydra.launcher.time=0: must be at least 1"),
    ("grail_slurm", "hydra.launcher.mem_gb=-1", "hydra.launcher.mem_gb=-1.0: must be positive"),
    ("grail_slurm", "+hydra.launcher.additional_parameters.array=0-3",
     "additional_parameters.array: the launcher sets --array itself"),
    ("grail_slurm", "+hydra.launcher.additional_parameters.job_name=x",
     "additional_parameters.job_name: the launcher sets --job-name itself"),
])
def test_bad_options_are_refused_before_submitting(tmp_path: Path, launcher: str, override: str,
                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        multirun(make_task(tmp_path), [f"hydra/launcher={launcher}", override, "a=1,2"], tmp_path / "sweep")
    assert info.value.fix
    assert not (tmp_path / "sweep" / ".grail" / "ledger.sqlite").exists()


@pytest.mark.usefixtures("hydra_restore_singletons", "slurm_cluster")
@pytest.mark.slurm
def test_sbatch_refusal_is_reported(tmp_path: Path) -> None:
    with pytest.raises(GrailError, match="sbatch refused the array .*[Ii]nvalid partition") as info:
        bad = ["hydra/launcher=grail_slurm", "hydra.launcher.partition=no_such_partition", "a=1,2"]
        multirun(make_task(tmp_path), bad, tmp_path / "sweep")
    assert "hydra.launcher.partition" in info.value.fix


def test_unknown_option_is_named_by_hydra(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text("import hydra\n\n@hydra.main(version_base=None)\ndef main(cfg):\n    pass\n\nmain()\n")
    proc = subprocess.run([sys.executable, str(app), "-m", "hydra/launcher=grail_slurm",
                           "hydra.launcher.tme=5", f"hydra.sweep.dir={tmp_path / 'sweep'}", "+a=1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Key 'tme' not in 'GrailSlurmConf'" in proc.stderr


# ----------------------------------------------------------------------------- pieces


def test_sbatch_script_carries_resources_and_setup() -> None:
    options = {"time": 90, "partition": "gpu", "cpus_per_task": 4, "mem_gb": 0.5, "gpus_per_node": 2,
               "setup": ["module load cuda"],
               "additional_parameters": {"account": "lab", "exclusive": True, "qos": None}}
    script = render_sbatch(options, "python -m x")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for want in ("#SBATCH --time=01:30:00", "#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=512M", "#SBATCH --gres=gpu:2", "#SBATCH --account=lab", "#SBATCH --exclusive",
                 "module load cuda"):
        assert want in lines
    assert not any("qos" in line for line in lines)
    assert lines[-1] == "exec python -m x"


# ----------------------------------------------------------------------------- resume sees code

# A user's app, run the way users run it: the script by absolute path, the venv's interpreter by
# absolute path, the venv not on PATH, output to pipes. The task imports a helper module beside it
# and reads a tracked data file; each start is appended to ``starts`` outside the sweep dir.
APP = '''import hydra
from helper import scale


@hydra.main(version_base=None, config_path=None, config_name=None)
def main(cfg):
    with open({starts!r}, "a") as fh:
        fh.write(f"{{cfg.a}}\\n")
    return cfg.a * {factor} * scale()


if __name__ == "__main__":
    main()
'''


def _write_app(root: Path, factor: int, scale: int) -> None:
    (root / "app.py").write_text(APP.format(starts=str(root / "starts"), factor=factor))
    (root / "helper.py").write_text(f"def scale():\n    return {scale}\n")


def _sweep_app(root: Path, *extra: str) -> dict[int, Any]:
    """Run the app's sweep a=1,2,3 on grail_local; each job's recorded return value."""
    from tests.adversarial.harness import clean_env

    proc = subprocess.run([sys.executable, str(root / "app.py"), "-m", "hydra/launcher=grail_local",
                           f"hydra.sweep.dir={root / 'sweep'}", "+a=1,2,3", *extra],
                          cwd=root, env=clean_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return {n: j["return"]["json"] for n, j in sweep_status(root / "sweep" / ".grail").items()}


def _starts(root: Path) -> int:
    path = root / "starts"
    return len(path.read_text().split()) if path.exists() else 0


def test_changed_task_code_reruns_every_point_unchanged_code_is_reused(tmp_path: Path) -> None:
    _write_app(tmp_path, factor=10, scale=1)
    assert _sweep_app(tmp_path) == {0: 10, 1: 20, 2: 30}
    assert _starts(tmp_path) == 3
    assert _sweep_app(tmp_path) == {0: 10, 1: 20, 2: 30}
    assert _starts(tmp_path) == 3  # same code, config and overrides: every point from the ledger

    _write_app(tmp_path, factor=100, scale=1)  # "fix a bug" in the task function
    assert _sweep_app(tmp_path) == {0: 100, 1: 200, 2: 300}
    assert _starts(tmp_path) == 6
    _write_app(tmp_path, factor=100, scale=7)  # the module the task imports, not the task's file
    assert _sweep_app(tmp_path) == {0: 700, 1: 1400, 2: 2100}
    assert _starts(tmp_path) == 9
    assert _sweep_app(tmp_path) == {0: 700, 1: 1400, 2: 2100}
    assert _starts(tmp_path) == 9
    assert _sweep_app(tmp_path, "hydra.launcher.resume=false") == {0: 700, 1: 1400, 2: 2100}
    assert _starts(tmp_path) == 12  # the documented way to force a re-run


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


def test_committed_and_uncommitted_code_of_the_checkout_invalidates(tmp_path: Path) -> None:
    """What the source digests cannot see (a tracked file the task does not import) the commit and
    the digest of the uncommitted changes do; code_key=source ignores them, as documented."""
    _write_app(tmp_path, factor=10, scale=1)
    (tmp_path / "notes.yaml").write_text("lr: 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "app.py", "helper.py", "notes.yaml")
    _git(tmp_path, "commit", "-q", "-m", "one")
    _sweep_app(tmp_path)
    _sweep_app(tmp_path)
    assert _starts(tmp_path) == 3  # the sweep's own outputs (untracked) change nothing

    (tmp_path / "notes.yaml").write_text("lr: 2\n")  # dirty
    _sweep_app(tmp_path)
    assert _starts(tmp_path) == 6
    (tmp_path / "notes.yaml").write_text("lr: 3\n")  # dirty again, differently: another code
    _sweep_app(tmp_path)
    assert _starts(tmp_path) == 9
    _git(tmp_path, "commit", "-q", "-am", "two")  # same files, now a commit: another code
    _sweep_app(tmp_path)
    assert _starts(tmp_path) == 12
    _sweep_app(tmp_path)
    assert _starts(tmp_path) == 12

    (tmp_path / "notes.yaml").write_text("lr: 4\n")
    _sweep_app(tmp_path, "hydra.launcher.code_key=source")  # sources unchanged: reused
    assert _starts(tmp_path) == 12
    _sweep_app(tmp_path)  # tree again: the uncommitted change counts
    assert _starts(tmp_path) == 15
    status = json.loads(subprocess.run(
        [sys.executable, "-m", "grail_cluster.launchers.hydra_launcher", str(tmp_path / "sweep"), "--json"],
        capture_output=True, text=True, check=True).stdout)
    assert status["0"]["state"] == "done"


def test_bad_code_key_is_refused(tmp_path: Path) -> None:
    _write_app(tmp_path, factor=1, scale=1)
    proc = subprocess.run([sys.executable, str(tmp_path / "app.py"), "-m", "hydra/launcher=grail_local",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}", "+a=1", "hydra.launcher.code_key=none"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "hydra.launcher.code_key=none: must be one of tree, source, off" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _starts(tmp_path) == 0


def test_code_change_rules_per_code_key() -> None:
    from grail_cluster.launchers.keys import code_change

    now = {"task": "app:main", "sources": {"sha256": "s1"}, "git": {"commit": "c1", "diff_sha256": None}}
    assert code_change(now, dict(now), "tree") is None
    assert "source" in code_change({**now, "sources": {"sha256": "s0"}}, now, "tree")
    assert "source" in code_change({**now, "sources": {"sha256": "s0"}}, now, "source")
    assert "commit" in code_change({**now, "git": {"commit": "c0", "diff_sha256": None}}, now, "tree")
    assert code_change({**now, "git": {"commit": "c0", "diff_sha256": None}}, now, "source") is None
    assert "uncommitted" in code_change({**now, "git": {"commit": "c1", "diff_sha256": "d"}}, now, "tree")
    assert "task function" in code_change({**now, "task": "app:other"}, now, "tree")
    # A record from code_key=off or an older launcher has no code: unknown, so not reused unless off.
    assert code_change(None, now, "tree") and code_change(None, now, "source")
    assert code_change(None, now, "off") is None and code_change(now, None, "off") is None
    for garbage in ("abc", ["x"], {"task": "app:main", "sources": "s1", "git": 3}):  # a damaged ledger line
        assert code_change(garbage, now, "tree")


def test_help_says_what_invalidates_a_result_and_how_to_force_a_rerun() -> None:
    proc = subprocess.run([sys.executable, "-m", "grail_cluster.launchers.hydra_launcher", "--help"],
                          capture_output=True, text=True, check=True)
    text = " ".join(proc.stdout.split())
    for needle in ("composed config", "overrides", "source file", "git commit", "uncommitted changes",
                   "code_key=source", "code_key=off", "hydra.launcher.resume=false"):
        assert needle in text, needle
