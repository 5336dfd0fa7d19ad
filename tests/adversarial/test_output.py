"""Output a person can grep (issue 13 §5): without a terminal every key and path prints whole on one line.

Each case runs grail-cluster by absolute path with the venv off PATH and stdout to a pipe or a file
(``> log``, as a SLURM job's output), on inputs no generator here names so: 120-character motion keys,
unicode keys, keys holding rich markup (``[red]``, ``[bold]``: data, to print literally), keys and
library paths with spaces, deep paths. Each asserts the needle is whole on one line (what
``grep -F`` needs), that real ``grep`` finds it in the log file, and that nothing raised a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import joblib
import pytest

from tests.adversarial.harness import (
    assert_greppable,
    assert_no_traceback,
    assert_refused,
    run_cli,
    run_cli_to_file,
)
from tests.conftest import base_overrides, make_sonic_root
from tests.libgen import make_ha_pair, make_library

LONG_KEY = "pickup_table__" + "longobjectname" * 8 + "_0__000"  # 136 characters
MARKUP_KEY = "pickup_table__[red]mug[bold]_0__000"  # rich would eat both tags
UNICODE_KEY = "pickup_table__äpfel_日本語_0__000"
SPACE_KEY = "pickup table__mug with space_0__000"
KEYS = (LONG_KEY, MARKUP_KEY, UNICODE_KEY, SPACE_KEY)
DEEP = "deep dir with spaces/" + "/".join(f"level_{i:02d}_" + "x" * 20 for i in range(6))


def rekey(lib: Path, old: str, new: str) -> None:
    """Rename a motion everywhere the contracts put its key: the robot/objects pickles' single
    top-level key (= the file stem, §1.2/§1.3), meta/, object_usd/<key>.usd and bps/<key>.npy."""
    for sub in ("robot", "objects"):
        (inner,) = joblib.load(lib / sub / f"{old}.pkl").values()
        joblib.dump({new: inner}, lib / sub / f"{new}.pkl")
        os.unlink(lib / sub / f"{old}.pkl")
    for sub, ext in (("meta", "pkl"), ("object_usd", "usd"), ("bps", "npy")):
        if (lib / sub / f"{old}.{ext}").exists():
            os.replace(lib / sub / f"{old}.{ext}", lib / sub / f"{new}.{ext}")


@pytest.fixture(scope="module")
def hostile_lib(tmp_path_factory) -> Path:
    """A healthy retarget library under a deep path with spaces whose motions carry the hostile keys."""
    lib = tmp_path_factory.mktemp("output") / DEEP / "motion lib"
    info = make_library(lib, len(KEYS), fast=True)
    for old, new in zip(info.keys, KEYS, strict=True):
        rekey(lib, old, new)
    return lib


def _grep(log: Path, needle: str) -> bool:
    """The real grep, as the user would run it on the log."""
    return subprocess.run(["grep", "-qF", "--", needle, str(log)], check=False).returncode == 0


@pytest.mark.parametrize("key", KEYS, ids=["long", "markup", "unicode", "spaces"])
def test_index_prints_each_key_whole_in_a_log(hostile_lib, tmp_path, key):
    log = tmp_path / "index.log"
    res = run_cli_to_file(["index", hostile_lib, "--all", "--no-cache"], log)
    assert res.code == 0, res.text
    assert_no_traceback(res)
    assert_greppable(res.stdout, key, str(hostile_lib))
    assert _grep(log, key)
    assert sum(key in line for line in res.stdout.splitlines()) == 1  # one row, one line


def test_markup_in_keys_prints_literally_not_as_style(hostile_lib):
    res = run_cli(["index", hostile_lib, "--all"])
    assert res.code == 0, res.text
    assert "[red]mug[bold]" in res.stdout
    assert "pickup_table__mug_0__000" not in res.stdout  # what rich would print after eating the tags


def test_doctor_findings_name_key_and_path_whole(hostile_lib, tmp_path):
    """Two broken motions: their findings (key, path, fix) each whole on a line of the log."""
    import shutil

    lib = tmp_path / DEEP / "broken lib"
    shutil.copytree(hostile_lib, lib)
    (lib / "object_usd" / f"{LONG_KEY}.usd").unlink()
    (lib / "objects" / f"{MARKUP_KEY}.pkl").unlink()
    log = tmp_path / "doctor.log"
    res = run_cli_to_file(["doctor", lib, "--no-cache"], log)
    assert_refused(res, code=1, names=(LONG_KEY, MARKUP_KEY, str(lib / "object_usd"), str(lib / "objects")))
    assert_greppable(res.stdout, LONG_KEY, MARKUP_KEY, str(lib / "object_usd"), str(lib / "objects"), str(lib))
    for needle in (LONG_KEY, MARKUP_KEY, str(lib / "object_usd")):
        assert _grep(log, needle), needle
    # Each finding is one line: its key and the file it names share that line.
    line = next(ln for ln in res.stdout.splitlines() if LONG_KEY in ln)
    assert str(lib / "object_usd") in line and "error" in line


def test_doctor_json_is_unchanged_json(hostile_lib):
    res = run_cli(["doctor", hostile_lib, "--json"])
    assert_no_traceback(res)
    data = json.loads(res.stdout)
    assert data["num_motions"] == len(KEYS)


def test_plan_run_and_status_print_a_long_run_id_and_deep_run_dir_whole(tmp_path):
    """A real local run whose evaluator writes nothing (SONIC cannot run here): its eval shards fail,
    and `status` names them and the run whole, one line each."""
    import sys

    from tests.evalgen import checkpoint_files

    _, ha = make_ha_pair(tmp_path / "data", "pickup_table", 6, fast=True)
    sonic = make_sonic_root(tmp_path / "SONIC")
    run_id = "review-" + "r" * 110
    root = tmp_path / DEEP / "run root"
    (ckpt,) = checkpoint_files(tmp_path / "exp", (1000,))
    overrides = [*base_overrides(tmp_path, ha.root, sonic, f"run.id={run_id}", "eval.num_shards=2",
                                 f"select.checkpoints=[{ckpt}]", "render.enabled=false", "cluster.gpus=[0]",
                                 f"job.python={sys.executable}", f"sonic.python={sys.executable}"),
                 f"run.root={root}"]
    res = run_cli_to_file(["plan", *overrides], tmp_path / "plan.log", cwd=tmp_path)
    assert res.code == 0, res.text
    run_dir = root / run_id
    assert_greppable(res.stdout, run_id, str(run_dir / "plan.json"))
    res = run_cli_to_file(["run", *overrides], tmp_path / "run.log", cwd=tmp_path, timeout=600)
    assert res.code == 1, res.text  # the eval shards failed: the run says so
    assert_no_traceback(res)
    log = tmp_path / "status.log"
    res = run_cli_to_file(["status", run_dir], log, cwd=tmp_path)
    assert res.code == 1, res.text
    assert_no_traceback(res)
    assert_greppable(res.stdout, f"run {run_id} (local)", "eval 0 failed", "eval 1 failed",
                     f"grail-cluster resubmit {run_dir}")
    assert _grep(log, run_id) and _grep(log, f"grail-cluster resubmit {run_dir}")


def _metrics(shard: Path, keys: list[str], terminated: list[bool]) -> None:
    """metrics_eval.json written by hand from contracts §4.2 (parallel lists in sorted key order)."""
    shard.mkdir(parents=True)
    (shard / "metrics_eval.json").write_text(json.dumps(
        {"eval/success/success_rate": 1.0,
         "eval/all_metrics_dict": {"motion_keys": keys, "terminated": terminated}}, ensure_ascii=False))


def test_summarize_prints_a_deep_exp_dir_and_the_partial_flag_whole(tmp_path):
    exp = tmp_path / DEEP / "exp [red]dir[bold]"
    _metrics(exp / "eval" / "step_000500" / "phase1_shard_0", sorted(KEYS[:2]), [False, True])
    _metrics(exp / "eval" / "step_000500" / "phase1_shard_1", sorted(KEYS[2:]), [False, False])
    log = tmp_path / "summarize.log"
    res = run_cli_to_file(["summarize", "--exp_dir", exp, "--num_shards", "3"], log)
    assert res.code == 0, res.text
    assert_no_traceback(res)
    assert_greppable(res.stdout, str(exp), "3/4", "75.00% PARTIAL", "step 500: PARTIAL real SR over 2 of 3 shards",
                     "step 500 shard 2: missing")
    assert _grep(log, str(exp))


def test_web_prints_its_output_path_whole(hostile_lib, tmp_path):
    out = tmp_path / DEEP / "site [bold]x"
    log = tmp_path / "web.log"
    res = run_cli_to_file(["web", "--motion_lib", hostile_lib, "--output", out], log)
    assert res.code == 0, res.text
    assert_greppable(res.stdout, f"wrote {out}:", f"grail-cluster serve {out}")
    names = {m["name"] for m in json.loads((out / "manifest.json").read_text())["motions"]}
    assert names == set(KEYS)


def test_error_naming_a_path_with_markup_prints_it_literally(tmp_path):
    missing = tmp_path / DEEP / "no [red]such[bold] library"
    res = run_cli(["doctor", missing])
    assert_refused(res, names=(str(missing),), fix=False)
    assert_greppable(res.stderr, str(missing))


def test_dry_run_rules_keep_long_spec_paths_whole(tmp_path):
    """`run --dry-run` prints each job file under a rule titled with its path: the title stays whole."""
    _, ha = make_ha_pair(tmp_path / "data", "pickup_table", 6, fast=True)
    sonic = make_sonic_root(tmp_path / "SONIC")
    root = tmp_path / DEEP / "run root [red]x[bold]"  # the rule titles must print it literally
    overrides = [*base_overrides(tmp_path, ha.root, sonic, "run.id=dry", "eval.num_shards=2"), f"run.root='{root}'"]
    log = tmp_path / "dry.log"
    res = run_cli_to_file(["run", *overrides, "--dry-run"], log, cwd=tmp_path)
    assert res.code == 0, res.text
    spec = root / "dry" / "specs" / "local"
    scripts = sorted(p.name for p in spec.glob("*.sh") if p.name != "eval_commands.sh")
    assert scripts
    for name in scripts:
        assert_greppable(res.stdout, str(spec / name))
        assert _grep(log, str(spec / name))
    # Rules grow with their titles only: no console-wide line of a million dashes.
    rules = [ln for ln in res.stdout.splitlines() if ln.startswith("───")]
    assert rules and all(len(ln) <= max(100, len(str(spec)) + 40) for ln in rules)
