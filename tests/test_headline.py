"""The run's headline is its truth: evaluated, succeeded and the real success rate from every eval
shard's metrics_eval.json, the same in the web index, each viewer's header, `status`, `summarize`.

The run is real: `grail-cluster run ... cluster=local` (called by absolute path, venv off PATH, output
to pipes) runs eval -> export -> merge -> web on the local executor. SONIC's evaluator cannot run here,
so the stand-in evaluator copies a shard dir written beforehand straight from contracts §4.2; the
export keeps `obj_pos_error <= 0.05`, which drops successes, so exported < succeeded. The expected
figures are counted here from the metrics files themselves, not taken from the code under test.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.adversarial.harness import run_cli
from tests.conftest import base_overrides
from tests.evalgen import checkpoint_files, make_eval_shard
from tests.libgen import make_ha_pair

# Copies the shard that the test staged for this eval_output_dir (by its phase1_shard_<i> name).
STAND_IN_EVALUATOR = """import os, shutil, sys
out = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("++eval_output_dir="))
shutil.copytree(os.path.join(os.environ["GRAIL_TEST_STAGED"], os.path.basename(out)), out, dirs_exist_ok=True)
"""
THRESHOLD = 0.05


def count_metrics(metrics_files: list[Path]) -> tuple[int, int]:
    """(evaluated, succeeded) read straight from metrics_eval.json files: success = not terminated."""
    evaluated = succeeded = 0
    for path in metrics_files:
        table = json.loads(path.read_text())["eval/all_metrics_dict"]
        evaluated += len(table["motion_keys"])
        succeeded += sum(1 for t in table["terminated"] if not t)
    return evaluated, succeeded


def _exportable(metrics_files: list[Path]) -> int:
    n = 0
    for path in metrics_files:
        t = json.loads(path.read_text())["eval/all_metrics_dict"]
        n += sum(1 for term, prog, err in zip(t["terminated"], t["progress"], t["obj_pos_error"], strict=True)
                 if not term and prog >= 1.0 and err <= THRESHOLD)
    return n


def build_finished_run(tmp: Path) -> dict:
    """A finished local run of 24 motions in 3 eval shards: 6 terminated, 2 successes over the threshold."""
    from grail_cluster.core import config
    from grail_cluster.core.library import scan_library
    from grail_cluster.runs.planner import build_plan
    from tests.conftest import make_sonic_root

    _, ha = make_ha_pair(tmp / "data", "pickup_table", 24, fast=True)
    sonic = make_sonic_root(tmp / "SONIC")
    (sonic / "gear_sonic" / "eval_agent_trl.py").write_text(STAND_IN_EVALUATOR)
    (ckpt,) = checkpoint_files(tmp / "exp", (1000,))
    overrides = base_overrides(tmp, ha.root, sonic, f"select.checkpoints=[{ckpt}]", "eval.num_shards=3",
                               "render.enabled=false", "run.id=headline", f"job.python={sys.executable}",
                               f"sonic.python={sys.executable}", f"export.obj_pos_threshold={THRESHOLD}",
                               "cluster=local", "cluster.gpus=[0]")
    plan = build_plan(config.load(overrides), scan_library(ha.root))
    keys = sorted(k for s in plan.eval_shards for k in s.motion_keys)
    terminated = set(keys[1::4])  # 6 of 24
    too_far = [k for k in keys if k not in terminated][:2]  # tracked, but the object strayed 8 cm
    staged = tmp / "staged"
    for shard in plan.eval_shards:
        make_eval_shard(staged / f"phase1_shard_{shard.shard}", ha.root, shard.motion_keys, terminated=terminated,
                        obj_pos_error={k: 0.08 for k in too_far})
    res = run_cli(["run", *overrides], cwd=tmp, env={"GRAIL_TEST_STAGED": str(staged)}, timeout=600)
    assert res.code == 0, res.text[-4000:]
    eval_step = Path(plan.paths["eval_dir"]) / "step_001000"
    return {"tmp": tmp, "plan": plan, "run_dir": plan.run_dir, "eval_step": eval_step,
            "metrics": sorted(eval_step.glob("phase1_shard_*/metrics_eval.json")),
            "web": Path(plan.paths["web_dir"]), "exp": Path(plan.paths["experiment_dir"]),
            "merged": Path(plan.paths["experiment_dir"]) / "exported" / "step_001000" / "merged"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return build_finished_run(tmp_path_factory.mktemp("headline"))


def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f}%"


def test_the_scenario_is_the_issue_s(finished_run):
    """The scenario as issue 13 states it: 24 evaluated, 18 succeeded, fewer exported."""
    evaluated, succeeded = count_metrics(finished_run["metrics"])
    assert len(finished_run["metrics"]) == 3
    assert (evaluated, succeeded) == (24, 18)
    assert _exportable(finished_run["metrics"]) == 16 < succeeded
    merged = json.loads((finished_run["merged"] / "export_manifest.json").read_text())
    assert merged["exported_count"] == 16 and len(list((finished_run["merged"] / "robot").glob("*.pkl"))) == 16


def test_web_index_and_headers_show_the_real_rate(finished_run):
    evaluated, succeeded = count_metrics(finished_run["metrics"])
    exported = _exportable(finished_run["metrics"])
    web = finished_run["web"]
    index = json.loads((web / "manifest.json").read_text())
    (site,) = index["sites"]
    assert (site["evaluated"], site["succeeded"], site["exported"]) == (evaluated, succeeded, exported)
    assert site["success_rate"] == pytest.approx(succeeded / evaluated) and site["partial"] is False
    assert (site["shards_ok"], site["num_shards"]) == (3, 3)
    page = (web / "index.html").read_text()
    assert f"<td class=\"num rate\">{_pct(succeeded, evaluated)}</td>" in page
    assert "100.0%" not in page and "exported / evaluated" not in page
    assert re.search(rf"<td class=\"num\">{evaluated}</td><td class=\"num\">{succeeded}</td>", page)
    viewer = json.loads((web / "step_001000" / "manifest.json").read_text())
    assert viewer["headline"]["succeeded"] == succeeded and viewer["headline"]["evaluated"] == evaluated
    assert viewer["headline"]["exported"] == exported == viewer["num_motions"]
    # The library itself is all successes: its own count must not be the headline.
    assert viewer["num_success"] == exported and viewer["success_rate"] == 1.0


def test_status_says_the_same(finished_run):
    evaluated, succeeded = count_metrics(finished_run["metrics"])
    res = run_cli(["status", finished_run["run_dir"]], cwd=finished_run["tmp"])
    assert res.code == 0, res.text
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("checkpoint step 1000:")]
    assert len(lines) == 1, res.stdout
    assert f"succeeded {succeeded}/{evaluated} = {_pct(succeeded, evaluated)}" in lines[0]
    assert f"evaluated {evaluated}," in lines[0] and f"exported {_exportable(finished_run['metrics'])}" in lines[0]
    assert "PARTIAL" not in lines[0] and "(3/3 shards)" in lines[0]
    data = json.loads(run_cli(["status", finished_run["run_dir"], "--json"], cwd=finished_run["tmp"]).stdout)
    (h,) = data["results"]
    assert (h["evaluated"], h["succeeded"], h["partial"]) == (evaluated, succeeded, False)


def test_summarize_says_the_same(finished_run):
    evaluated, succeeded = count_metrics(finished_run["metrics"])
    res = run_cli(["summarize", "--exp_dir", finished_run["exp"], "--json"])
    assert res.code == 0, res.text
    (step,) = json.loads(res.stdout)["steps"]
    assert (step["total_motions"], step["total_success"], step["partial"]) == (evaluated, succeeded, False)
    text = run_cli(["summarize", "--exp_dir", finished_run["exp"]]).stdout
    assert f"{100 * succeeded / evaluated:.2f}%" in text and f"{succeeded}/{evaluated}" in text
    assert "PARTIAL" not in text


def test_missing_shard_makes_every_headline_partial(finished_run, tmp_path):
    """One eval shard's metrics gone (a scratch clean-up): no reader may present 2 shards as the whole."""
    gone = finished_run["metrics"][2]
    saved = gone.read_bytes()
    gone.unlink()
    try:
        kept = finished_run["metrics"][:2]
        evaluated, succeeded = count_metrics(kept)
        pct = _pct(succeeded, evaluated)
        status = run_cli(["status", finished_run["run_dir"]], cwd=finished_run["tmp"]).stdout
        line = next(ln for ln in status.splitlines() if ln.startswith("checkpoint step 1000:"))
        assert f"succeeded {succeeded}/{evaluated} = {pct}" in line and "PARTIAL: 2 of 3 eval shards" in line
        res = run_cli(["web", "--motion_lib", finished_run["merged"], "--output", tmp_path / "site", "--json"])
        assert res.code == 0, res.text
        h = json.loads(res.stdout)["headline"]
        assert (h["evaluated"], h["succeeded"], h["partial"], h["shards_ok"], h["num_shards"]) == \
            (evaluated, succeeded, True, 2, 3)
        text = run_cli(["web", "--motion_lib", finished_run["merged"], "--output", tmp_path / "site"]).stdout
        assert "PARTIAL: 2 of 3 eval shards" in text
        summ = run_cli(["summarize", "--exp_dir", finished_run["exp"], "--num_shards", "3"]).stdout
        assert "PARTIAL" in summ and "2 of 3" in summ
        from grail_cluster.tools.web.generate import generate_run_site

        generate_run_site(tmp_path / "web", [(1000, finished_run["merged"])])
        page = (tmp_path / "web" / "index.html").read_text()
        assert "PARTIAL: 2 of 3 eval shards" in page and pct in page
    finally:
        gone.write_bytes(saved)


def test_headline_from_hand_written_metrics(tmp_path):
    """A second reading, straight from contracts §4.2: metrics written by hand, one shard unreadable."""
    from grail_cluster.tools.data.headline import checkpoint_headline, headline_text

    step = tmp_path / "eval" / "step_000500"
    tables = {0: {"motion_keys": ["a", "b", "c", "d"], "terminated": [False, True, False, False]},
              1: {"motion_keys": ["e", "f"], "terminated": [True, True]}}
    for rank, table in tables.items():
        (step / f"phase1_shard_{rank}").mkdir(parents=True)
        # W&B's subset rate says 1.0: the headline must not use it.
        (step / f"phase1_shard_{rank}" / "metrics_eval.json").write_text(
            json.dumps({"eval/success/success_rate": 1.0, "eval/all_metrics_dict": table}))
    h = checkpoint_headline(step, num_shards=2)
    assert (h["step"], h["evaluated"], h["succeeded"], h["partial"]) == (500, 6, 3, False)
    assert h["success_rate"] == pytest.approx(0.5) and h["exported"] is None
    assert "succeeded 3/6 = 50.0%" in headline_text(h)
    (step / "phase1_shard_2").mkdir()
    (step / "phase1_shard_2" / "metrics_eval.json").write_text('{"eval/all_metrics_dict": {"motion_keys": ["g"]')
    h = checkpoint_headline(step, num_shards=4)
    assert (h["shards_ok"], h["shards_missing"], h["shards_parse_error"], h["partial"]) == (2, 1, 1, True)
    assert "PARTIAL: 2 of 4 eval shards read (1 missing, 1 unreadable)" in headline_text(h)
