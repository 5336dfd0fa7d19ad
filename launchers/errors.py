"""What the Hydra launcher plugin raises. User-facing errors are also CompactHydraExceptions: Hydra
prints those as their message alone, without its own stack frames around them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.errors import CompactHydraException

from grail_cluster.core.errors import ConfigError, GrailError


class LauncherConfigError(ConfigError, CompactHydraException):
    """A hydra.launcher option is wrong (raised before anything is submitted)."""


class LauncherError(GrailError, CompactHydraException):
    """The launcher could not do what was asked (sbatch refused, sweep locked, payload unpicklable)."""


class JobFailedError(GrailError, CompactHydraException):
    """A job of the sweep failed (or ended without a result). Raised when its
    ``JobReturn.return_value`` is read, as Hydra's sweeper does for every job; the job's exception
    comes back as text (type, message, traceback), not as a pickled object."""

    def __init__(self, num: int, overrides: Sequence[str], error: dict[str, Any], logs: str | None):
        self.num = num
        self.error_type = error.get("type", "unknown")
        self.error_message = error.get("message", "")
        self.remote_traceback = error.get("traceback", "")
        what = " ".join(overrides) or "no overrides"
        text = f"job #{num} ({what}) failed: {self.error_type}: {self.error_message}"
        if self.remote_traceback:
            text += "\n" + self.remote_traceback.rstrip()
        if logs:
            text += f"\n  logs: {logs}"
        super().__init__(text, fix="fix the cause, then run the same command again (same hydra.sweep.dir): "
                                   "jobs already done are returned from the ledger, not rerun")
