"""The DAG's data stages run for real through the in-job entry: eval output in SONIC's format
(generated, since SONIC cannot run here) -> export per shard -> merge per checkpoint."""

import json
import sys
from pathlib import Path

from grail_cluster import config
from grail_cluster.entry import main as entry
from grail_cluster.library import scan_library
from grail_cluster.markers import validate_marker
from grail_cluster.plan import build_plan, write_plan
from tests.conftest import base_overrides
from tests.evalgen import make_eval_shard


def test_export_and_merge_stages_build_the_merged_library(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    ckpts = []
    for step in (1000, 2000):
        p = tmp_path / "exp" / f"model_step_{step:06d}.pt"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"w")
        ckpts.append(str(p))
    c = config.load(base_overrides(tmp_path, ha.root, sonic_root, f"select.checkpoints=[{','.join(ckpts)}]",
                                   "eval.num_shards=3", "render.enabled=false", "web.enabled=false",
                                   f"job.python={sys.executable}"))
    plan = build_plan(c, scan_library(ha.root))
    write_plan(plan)
    from grail_cluster.launchers.eval import shard_dir

    failed = {plan.eval_shards[1].motion_keys[0]}
    for index in range(plan.stage("eval").size):
        ck, shard = plan.eval_index(index)
        step = (1000, 2000)[ck]
        make_eval_shard(Path(shard_dir(plan, step, shard.shard)), ha.root, shard.motion_keys,
                        terminated=failed if ck == 0 else set())
    for index in range(plan.stage("export").size):
        assert entry(["export", "--run-dir", plan.run_dir, "--index", str(index), "--plan-hash", plan.plan_hash]) == 0
        assert validate_marker(plan.run_dir, "export", index, plan.plan_hash)
    for index in range(2):
        assert entry(["merge", "--run-dir", plan.run_dir, "--index", str(index)]) == 0
    exp = Path(plan.paths["experiment_dir"])
    merged0 = exp / "exported" / "step_001000" / "merged"
    merged1 = exp / "exported" / "step_002000" / "merged"
    m0 = json.loads((merged0 / "export_manifest.json").read_text())
    m1 = json.loads((merged1 / "export_manifest.json").read_text())
    assert m1["exported_count"] == len(ha.keys) and m0["exported_count"] == len(ha.keys) - 1
    assert sorted(p.stem for p in (merged0 / "robot").glob("*.pkl")) == sorted(set(ha.keys) - failed)
    assert scan_library(merged1).by_key()[ha.keys[0]].root_rot == "xyzw"  # exports are xyzw
    # Re-running a done shard is a no-op.
    assert entry(["merge", "--run-dir", plan.run_dir, "--index", "0"]) == 0
