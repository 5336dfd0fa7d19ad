"""Shard and job states as enums, and the ledger's schema version (sqlite user_version) with its
migration path."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from grail_cluster.core import ledger as ledger_mod
from grail_cluster.core.errors import DataError
from grail_cluster.core.ledger import SCHEMA_VERSION, Ledger
from grail_cluster.core.states import ACTIVE, FAILED, STATES, JobState, ShardState

# ----------------------------------------------------------------------------- states


def test_state_values_are_the_words_the_ledger_and_json_always_held():
    assert [s.value for s in STATES] == ["unsubmitted", "done", "pending", "running", "failed", "cancelled",
                                         "timeout", "node-fail", "out-of-memory", "missing-output", "lost"]
    assert set(STATES) == set(ShardState)
    assert ACTIVE == ("pending", "running")
    assert FAILED == ("failed", "cancelled", "timeout", "node-fail", "out-of-memory", "missing-output", "lost")
    assert json.dumps({ShardState.DONE: ShardState.MISSING_OUTPUT}) == '{"done": "missing-output"}'
    assert f"{ShardState.NODE_FAIL}" == str(ShardState.NODE_FAIL) == "node-fail"
    assert "running" in ACTIVE and ShardState("out-of-memory") is ShardState.OUT_OF_MEMORY


def test_terminal_active_and_failed_partition_the_shard_states():
    for s in ShardState:
        # unsubmitted is neither: it waits for a submission, no scheduler holds it
        assert s.is_active() + s.is_terminal() == (s is not ShardState.UNSUBMITTED)
        assert s.is_failed() == (s.is_terminal() and s is not ShardState.DONE)
    assert not ShardState.RUNNING.is_terminal() and ShardState.DONE.is_terminal()


def test_job_states_and_what_they_leave_a_shard_in():
    assert {s for s in JobState if not s.is_terminal()} == {JobState.PENDING, JobState.RUNNING}
    # markers decide done: a task that completed without one left its output missing
    assert JobState.COMPLETED.shard_state() is ShardState.MISSING_OUTPUT
    for s in JobState:
        if s is not JobState.COMPLETED:
            assert s.shard_state() == s.value
            assert s.shard_state().is_terminal() == s.is_terminal()


def test_ledger_stores_plain_words_and_reads_back_enums(tmp_path):
    with Ledger(tmp_path) as ledger:
        ledger.record_job(job_id="7", backend="local", stage="eval", chunk=0, round=0, name="eval", indices=[0, 1],
                          index_offset=0, array_spec="0-1", depends=None)
        assert ledger.update_shard("eval", 1, ShardState.MISSING_OUTPUT, signature="no marker")
        row = ledger.shard("eval", 1)
        assert row.state is ShardState.MISSING_OUTPUT and row.state.is_failed()
        assert ledger.shard("eval", 0).state is ShardState.PENDING
        with pytest.raises(ValueError, match="unknown shard state 'finished'"):
            ledger.update_shard("eval", 0, "finished")
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    rows = db.execute("SELECT state, typeof(state) FROM shards ORDER BY idx").fetchall()
    events = [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'state'")]
    db.close()
    assert rows == [("pending", "text"), ("missing-output", "text")]
    assert events[0]["old"] == "pending" and events[0]["new"] == "missing-output"


def test_a_word_no_version_wrote_stays_a_string(tmp_path):
    with Ledger(tmp_path) as ledger:
        ledger.record_job(job_id="7", backend="local", stage="eval", chunk=0, round=0, name="eval", indices=[0],
                          index_offset=0, array_spec=None, depends=None)
        ledger.db.execute("UPDATE shards SET state = 'zombie'")
        assert ledger.shard("eval", 0).state == "zombie"


# ----------------------------------------------------------------------------- schema version and migration

# The ledger as grail-cluster wrote it before the version was kept in sqlite's header (user_version 0);
# the first versions did not write meta.schema_version either.
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (job_id TEXT PRIMARY KEY, backend TEXT NOT NULL, stage TEXT NOT NULL, chunk INTEGER NOT NULL,
    round INTEGER NOT NULL, name TEXT NOT NULL, indices TEXT NOT NULL, index_offset INTEGER NOT NULL,
    array_spec TEXT, depends TEXT, submitted_at REAL NOT NULL, settled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE shards (stage TEXT NOT NULL, idx INTEGER NOT NULL, attempt INTEGER NOT NULL, job_id TEXT,
    state TEXT NOT NULL, sched_state TEXT, exit_code TEXT, node TEXT, elapsed REAL, signature TEXT,
    updated_at REAL NOT NULL, PRIMARY KEY (stage, idx));
CREATE TABLE attempts (stage TEXT NOT NULL, idx INTEGER NOT NULL, attempt INTEGER NOT NULL, job_id TEXT,
    state TEXT NOT NULL, sched_state TEXT, exit_code TEXT, elapsed REAL, signature TEXT,
    PRIMARY KEY (stage, idx, attempt));
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL, stage TEXT,
    idx INTEGER, attempt INTEGER, detail TEXT);
CREATE INDEX shards_by_job ON shards (job_id);
INSERT INTO meta VALUES ('plan_hash', '"abc123"');
INSERT INTO jobs VALUES ('4242', 'slurm', 'eval', 0, 0, 'grail-r0-eval', '[0, 1]', 0, '0-1', NULL, 1.0, 1);
INSERT INTO shards VALUES ('eval', 0, 0, '4242', 'done', 'COMPLETED', '0:0', 'n1', 12.5, NULL, 2.0);
INSERT INTO shards VALUES ('eval', 1, 0, '4242', 'out-of-memory', 'OUT_OF_MEMORY', '0:9', 'n2', 3.0, 'OOM', 2.0);
INSERT INTO attempts VALUES ('eval', 0, 0, '4242', 'done', 'COMPLETED', '0:0', 12.5, NULL);
INSERT INTO attempts VALUES ('eval', 1, 0, '4242', 'out-of-memory', 'OUT_OF_MEMORY', '0:9', 3.0, 'OOM');
INSERT INTO events (ts, kind, stage, idx, attempt, detail) VALUES (1.0, 'submitted', 'eval', NULL, 0, '{}');
"""


def _old_ledger(run_dir, *, meta_version: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    db.executescript(OLD_SCHEMA)
    if meta_version:
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("PRAGMA journal_mode=WAL")
    db.commit()
    db.close()


def _raw(run_dir, sql: str):
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_a_new_ledger_carries_its_version_in_the_header_and_in_meta(tmp_path):
    with Ledger(tmp_path) as ledger:
        assert ledger.meta("schema_version") == SCHEMA_VERSION
    assert _raw(tmp_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert _raw(tmp_path, "SELECT count(*) FROM events WHERE kind = 'migrated'") == [(0,)]


@pytest.mark.parametrize("meta_version", [False, True], ids=["no-meta-version", "meta-version-1"])
def test_an_unversioned_ledger_is_migrated_in_place_and_keeps_its_rows(tmp_path, meta_version):
    _old_ledger(tmp_path, meta_version=meta_version)
    before = {t: _raw(tmp_path, f"SELECT * FROM {t}") for t in ("jobs", "shards", "attempts")}
    assert _raw(tmp_path, "PRAGMA user_version") == [(0,)]
    with Ledger(tmp_path, create=False) as ledger:  # what status, resubmit and cancel open
        assert ledger.meta("plan_hash") == "abc123"
        assert [(s.idx, s.state) for s in ledger.shards("eval")] == [(0, "done"), (1, "out-of-memory")]
        assert ledger.shard("eval", 1).state.is_failed()
        assert [j.indices for j in ledger.jobs()] == [[0, 1]]
    assert _raw(tmp_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert {t: _raw(tmp_path, f"SELECT * FROM {t}") for t in before} == before
    assert _raw(tmp_path, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    migrated = _raw(tmp_path, "SELECT detail FROM events WHERE kind = 'migrated'")
    assert [json.loads(d) for (d,) in migrated] == [{"from_version": 1, "header": 0, "to_version": SCHEMA_VERSION}]
    # idempotent: opening again changes nothing
    with Ledger(tmp_path, create=False):
        pass
    assert len(_raw(tmp_path, "SELECT * FROM events WHERE kind = 'migrated'")) == 1


def test_concurrent_openers_migrate_once(tmp_path):
    _old_ledger(tmp_path, meta_version=False)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_it():
        try:
            barrier.wait()
            Ledger(tmp_path, create=False).close()
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(_raw(tmp_path, "SELECT * FROM events WHERE kind = 'migrated'")) == 1
    assert _raw(tmp_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_a_ledger_newer_than_this_code_is_refused_untouched(tmp_path):
    with Ledger(tmp_path):
        pass
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = (tmp_path / "ledger.sqlite").read_bytes()
    for create in (True, False):
        with pytest.raises(DataError) as exc:
            Ledger(tmp_path, create=create)
        text = str(exc.value)
        assert f"schema version {SCHEMA_VERSION + 1}" in text and "user_version" in text
        assert "ledger.sqlite" in text and "newer" in text
        assert "repair-ledger" not in text  # nothing is damaged: another version wrote it
    assert (tmp_path / "ledger.sqlite").read_bytes() == data


def test_migration_steps_run_in_order_and_all_or_nothing(tmp_path, monkeypatch):
    """With a version 2 that adds a column: an old ledger gets it; a step that fails leaves the file
    as it was (still version 0, no half-applied step)."""
    _old_ledger(tmp_path / "ok", meta_version=True)
    _old_ledger(tmp_path / "bad", meta_version=True)
    ran: list[int] = []

    def add_column(db):
        ran.append(1)
        db.execute("ALTER TABLE shards ADD COLUMN host_gpu TEXT")

    monkeypatch.setattr(ledger_mod, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(ledger_mod, "MIGRATIONS", {1: add_column})
    Ledger(tmp_path / "ok", create=False).close()
    assert ran == [1]
    assert _raw(tmp_path / "ok", "PRAGMA user_version") == [(2,)]
    assert "host_gpu" in {r[1] for r in _raw(tmp_path / "ok", "PRAGMA table_info(shards)")}

    def half_then_fail(db):
        db.execute("ALTER TABLE shards ADD COLUMN host_gpu TEXT")
        db.execute("UPDATE nowhere SET x = 1")

    monkeypatch.setattr(ledger_mod, "MIGRATIONS", {1: half_then_fail})
    with pytest.raises(DataError):
        Ledger(tmp_path / "bad", create=False)
    assert _raw(tmp_path / "bad", "PRAGMA user_version") == [(0,)]
    assert "host_gpu" not in {r[1] for r in _raw(tmp_path / "bad", "PRAGMA table_info(shards)")}
    assert _raw(tmp_path / "bad", "SELECT value FROM meta WHERE key = 'schema_version'") == [("1",)]
