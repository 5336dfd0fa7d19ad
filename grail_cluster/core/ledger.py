"""The run ledger: ``runs/<run_id>/ledger.sqlite`` (WAL), the record of what was submitted and seen.

Three tables plus an append-only event log:

- ``jobs``: one row per scheduler submission (an array chunk or a single job), with the shard
  indices it carries and its offset (array task id + offset = shard index);
- ``shards``: the materialised current state of every (stage, index);
- ``attempts``: one row per (stage, index, attempt), so earlier attempts stay visible;
- ``events``: append-only, every submission and every state change.

"Done" is decided by the shard's success marker; scheduler states only move the other states.

Shard states: :class:`grail_cluster.core.states.ShardState` (the state machine is drawn there).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import DataError, GrailError
from grail_cluster.core.states import STATES, ShardState

LEDGER_FILE = "ledger.sqlite"
LOCK_FILE = ".submit.lock"
# Bumped when the tables change; a ledger from a newer grail-cluster is refused, not misread. It is
# kept twice: in sqlite's header (``PRAGMA user_version``, which any sqlite tool shows without knowing
# these tables) and in ``meta.schema_version`` (what grail-cluster before the header read and checks).
SCHEMA_VERSION = 1
# user_version 0: a ledger written before the header carried the version; meta says which it is.
UNVERSIONED = 0
# Steps from version n to n + 1 (key n), run in order, in one transaction, when an older ledger is
# opened. None yet: version 1's tables are the first ones; an unversioned ledger only gains its header.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}
# The columns this version reads and writes, per table: anything less is a damaged or foreign file.
TABLES = {
    "meta": ("key", "value"),
    "jobs": ("job_id", "backend", "stage", "chunk", "round", "name", "indices", "index_offset", "array_spec",
             "depends", "submitted_at", "settled"),
    "shards": ("stage", "idx", "attempt", "job_id", "state", "sched_state", "exit_code", "node", "elapsed",
               "signature", "updated_at"),
    "attempts": ("stage", "idx", "attempt", "job_id", "state", "sched_state", "exit_code", "elapsed", "signature"),
    "events": ("id", "ts", "kind", "stage", "idx", "attempt", "detail"),
}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    stage TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    round INTEGER NOT NULL,
    name TEXT NOT NULL,
    indices TEXT NOT NULL,
    index_offset INTEGER NOT NULL,
    array_spec TEXT,
    depends TEXT,
    submitted_at REAL NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS shards (
    stage TEXT NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    job_id TEXT,
    state TEXT NOT NULL,
    sched_state TEXT,
    exit_code TEXT,
    node TEXT,
    elapsed REAL,
    signature TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (stage, idx)
);
CREATE TABLE IF NOT EXISTS attempts (
    stage TEXT NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    job_id TEXT,
    state TEXT NOT NULL,
    sched_state TEXT,
    exit_code TEXT,
    elapsed REAL,
    signature TEXT,
    PRIMARY KEY (stage, idx, attempt)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    stage TEXT,
    idx INTEGER,
    attempt INTEGER,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS shards_by_job ON shards (job_id);
"""


@dataclass
class JobRow:
    job_id: str
    backend: str
    stage: str
    chunk: int
    round: int
    name: str
    indices: list[int]
    index_offset: int
    array_spec: str | None
    depends: str | None
    submitted_at: float
    settled: bool


@dataclass
class ShardRow:
    stage: str
    idx: int
    attempt: int
    job_id: str | None
    state: ShardState
    sched_state: str | None
    exit_code: str | None
    node: str | None
    elapsed: float | None
    signature: str | None
    updated_at: float

    def __post_init__(self) -> None:
        # Rows come back as the enum so callers can ask ``row.state.is_terminal()``; a word no version
        # wrote (a hand-edited file) stays the bare string, for status and repair-ledger to judge.
        try:
            self.state = ShardState(self.state)
        except ValueError:
            pass


def repair_fix(run_dir: str | Path) -> str:
    return (f"rebuild it from plan.json, the success markers and the scheduler with `grail-cluster repair-ledger "
            f"{run_dir}` (the damaged file is kept aside, nothing is deleted)")


def ledger_error(path: str | Path, exc: BaseException) -> GrailError:
    """An sqlite error on the ledger as a user-facing one: damage is repairable, a lock is not damage."""
    text = str(exc)
    run_dir = Path(path).parent
    if "locked" in text or "busy" in text:
        return GrailError(f"the ledger is locked by another grail-cluster process ({text})", path=path,
                          fix="retry in a moment; if it persists, look for a hung grail-cluster process on this run")
    if "readonly" in text or "unable to open" in text or "disk I/O" in text:
        return DataError(f"the ledger cannot be opened for writing ({text})", path=path,
                         fix="run as the run dir's owner, or check that the file system is mounted read-write")
    return DataError(f"the ledger is damaged: {text}", path=path, fix=repair_fix(run_dir))


class Ledger:
    """``create=False`` (the run commands): the ledger must already exist and be sound. An existing
    file is always checked before use, never silently re-created: a fresh schema over a damaged or
    truncated file would read as a run with nothing submitted."""

    def __init__(self, run_dir: str | Path, *, create: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LEDGER_FILE
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise DataError("the run path is a file, not a run dir", path=self.run_dir,
                            fix="pass the run dir (runs/<run_id>) that holds plan.json")
        existed = self.path.exists()
        if not existed and not create:
            raise DataError("no ledger.sqlite: this run was never submitted, or its ledger was lost", path=self.path,
                            fix="submit it with `grail-cluster run ...`; if it was submitted, "
                                + repair_fix(self.run_dir))
        if existed and not self.path.is_file():
            raise DataError("ledger.sqlite is not a regular file", path=self.path, fix=repair_fix(self.run_dir))
        if existed and self.path.stat().st_size == 0:
            raise DataError("the ledger is empty (0 bytes: truncated?)", path=self.path, fix=repair_fix(self.run_dir))
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            if existed:
                self._check()
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if not existed:
                self.db.executescript(_SCHEMA)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self.set_meta("schema_version", SCHEMA_VERSION)
            elif self._header_version() < SCHEMA_VERSION:
                self._migrate()
        except sqlite3.DatabaseError as exc:
            raise ledger_error(self.path, exc) from None

    def _check(self) -> None:
        """Integrity, tables and columns, schema version: a clear refusal instead of a wrong answer."""
        fix = repair_fix(self.run_dir)
        verdict = self.db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            self.db.close()
            raise DataError(f"the ledger is damaged (sqlite quick_check: {verdict})", path=self.path, fix=fix)
        # After the integrity check (a damaged header's bytes are no version), before the tables (a newer
        # version's tables may differ: that is no damage to repair).
        header = self._header_version()
        if header > SCHEMA_VERSION:
            self.db.close()
            raise DataError(f"the ledger has schema version {header} (sqlite user_version); this grail-cluster "
                            f"reads up to {SCHEMA_VERSION}", path=self.path,
                            fix="use the (newer) grail-cluster version that submitted this run, or upgrade "
                                "grail-cluster to it")
        for table, columns in TABLES.items():
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if not have:
                self.db.close()
                raise DataError(f"the ledger has no `{table}` table (not a grail-cluster ledger, or damaged)",
                                path=self.path, fix=fix)
            missing = [c for c in columns if c not in have]
            if missing:
                self.db.close()
                raise DataError(f"the ledger's `{table}` table lacks column(s) {', '.join(missing)}",
                                path=self.path, fix=fix)
        self._meta_version(fix)

    def _header_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _meta_version(self, fix: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            version = json.loads(row[0]) if row else SCHEMA_VERSION  # ledgers from before versioning: 1
            version = int(version)
        except (TypeError, ValueError):
            self.db.close()
            raise DataError(f"the ledger's schema_version is {row[0]!r}, not a number", path=self.path,
                            fix=fix) from None
        if version > SCHEMA_VERSION:
            self.db.close()
            raise DataError(f"the ledger has schema version {version}; this grail-cluster reads up to "
                            f"{SCHEMA_VERSION}", path=self.path,
                            fix="use the (newer) grail-cluster version that submitted this run")
        if version < 1:
            self.db.close()
            raise DataError(f"the ledger has schema version {version}, which no grail-cluster wrote",
                            path=self.path, fix=fix)
        return version

    def _migrate(self) -> None:
        """Bring an older ledger up to SCHEMA_VERSION in place, all steps or none.

        Status and the other readers open the ledger without the submit lock, and a submitter holds
        that lock while it opens one (flock would block on its own second descriptor), so the
        exclusion here is sqlite's write lock, as for every other write: ``BEGIN IMMEDIATE``, then the
        version read again, so a second process that waited finds the work done and does nothing."""
        with self.transaction() as db:
            header = self._header_version()
            if header >= SCHEMA_VERSION:
                return
            version = header if header != UNVERSIONED else self._meta_version(repair_fix(self.run_dir))
            start = version
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](db)
                version += 1
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.set_meta("schema_version", SCHEMA_VERSION)
            self.event("migrated", from_version=start, to_version=SCHEMA_VERSION, header=header)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ meta and events

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if not row:
            return default
        try:
            return json.loads(row[0])
        except (TypeError, ValueError):
            raise DataError(f"the ledger's meta value {key!r} is not JSON ({str(row[0])[:40]!r})", path=self.path,
                            fix=repair_fix(self.run_dir)) from None

    def event(self, kind: str, stage: str | None = None, idx: int | None = None, attempt: int | None = None,
              **detail: Any) -> None:
        self.db.execute("INSERT INTO events (ts, kind, stage, idx, attempt, detail) VALUES (?, ?, ?, ?, ?, ?)",
                        (time.time(), kind, stage, idx, attempt, json.dumps(detail, sort_keys=True) if detail else None))

    def events(self, limit: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM events ORDER BY id" + (f" DESC LIMIT {int(limit)}" if limit else "")
        rows = [dict(r) for r in self.db.execute(sql)]
        return list(reversed(rows)) if limit else rows

    # ------------------------------------------------------------------ jobs

    def record_job(self, *, job_id: str, backend: str, stage: str, chunk: int, round: int, name: str,
                   indices: list[int], index_offset: int, array_spec: str | None, depends: str | None) -> None:
        """A submission and its shards (pending, attempt = round), in one transaction."""
        now = time.time()
        with self.transaction() as db:
            self._retire_reused_id(job_id, name)
            db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                       (job_id, backend, stage, chunk, round, name, json.dumps(indices), index_offset,
                        array_spec, depends, now))
            for idx in indices:
                db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, ?)",
                           (stage, idx, round, job_id, ShardState.PENDING, now))
                db.execute("INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, NULL)",
                           (stage, idx, round, job_id, ShardState.PENDING))
            self.event("submitted", stage, None, round, job_id=job_id, chunk=chunk, indices=indices,
                       array=array_spec, depends=depends, name=name)

    def _retire_reused_id(self, job_id: str, name: str) -> None:
        """The scheduler handed out an id this ledger holds for another job: it lost that job (a
        controller killed before it saved its state). The old job keeps its rows under the key
        ``<id>~<n>``, so the refresh still judges it (by name: lost) and nothing cancels the new job
        in its place. The same name again is a double record, left to fail."""
        old = self.db.execute("SELECT name, stage FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if old is None or old["name"] == name:
            return
        n = 1
        while self.db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (f"{job_id}~{n}",)).fetchone():
            n += 1
        key = f"{job_id}~{n}"
        self.db.execute("UPDATE jobs SET job_id = ? WHERE job_id = ?", (key, job_id))
        for table in ("shards", "attempts"):
            self.db.execute(f"UPDATE {table} SET job_id = ? WHERE job_id = ? AND stage = ?", (key, job_id, old["stage"]))
        self.event("job-id-reused", old["stage"], None, None, job_id=job_id, retired_as=key, old_name=old["name"],
                   new_name=name)

    def jobs(self, *, unsettled: bool = False, stage: str | None = None) -> list[JobRow]:
        sql = "SELECT * FROM jobs WHERE 1=1"
        args: list[Any] = []
        if unsettled:
            sql += " AND settled = 0"
        if stage:
            sql += " AND stage = ?"
            args.append(stage)
        rows = self.db.execute(sql + " ORDER BY submitted_at, chunk", args).fetchall()
        return [JobRow(**{**dict(r), "indices": json.loads(r["indices"]), "settled": bool(r["settled"])}) for r in rows]

    def settle(self, job_id: str) -> None:
        self.db.execute("UPDATE jobs SET settled = 1 WHERE job_id = ?", (job_id,))

    def next_round(self) -> int:
        """Above every round seen: in the jobs table, and (after repair-ledger) in the scheduler's job
        names and the markers' attempts, so a new round never reuses a name already queued."""
        row = self.db.execute("SELECT MAX(round) FROM jobs").fetchone()
        used = 0 if row[0] is None else int(row[0]) + 1
        return max(used, int(self.meta("round_floor", 0) or 0))

    # ------------------------------------------------------------------ shards

    def shards(self, stage: str | None = None) -> list[ShardRow]:
        sql, args = "SELECT * FROM shards", []
        if stage:
            sql, args = sql + " WHERE stage = ?", [stage]
        return [ShardRow(**dict(r)) for r in self.db.execute(sql + " ORDER BY stage, idx", args)]

    def shard(self, stage: str, idx: int) -> ShardRow | None:
        r = self.db.execute("SELECT * FROM shards WHERE stage = ? AND idx = ?", (stage, idx)).fetchone()
        return ShardRow(**dict(r)) if r else None

    def attempts(self, stage: str, idx: int) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute(
            "SELECT * FROM attempts WHERE stage = ? AND idx = ? ORDER BY attempt", (stage, idx))]

    def check_plan(self, plan_hash: str, plan_path: str | Path) -> None:
        """The ledger belongs to this plan: plan.json re-written (with a fresh hash) after submission
        would otherwise be judged against another plan's jobs and markers."""
        recorded = self.meta("plan_hash")
        if recorded and recorded != plan_hash:
            raise DataError(f"plan.json has hash {plan_hash[:12]}, but this run was submitted with plan "
                            f"{str(recorded)[:12]} (plan.json replaced after submission?)", path=plan_path,
                            fix="restore the plan.json this run was submitted with, or start a fresh run "
                                "with run.id=<new id>")

    def restore_shard(self, stage: str, idx: int, attempt: int, job_id: str | None, state: ShardState | str, *,
                      sched_state: str | None = None, exit_code: str | None = None, node: str | None = None,
                      elapsed: float | None = None, signature: str | None = None) -> None:
        """Write a shard row as found by ``repair-ledger`` (from markers and the scheduler)."""
        if state not in STATES:
            raise ValueError(f"unknown shard state {state!r}")
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (stage, idx, attempt, job_id, state, sched_state, exit_code, node, elapsed, signature,
                        time.time()))
            db.execute("INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (stage, idx, attempt, job_id, state, sched_state, exit_code, elapsed, signature))

    def update_shard(self, stage: str, idx: int, state: ShardState | str, **fields: Any) -> bool:
        """Move a shard to ``state`` (recording scheduler facts); returns True when the state changed."""
        if state not in STATES:
            raise ValueError(f"unknown shard state {state!r}")
        cur = self.shard(stage, idx)
        if cur is None:
            return False
        allowed = {"sched_state", "exit_code", "node", "elapsed", "signature"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown shard fields {sorted(unknown)}")
        changed = cur.state != state
        values = {k: fields.get(k, getattr(cur, k)) for k in allowed}
        with self.transaction() as db:
            db.execute(
                "UPDATE shards SET state=?, sched_state=?, exit_code=?, node=?, elapsed=?, signature=?, updated_at=? "
                "WHERE stage=? AND idx=?",
                (state, values["sched_state"], values["exit_code"], values["node"], values["elapsed"],
                 values["signature"], time.time(), stage, idx))
            db.execute(
                "UPDATE attempts SET state=?, sched_state=?, exit_code=?, elapsed=?, signature=? "
                "WHERE stage=? AND idx=? AND attempt=?",
                (state, values["sched_state"], values["exit_code"], values["elapsed"], values["signature"],
                 stage, idx, cur.attempt))
            if changed:
                self.event("state", stage, idx, cur.attempt, old=cur.state, new=state,
                           sched=values["sched_state"], exit_code=values["exit_code"])
        return changed


@contextlib.contextmanager
def submit_lock(run_dir: str | Path, *, wait: bool = False) -> Iterator[None]:
    """One submitter per run dir: a second one waits (``wait=True``) or is refused."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            raise GrailError(f"another grail-cluster process is submitting to this run ({holder or 'unknown pid'})",
                             path=path, fix="wait for it to finish, or pass --wait to queue behind it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)
