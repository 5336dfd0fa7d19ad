"""Phase-1 real success rate (contracts §5.2) on a generated experiment dir."""

from __future__ import annotations

import json

import pytest

from grail_cluster.core.errors import DataError
from grail_cluster.tools.data import summarize as sm
from tests.evalgen import make_eval_shard
from tests.libgen import make_library


@pytest.fixture
def exp(tmp_path):
    """step 1000: shards 0 (4 motions, 1 terminated), 1 missing, 2 parse_error.
    step 2000: shards 0 (4 motions, 0 terminated), 1 (2 motions, 1 terminated), 2 (same as 0 -> duplicates)."""
    src = make_library(tmp_path / "lib", 6, variant="export", fast=True)
    k = src.keys
    e = tmp_path / "exp"
    s1 = e / "eval" / "step_1000"
    make_eval_shard(s1 / "phase1_shard_0", src, k[:4], terminated={k[0]}, mpjpe_l={x: 10.0 for x in k},
                    obj_pos_error={x: 0.04 for x in k}, success_rate=0.9, write_trajectories=False)
    (s1 / "phase1_shard_1").mkdir()  # started but never wrote its metrics
    (s1 / "phase1_shard_2").mkdir()
    (s1 / "phase1_shard_2" / "metrics_eval.json").write_text('{"eval/all_metrics_dict": {"motion_keys": [')
    s2 = e / "eval" / "step_2000"
    make_eval_shard(s2 / "phase1_shard_0", src, k[:4], mpjpe_l={x: 30.0 for x in k}, write_trajectories=False)
    make_eval_shard(s2 / "phase1_shard_1", src, k[4:], terminated={k[5]}, mpjpe_l={x: 50.0 for x in k},
                    obj_pos_error={x: 0.01 for x in k}, success_rate=0.7, write_trajectories=False)
    make_eval_shard(s2 / "phase1_shard_2", src, k[:4], mpjpe_l={x: 30.0 for x in k}, write_trajectories=False)
    (e / "eval" / "step_3000_notes").mkdir()  # not a step dir
    return e, k


def test_numbers_by_hand(exp):
    e, k = exp
    out = sm.summarize(e)
    s1, s2 = out["steps"]
    s1_dir = e / "eval" / "step_1000"
    assert s1["step"] == 1000
    assert (s1["total_motions"], s1["total_success"], s1["unique_motions"]) == (4, 3, 4)
    assert s1["real_success_rate"] == pytest.approx(0.75)
    assert [s["status"] for s in s1["shards"]] == ["ok", "missing", "parse_error"]
    assert s1["shards"][0] == {"rank": 0, "status": "ok", "n_motions": 4, "n_success": 3, "shard_sr": 0.75,
                               "wandb_sr": 0.9, "path": str(s1_dir / "phase1_shard_0" / "metrics_eval.json")}
    assert s1["mean_mpjpe_l"] == pytest.approx(10.0) and s1["mean_obj_pos_error"] == pytest.approx(0.04)

    assert (s2["total_motions"], s2["total_success"], s2["unique_motions"]) == (10, 9, 6)
    assert s2["real_success_rate"] == pytest.approx(0.9)
    # Means are over shards (each shard's eval/all/* scalar), not over motions.
    assert s2["mean_mpjpe_l"] == pytest.approx((30 + 50 + 30) / 3)
    assert s2["mean_obj_pos_error"] == pytest.approx((0.02 + 0.01 + 0.02) / 3)
    assert [s["wandb_sr"] for s in s2["shards"]] == [1.0, 0.7, 1.0]
    assert s2["shards"][1]["shard_sr"] == pytest.approx(0.5)

    assert [r["step"] for r in out["ranked_by_real_sr"]] == [2000, 1000]
    # every problem names its file (and why); step 2000's shard 2 repeats shard 0's four keys
    assert out["problems"][0] == f"step 1000 shard 1: missing ({s1_dir / 'phase1_shard_1' / 'metrics_eval.json'})"
    assert out["problems"][1].startswith(f"step 1000 shard 2: parse_error ({s1_dir / 'phase1_shard_2'}")
    assert "invalid JSON" in out["problems"][1]
    assert (s1["duplicate_motions"], s2["duplicate_motions"]) == (0, 4)
    assert out["problems"][2].startswith("step 2000: 4 motion key(s) evaluated in more than one shard")
    assert len(out["problems"]) == 3


def test_steps_compare_fatal_and_cli(exp, tmp_path, capsys):
    e, _ = exp
    assert [s["step"] for s in sm.summarize(e, steps=[2000])["steps"]] == [2000]
    assert sm.summarize(e, steps=[2000])["problems"][0].startswith("step 2000: 4 motion key(s)")
    with pytest.raises(DataError, match="more than one shard"):
        sm.summarize(e, steps=[2000], missing_shards_fatal=True)
    with pytest.raises(DataError, match="missing"):
        sm.summarize(e, missing_shards_fatal=True)

    top = tmp_path / "top.json"
    top.write_text(json.dumps({"top": [{"rank": 1, "eval_step": 1000, "success_rate": 0.95, "checkpoint": "a.pt"},
                                       {"rank": 2, "eval_step": 4000, "success_rate": 0.9}]}))
    cmp = sm.summarize(e, compare=top)["compare"]
    assert cmp[0]["real_success_rate"] == pytest.approx(0.75) and cmp[0]["delta"] == pytest.approx(-0.2)
    assert cmp[1]["evaluated"] is False and cmp[1]["real_success_rate"] is None

    out_file = tmp_path / "summary.json"
    assert sm.main(["--exp_dir", str(e), "--json", "--out", str(out_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out_file.read_text())
    assert sm.main(["--exp_dir", str(e), "--missing_shards_fatal"]) == 1
    assert sm.main(["--exp_dir", str(e), "--compare", str(top)]) == 0  # rich table path
    assert "2000" in capsys.readouterr().out


def test_hoi_tiebreak(tmp_path):
    src = make_library(tmp_path / "lib", 2, variant="export", fast=True)
    e = tmp_path / "exp"
    make_eval_shard(e / "eval/step_10/phase1_shard_0", src, src.keys, mpjpe_l={k: 5.0 for k in src.keys},
                    obj_pos_error={k: 0.09 for k in src.keys}, write_trajectories=False)
    make_eval_shard(e / "eval/step_20/phase1_shard_0", src, src.keys, mpjpe_l={k: 9.0 for k in src.keys},
                    obj_pos_error={k: 0.01 for k in src.keys}, write_trajectories=False)
    assert [r["step"] for r in sm.summarize(e)["ranked_by_real_sr"]] == [10, 20]
    assert [r["step"] for r in sm.summarize(e, hoi=True)["ranked_by_real_sr"]] == [20, 10]


def test_no_eval_dir(tmp_path):
    with pytest.raises(DataError, match="phase1_shard"):
        sm.summarize(tmp_path)


def test_the_shard_cache_is_used_only_while_the_file_is_unchanged(exp):
    """status summarises on every refresh: a cached row is used while the metrics file keeps its size and
    mtime, and a rewritten file is parsed again (never a stale count)."""
    import os

    e, k = exp
    shards = {0: e / "eval" / "step_2000" / "phase1_shard_0", 1: e / "eval" / "step_2000" / "phase1_shard_1"}
    cache: dict = {}
    first = sm.summarize_step(2000, shards, 2, cache)
    assert (first["total_motions"], first["total_success"]) == (6, 5) and len(cache) == 2
    metrics = shards[1] / "metrics_eval.json"
    st = metrics.stat()
    data = json.loads(metrics.read_text())
    data["eval/all_metrics_dict"]["terminated"] = [True] * 2
    text = json.dumps(data)
    # The same size and mtime: the cached row stands (this is what makes the cache a cache).
    metrics.write_text(text[: st.st_size].ljust(st.st_size))
    os.utime(metrics, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sm.summarize_step(2000, shards, 2, cache)["total_success"] == 5
    metrics.write_text(text)  # a real rewrite: new size/mtime -> parsed again
    again = sm.summarize_step(2000, shards, 2, cache)
    assert (again["total_motions"], again["total_success"]) == (6, 4)
    assert again == sm.summarize_step(2000, shards, 2)  # the cache never changes an answer
