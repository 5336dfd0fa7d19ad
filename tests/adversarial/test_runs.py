"""Hostile run dirs: every run command answers right or refuses clearly, and "done" stays true.

One small real run (the local executor, rehearsal work) finishes once per module; each case breaks
a copy of its state in place (plan.json, ledger.sqlite, markers, outputs), calls the installed
``grail-cluster`` by absolute path (harness.run_cli: venv off PATH, pipes), and checks the exit code,
that there is no traceback, that the broken file is named with a fix, and that the inputs are
unchanged (a refresh may write the ledger, the command's own record; a refusal writes nothing).
The run dir is restored from a pristine copy after each case.

Damaged files are written by hand: raw bytes, sqlite3 statements, marker JSON as the format says
(markers.py's docstring: stage, index, plan_hash, outputs {path: {size, sha256}}), not through the
project's writers.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.adversarial.harness import assert_refused, assert_unchanged, run_cli, snapshot
from tests.conftest import make_sonic_root
from tests.libgen import make_library

RUN_ID = "hostile"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs-adv")
    make_library(root / "lib", 8, fast=True)
    make_sonic_root(root / "SONIC")
    args = ["run", "pipeline=advanced_manip_table", "cluster=local", f"data.motion_lib={root / 'lib'}",
            f"sonic.root={root / 'SONIC'}", f"run.root={root / 'runs'}", f"run.id={RUN_ID}", "eval.num_shards=2",
            "select.k=1", "rehearsal.enabled=true", f"job.python={sys.executable}", "train.gpus_per_node=1",
            "cluster.gpus=[0]", "cluster.cpus=2", "render.enabled=false", "--json"]
    res = run_cli(args, cwd=root)
    assert res.code == 0, res.text
    run_dir = root / "runs" / RUN_ID
    status = run_cli(["status", run_dir, "--json"])
    assert status.code == 0, status.text
    assert json.loads(status.stdout)["ok"]
    keep = root / "pristine"
    shutil.copytree(run_dir, keep, symlinks=True)
    return run_dir, keep


@pytest.fixture
def run(pristine):
    run_dir, keep = pristine
    yield run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    if run_dir.is_file():
        run_dir.unlink()
    shutil.copytree(keep, run_dir, symlinks=True)


def _all_but_ledger(run_dir: Path) -> dict[str, str]:
    return {k: v for k, v in snapshot(run_dir).items() if "ledger.sqlite" not in k and ".submit.lock" not in k}


def _rewrite_plan(run_dir: Path, edit) -> None:
    """Edit plan.json and keep its hash consistent (a different plan, not a tampered one)."""
    from grail_cluster.core.plan import content_hash

    path = run_dir / "plan.json"
    d = json.loads(path.read_text())
    edit(d)
    d["plan_hash"] = content_hash(d)
    path.write_text(json.dumps(d, indent=1, sort_keys=True))


def _marker(run_dir: Path, stage: str, idx: int) -> Path:
    return run_dir / "markers" / stage / str(idx) / "_SUCCESS.json"


def _first_output(run_dir: Path, stage: str, idx: int) -> tuple[str, Path]:
    rel = next(iter(json.loads(_marker(run_dir, stage, idx).read_text())["outputs"]))
    return rel, (Path(rel) if os.path.isabs(rel) else run_dir / rel)


# ----------------------------------------------------------------------------- run path and plan.json


def test_run_dir_that_does_not_exist(tmp_path):
    res = run_cli(["status", tmp_path / "no-such-run"])
    assert_refused(res, code=1, names=["no-such-run", "plan.json"])


def test_run_path_is_a_file(tmp_path):
    f = tmp_path / "run.txt"
    f.write_text("not a run\n")
    before = snapshot(f)
    res = run_cli(["status", f])
    assert_refused(res, code=1, names=[str(f), "run dir"])
    assert_unchanged(before, f)


def test_run_dir_without_plan_json(run):
    (run / "plan.json").unlink()
    before = snapshot(run)
    assert_refused(run_cli(["status", run]), code=1, names=[str(run / "plan.json")])
    assert_unchanged(before, run)


@pytest.mark.parametrize("content", [b"\x00\xff garbage \x89PNG", b"[1, 2, 3]", b'{"version": 1}', b"\xff\xfe{}",
                                     b'{"version": 1, "plan_hash": "x", "stages": "eval"}'],
                         ids=["bytes", "json-list", "no-keys", "not-utf8", "wrong-types"])
def test_plan_json_garbage(run, content):
    (run / "plan.json").write_bytes(content)
    before = snapshot(run)
    res = run_cli(["status", run])
    assert_refused(res, code=(1, 2), names=["plan.json"])
    assert_unchanged(before, run)


def test_plan_json_newer_version(run):
    _rewrite_plan(run, lambda d: d.update(version=99))
    before = snapshot(run)
    assert_refused(run_cli(["status", run]), code=1, names=["plan.json", "99"])
    assert_unchanged(before, run)


def test_plan_json_edited_without_its_hash(run):
    path = run / "plan.json"
    d = json.loads(path.read_text())
    d["eval"]["num_shards"] = 7
    path.write_text(json.dumps(d, indent=1, sort_keys=True))
    before = snapshot(run)
    assert_refused(run_cli(["status", run]), code=1, names=["plan.json", "plan_hash"])
    assert_unchanged(before, run)


def test_plan_json_replaced_by_another_consistent_plan(run):
    """A re-hashed plan.json is a valid plan, but not the one this run's ledger and jobs belong to."""
    _rewrite_plan(run, lambda d: d["config"]["eval"].update(num_envs=123))
    before = snapshot(run)
    for cmd in (["status", run], ["resubmit", run], ["cancel", run]):
        assert_refused(run_cli(cmd), code=1, names=["plan.json", "submitted with plan"])
    assert_unchanged(before, run)


def test_plan_json_is_a_directory(run):
    (run / "plan.json").unlink()
    (run / "plan.json").mkdir()
    before = snapshot(run)
    assert_refused(run_cli(["status", run]), code=1, names=["plan.json"])
    assert_unchanged(before, run)


# ----------------------------------------------------------------------------- ledger.sqlite


def _truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _drop_table(path: Path, table: str) -> None:
    db = sqlite3.connect(path)
    db.execute(f"DROP TABLE {table}")
    db.commit()
    db.close()


def _set_version(path: Path, value: str) -> None:
    db = sqlite3.connect(path)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (value,))
    db.commit()
    db.close()


def _foreign_db(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (id INTEGER, blob BLOB)")
    db.commit()
    db.close()


def _drop_column(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE shards DROP COLUMN signature")
    db.commit()
    db.close()


LEDGER_DAMAGE = {
    "missing": (lambda p: p.unlink(), ["ledger.sqlite", "repair-ledger"]),
    "empty": (lambda p: p.write_bytes(b""), ["ledger.sqlite", "empty", "repair-ledger"]),
    "truncated-half": (_truncate_half, ["ledger.sqlite", "repair-ledger"]),
    "garbage": (lambda p: p.write_bytes(os.urandom(8192)), ["ledger.sqlite", "repair-ledger"]),
    "text": (lambda p: p.write_text("job_id,state\n1,done\n"), ["ledger.sqlite", "repair-ledger"]),
    "foreign-db": (_foreign_db, ["ledger.sqlite", "`meta` table", "repair-ledger"]),
    "no-shards-table": (lambda p: _drop_table(p, "shards"), ["ledger.sqlite", "`shards` table", "repair-ledger"]),
    "no-jobs-table": (lambda p: _drop_table(p, "jobs"), ["ledger.sqlite", "`jobs` table", "repair-ledger"]),
    "missing-column": (_drop_column, ["ledger.sqlite", "signature"]),
    "newer-schema": (lambda p: _set_version(p, "99"), ["ledger.sqlite", "schema version 99"]),
    "version-not-a-number": (lambda p: _set_version(p, '"two"'), ["ledger.sqlite", "schema_version"]),
    "a-directory": (lambda p: (p.unlink(), p.mkdir()), ["ledger.sqlite", "not a regular file"]),
}


def _settle_wal(run: Path) -> None:
    """Fold the WAL into the main file so byte-level damage hits the real content."""
    db = sqlite3.connect(run / "ledger.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()


@pytest.mark.parametrize("damage", sorted(LEDGER_DAMAGE))
def test_damaged_ledger_is_refused_by_status(run, damage):
    _settle_wal(run)
    breaker, names = LEDGER_DAMAGE[damage]
    breaker(run / "ledger.sqlite")
    before = snapshot(run)
    res = run_cli(["status", run])
    assert_refused(res, code=1, names=names)
    assert_unchanged(before, run)


@pytest.mark.parametrize("command", [["watch", "--interval", "0.1"], ["logs", "--stage", "eval", "--index", "0"],
                                     ["cancel"], ["resubmit"], ["resubmit", "--dry-run"], ["status", "--json"]])
def test_damaged_ledger_is_refused_by_every_run_command(run, command):
    _settle_wal(run)
    (run / "ledger.sqlite").write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    before = snapshot(run)
    res = run_cli([command[0], run, *command[1:]], timeout=60)
    assert_refused(res, code=1, names=["ledger.sqlite", "repair-ledger"])
    assert_unchanged(before, run)


# ----------------------------------------------------------------------------- markers and outputs


def _status_names(run: Path, names: list[str], *, verify: bool = False, state: str = "missing-output") -> dict:
    """status exits 1 and names the broken file; markers and outputs are left as they are."""
    before = _all_but_ledger(run)
    res = run_cli(["status", run, *(["--verify"] if verify else [])])
    assert_refused(res, code=1, names=[state, *names])
    after = _all_but_ledger(run)
    assert before == after, "status changed a marker or an output"
    data = json.loads(run_cli(["status", run, "--json"]).stdout)
    return {s["name"]: s for s in data["stages"]}


def test_deleted_marker_is_missing_output(run):
    _marker(run, "eval", 1).unlink()
    stages = _status_names(run, ["eval 1", "markers/eval/1/_SUCCESS.json"])
    assert stages["eval"]["counts"] == {"done": 1, "missing-output": 1}


def test_marker_is_garbage_json(run):
    _marker(run, "eval", 0).write_text('{"stage": "eval", "index": 0, "outputs": {')
    _status_names(run, ["markers/eval/0/_SUCCESS.json", "not valid JSON"])


def test_marker_is_a_json_list(run):
    _marker(run, "export", 1).write_text("[]")
    _status_names(run, ["markers/export/1/_SUCCESS.json", "not a JSON object"])


def test_marker_for_another_plan(run):
    m = json.loads(_marker(run, "eval", 1).read_text())
    m["plan_hash"] = "0" * 64
    _marker(run, "eval", 1).write_text(json.dumps(m))
    _status_names(run, ["markers/eval/1/_SUCCESS.json", "another plan"])


def test_marker_copied_from_another_index(run):
    shutil.copy(_marker(run, "eval", 0), _marker(run, "eval", 1))
    _status_names(run, ["markers/eval/1/_SUCCESS.json", "eval 0"])


def test_marker_lists_a_path_outside_the_run_dir(run):
    """A relative path that climbs out of the run dir to a file that exists with the right size."""
    target = Path("/etc/hostname") if Path("/etc/hostname").exists() else Path(sys.executable).resolve()
    rel = os.path.relpath(target, run)
    m = json.loads(_marker(run, "eval", 0).read_text())
    m["outputs"] = {rel: {"size": target.stat().st_size}}
    _marker(run, "eval", 0).write_text(json.dumps(m))
    _status_names(run, [rel, "outside the run dir"])


def test_marker_lists_an_absolute_path_elsewhere(run):
    target = Path(sys.executable).resolve()
    m = json.loads(_marker(run, "merge", 0).read_text())
    m["outputs"] = {str(target): {"size": target.stat().st_size}}
    _marker(run, "merge", 0).write_text(json.dumps(m))
    _status_names(run, [str(target), "outside the run's output dirs"])


def test_marker_output_without_a_size(run):
    m = json.loads(_marker(run, "select", 0).read_text())
    m["outputs"] = {k: {"sha256": v.get("sha256")} for k, v in m["outputs"].items()}
    _marker(run, "select", 0).write_text(json.dumps(m))
    _status_names(run, ["markers/select/0/_SUCCESS.json", "without a recorded size"])


def test_output_deleted(run):
    rel, path = _first_output(run, "export", 0)
    path.unlink()
    _status_names(run, [rel, "missing"])


def test_output_truncated(run):
    rel, path = _first_output(run, "eval", 1)
    path.write_bytes(path.read_bytes()[:5])
    _status_names(run, [rel, "bytes"])


def test_output_same_size_change_needs_verify(run):
    rel, path = _first_output(run, "eval", 0)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    # A stat sees nothing (same size): status still says done, truthfully about what it checked...
    assert run_cli(["status", run]).code == 0
    # ...and --verify re-hashes and catches it.
    _status_names(run, [rel, "changed content"], verify=True)


def test_restored_output_is_done_again(run):
    rel, path = _first_output(run, "eval", 0)
    saved = path.read_bytes()
    path.unlink()
    assert run_cli(["status", run]).code == 1
    path.write_bytes(saved)
    res = run_cli(["status", run, "--json"])
    assert res.code == 0, res.text
    assert json.loads(res.stdout)["ok"]


# ----------------------------------------------------------------------------- repair-ledger


def test_repair_ledger_rebuilds_a_garbage_ledger(run):
    _settle_wal(run)
    junk = b"SQLite format 3\x00" + os.urandom(6000)
    (run / "ledger.sqlite").write_bytes(junk)
    before = _all_but_ledger(run)
    res = run_cli(["repair-ledger", run])
    assert res.code == 0, res.text
    aside = [p for p in run.iterdir() if p.name.startswith("ledger.sqlite.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == junk  # kept, byte for byte
    assert str(aside[0]) in res.text
    assert _all_but_ledger(run) == before  # markers, outputs, plan untouched
    status = run_cli(["status", run, "--json"])
    assert status.code == 0, status.text
    data = json.loads(status.stdout)
    assert data["ok"] and all(s["counts"] == {"done": s["size"]} for s in data["stages"])


def test_repair_ledger_marks_unproven_shards_missing(run):
    _settle_wal(run)
    (run / "ledger.sqlite").unlink()
    _marker(run, "export", 1).unlink()
    res = run_cli(["repair-ledger", run, "--json"])
    assert res.code == 0, res.text
    out = json.loads(res.stdout)
    assert out["kept_aside"] is None and out["counts"]["missing-output"] == 1
    stages = _status_names(run, ["export 1", "markers/export/1/_SUCCESS.json"])
    assert stages["export"]["counts"] == {"done": 1, "missing-output": 1}


def test_repair_ledger_leaves_a_sound_ledger_alone(run):
    before = snapshot(run)
    res = run_cli(["repair-ledger", run])
    assert res.code == 0 and "nothing to repair" in res.text, res.text
    assert_unchanged(before, run, ignore=(".submit.lock",))  # the lock file records who last held it


def test_repair_ledger_refuses_a_garbage_plan(run):
    _settle_wal(run)
    (run / "plan.json").write_text("{not json")
    (run / "ledger.sqlite").write_bytes(b"junk")
    before = snapshot(run)
    assert_refused(run_cli(["repair-ledger", run]), code=1, names=["plan.json"])
    assert_unchanged(before, run)
