"""Reading SONIC experiment dirs (contracts §2.4) from real files, and the §2.2 resume rule."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from grail_cluster.core.errors import DataError
from grail_cluster.sonic import experiment as ex

NOW = 1_800_000_000.0  # a fixed "now", so readiness does not depend on the wall clock


def touch(path: Path, mtime: float, data: bytes = b"ckpt") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def exp_dir(tmp_path) -> Path:
    exp = tmp_path / "logs_rl" / "GRAB_Tracking" / "manager/universal_token/hoi/pnp_table_x-20260601_120000"
    touch(exp / "model_step_000500.pt", NOW - 3600)
    touch(exp / "model_step_001000.pt", NOW - 600, b"bigger checkpoint")
    touch(exp / "model_step_010000.pt", NOW - 30)  # still settling
    touch(exp / "last.pt", NOW - 5)  # rewritten every 50 steps
    touch(exp / "model_step_latest.pt", NOW - 3600)  # not a step name: ignored
    (exp / "model_step_000250.pt").mkdir()  # a directory with a checkpoint name: ignored
    (exp / "config.yaml").write_text("experiment_name: ${exp_base}_${exp_var}\nnum_envs: 4096\n")
    (exp / "meta.yaml").write_text("wandb_run: abc123xy\nmax_train_steps: 20000\n")
    touch(exp / "events.out.tfevents.1700000000.node1", NOW - 10)
    touch(exp / "output" / "events.out.tfevents.1700000001.node1", NOW - 10)
    return exp


def test_list_checkpoints_orders_by_step_with_last_at_the_end(exp_dir):
    cks = ex.list_checkpoints(exp_dir)
    assert [c.name for c in cks] == ["model_step_000500.pt", "model_step_001000.pt", "model_step_010000.pt", "last.pt"]
    assert [c.step for c in cks] == [500, 1000, 10000, None]
    assert cks[1].size == len(b"bigger checkpoint") and cks[0].mtime == pytest.approx(NOW - 3600)
    assert all(os.path.isabs(c.path) for c in cks) and cks[-1].is_last
    assert ex.latest_step(exp_dir) == 10000
    assert ex.list_checkpoints(exp_dir / "missing") == []


def test_ready_checkpoints_wait_60s_after_the_last_write(exp_dir):
    ready = ex.ready_checkpoints(exp_dir, now=NOW)
    assert [c.name for c in ready] == ["model_step_000500.pt", "model_step_001000.pt"]
    # 30 s later the step-10000 file has settled; last.pt (5 s old) still has not.
    assert [c.name for c in ex.ready_checkpoints(exp_dir, now=NOW + 30)][-1] == "model_step_010000.pt"
    assert "last.pt" in [c.name for c in ex.ready_checkpoints(exp_dir, now=NOW + 55)]
    # A rewrite of last.pt makes it unready again.
    os.utime(exp_dir / "last.pt", (NOW + 50, NOW + 50))
    assert "last.pt" not in [c.name for c in ex.ready_checkpoints(exp_dir, now=NOW + 55)]
    assert [c.name for c in ex.ready_checkpoints(exp_dir, now=NOW + 50, settle_s=0)][-1] == "last.pt"


def test_ready_uses_the_wall_clock_by_default(tmp_path):
    old = touch(tmp_path / "model_step_000100.pt", time.time() - 120)
    touch(tmp_path / "model_step_000200.pt", time.time())
    assert [c.path for c in ex.ready_checkpoints(tmp_path)] == [str(old)]


def test_read_experiment_config_meta_and_tensorboard(exp_dir):
    e = ex.read_experiment(exp_dir)
    assert e.exists and e.wandb_run == "abc123xy" and e.max_train_steps == 20000
    assert e.config["experiment_name"] == "${exp_base}_${exp_var}"  # unresolved, as SONIC writes it
    assert e.steps == [500, 1000, 10000] and e.last.name == "last.pt"
    assert e.has_tensorboard and len(e.event_files) == 2
    assert [c.name for c in e.ready(now=NOW)] == ["model_step_000500.pt", "model_step_001000.pt"]
    d = e.to_json()
    assert d["wandb_run"] == "abc123xy" and d["steps"] == [500, 1000, 10000] and d["has_tensorboard"]
    missing = ex.read_experiment(exp_dir.parent / "nope")
    assert not missing.exists and missing.checkpoints == [] and missing.wandb_run is None


def test_meta_accepts_the_docs_key_and_rejects_garbage(tmp_path):
    (tmp_path / "meta.yaml").write_text("wandb_id: fromdocs\n")
    assert ex.read_meta(tmp_path)["wandb_run"] == "fromdocs"
    (tmp_path / "meta.yaml").write_text("- a list\n")
    with pytest.raises(DataError, match="meta.yaml does not hold a mapping"):
        ex.read_meta(tmp_path)
    (tmp_path / "meta.yaml").write_text("wandb_run: [unclosed\n")
    with pytest.raises(DataError, match="not valid YAML"):
        ex.read_meta(tmp_path)
    assert ex.read_meta(tmp_path / "absent") is None and ex.read_config(tmp_path) is None


def test_naming_helpers():
    d = ex.experiment_dir_for("logs_rl", "GRAB_Tracking", "manager/universal_token/hoi/pnp_table_pnp_table",
                              "20260601_120000")
    assert d == "logs_rl/GRAB_Tracking/manager/universal_token/hoi/pnp_table_pnp_table-20260601_120000"
    assert ex.strip_timestamp(d) == "logs_rl/GRAB_Tracking/manager/universal_token/hoi/pnp_table_pnp_table"
    assert ex.strip_timestamp("/runs/r1/experiment") == "/runs/r1/experiment"
    assert ex.strip_timestamp("/x/name-2026_01") == "/x/name-2026_01"  # not a full timestamp
    assert ex.step_of("/a/model_step_001500.pt") == 1500 and ex.step_of("model_step_7.pt") == 7
    assert ex.step_of("last.pt") is None


# ----------------------------------------------------------------------------- resume table


@pytest.fixture
def runs(tmp_path):
    """Three earlier runs of one experiment name plus a warm-start checkpoint under a SONIC root."""
    base = tmp_path / "logs_rl" / "GRAB_Tracking" / "pnp"
    old = touch(base.with_name("pnp-20260101_000000") / "last.pt", NOW - 7200)
    new = touch(base.with_name("pnp-20260102_000000") / "last.pt", NOW - 60)
    (new.parent / "meta.yaml").write_text("wandb_run: run-new\n")
    touch(base.with_name("pnp-20260103_000000") / "model_step_000500.pt", NOW)  # no last.pt: not a candidate
    touch(base.with_name("pnpx-20260104_000000") / "last.pt", NOW)  # another experiment name
    sonic = tmp_path / "SONIC"
    warm = touch(sonic / "models" / "pnp_table_warmstart" / "last.pt", NOW - 99999)
    own = tmp_path / "runs" / "r1" / "experiment"
    touch(own / "last.pt", NOW - 100)
    (own / "meta.yaml").write_text("wandb_run: run-own\nmax_train_steps: 20000\n")
    return {"base": base, "old": old, "new": new, "sonic": sonic, "warm": warm, "own": own,
            "fresh_default": base.with_name("pnp-20260105_000000"), "empty": tmp_path / "runs" / "r2" / "experiment"}


# (case, experiment_dir, experiment_dir_given, checkpoint, resume) -> (mode, load, output_dir, wandb_run, exists)
RESUME_TABLE = [
    ("fresh: nothing asked", "empty", True, None, False, ("fresh", None, "empty", None, False)),
    ("weights only: a checkpoint without resume=True, relative to the SONIC root", "empty", True,
     "models/pnp_table_warmstart/last.pt", False, ("weights", "warm", "empty", None, True)),
    ("warm: resume=True with a checkpoint, the documented fine-tune recipe", "empty", True,
     "models/pnp_table_warmstart/last.pt", True, ("warm", "warm", "empty", None, True)),
    ("warm into a dir that has meta.yaml keeps its W&B id", "own", True, "models/pnp_table_warmstart/last.pt", True,
     ("warm", "warm", "own", "run-own", True)),
    ("checkpoint inside experiment_dir: resume in place", "own", True, "@own/last.pt", False,
     ("resume", "@own/last.pt", "own", "run-own", True)),
    ("resume=True with experiment_dir: its last.pt", "own", True, None, True,
     ("resume", "@own/last.pt", "own", "run-own", True)),
    ("resume=True with experiment_dir but no last.pt yet", "empty", True, None, True,
     ("resume", "@empty/last.pt", "empty", None, False)),
    ("resume=True with neither: newest sibling last.pt", "fresh_default", False, None, True,
     ("resume", "new", "@new/..", "run-new", True)),
    ("resume=True with neither and no sibling", "empty", False, None, True, ("fresh", None, "empty", None, False)),
    ("missing warm-start checkpoint is reported, not hidden", "empty", True, "models/nope/last.pt", True,
     ("warm", "@sonic/models/nope/last.pt", "empty", None, False)),
]


def _resolve(runs, spec):
    if spec is None:
        return None
    if spec.startswith("@"):
        head, _, rest = spec[1:].partition("/")
        if rest == "..":
            return os.path.dirname(str(runs[head]))
        return os.path.join(str(runs[head]), rest)
    return str(runs[spec])


@pytest.mark.parametrize("case,exp_key,given,checkpoint,resume,expected", RESUME_TABLE, ids=[r[0] for r in RESUME_TABLE])
def test_resume_semantics(runs, case, exp_key, given, checkpoint, resume, expected):
    ckpt = _resolve(runs, checkpoint) if checkpoint and checkpoint.startswith("@") else checkpoint
    r = ex.resolve_resume(runs[exp_key], ckpt, resume, experiment_dir_given=given, sonic_root=runs["sonic"])
    mode, load, out, wandb_run, exists = expected
    assert r.mode == mode, r.rule
    assert r.load == _resolve(runs, load)
    assert r.output_dir == _resolve(runs, out)
    assert r.wandb_run == wandb_run and r.new_wandb_run == (wandb_run is None)
    assert r.load_exists == exists
    assert r.to_json()["rule"] == r.rule


def test_newest_sibling_goes_by_mtime(runs):
    # Touch the older run's last.pt: it is now the newest file, whatever its timestamped name says.
    os.utime(runs["old"], (NOW + 10, NOW + 10))
    assert ex.newest_sibling_last(runs["fresh_default"]) == str(runs["old"])
    assert ex.newest_sibling_last(runs["empty"]) is None
