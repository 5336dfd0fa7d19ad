"""Shared fixtures: generated GRAIL-format libraries, a SONIC root stand-in, plan helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.libgen import make_ha_pair, make_library, make_terrain_library

REPO = Path(__file__).resolve().parent.parent

# Test-only tools that must not sit in site-packages (kmock's pytest plugin would load in every other
# project of the environment): `make setup` installs them here. Appended, so the venv's own copies of
# shared dependencies win.
_TEST_TOOLS = Path(os.environ.get("GRAIL_TEST_TOOLS") or REPO / ".venv" / "test-tools")
if _TEST_TOOLS.is_dir() and str(_TEST_TOOLS) not in sys.path:
    sys.path.append(str(_TEST_TOOLS))

# `make test` sets GRAIL_REQUIRE_DEPS=1: there every dependency the dev extra installs must import, so a
# broken or missing torch/accelerate/kubernetes fails the tests that need it instead of skipping them
# unseen (as GRAIL_REQUIRE_SLURM / GRAIL_REQUIRE_BROWSER do for the cluster and Chromium). Elsewhere
# (`make test-fast`, a bare pytest) pytest.importorskip keeps skipping.
_importorskip = pytest.importorskip


def _required_import(modname: str, minversion: str | None = None, reason: str | None = None, **kw):
    try:
        return _importorskip(modname, minversion=minversion, reason=reason, **kw)
    except pytest.skip.Exception as exc:
        why = exc.msg
    pytest.fail(f"GRAIL_REQUIRE_DEPS=1 but {modname!r} cannot be used here ({why}); `make setup` installs it with "
                "the dev extra (pip install -e '.[dev]'; kmock: into .venv/test-tools)", pytrace=False)


if os.environ.get("GRAIL_REQUIRE_DEPS") == "1":
    pytest.importorskip = _required_import
HOI_PIPELINES = ("pnp_table", "pnp_ground", "advanced_manip_table", "advanced_manip_ground")
PIPELINES = HOI_PIPELINES + ("terrain_tracking",)
BACKENDS = ("local", "slurm", "kubernetes")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # The index falls back to ~/.cache for read-only libraries; keep tests out of the real one.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


def make_sonic_root(path: Path, *, models: bool = True) -> Path:
    """The SONIC checkout layout the command builders look for (the trainer cannot run here).

    ``models``: also the files the release configs read from ``models/`` (the frozen HOI base and
    the fine-tune warm starts of contracts §2.3), as small stand-in files."""
    (path / "gear_sonic").mkdir(parents=True, exist_ok=True)
    for name in ("train_agent_trl.py", "eval_agent_trl.py"):
        (path / "gear_sonic" / name).write_text("# stand-in: Isaac Lab's SONIC cannot run on this machine\n")
    if models:
        from grail_cluster.sonic.registry import RELEASE_CONFIGS

        files = ["models/sonic_manipulation_base/model_config.yaml", "models/sonic_manipulation_base/last.pt"]
        files += [r.finetune_checkpoint for r in RELEASE_CONFIGS if r.finetune_checkpoint]
        for rel in files:
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(b"stand-in checkpoint\n")
    return path


@pytest.fixture
def sonic_root(tmp_path) -> Path:
    return make_sonic_root(tmp_path / "SONIC")


@pytest.fixture
def hoi_pair(tmp_path):
    """(<name>, <name>_ha) libraries with the same 12 keys; the _ha one has hand actions."""
    return make_ha_pair(tmp_path / "data", "pickup_table", 12)


@pytest.fixture
def hoi_lib(tmp_path):
    return make_library(tmp_path / "lib", 12)


@pytest.fixture
def terrain_lib(tmp_path):
    return make_terrain_library(tmp_path / "terrain", 10)


def base_overrides(tmp_path: Path, motion_lib: Path, sonic: Path, *extra: str) -> list[str]:
    return [f"data.motion_lib={motion_lib}", f"sonic.root={sonic}", f"run.root={tmp_path / 'runs'}", *extra]


@pytest.fixture
def chdir_tmp(tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


def _slurm_answers() -> bool:
    import shutil
    import subprocess

    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="session")
def slurm_cluster():
    """The real local SLURM cluster (`make slurm-up`). `make test` sets GRAIL_REQUIRE_SLURM=1, so there
    a missing cluster fails the test instead of skipping it."""
    if not _slurm_answers():
        if os.environ.get("GRAIL_REQUIRE_SLURM") == "1":
            pytest.fail("the local SLURM cluster is not up (tests/infra/slurm/up.sh)")
        pytest.skip("no local SLURM cluster (run `make slurm-up`)")


@pytest.fixture
def multinode_cluster():
    """The real multi-node SLURM cluster (tests/infra/slurm/multi.sh, started by `make slurm-up`), which
    a test may break: before and after each test its daemons are restarted, its jobs cancelled and its nodes
    brought back, pass or fail."""
    from tests.infra.slurm.multinode import MultiNodeCluster

    cluster = MultiNodeCluster()
    if not cluster.answers():
        if os.environ.get("GRAIL_REQUIRE_SLURM") == "1":
            pytest.fail("the multi-node SLURM cluster is not up (tests/infra/slurm/multi.sh up)")
        pytest.skip("no multi-node SLURM cluster (run `make slurm-up`)")
    cluster.heal()
    yield cluster
    cluster.heal()
