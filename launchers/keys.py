"""Which recorded result a job may reuse: its key (the app's config without ``hydra`` and the job's
overrides) and the code it ran (``hydra.launcher.code_key``), digested by
:mod:`grail_cluster.core.code_digest`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from grail_cluster.core.code_digest import git_state, task_sources

# The status command's --help epilog and docs/sweeps.md "Resume" say the same.
RESUME_HELP = """\
resume (hydra.launcher.resume=true, the default): running the same sweep again (same
hydra.sweep.dir) returns a job's recorded result only if none of these changed since it ran:
  - the app's composed config (without hydra) or the job's overrides
  - the task function's source file, or a module of the same project its imports reach
    (sha256 of each file; the project is the task's git checkout, else its directory)
  - the git commit of that checkout, or its uncommitted changes to tracked files
    (a digest of `git diff HEAD`; untracked files do not count)
hydra.launcher.code_key=source compares the source files only; code_key=off no code at all.
Not seen: data files outside git, dynamic imports, installed packages.
Force a re-run: hydra.launcher.resume=false, or a new hydra.sweep.dir (or remove <sweep dir>/.grail).
"""


def config_key(config: DictConfig) -> str:
    """Digest of the app's composed config without ``hydra``: a job whose app config changed
    since it ran is not taken as done (launcher options such as the partition may change)."""
    body = OmegaConf.to_container(config, resolve=False, throw_on_missing=False)
    assert isinstance(body, dict)
    body.pop("hydra", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def job_key(config_digest: str, overrides: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([config_digest, list(overrides)]).encode()).hexdigest()[:32]


def code_identity(task_function: Any, mode: str) -> dict[str, Any] | None:
    """The code a job runs, recorded with it and compared on resume (:func:`code_change`): the
    task's sources (its module and the project modules it imports) and the git commit and
    uncommitted tracked changes of the checkout holding it. None with ``code_key=off``."""
    if mode == "off":
        return None
    if task_function is None:
        out: dict[str, Any] = {"task": None, "sources": None}
    else:
        out = {"task": None, "sources": task_sources(task_function)}
        out["task"] = out["sources"].pop("task")
    root = (out["sources"] or {}).get("root")
    out["git"] = git_state(root) if root else None
    return out


def code_change(recorded: dict[str, Any] | None, now: dict[str, Any] | None, mode: str) -> str | None:
    """Why a recorded result is not of the code running now (``hydra.launcher.code_key``), or None.
    ``tree``: task, source digests, commit and uncommitted changes must match; ``source``: task and
    source digests; ``off``: nothing is compared. A record without code (written with
    code_key=off or by an older launcher) is of unknown code, so not reused unless off."""
    if mode == "off":
        return None
    if not isinstance(recorded, dict) or not recorded or now is None:  # a hand-edited ledger line too
        return "the recorded result has no code identity"

    def part(code: dict[str, Any], key: str) -> dict[str, Any]:
        value = code.get(key)
        return value if isinstance(value, dict) else {}

    if recorded.get("task") != now.get("task"):
        return f"task function {recorded.get('task')} -> {now.get('task')}"
    if part(recorded, "sources").get("sha256") != part(now, "sources").get("sha256"):
        return "the source of the task or of a module it imports changed"
    if mode == "tree":
        old, new = part(recorded, "git"), part(now, "git")
        if old.get("commit") != new.get("commit"):
            return f"git commit {str(old.get('commit'))[:12]} -> {str(new.get('commit'))[:12]}"
        if old.get("diff_sha256") != new.get("diff_sha256"):
            return "the checkout's uncommitted changes to tracked files changed"
    return None


def describe_code(code: dict[str, Any] | None) -> str:
    if not code:
        return "code_key=off"
    src = code.get("sources") or {}
    text = f"task {code.get('task')}, {src.get('files', 0)} source file(s) {str(src.get('sha256'))[:12]}"
    git = code.get("git")
    if git:
        text += f", commit {git['commit'][:12]}" + (f" + uncommitted changes {git['diff_sha256'][:12]}"
                                                    if git.get("dirty") else " (clean)")
    return text
