"""Plan time refuses what plan time can know (issue 13 §3), as a user meets it.

Each case runs ``grail-cluster plan`` by absolute path with the venv off PATH and output to pipes, on
a hostile config or override, and asserts: the exit code (2 = configuration), no traceback, the
offending key named with a fix, the library unchanged, and nothing written under ``run.root``.
Partition limits are checked against the real local SLURM cluster, and against a ``sinfo`` written
by hand from sinfo's documented ``-o`` fields for limits the local cluster does not have (a time
limit, a job size in nodes, H100 GRES with a socket suffix).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.adversarial.harness import assert_refused, assert_unchanged, clean_env, run_cli, snapshot
from tests.conftest import make_sonic_root
from tests.libgen import make_ha_pair

CACHE = (".grail_index.json",)  # the library's own index cache may be (re)written; nothing else may


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plan_checks")
    make_ha_pair(root / "data", "pickup_table", 12, seed=5)
    make_sonic_root(root / "SONIC")
    return root


def _base(world: Path, runs: Path) -> list[str]:
    return [f"data.motion_lib={world / 'data' / 'pickup_table_ha'}", f"sonic.root={world / 'SONIC'}",
            f"run.root={runs}", "eval.num_shards=2"]


def refused(world: Path, tmp_path: Path, extra: list[str], names: list[str], *, code: int = 2,
            env: dict[str, str] | None = None, base: bool = True):
    runs = tmp_path / "runs"
    before = snapshot(world / "data", ignore=CACHE)
    res = run_cli(["plan", *(_base(world, runs) if base else []), *extra], env=env)
    assert_refused(res, code=code, names=names)
    assert_unchanged(before, world / "data", ignore=CACHE)
    assert not runs.exists() or not any(runs.iterdir()), f"written under run.root: {list(runs.iterdir())}"
    return res


# ----------------------------------------------------------------------------- checkpoints vs select.k


def test_k_above_the_release_schedule(world, tmp_path):
    # pnp_table's release config: 20000 iterations, a checkpoint every 500 = 40 (contracts §2.3).
    res = refused(world, tmp_path, ["select.k=41"], ["select.k=41", "select.k=40", "40 checkpoint"])
    assert "save_frequency" in res.stderr


def test_k_above_a_short_schedule(world, tmp_path):
    refused(world, tmp_path, ["train.iterations=1000", "train.save_frequency=500", "select.k=3"],
            ["select.k=3", "select.k=2", "1000 iterations"])


def test_k_above_a_smoke_run(world, tmp_path):
    # Smoke: 3 iterations, no save period rendered: one checkpoint at most.
    refused(world, tmp_path, ["train.smoke=true", "select.k=2"], ["select.k=2", "select.k=1"])


def test_k_above_a_period_given_by_sonics_own_key(world, tmp_path):
    # Written by hand from contracts §2.2: the period SONIC's model-save callback reads.
    refused(world, tmp_path, ['++sonic.extra_overrides=["++callbacks.model_save.save_frequency=10000"]', "select.k=3"],
            ["select.k=3", "select.k=2", "10000"])


def test_k_above_a_sweep_total(world, tmp_path):
    # Two points x (100 / 50 = 2) checkpoints: select ranks across points, 4 at most.
    refused(world, tmp_path, ["-m", "train.seed=1,2", "train.iterations=100", "train.save_frequency=50", "select.k=5"],
            ["select.k=5", "select.k=4", "sweep points"])


# ----------------------------------------------------------------------------- shard sizes vs num_envs


def test_eval_num_envs_below_the_shard_size(world, tmp_path):
    # 12 motions in 2 SONIC blocks of 6; 4 envs cannot hold a block in one batch.
    refused(world, tmp_path, ["eval.num_envs=4"], ["eval.num_envs=4", "eval.num_envs=6", "eval.num_shards=3"])


def test_eval_num_envs_below_a_balanced_shard(world, tmp_path):
    refused(world, tmp_path, ["eval.num_envs=5", "eval.sharding=balanced"],
            ["eval.num_envs=5", "eval.sharding=sonic_block"])


def test_eval_num_envs_zero(world, tmp_path):
    refused(world, tmp_path, ["eval.num_envs=0"], ["eval.num_envs", "null"])


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("override,key", [
    ("eval.num_envs=abc", "eval.num_envs"),
    ("train.nodes=two", "train.nodes"),
    ("select.k=true", "select.k"),
    ("select.k=2.5", "select.k"),
    ("select.min_sr=1.5", "select.min_sr"),
    ("export.min_progress=-0.1", "export.min_progress"),
    ("resources.eval.time=0.5", "resources.eval.time"),  # used to render --time=00:00:00: no limit at all
    ("resources.eval.cpus=-2", "resources.eval.cpus"),
    ("resources.eval.gpus=1.5", "resources.eval.gpus"),
    ("train.iterations=0", "train.iterations"),
    ("train.save_frequency=-500", "train.save_frequency"),
    ("train.device=tpu", "train.device"),
    ("eval.sharding=random", "eval.sharding"),
])
def test_bad_values(world, tmp_path, override, key):
    refused(world, tmp_path, [override], [key])


@pytest.mark.parametrize("override,name", [
    ("eval.num_shard=3", "eval.num_shard"),  # unknown key
    ("cluster=slurmm", "slurmm"),  # unknown group option
    ("train.seed=[1,2", "train.seed"),  # unbalanced list
    ("train.seed=1,2", "-m"),  # a sweep without -m
])
def test_bad_override_syntax(world, tmp_path, override, name):
    refused(world, tmp_path, [override], [name])


# ----------------------------------------------------------------------------- paths


def test_missing_library(world, tmp_path):
    refused(world, tmp_path, [f"data.motion_lib={tmp_path / 'nope'}", f"sonic.root={world / 'SONIC'}",
                              f"run.root={tmp_path / 'runs'}"], ["data.motion_lib", str(tmp_path / "nope")], base=False)


def test_job_python_that_does_not_exist(world, tmp_path):
    refused(world, tmp_path, [f"job.python={tmp_path / 'venv' / 'bin' / 'python'}"], ["job.python", "does not exist"])


def test_job_python_that_is_not_executable(world, tmp_path):
    fake = tmp_path / "python"
    fake.write_text("not an interpreter\n")
    refused(world, tmp_path, [f"job.python={fake}"], ["job.python", "not an executable"])


def test_sonic_python_that_does_not_exist(world, tmp_path):
    refused(world, tmp_path, [f"sonic.python={tmp_path / 'sonic-env' / 'bin' / 'python'}"], ["sonic.python"])


def test_run_root_that_is_a_file(world, tmp_path):
    runs = tmp_path / "runs"
    runs.write_text("a file where the run dirs should go\n")
    res = run_cli(["plan", *_base(world, tmp_path / "x"), f"run.root={runs}"])
    assert_refused(res, code=2, names=["run.root"])
    assert runs.read_text() == "a file where the run dirs should go\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_run_root_not_writable(world, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        refused(world, tmp_path, [f"run.root={ro / 'runs'}"], ["run.root", "not writable"])
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------- partition limits


@pytest.fixture
def fake_sinfo(tmp_path) -> dict[str, str]:
    """A ``sinfo`` answering ``-N -o '%P|%l|%s|%c|%m|%G|%a'`` like a GPU cluster's login node: 2 h limit,
    jobs of 1-4 nodes, 64 CPUs / 512000 MB / 8 H100 per node (GRES with a socket suffix)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    line = "gpu*|2:00:00|1-4|64|512000|gpu:h100:8(S:0-1)|up"
    script = bindir / "sinfo"
    script.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for _ in range(4)))
    script.chmod(0o755)
    return {"PATH": f"{bindir}{os.pathsep}{clean_env()['PATH']}"}


def test_time_over_the_partition_limit(world, tmp_path, fake_sinfo):
    # The default eval asks 240 min; the partition allows 120: PENDING forever (PartitionTimeLimit).
    refused(world, tmp_path, ["cluster=slurm", "resources.train.time=120"],
            ["resources.eval.time=240", "resources.eval.time=120", "partition gpu"], env=fake_sinfo)


def test_nodes_over_the_partition_job_size(world, tmp_path, fake_sinfo):
    refused(world, tmp_path, ["cluster=slurm", "train.nodes=8"] + [f"resources.{s}.time=60" for s in
                                                                     ("train", "eval", "render", "export", "merge")],
            ["train.nodes=8", "train.nodes=4"], env=fake_sinfo)


def test_the_fake_cluster_accepts_what_fits(world, tmp_path, fake_sinfo):
    """The check refuses only what does not fit: the same hand-written cluster takes a request inside it."""
    over = [f"resources.{s}.time=60" for s in ("train", "eval", "render", "export", "merge")]
    res = run_cli(["plan", *_base(world, tmp_path / "runs"), "cluster=slurm", *over], env=fake_sinfo)
    assert res.code == 0, res.text


@pytest.mark.slurm
def test_unknown_partition_on_real_slurm(world, tmp_path, slurm_cluster):
    refused(world, tmp_path, ["cluster=slurm", "cluster.partition=h100-nosuch"],
            ["cluster.partition=h100-nosuch", "debug", "gpu"])


@pytest.mark.slurm
def test_memory_and_gpus_over_the_real_node(world, tmp_path, slurm_cluster):
    # The local node: 16 CPUs, 16000 MB, gpu:8 (tests/infra/slurm/up.sh defaults); --mem=64G and 16 GPUs fit no node.
    res = refused(world, tmp_path, ["cluster=slurm", "train.gpus_per_node=16"],
                  ["resources.eval.mem=64", "train.gpus_per_node=16", "train.gpus_per_node=8", "resources.train.cpus=64"])
    assert "16000 MB" in res.stderr
