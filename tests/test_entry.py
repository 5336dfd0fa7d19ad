"""The in-job entry, driven through the rendered local job scripts themselves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grail_cluster.core import config
from grail_cluster.core.library import scan_library
from grail_cluster.core.markers import read_marker
from grail_cluster.core.plan import write_plan
from grail_cluster.entry import main as entry_main
from grail_cluster.runs.job_files import render_files, write_files
from grail_cluster.runs.planner import build_plan
from tests.conftest import base_overrides
from tests.evalgen import checkpoint_files

# SONIC's evaluator needs Isaac Lab, which cannot run here; this stand-in records the argv it was
# started with so the test can check the command the job really executed, and writes the shard's
# metrics_eval.json for the motions the command names (GRAIL_TEST_DROP drops one, like a mis-slice).
RECORDER = """import json, os, sys
with open(os.environ["GRAIL_TEST_ARGV"], "w") as fh:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd()}, fh)
arg = lambda name: next(a.split("=", 1)[1] for a in sys.argv if a.startswith(name))
keys = json.loads(arg("++manager_env.commands.motion.motion_lib_cfg.filter_motion_keys"))
keys = keys[: len(keys) - int(os.environ.get("GRAIL_TEST_DROP", "0"))]
out = arg("++eval_output_dir")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "metrics_eval.json"), "w") as fh:
    json.dump({"eval/all_metrics_dict": {"motion_keys": keys, "terminated": [False] * len(keys)}}, fh)
"""


@pytest.fixture
def run(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    (sonic_root / "gear_sonic" / "eval_agent_trl.py").write_text(RECORDER)
    ckpts = checkpoint_files(tmp_path / "exp", (1000, 2500))
    c = config.load(base_overrides(tmp_path, ha.root, sonic_root, f"select.checkpoints=[{','.join(ckpts)}]",
                                   "eval.num_shards=3", "eval.sharding=balanced", f"job.python={sys.executable}",
                                   f"sonic.python={sys.executable}"))
    plan = build_plan(c, scan_library(ha.root))
    write_plan(plan)
    spec_dir = Path(plan.paths["specs_dir"]) / "local"
    write_files(render_files(plan), spec_dir)
    return plan, spec_dir, ckpts


def test_rendered_eval_script_runs_the_shard_command(run, tmp_path):
    plan, spec_dir, ckpts = run
    record = tmp_path / "argv.json"
    env = {**os.environ, "GRAIL_INDEX": "4", "GRAIL_TEST_ARGV": str(record)}
    proc = subprocess.run(["bash", str(spec_dir / "eval.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(record.read_text())
    argv = got["argv"]
    c, shard = plan.eval_index(4)  # checkpoint rank 1, shard 1
    assert (c, shard.shard) == (1, 1)
    assert f"+checkpoint={ckpts[1]}" in argv
    assert f"++eval_output_dir={plan.paths['eval_dir']}/step_002500/phase1_shard_1" in argv
    assert f"++num_envs={len(shard.motion_keys)}" in argv
    keys_arg = next(a for a in argv if "filter_motion_keys" in a)
    assert keys_arg.endswith("[" + ",".join(f'"{k}"' for k in shard.motion_keys) + "]")
    assert got["cwd"] == plan.config["sonic"]["root"]
    log = Path(plan.run_dir) / "logs" / "eval" / "4" / "0.out"
    assert "[grail] eval index 4 attempt 0" in log.read_text()
    assert read_marker(plan.run_dir, "eval", 4) is not None  # the shard's metrics cover its motions


def test_eval_shard_with_missing_motions_is_not_marked_done(run, tmp_path):
    plan, spec_dir, _ = run
    env = {**os.environ, "GRAIL_INDEX": "4", "GRAIL_TEST_ARGV": str(tmp_path / "a.json"), "GRAIL_TEST_DROP": "1"}
    proc = subprocess.run(["bash", str(spec_dir / "eval.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "metrics_eval.json covers" in proc.stderr
    assert read_marker(plan.run_dir, "eval", 4) is None


def test_entry_refuses_a_changed_plan(run, capsys):
    plan, _, _ = run
    rc = entry_main(["eval", "--run-dir", plan.run_dir, "--index", "0", "--plan-hash", "0" * 64])
    assert rc != 0 and "plan.json changed" in capsys.readouterr().err
    rc = entry_main(["eval", "--run-dir", plan.run_dir, "--index", "99"])
    assert rc == 2 and "outside" in capsys.readouterr().err


def test_train_finish_writes_marker_only_with_checkpoints(tmp_path, hoi_pair, sonic_root, capsys):
    _, ha = hoi_pair
    c = config.load(base_overrides(tmp_path, ha.root, sonic_root))
    plan = build_plan(c, scan_library(ha.root))
    write_plan(plan)
    rc = entry_main(["train", "--run-dir", plan.run_dir, "--index", "0", "--plan-hash", plan.plan_hash])
    assert rc == 1 and "wrote no model_step" in capsys.readouterr().err
    assert read_marker(plan.run_dir, "train", 0) is None
    exp = Path(plan.paths["experiment_dir"])
    exp.mkdir(parents=True)
    (exp / "model_step_000500.pt").write_bytes(b"a" * 100)
    (exp / "last.pt").write_bytes(b"b" * 100)
    assert entry_main(["train", "--run-dir", plan.run_dir, "--index", "0"]) == 0
    marker = read_marker(plan.run_dir, "train", 0)
    assert {Path(p).name for p in marker["outputs"]} == {"model_step_000500.pt", "last.pt"}
    assert marker["plan_hash"] == plan.plan_hash


def test_late_binding_reads_selection_json(tmp_path, hoi_pair, sonic_root, capsys):
    from grail_cluster.stages.checkpoints import resolve_checkpoint

    _, ha = hoi_pair
    plan = build_plan(config.load(base_overrides(tmp_path, ha.root, sonic_root, "select.k=2")), scan_library(ha.root))
    with pytest.raises(Exception) as exc:
        resolve_checkpoint(plan, 0)
    assert "select stage has not finished" in str(exc.value)
    sel = Path(plan.paths["selection"])
    sel.parent.mkdir(parents=True)
    sel.write_text(json.dumps({"top": [{"rank": 1, "eval_step": 3000, "checkpoint": "/x/model_step_003000.pt"}]}))
    assert resolve_checkpoint(plan, 0) == ("/x/model_step_003000.pt", 3000)
    with pytest.raises(Exception) as exc:
        resolve_checkpoint(plan, 1)
    assert "lists 1 checkpoints" in str(exc.value)
