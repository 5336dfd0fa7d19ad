"""The states a shard and a scheduler task can be in, as ``str`` enums.

The values are the words the ledger stores, ``status --json`` prints and the tests read; a member
*is* its string (``StrEnum``), so writing one into sqlite or JSON is unchanged from the bare word.

Two vocabularies, on purpose:

- :class:`ShardState` is what the ledger records for a (stage, index). ``done`` is decided only by
  the shard's success marker, never by the scheduler.
- :class:`JobState` is what a backend reports for one scheduler task (an array element, a pod
  index, a local subprocess). It has ``completed`` where the ledger has ``done`` and
  ``missing-output``: a task that exited 0 without a valid marker did not finish its shard.

Shard state machine (owned by :mod:`grail_cluster.core.ledger`)::

    unsubmitted -> pending -> running -> done
                                      -> failed | cancelled | timeout | node-fail | out-of-memory | missing-output
    pending | running -> lost   (the scheduler no longer holds the recorded job: its id vanished or
                                 now names another job, e.g. after a controller crash)
    (any not done) --resubmit--> pending (attempt + 1)
"""

from __future__ import annotations

import enum


class ShardState(enum.StrEnum):
    UNSUBMITTED = "unsubmitted"  # never in the ledger: a planned shard with no row yet
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    NODE_FAIL = "node-fail"
    OUT_OF_MEMORY = "out-of-memory"
    MISSING_OUTPUT = "missing-output"
    # The scheduler lost the recorded job (a controller crash): it is in neither queue nor accounting
    # under its name, or its id now belongs to another job. Nothing ran it to the end: resubmit it.
    LOST = "lost"

    def is_active(self) -> bool:
        """Submitted and not settled: the scheduler may still move it."""
        return self in ACTIVE

    def is_failed(self) -> bool:
        """Settled without a valid marker: what ``resubmit`` retries by default."""
        return self in FAILED

    def is_terminal(self) -> bool:
        """Settled: only a resubmission (a new attempt) moves it again. ``unsubmitted`` is not."""
        return self is ShardState.DONE or self in FAILED


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    NODE_FAIL = "node-fail"
    OUT_OF_MEMORY = "out-of-memory"
    LOST = "lost"  # the scheduler no longer holds this job under its name (TaskInfo.why says how)

    def is_terminal(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)

    def shard_state(self) -> ShardState:
        """The ledger state this task state leaves its shard in when the marker does not prove it
        done: a task that completed without a valid marker is ``missing-output``."""
        if self is JobState.COMPLETED:
            return ShardState.MISSING_OUTPUT
        return ShardState(self.value)


# Tuples (not sets) so that loops over them, and the text built from them, keep this order.
ACTIVE: tuple[ShardState, ...] = (ShardState.PENDING, ShardState.RUNNING)
FAILED: tuple[ShardState, ...] = (ShardState.FAILED, ShardState.CANCELLED, ShardState.TIMEOUT, ShardState.NODE_FAIL,
                                  ShardState.OUT_OF_MEMORY, ShardState.MISSING_OUTPUT, ShardState.LOST)
# Every shard state, in the order the ledger has always listed them.
STATES: tuple[ShardState, ...] = (ShardState.UNSUBMITTED, ShardState.DONE, *ACTIVE, *FAILED)
