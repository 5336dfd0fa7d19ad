"""The DAG's data stages run for real through the in-job entry: eval output in SONIC's format
(generated, since SONIC cannot run here) -> export per shard -> merge per checkpoint."""

import json
from pathlib import Path

from grail_cluster.core.library import scan_library
from grail_cluster.core.markers import validate_marker
from grail_cluster.entry import main as entry
from tests.evalgen import evaluated_run


def test_export_and_merge_stages_build_the_merged_library(tmp_path, hoi_pair, sonic_root, capsys):
    _, ha = hoi_pair
    plan, failed = evaluated_run(tmp_path, ha, sonic_root, "web.enabled=false")
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
    # Re-running a done shard is a no-op: it says so and rewrites nothing (bytes, mtimes, inodes), marker included.
    from grail_cluster.core.markers import marker_path
    from tests.adversarial.harness import untouched_state

    before = untouched_state(merged0, marker_path(plan.run_dir, "merge", 0))
    assert entry(["merge", "--run-dir", plan.run_dir, "--index", "0"]) == 0
    assert "already done" in capsys.readouterr().out
    assert untouched_state(merged0, marker_path(plan.run_dir, "merge", 0)) == before
    assert validate_marker(plan.run_dir, "merge", 0, plan.plan_hash)
