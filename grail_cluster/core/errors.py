"""User-facing errors: what is wrong, where, and how to fix it.

The CLI prints these without a traceback and exits with ``exit_code``; anything else that escapes
is a bug in grail-cluster and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

# Exit codes that mean something to scripts.
EXIT_OK = 0
EXIT_PROBLEMS = 1  # the command ran and found problems (doctor, validation)
EXIT_USAGE = 2  # bad command line or configuration
EXIT_UNREACHABLE = 3  # the scheduler did not answer: what is shown is the ledger's last known states


class GrailError(Exception):
    """A mistake in the user's input, reported with where it is and what to do."""

    exit_code = EXIT_USAGE

    def __init__(self, problem: str, *, path: str | Path | None = None, fix: str | None = None):
        self.problem = problem
        self.path = str(path) if path is not None else None
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        where = f"{self.path}: " if self.path else ""
        text = f"{where}{self.problem}"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class ConfigError(GrailError):
    """The Hydra configuration or overrides are wrong."""


class DataError(GrailError):
    """A file of the motion library (or another input) is missing or malformed."""

    exit_code = EXIT_PROBLEMS


class UnsafePickleError(DataError):
    """A pickle tried to load something outside the allow-list."""
