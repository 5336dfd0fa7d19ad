"""`grail-cluster demo`, the README's main job, end to end: a smaller variant (fewer motions and
iterations, small videos) on the local executor and, unchanged, on the real local SLURM cluster.

Every figure it reports is checked against what the run wrote: the success rate against the eval
shards' metrics, the merged library against the exported motions, the viewer against the library.
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import pytest

from grail_cluster.cli.main import main as cli_main

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

SMALL = ["train.iterations=6", "train.save_frequency=3", "train.num_envs=4", "eval.num_shards=2",
         "render.resolution=160x120"]


def _check_demo(out: Path, result: dict) -> None:
    run = Path(result["run_dir"])
    assert len(result["checkpoints"]) == 2  # select.k=2 of the 2 saved checkpoints
    for ck in result["checkpoints"]:
        step_dir = run / "experiment" / "eval" / f"step_{ck['step']:06d}"
        shards = sorted(step_dir.glob("phase1_shard_*/metrics_eval.json"))
        assert len(shards) == 2
        table = [json.loads(p.read_text())["eval/all_metrics_dict"] for p in shards]
        evaluated = sum(len(t["motion_keys"]) for t in table)
        tracked = sum(not term for t in table for term in t["terminated"])
        assert ck["evaluated"] == evaluated == 6
        assert ck["succeeded"] == tracked and ck["partial"] is False and ck["shards_ok"] == ck["num_shards"] == 2
        assert ck["exported"] == tracked  # no export filter in the demo: every tracked motion is exported
        assert ck["success_rate"] == pytest.approx(tracked / evaluated)
        merged = Path(ck["merged"])
        assert len(list((merged / "robot").glob("*.pkl"))) == tracked
        assert len(list((merged / "vis").glob("*.mp4"))) == tracked  # every tracked motion has its replay video
    # The viewer against the library: one site per checkpoint, each listing exactly the merged library's
    # motions with their frame counts and a video that opens, and counts that add up.
    web = Path(result["web"])
    assert (web / "index.html").is_file()
    top = json.loads((web / "manifest.json").read_text())
    assert sorted(s["step"] for s in top["sites"]) == sorted(ck["step"] for ck in result["checkpoints"])
    for ck in result["checkpoints"]:
        man = json.loads((web / f"step_{ck['step']:06d}" / "manifest.json").read_text())
        robots = sorted((Path(ck["merged"]) / "robot").glob("*.pkl"))
        assert [m["name"] for m in man["motions"]] == [r.stem for r in robots]
        assert man["num_motions"] == ck["exported"] == man["num_with_video"]
        for m, r in zip(man["motions"], robots, strict=True):
            assert m["frames"] == len(joblib.load(r)[r.stem]["dof"])
            assert (web / f"step_{ck['step']:06d}" / m["video"]).resolve().is_file()
    assert top["num_motions"] == sum(ck["exported"] for ck in result["checkpoints"])
    assert "grail-cluster serve" in result["serve"]


def test_demo_on_the_local_executor(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli_main(["demo", "--out", str(out), "--motions", "6", "--json", *SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    _check_demo(out, json.loads(captured.out))


@pytest.mark.slurm
def test_demo_on_the_real_slurm_cluster(tmp_path, capsys, slurm_cluster):
    out = tmp_path / "demo"
    code = cli_main(["demo", "--out", str(out), "--motions", "6", "--json", "cluster=slurm", *SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    result = json.loads(captured.out[captured.out.index("{"):])
    _check_demo(out, result)
    # The jobs really went through SLURM: the run ledger holds SLURM job ids.
    from grail_cluster.core.ledger import Ledger

    with Ledger(result["run_dir"]) as ledger:
        ids = [j.job_id for j in ledger.jobs()]
    assert ids and all(str(i).split("_")[0].isdigit() for i in ids)
