"""A run named on the command line (its dir, or its id under ./runs) read back into its plan.

Every command that acts on an existing run (status, watch, logs, cancel, resubmit, repair-ledger,
the Kubernetes driver) reads it here, so that a wrong path gets the same friendly error everywhere.
"""

from __future__ import annotations

from pathlib import Path

from grail_cluster.core.errors import DataError


def run_path(run: str) -> Path:
    """``runs/<id>/`` when ``run`` is not itself a run dir but names one under ./runs."""
    path = Path(run)
    if not (path / "plan.json").exists() and (Path("runs") / run / "plan.json").exists():
        path = Path("runs") / run
    return path


def load_run(run: str):
    from grail_cluster.core.plan import read_plan

    path = run_path(run)
    if path.exists() and not path.is_dir():
        raise DataError("the run path is a file, not a run dir", path=path,
                        fix="pass the run dir (runs/<run_id>) that holds plan.json, or the run id")
    if (path / "plan.json").exists() and not (path / "plan.json").is_file():
        raise DataError("plan.json is not a regular file", path=path / "plan.json",
                        fix="pass a run dir written by `grail-cluster plan` / `run`")
    try:
        plan = read_plan(path)
    except (AttributeError, KeyError, TypeError, IndexError) as exc:
        # JSON of the wrong shape (a list, a missing key): not a plan this version wrote.
        raise DataError(f"plan.json does not have the plan format ({type(exc).__name__}: {exc})",
                        path=path / "plan.json", fix="re-run `grail-cluster plan`; never edit plan.json by hand") from None
    except UnicodeDecodeError:
        raise DataError("plan.json is not UTF-8 text", path=path / "plan.json",
                        fix="re-run `grail-cluster plan`; never edit plan.json by hand") from None
    except IsADirectoryError:
        raise DataError("plan.json is a directory", path=path / "plan.json", fix="pass a run dir written by "
                        "`grail-cluster plan`") from None
    return plan
