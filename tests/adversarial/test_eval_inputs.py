"""Hostile inputs to the readers of eval results: select-top (experiment dirs, TensorBoard, offline
W&B), summarize (metrics_eval.json shards) and bps (USD meshes), called as a user calls the CLI.

Inputs are written by hand from contracts §2.4-§2.5, §4.2 and §1.6 (checkpoint names, W&B/TB keys,
metrics lists, USDA text), by the real writers (tensorboard's EventFileWriter, the wandb package in
offline mode), then broken the way clusters break them: torn, truncated, bit-flipped, empty, NaN,
percentages, the wrong run's logs. Each refusal: the exit code, no traceback, the file (and key)
named with a fix, the inputs byte-for-byte unchanged, no complete-looking output, and no pickle run.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.adversarial.harness import (
    assert_absent,
    assert_no_traceback,
    assert_refused,
    assert_unchanged,
    canary_pickle,
    run_cli,
    snapshot,
)
from tests.test_select_top import write_offline_run, write_tb_events

SR, MPJPE_L, EVAL_STEP = "eval/success/success_rate", "eval/all/mpjpe_l", "eval_step"
GOOD = [{EVAL_STEP: 500, SR: 0.50, MPJPE_L: 40.0}, {EVAL_STEP: 1000, SR: 0.80, MPJPE_L: 35.0},
        {EVAL_STEP: 1500, SR: 0.85, MPJPE_L: 30.0}]


def make_exp(root: Path, steps=(500, 1000, 1500), wandb_run: str | None = None) -> Path:
    """§2.4 by hand: model_step_{step:06d}.pt, last.pt, meta.yaml, config.yaml."""
    exp = root / "logs_rl" / "GRAB_Tracking" / "pnp_table_pnp_table-20260601_120000"
    exp.mkdir(parents=True)
    for s in steps:
        (exp / f"model_step_{s:06d}.pt").write_bytes(b"checkpoint")
    (exp / "last.pt").write_bytes(b"checkpoint")
    (exp / "meta.yaml").write_text(f"wandb_run: {wandb_run or 'abcd1234'}\nmax_train_steps: 2000\n")
    (exp / "config.yaml").write_text("project_name: GRAB_Tracking\n")
    return exp


def watcher_json(exp: Path, step: int, data) -> Path:
    """The eval watcher's eval/<step:06d>/train/metrics_eval.json (§2.5)."""
    f = exp / "eval" / f"{step:06d}" / "train" / "metrics_eval.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(data if isinstance(data, str) else json.dumps(data))
    return f


def _tb_exp(tmp_path, rows=GOOD) -> tuple[Path, Path]:
    exp = make_exp(tmp_path)
    write_tb_events(exp, rows)
    (ev,) = exp.glob("events.out.tfevents.*")
    return exp, ev


def _select(exp, *extra, out=None):
    args = ["select-top", "--experiment_dir", exp, "--k", "2", *extra]
    return run_cli(args + (["--out", out] if out else []))


# ----------------------------------------------------------------------------- select-top: experiment dir


def test_tb_garbage_file_is_refused(tmp_path):
    exp, ev = _tb_exp(tmp_path)
    ev.write_bytes(bytes(range(256)) * 8)
    before, out = snapshot(exp), tmp_path / "top.json"
    res = _select(exp, out=out)
    assert_refused(res, code=1, names=[ev.name, "not a TensorBoard event file"])
    assert_unchanged(before, exp)
    assert_absent(out)


def test_tb_bit_flip_in_an_eval_record_is_refused(tmp_path):
    """TensorBoard's own loader stopped at the damage and ranked what came before, exit 0."""
    exp, ev = _tb_exp(tmp_path)
    data = bytearray(ev.read_bytes())
    pos = data.index(MPJPE_L.encode()) + len(MPJPE_L) + 2  # inside the first eval record's value
    data[pos] ^= 0x40
    ev.write_bytes(bytes(data))
    before, out = snapshot(exp), tmp_path / "top.json"
    res = _select(exp, out=out)
    assert_refused(res, code=1, names=[ev.name, "corrupt"])
    assert_unchanged(before, exp)
    assert_absent(out)


def test_tb_good_file_beside_a_garbage_one_is_refused(tmp_path):
    exp, ev = _tb_exp(tmp_path)
    bad = exp / "events.out.tfevents.1790000000.node7.99.0"
    bad.write_bytes(b"\x00" * 7 + b"not an event file")
    res = _select(exp)
    assert_refused(res, code=1, names=[bad.name])


def test_tb_torn_tail_is_read_and_said(tmp_path):
    exp, ev = _tb_exp(tmp_path)
    ev.write_bytes(ev.read_bytes()[:-9])  # the trainer's last (training) event torn
    res = _select(exp, "--json")
    assert res.code == 0, res.text
    assert_no_traceback(res)
    assert "torn record" in res.stderr and ev.name in res.stderr
    assert [t["eval_step"] for t in json.loads(res.stdout)["top"]] == [1500, 1000]


def test_nan_success_rate_is_never_the_best(tmp_path):
    exp, _ = _tb_exp(tmp_path, GOOD + [{EVAL_STEP: 2000, SR: float("nan"), MPJPE_L: 1.0}])
    (exp / "model_step_002000.pt").write_bytes(b"checkpoint")
    res = _select(exp, "--json")
    assert res.code == 0, res.text
    top = json.loads(res.stdout)
    assert [t["eval_step"] for t in top["top"]] == [1500, 1000]
    assert any("non-finite" in w and "2000" in w for w in top["warnings"])


def test_only_nan_success_rates_is_refused(tmp_path):
    exp, _ = _tb_exp(tmp_path, [{**r, SR: float("nan")} for r in GOOD])
    res = _select(exp)
    assert_refused(res, code=1, names=[str(exp.name), "no eval rows", "non-finite"])


def test_success_rate_as_a_percentage_is_refused(tmp_path):
    exp = make_exp(tmp_path)
    watcher_json(exp, 500, {SR: 0.5})
    f = watcher_json(exp, 1000, {SR: 85.0})
    res = _select(exp)
    assert_refused(res, code=1, names=[SR, "85", "outside [0, 1]"])
    assert f.exists()


def test_selected_checkpoint_missing_is_refused(tmp_path):
    exp, _ = _tb_exp(tmp_path)
    (exp / "model_step_001500.pt").unlink()
    out = tmp_path / "top.json"
    res = _select(exp, out=out)
    assert_refused(res, code=1, names=["model_step_001500.pt", "missing"])
    assert_absent(out)


def test_selected_checkpoint_empty_is_refused(tmp_path):
    exp, _ = _tb_exp(tmp_path)
    (exp / "model_step_001500.pt").write_bytes(b"")
    res = _select(exp)
    assert_refused(res, code=1, names=["model_step_001500.pt", "empty"])


def test_checkpoints_are_never_unpickled(tmp_path):
    exp, _ = _tb_exp(tmp_path)
    witness = tmp_path / "PWNED"
    for s in (500, 1000, 1500):
        canary_pickle(exp / f"model_step_{s:06d}.pt", witness)
    res = _select(exp, "--json")
    assert res.code == 0, res.text
    assert not witness.exists()


def test_k_larger_than_the_evaluated_steps(tmp_path):
    exp, _ = _tb_exp(tmp_path)
    out = tmp_path / "top.json"
    res = run_cli(["select-top", "--experiment_dir", exp, "--k", "5", "--out", out])
    assert_refused(res, code=1, names=["only 3 checkpoint step(s) qualify", "--k 3", "--allow_fewer"])
    assert_absent(out)
    res = run_cli(["select-top", "--experiment_dir", exp, "--k", "5", "--allow_fewer", "--json"])
    assert res.code == 0 and len(json.loads(res.stdout)["top"]) == 3


@pytest.mark.parametrize("what", ["file", "missing"])
def test_experiment_dir_that_is_not_a_dir(tmp_path, what):
    exp = tmp_path / "pnp_table-20260601_120000"
    if what == "file":
        exp.write_text("not a dir")
    res = _select(exp)
    assert_refused(res, code=1, names=[str(exp), "is a file" if what == "file" else "not found"])


@pytest.mark.parametrize("content", ["{not json", "[0.9, 0.8]", '"done"'])
def test_watcher_metrics_that_are_not_a_mapping(tmp_path, content):
    exp = make_exp(tmp_path)
    f = watcher_json(exp, 500, content)
    before = snapshot(exp)
    res = _select(exp)
    assert_refused(res, code=1, names=[str(f)])
    assert_unchanged(before, exp)


# ----------------------------------------------------------------------------- select-top: offline W&B


@pytest.fixture(scope="module")
def wandb_runs(tmp_path_factory):
    """Real offline runs (the wandb package): 'good' logs GOOD for its experiment; 'nostep' logs success
    rates without eval_step."""
    root = tmp_path_factory.mktemp("wandb")
    exp = make_exp(root, wandb_run="good")
    wdir = root / "wb"
    write_offline_run(wdir, "good", "g", exp, GOOD)
    write_offline_run(wdir / "nostep", "nostep", "h", exp, [{SR: 0.9, MPJPE_L: 10.0}])
    (good,) = (wdir / "wandb").glob("*-good")
    return root, exp, good


def _copy_run(wandb_runs, tmp_path) -> tuple[Path, Path, Path]:
    root, exp, good = wandb_runs
    run_dir = tmp_path / "wandb" / good.name
    shutil.copytree(good, run_dir)
    return exp, run_dir, run_dir / "run-good.wandb"


@pytest.mark.parametrize("damage", ["empty", "garbage", "bit_flip"])
def test_damaged_wandb_log_is_refused(wandb_runs, tmp_path, damage):
    exp, run_dir, log = _copy_run(wandb_runs, tmp_path)
    data = log.read_bytes()
    if damage == "empty":
        log.write_bytes(b"")
    elif damage == "garbage":
        log.write_bytes(b"PK\x03\x04" + data[4:])
    else:
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        log.write_bytes(bytes(flipped))
    before, out = snapshot(tmp_path / "wandb", exp), tmp_path / "top.json"
    res = run_cli(["select-top", "--run", "good", "--wandb_dir", tmp_path / "wandb", "--k", "1", "--out", out])
    assert_refused(res, code=1, names=["run-good.wandb"])
    assert_unchanged(before, tmp_path / "wandb", exp)
    assert_absent(out)


def test_torn_wandb_log_is_read_and_said(wandb_runs, tmp_path):
    exp, run_dir, log = _copy_run(wandb_runs, tmp_path)
    log.write_bytes(log.read_bytes()[:-5])
    res = run_cli(["select-top", "--run", "good", "--wandb_dir", tmp_path / "wandb", "--k", "1", "--json",
                   "--allow_fewer"])
    assert_no_traceback(res)
    assert "torn record" in res.stderr and "run-good.wandb" in res.stderr


def test_rows_logged_without_eval_step(wandb_runs):
    """wandb fills a missing step metric with its own value (0 here): no model_step_000000.pt was saved,
    so the selection is refused by name rather than pointing at a checkpoint that does not exist."""
    root, exp, _ = wandb_runs
    res = run_cli(["select-top", "--run", "nostep", "--wandb_dir", root / "wb" / "nostep", "--k", "1"])
    assert_refused(res, code=1, names=["model_step_000000.pt", "missing"])


def test_wandb_dir_with_no_runs_and_a_file(tmp_path):
    (tmp_path / "empty").mkdir()
    res = run_cli(["select-top", "--run", "x", "--wandb_dir", tmp_path / "empty"])
    assert_refused(res, code=1, names=[str(tmp_path / "empty"), "offline-run-"])
    (tmp_path / "afile").write_text("x")
    res = run_cli(["select-top", "--run", "x", "--wandb_dir", tmp_path / "afile"])
    assert_refused(res, code=1, names=[str(tmp_path / "afile"), "is a file"])


def test_another_experiments_wandb_run_is_refused(wandb_runs, tmp_path):
    """Every run saves model_step_000500.pt...: the wrong run's steps would select this dir's files."""
    other = make_exp(tmp_path / "other")
    res = run_cli(["select-top", "--wandb_dir", wandb_runs[2], "--experiment_dir", other, "--k", "1"])
    assert_refused(res, code=1, names=["meta.yaml", "abcd1234", "good"])


def test_garbage_meta_yaml_is_refused(wandb_runs, tmp_path):
    exp = make_exp(tmp_path)
    (exp / "meta.yaml").write_text("wandb_run: [unclosed\n")
    res = run_cli(["select-top", "--wandb_dir", wandb_runs[2], "--experiment_dir", exp, "--k", "1"])
    assert_refused(res, code=1, names=[str(exp / "meta.yaml"), "not valid YAML"])


# ----------------------------------------------------------------------------- summarize


def shard(exp: Path, step: int, rank: int, body) -> Path:
    """eval/step_{S}/phase1_shard_{i}/metrics_eval.json written by hand (§4.2)."""
    f = exp / "eval" / f"step_{step}" / f"phase1_shard_{rank}" / "metrics_eval.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(body if isinstance(body, str) else json.dumps(body, allow_nan=True))
    return f


def metrics(keys, terminated, **lists):
    return {SR: 1.0, MPJPE_L: 31.5, "eval/all/obj_pos_error": 0.02,
            "eval/all_metrics_dict": {"motion_keys": keys, "terminated": terminated,
                                      "progress": [1.0] * len(keys), **lists}}


def test_summarize_hand_written_shards_control(tmp_path):
    """The control, straight from §5.2: success = not terminated, over every shard."""
    shard(tmp_path, 1000, 0, metrics(["a", "b"], [False, True]))
    shard(tmp_path, 1000, 1, metrics(["c", "d"], [False, False]))
    res = run_cli(["summarize", "--exp_dir", tmp_path, "--json"])
    assert res.code == 0, res.text
    (step,) = json.loads(res.stdout)["steps"]
    assert (step["total_motions"], step["total_success"], step["partial"]) == (4, 3, False)
    assert math.isclose(step["real_success_rate"], 0.75)


BAD_SHARDS = {
    "not_json": ("{\"eval/all_metrics_dict\": {\"motion_keys\": [", "invalid JSON"),
    "a_list": ("[1, 2, 3]", "eval/all_metrics_dict"),
    "no_table": ({SR: 0.9}, "eval/all_metrics_dict"),
    "lengths_differ": (metrics(["a", "b", "c"], [False, True]), "terminated"),
    "terminated_null": (metrics(["a", "b"], [None, False]), "terminated[0]"),
    "terminated_strings": (metrics(["a", "b"], ["false", "false"]), "terminated[0]"),
    "terminated_nan": ('{"eval/all_metrics_dict": {"motion_keys": ["a"], "terminated": [NaN]}}', "terminated[0]"),
    "no_terminated": ({"eval/all_metrics_dict": {"motion_keys": ["a", "b"]}}, "no `terminated` list"),
    "progress_strings": (metrics(["a"], [False], progress=["done"]), "progress[0]"),
    "keys_twice": (metrics(["a", "a"], [False, True]), "twice"),
}


@pytest.mark.parametrize("name", sorted(BAD_SHARDS))
def test_summarize_unreadable_shard_is_named_never_counted(tmp_path, name):
    """Before: null counted as a success, "false" as a failure, exit 0 with a rate over the wrong motions."""
    body, why = BAD_SHARDS[name]
    shard(tmp_path, 1000, 0, metrics(["x", "y"], [False, True]))
    bad = shard(tmp_path, 1000, 1, body)
    before = snapshot(tmp_path / "eval")
    res = run_cli(["summarize", "--exp_dir", tmp_path, "--json"])
    assert res.code == 0, res.text
    assert_no_traceback(res)
    out = json.loads(res.stdout)
    (step,) = out["steps"]
    assert (step["total_motions"], step["total_success"], step["partial"]) == (2, 1, True)
    assert any(str(bad) in p and why in p for p in out["problems"]), out["problems"]
    fatal = run_cli(["summarize", "--exp_dir", tmp_path, "--missing_shards_fatal"])
    assert_refused(fatal, code=1, names=[str(bad), why])
    assert_unchanged(before, tmp_path / "eval")


def test_summarize_nan_and_string_scalars(tmp_path):
    """A string scalar crashed the means (traceback); NaN wrote invalid JSON."""
    shard(tmp_path, 1000, 0, {**metrics(["a"], [False]), MPJPE_L: "n/a", SR: float("nan")})
    shard(tmp_path, 1000, 1, {**metrics(["b"], [True]), MPJPE_L: float("nan")})
    out = tmp_path / "summary.json"
    res = run_cli(["summarize", "--exp_dir", tmp_path, "--json", "--out", out])
    assert res.code == 0, res.text
    data = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert data["steps"][0]["mean_mpjpe_l"] is None and data["steps"][0]["shards"][0]["wandb_sr"] is None


def test_summarize_duplicate_keys_across_shards(tmp_path):
    a = shard(tmp_path, 1000, 0, metrics(["a", "b"], [False, False]))
    b = shard(tmp_path, 1000, 1, metrics(["b", "c"], [True, False]))
    res = run_cli(["summarize", "--exp_dir", tmp_path, "--missing_shards_fatal"])
    assert_refused(res, code=1, names=[str(a), str(b), "more than one shard"])


def test_summarize_empty_shard_dir_is_missing(tmp_path):
    shard(tmp_path, 1000, 0, metrics(["a"], [False]))
    empty = tmp_path / "eval" / "step_1000" / "phase1_shard_1"
    empty.mkdir()
    res = run_cli(["summarize", "--exp_dir", tmp_path, "--missing_shards_fatal"])
    assert_refused(res, code=1, names=[str(empty / "metrics_eval.json"), "missing"])


def test_summarize_no_eval_and_a_bad_compare(tmp_path):
    res = run_cli(["summarize", "--exp_dir", tmp_path])
    assert_refused(res, code=1, names=[str(tmp_path / "eval"), "phase1_shard"])
    shard(tmp_path, 1000, 0, metrics(["a"], [False]))
    top = tmp_path / "top.json"
    top.write_text('{"top": "not a list"}')
    res = run_cli(["summarize", "--exp_dir", tmp_path, "--compare", top])
    assert_refused(res, code=1, names=[str(top)])


# ----------------------------------------------------------------------------- bps

TRI = "int[] faceVertexCounts = [3, 3]\n  int[] faceVertexIndices = [0, 1, 2, 0, 2, 3]\n"


def usda(points: str, faces: str = TRI) -> str:
    return f'#usda 1.0\ndef Mesh "obj" {{\n  {faces}  point3f[] points = [{points}]\n}}\n'


GOOD_USD = usda("(0, 0, 0), (0.1, 0, 0), (0.1, 0.1, 0), (0, 0.1, 0.05)")
BAD_USDS = {
    "not_usd": ("this is a text file, not USD\n", "unreadable USD"),
    "zip_named_usd": ("PK\x03\x04garbage", "unreadable USD"),
    "empty_mesh": (usda("", "int[] faceVertexCounts = []\n  int[] faceVertexIndices = []\n"), "no Mesh prim"),
    "nan_points": (usda("(0, 0, 0), (nan, 0, 0), (0.1, 0.1, 0), (0, 0.1, 0)"), "NaN or infinite"),
    "inf_points": (usda("(0, 0, 0), (inf, 0, 0), (0.1, 0.1, 0), (0, 0.1, 0)"), "NaN or infinite"),
    "one_point": (usda("(1, 1, 1), (1, 1, 1), (1, 1, 1), (1, 1, 1)"), "collapses to a point"),
    "faces_out_of_range": (usda("(0, 0, 0), (0.1, 0, 0), (0.1, 0.1, 0)"), "inconsistent face indices"),
}


@pytest.mark.parametrize("name", sorted(BAD_USDS))
def test_bps_bad_usd_is_refused_and_nothing_written(tmp_path, name):
    text, why = BAD_USDS[name]
    usd_dir, out = tmp_path / "object_usd", tmp_path / "bps"
    usd_dir.mkdir()
    (usd_dir / "good_0__000.usda").write_text(GOOD_USD)
    bad = usd_dir / "bad_0__000.usda"
    bad.write_text(text)
    before = snapshot(usd_dir)
    res = run_cli(["bps", "--usd_dir", usd_dir, "--output_dir", out])
    assert_refused(res, code=1, names=[bad.name, why])
    assert_unchanged(before, usd_dir)
    assert_absent(out)


@pytest.mark.parametrize("where", ["same", "library_root", "a_file"])
def test_bps_output_dir_that_would_destroy_inputs(tmp_path, where):
    """--output_dir is replaced as a whole: given the USD dir or the library root, it deleted them."""
    lib = tmp_path / "lib"
    usd_dir = lib / "object_usd"
    usd_dir.mkdir(parents=True)
    (usd_dir / "good_0__000.usda").write_text(GOOD_USD)
    (lib / "robot").mkdir()
    (lib / "robot" / "good_0__000.pkl").write_bytes(b"robot")
    out = {"same": usd_dir, "library_root": lib, "a_file": lib / "robot" / "good_0__000.pkl"}[where]
    before = snapshot(lib)
    res = run_cli(["bps", "--usd_dir", usd_dir, "--output_dir", out])
    assert_refused(res, code=2, names=[str(out)])
    assert_unchanged(before, lib)
