"""``select-top`` (§5.1): ranking, and its three sources read for real.

- experiment dir: real TensorBoard event files (tensorboard's own EventFileWriter, no torch/TF) and the
  watcher's ``eval/<step:06d>/train/metrics_eval.json``;
- offline W&B: runs written by the real ``wandb`` package (``mode="offline"``), read back by our
  transaction-log reader and cross-checked against ``wandb leet inspect --json``;
- online W&B: the API cannot be reached here, so a stand-in object is injected as ``api=`` (it
  mimics ``wandb.Api().run/runs`` and ``Run.history(samples, pandas=False, keys)``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from grail_cluster.core.errors import ConfigError, DataError
from grail_cluster.tools.data.select_rank import (
    EVAL_STEP,
    MPJPE_G,
    MPJPE_L,
    OBJ_POS,
    SR,
    checkpoint_name,
    rank_rows,
)
from grail_cluster.tools.data.select_top import group_sources, main, select_across, select_top
from grail_cluster.tools.data.wandb_offline import read_offline_run

# ----------------------------------------------------------------------------- test data


def _row(step, sr, mpjpe_l=None, obj=None, mpjpe_g=None):
    r = {EVAL_STEP: step, SR: sr}
    for k, v in ((MPJPE_L, mpjpe_l), (OBJ_POS, obj), (MPJPE_G, mpjpe_g)):
        if v is not None:
            r[k] = v
    return r


ROWS = [
    _row(500, 0.50, 40.0, 0.05, 60.0),
    _row(1000, 0.80, 35.0, 0.09, 55.0),
    _row(1500, 0.80, 30.0, 0.02, 50.0),  # ties 1000 on SR, better mpjpe_l and obj_pos_error
    _row(2000, 0.90, None, None),  # best SR, no tiebreak metrics
    _row(2500, 0.80, 32.0, None),  # tie on SR; missing obj_pos_error sorts last with --hoi
    {"train/loss": 1.0, "_step": 7},  # a training row: no eval metrics
    _row(3000, float("nan"), 10.0),  # NaN success rate: not an eval row
]


def write_tb_events(logdir: Path, rows, filename_suffix=""):
    """Real TensorBoard event file with eval scalars at step = eval_step."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    w = EventFileWriter(str(logdir), filename_suffix=filename_suffix)
    for r in rows:
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in r.items()
                  if k.startswith("eval/") and v is not None]
        w.add_event(event_pb2.Event(wall_time=time.time(), step=int(r[EVAL_STEP]),
                                    summary=summary_pb2.Summary(value=values)))
    w.add_event(event_pb2.Event(wall_time=time.time(), step=10, summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag="Episode_Reward/track", simple_value=1.0)])))
    w.close()


def make_experiment(root: Path, steps=(500, 1000, 1500, 2000, 2500), *, step_pad=6) -> Path:
    """A SONIC experiment dir (§2.4): checkpoints, last.pt, meta.yaml, config.yaml."""
    exp = root / "logs_rl" / "GRAB_Tracking" / "pnp_table-20260601_120000"
    exp.mkdir(parents=True)
    for s in steps:
        (exp / checkpoint_name(s, step_pad)).write_bytes(b"ckpt")
    (exp / "last.pt").write_bytes(b"ckpt")
    (exp / "meta.yaml").write_text("wandb_run: abc123\nmax_train_steps: 3000\n")
    (exp / "config.yaml").write_text("project_name: GRAB_Tracking\n")
    return exp


def write_metrics_eval(exp: Path, step: int, sr: float, mpjpe_l: float, obj: float) -> Path:
    f = exp / "eval" / f"{step:06d}" / "train" / "metrics_eval.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({SR: sr, "eval/success/progress_rate": 1.0, MPJPE_L: mpjpe_l, MPJPE_G: 2 * mpjpe_l,
                             OBJ_POS: obj, "failed_keys": [], "eval/all_metrics_dict": {"motion_keys": []}}))
    return f


# ----------------------------------------------------------------------------- ranking


def test_ranking_rules():
    top = rank_rows(ROWS, k=5)
    assert [t["eval_step"] for t in top] == [2000, 1500, 2500, 1000, 500]
    assert top[0] == {"rank": 1, "eval_step": 2000, "checkpoint": "model_step_002000.pt", "success_rate": 0.9,
                      "mpjpe_l": None, "mpjpe_g": None, "obj_pos_error": None}
    hoi = rank_rows(ROWS, k=5, hoi=True)
    assert [t["eval_step"] for t in hoi] == [2000, 1500, 1000, 2500, 500]
    assert [t["eval_step"] for t in rank_rows(ROWS, k=2, min_sr=0.8)] == [2000, 1500]
    assert rank_rows(ROWS, k=1, step_pad=0)[0]["checkpoint"] == "model_step_2000.pt"
    assert rank_rows(ROWS, k=1, step_pad=8)[0]["checkpoint"] == "model_step_00002000.pt"
    assert rank_rows(ROWS, min_sr=0.95) == []


def test_first_row_per_step_after_sorting():
    rows = [_row(500, 0.5, 10.0), _row(500, 0.7, 50.0), _row(1000, 0.6, 5.0), _row(500.0, 0.7, 20.0)]
    top = rank_rows(rows, k=5)
    # step 500 keeps its best row (SR 0.7, mpjpe_l 20 beats 50); float steps count as the same step
    assert [(t["eval_step"], t["success_rate"], t["mpjpe_l"]) for t in top] == [(500, 0.7, 20.0), (1000, 0.6, 5.0)]


# ----------------------------------------------------------------------------- experiment dir


def test_experiment_dir_tensorboard_and_watcher(tmp_path):
    exp = make_experiment(tmp_path)
    write_tb_events(exp, [r for r in ROWS if EVAL_STEP in r and r[SR] == r[SR]])
    # the watcher's JSON wins over TB for its step: 500 becomes the best checkpoint
    write_metrics_eval(exp, 500, 0.95, 25.0, 0.01)
    # a watcher-only step (not in TB) whose checkpoint exists
    (exp / "model_step_003000.pt").write_bytes(b"ckpt")
    write_metrics_eval(exp, 3000, 0.85, 26.0, 0.03)

    res = select_top(exp, k=3)
    assert [t["eval_step"] for t in res["top"]] == [500, 2000, 3000]
    assert res["top"][0]["mpjpe_g"] == 50.0 and res["top"][0]["success_rate"] == 0.95
    assert res["top"][1]["success_rate"] == pytest.approx(0.9)  # float32 in TB
    assert res["tiebreak_key"] == MPJPE_L and res["experiment_dir"] == str(exp.resolve())
    assert res["top"][2]["checkpoint_path"] == str(exp.resolve() / "model_step_003000.pt")
    # §5.1's keys, plus what the readers had to tolerate (nothing here)
    assert set(res) == {"run", "run_name", "group", "experiment_dir", "k", "min_sr", "step_pad", "hoi",
                        "tiebreak_key", "top", "warnings"}
    assert res["warnings"] == []
    assert set(res["top"][0]) == {"rank", "eval_step", "checkpoint", "success_rate", "mpjpe_l", "mpjpe_g",
                                  "obj_pos_error", "checkpoint_path"}
    hoi = select_top(experiment_dir=exp, k=4, hoi=True)
    assert [t["eval_step"] for t in hoi["top"]] == [500, 2000, 3000, 1500]


def test_cli_out_json_and_table(tmp_path, capsys):
    exp = make_experiment(tmp_path)
    write_tb_events(exp, ROWS[:5])
    out = tmp_path / "sel" / "top.json"
    assert main(["--experiment_dir", str(exp), "--k", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert json.loads(out.read_text()) == printed
    assert [t["eval_step"] for t in printed["top"]] == [2000, 1500]
    assert "model_step_001500.pt" in captured.err  # the table for people
    assert [p.name for p in out.parent.iterdir()] == ["top.json"]  # no temp file left
    assert main(["--experiment_dir", str(exp), "--k", "1", "--json"]) == 0
    assert capsys.readouterr().err == ""


def test_missing_checkpoint_is_an_error(tmp_path, capsys):
    exp = make_experiment(tmp_path, steps=(500, 1000, 1500, 2500))  # 2000 was never saved
    write_tb_events(exp, ROWS[:5])
    with pytest.raises(DataError, match="model_step_002000.pt"):
        select_top(exp, k=2)
    assert select_top(exp, k=2, check_files=False)["top"][0]["eval_step"] == 2000
    # step_pad must match the file names
    with pytest.raises(DataError, match="model_step_2000.pt"):
        select_top(exp, k=1, step_pad=0)
    assert main(["--experiment_dir", str(exp)]) == 1
    err = capsys.readouterr().err
    assert "model_step_002000.pt" in err and "fix:" in err and "Traceback" not in err


def test_no_eval_rows_and_bad_inputs(tmp_path):
    exp = make_experiment(tmp_path)
    with pytest.raises(DataError, match="no eval rows"):
        select_top(exp)
    with pytest.raises(DataError, match="experiment dir not found"):
        select_top(tmp_path / "nope")
    with pytest.raises(ConfigError):
        select_top()
    with pytest.raises(ConfigError):
        select_top(exp, k=0)
    bad = write_metrics_eval(exp, 500, 0.5, 1.0, 1.0)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="metrics_eval.json"):
        select_top(exp)
    with pytest.raises(SystemExit) as exc:  # --run and --group exclude each other: usage error
        main(["--run", "a", "--group", "b"])
    assert exc.value.code == 2


# ----------------------------------------------------------------------------- offline W&B (real wandb)

_WRITER = textwrap.dedent("""
    import json, sys, wandb
    spec = json.loads(sys.argv[1])
    run = wandb.init(mode="offline", dir=spec["dir"], project="GRAB_Tracking", group=spec["group"],
                     name=spec["name"], id=spec["id"], config={"experiment_dir": spec["exp"], "blob": spec["blob"]})
    run.define_metric("eval_step")
    run.define_metric("eval/*", step_metric="eval_step")
    for i, row in enumerate(spec["rows"]):
        wandb.log({"Episode_Reward/track": float(i), "global_step": 100 * i})
        wandb.log(row)
    run.finish(exit_code=spec.get("exit_code", 0))
""")


def write_offline_run(wandb_dir: Path, run_id: str, group: str, exp: Path, rows, exit_code=0, name=None, blob=0):
    spec = {"dir": str(wandb_dir), "id": run_id, "group": group, "name": name or f"exp/{run_id}",
            "exp": str(exp), "rows": rows, "exit_code": exit_code,
            "blob": "x" * blob}
    env = {"WANDB_SILENT": "true", "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin", "HOME": str(wandb_dir)}
    subprocess.run([sys.executable, "-c", _WRITER, json.dumps(spec)], check=True, env=env, timeout=120,
                   capture_output=True)


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    root = tmp_path_factory.mktemp("wb")
    exp = make_experiment(root)
    wdir = root / "tmp"
    good = [r for r in ROWS if EVAL_STEP in r and r[SR] == r[SR]]
    # group "g": run "short" has fewer eval rows; "long" wins by rows
    write_offline_run(wdir, "short", "g", exp, good[:2])
    # a 100 kB config value makes records span 32 KiB log blocks (FIRST/MIDDLE/LAST fragments)
    write_offline_run(wdir, "long", "g", exp, [{k: v for k, v in r.items() if v is not None} for r in good],
                      blob=100_000)
    write_offline_run(wdir, "other", "h", root / "elsewhere", good[:1], exit_code=1)
    return wdir, exp


def test_offline_reader_matches_leet(offline):
    wdir, exp = offline
    (run_dir,) = [p for p in (wdir / "wandb").iterdir() if p.name.endswith("-long")]
    ours = read_offline_run(run_dir)
    leet = read_offline_run(run_dir, reader="leet")
    assert ours.id == leet.id == "long" and ours.group == leet.group == "g" and ours.name == "exp/long"
    assert ours.config["experiment_dir"] == leet.config["experiment_dir"] == str(exp)
    assert ours.finished and leet.finished
    assert len(ours.config["blob"]) == 100_000 and run_dir.joinpath("run-long.wandb").stat().st_size > 3 * 32768
    assert ours.history == leet.history
    assert [r[EVAL_STEP] for r in ours.history if EVAL_STEP in r] == [500, 1000, 1500, 2000, 2500]
    assert not read_offline_run(next((wdir / "wandb").glob("*-other"))).finished


def test_offline_select(offline, tmp_path, capsys):
    wdir, exp = offline
    res = select_top(wandb_dir=wdir, group="g", k=3)
    assert res["run"] == "GRAB_Tracking/long" and res["run_name"] == "exp/long" and res["group"] == "g"
    assert res["experiment_dir"] == str(exp.resolve())
    assert [t["eval_step"] for t in res["top"]] == [2000, 1500, 2500]
    # "short" logged two eval steps: k=5 is refused, unless the user accepts fewer
    with pytest.raises(DataError, match="only 2 checkpoint step"):
        select_top(wandb_dir=wdir / "wandb", run="short", k=5)
    short = select_top(wandb_dir=wdir / "wandb", run="short", k=5, allow_fewer=True)
    assert [t["eval_step"] for t in short["top"]] == [1000, 500]
    # an experiment dir that is not the one the run logged: its steps would map onto the wrong files
    with pytest.raises(DataError, match="logged experiment_dir"):
        select_top(wandb_dir=wdir, group="g", experiment_dir=tmp_path)
    # the "other" run's experiment dir does not exist here: its checkpoint is reported missing
    with pytest.raises(DataError, match="model_step_000500.pt"):
        select_top(wandb_dir=wdir, group="h", k=1)
    with pytest.raises(DataError, match="no offline W&B run in group"):
        select_top(wandb_dir=wdir, group="zzz")
    assert main(["--group", "g", "--wandb_dir", str(wdir), "--k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top"][0]["eval_step"] == 2000


def test_offline_group_ranks_across_its_runs(offline, capsys):
    wdir, exp = offline
    # --group ranks across every run of the group; "short" and "long" log into one experiment dir
    # (a restart under a new W&B id), so each of its steps counts once.
    assert main(["--group", "g", "--wandb_dir", str(wdir), "--k", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["run"] is None and res["group"] == "g" and len(res["runs"]) == 2
    steps = [t["eval_step"] for t in res["top"]]
    assert steps[:3] == [2000, 1500, 2500] and len(steps) == len(set(steps))
    assert {t["experiment_dir"] for t in res["top"]} == {str(exp.resolve())}
    # --best_run: GRAIL's --group, only the run with the most eval rows.
    assert main(["--group", "g", "--wandb_dir", str(wdir), "--best_run", "--k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"] == "GRAB_Tracking/long"
    assert main(["--run", "long", "--wandb_dir", str(wdir), "--wandb_dir", str(wdir), "--json"]) == 2
    assert "only with --group" in capsys.readouterr().err


def test_offline_bad_log(tmp_path):
    run_dir = tmp_path / "wandb" / "offline-run-20260101_000000-bad"
    run_dir.mkdir(parents=True)
    (run_dir / "run-bad.wandb").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a W&B transaction log"):
        select_top(wandb_dir=tmp_path, run="bad")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no W&B run dirs"):
        select_top(wandb_dir=tmp_path / "empty", run="x")
    with pytest.raises(DataError, match="W&B dir not found"):
        select_top(wandb_dir=tmp_path / "not-there", run="x")


# ----------------------------------------------------------------------------- online W&B (stand-in API)


class FakeRun:
    """Stand-in for wandb.apis.public.Run (the online API is unreachable in tests).

    ``rows`` are what the run logged, one dict per ``wandb.log`` call; W&B numbers them with ``_step``.
    ``history(keys=[...])`` behaves as the real one does (wandb 0.31 ``Run.history`` -> ``sampledHistory``
    with spec keys ``[x_axis] + keys``): it returns only the rows that hold *every* requested key,
    projected onto those keys and ``_step`` (wandb/wandb issues 2266, 1742, 5391; ``scan_history``'s
    docstring says the same). Server-side down-sampling is not modelled, so a test asking for fewer
    samples than there are matching rows is refused here rather than silently answered in full."""

    def __init__(self, run_id, rows, state="finished", config=None, group="g"):
        self.id, self.name, self.group, self.state = run_id, f"exp/{run_id}", group, state
        self.path = ["nv-gear", "TRL_G1_Track", run_id]
        self.config = config if config is not None else {}
        self._rows = [{"_step": i, **r} for i, r in enumerate(rows)]
        self.calls = []

    def history(self, samples=500, keys=None, x_axis="_step", pandas=True, stream="default"):
        self.calls.append({"samples": samples, "pandas": pandas, "keys": keys})
        if pandas:
            raise NotImplementedError("the stand-in returns lists only; select-top must ask for pandas=False")
        if not keys:
            return [dict(r) for r in self._rows]
        spec = [x_axis, *keys]
        found = [{k: r[k] for k in spec} for r in self._rows if all(k in r for k in spec)]
        assert len(found) <= samples, "the stand-in does not down-sample like the W&B server"
        return found


class FakeApi:
    """Stand-in for wandb.Api(): records the paths and filters it was asked for."""

    def __init__(self, runs):
        self._runs = runs
        self.asked = []

    def run(self, path):
        self.asked.append(("run", path))
        rid = path.split("/")[-1]
        for r in self._runs:
            if r.id == rid:
                return r
        raise ValueError(f"Could not find run {path}")

    def runs(self, path, filters=None):
        self.asked.append(("runs", path, filters))
        return [r for r in self._runs if r.group == filters.get("group")]


def test_online_run_and_group(tmp_path):
    exp = make_experiment(tmp_path)
    rows = list(ROWS)  # every row as logged, the training row and the NaN success rate included
    a = FakeRun("a", rows, config={"experiment_dir": str(exp)})
    b = FakeRun("b", rows[:2], config={"experiment_save_dir": str(exp)})
    c = FakeRun("c", rows[:2], state="crashed")
    api = FakeApi([a, b, c])
    res = select_top(run="a", api=api, k=2, samples=123)
    assert api.asked == [("run", "nv-gear/TRL_G1_Track/a")]
    # One query for the rows that can rank, then one per tiebreak metric (each with the rows' own keys).
    assert a.calls == [{"samples": 123, "pandas": False, "keys": keys}
                       for keys in ([SR, EVAL_STEP], [SR, EVAL_STEP, MPJPE_L], [SR, EVAL_STEP, MPJPE_G],
                                    [SR, EVAL_STEP, OBJ_POS])]
    assert res["run"] == "nv-gear/TRL_G1_Track/a" and res["run_name"] == "exp/a" and res["group"] == "g"
    # 2000 logs no tiebreak metric at all: a single five-key query would never see the best row.
    assert [t["eval_step"] for t in res["top"]] == [2000, 1500]
    assert res["top"][0]["mpjpe_l"] is None and res["top"][1]["mpjpe_l"] == 30.0
    assert res["experiment_dir"] == str(exp.resolve())

    select_top(run="ent/proj/a", api=api, k=1)
    assert api.asked[-1] == ("run", "ent/proj/a")

    res = select_top(group="g", api=api, entity="e", project="p", k=5)
    assert api.asked[-1] == ("runs", "e/p", {"group": "g"})
    assert res["run"].endswith("/a")  # most eval rows
    # b and c tie on rows: the finished one wins; b's config uses experiment_save_dir
    res = select_top(group="g", api=FakeApi([c, b]), k=1)
    assert res["run"].endswith("/b") and res["experiment_dir"] == str(exp.resolve())

    # no experiment dir in the config: no paths, no file check
    res = select_top(run="c", api=api, k=1)
    assert res["experiment_dir"] is None and res["top"][0]["checkpoint_path"] is None


def test_stand_in_drops_rows_without_every_key():
    # The stand-in itself, against what W&B documents: rows lacking a requested key are left out.
    run = FakeRun("x", [{SR: 0.5, EVAL_STEP: 1}, {SR: 0.6}, {"train/loss": 1.0}])
    assert run.history(pandas=False, keys=[SR, EVAL_STEP]) == [{"_step": 0, SR: 0.5, EVAL_STEP: 1}]
    assert run.history(pandas=False, keys=[SR]) == [{"_step": 0, SR: 0.5}, {"_step": 1, SR: 0.6}]
    assert run.history(pandas=False, keys=[SR, OBJ_POS]) == []
    assert len(run.history(pandas=False)) == 3


def test_online_run_without_object_errors_still_ranks(tmp_path):
    # A terrain tracker never logs eval/all/obj_pos_error. The real API then answers GRAIL's five-key
    # query with no rows at all; asked per metric, the run ranks on its success rate and mpjpe_l.
    logged = [{"train/loss": 2.0, "global_step": 100}]
    for step, sr, mpjpe_l in ((500, 0.60, 41.0), (1000, 0.75, 38.0), (1500, 0.75, 33.5), (2000, 0.70, 30.0)):
        logged += [{EVAL_STEP: step, SR: sr, MPJPE_L: mpjpe_l, MPJPE_G: mpjpe_l + 20}, {"train/loss": 1.0}]
    run = FakeRun("terrain", logged, config={})
    assert run.history(pandas=False, keys=[SR, MPJPE_L, MPJPE_G, OBJ_POS, EVAL_STEP]) == []
    res = select_top(run="terrain", api=FakeApi([run]), k=3)
    assert [(t["eval_step"], t["success_rate"], t["mpjpe_l"], t["mpjpe_g"], t["obj_pos_error"]) for t in res["top"]] \
        == [(1500, 0.75, 33.5, 53.5, None), (1000, 0.75, 38.0, 58.0, None), (2000, 0.70, 30.0, 50.0, None)]
    # With --hoi the missing object error is +inf for every row: SR alone orders, history order breaks ties.
    res = select_top(run="terrain", api=FakeApi([run]), k=2, hoi=True)
    assert [t["eval_step"] for t in res["top"]] == [1000, 1500]


def test_online_errors():
    api = FakeApi([])
    with pytest.raises(DataError, match="W&B API request failed"):
        select_top(run="nope", api=api)
    with pytest.raises(DataError, match="no W&B runs in group"):
        select_top(group="g", api=api)


def test_online_group_across_its_runs():
    # Two points of a sweep in group "sw", each with its own experiment dir: the best of each ranks together.
    p0 = FakeRun("p0", [{EVAL_STEP: 10, SR: 0.5, MPJPE_L: 3.0}, {EVAL_STEP: 20, SR: 0.8, MPJPE_L: 2.0}],
                 config={"experiment_dir": {"value": "/sweep/experiments/p000"}}, group="sw")
    p1 = FakeRun("p1", [{EVAL_STEP: 10, SR: 0.9, MPJPE_L: 9.0}, {EVAL_STEP: 20, SR: 0.8, MPJPE_L: 1.0}],
                 config={"experiment_dir": "/sweep/experiments/p001"}, group="sw")
    api = FakeApi([p0, p1, FakeRun("other", [{EVAL_STEP: 10, SR: 1.0}], group="x")])
    sources = group_sources("sw", api=api)
    assert api.asked == [("runs", "nv-gear/TRL_G1_Track", {"group": "sw"})]
    res = select_across(sources=sources, group="sw", k=3, check_files=False)
    assert [(e["run_name"], e["eval_step"]) for e in res["top"]] == [("exp/p1", 10), ("exp/p1", 20), ("exp/p0", 20)]
    assert res["top"][0]["checkpoint_path"] == "/sweep/experiments/p001/model_step_000010.pt"
    with pytest.raises(DataError, match="no W&B runs in group"):
        group_sources("none", api=api)
