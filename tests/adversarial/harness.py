"""The way a user really calls grail-cluster, and what every refusal must look like.

Each adversarial case runs the installed ``grail-cluster`` console script by absolute path, with
the venv *not* on PATH and output going to pipes (no terminal), then asserts the contract of a
refusal: the exit code means something, there is no traceback, the message names the file (or
key) and says how to fix it, the inputs are byte-for-byte unchanged, nothing complete-looking was
written, and no pickle code ran.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

GRAIL = str(Path(sys.executable).with_name("grail-cluster"))


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a cron job or a script: no venv on PATH, no VIRTUAL_ENV, a narrow terminal."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "COLUMNS", "LINES")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env.setdefault("WANDB_MODE", "offline")
    if extra:
        env.update(extra)
    return env


def run_cli(args: list[str], *, cwd: str | Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> Result:
    proc = subprocess.run([GRAIL, *map(str, args)], cwd=cwd, env=clean_env(env), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def snapshot(*paths: str | Path, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """Relative path -> sha256 of every file (and the mode of every entry) under ``paths``; entries
    whose name is in ``ignore`` (e.g. the library's own index cache) are left out."""
    out: dict[str, str] = {}
    for base in map(Path, paths):
        if base.is_file():
            out[str(base)] = hashlib.sha256(base.read_bytes()).hexdigest()
            continue
        for p in sorted(base.rglob("*")):
            if p.name in ignore:
                continue
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = "dir"
    return out


def assert_refused(res: Result, *, code: int | tuple[int, ...] = (1, 2), names: tuple[str, ...] | list[str] = (),
                   fix: bool = True) -> None:
    """A clear refusal: exit ``code``, no traceback, every one of ``names`` in the output, a fix."""
    codes = (code,) if isinstance(code, int) else tuple(code)
    assert res.code in codes, f"exit {res.code}, expected {codes}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
    assert "Traceback (most recent call last)" not in res.text, res.text
    for name in names:
        assert str(name) in res.text, f"{name!r} not named in the output:\n{res.text}"
    if fix:
        assert "fix" in res.text.lower(), f"no fix offered:\n{res.text}"


def assert_no_traceback(res: Result) -> None:
    assert "Traceback (most recent call last)" not in res.text, res.text


def assert_unchanged(before: dict[str, str], *paths: str | Path, ignore: tuple[str, ...] = ()) -> None:
    after = snapshot(*paths, ignore=ignore)
    before = {k: v for k, v in before.items() if Path(k).name not in ignore}
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"inputs changed: {changed[:10]}"


def assert_absent(*paths: str | Path) -> None:
    """Nothing complete-looking: none of ``paths`` exists."""
    present = [str(p) for p in paths if Path(p).exists()]
    assert not present, f"complete-looking output written: {present}"


class _Canary:
    """Unpickling this runs ``open(path, 'w')`` through ``builtins.open``: a file that appears
    proves that pickle code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        import builtins

        return (builtins.open, (self.path, "w"))


def canary_pickle(target: str | Path, witness: str | Path, wrap_key: str | None = None) -> None:
    """Write a pickle at ``target`` that would create ``witness`` if anything unpickled it unsafely."""
    obj: object = _Canary(str(witness))
    if wrap_key is not None:
        obj = {wrap_key: {"dof": obj}}
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)


def run_cli_to_file(args: list[str], log: str | Path, *, cwd: str | Path | None = None,
                    env: dict[str, str] | None = None, timeout: float = 300) -> Result:
    """``grail-cluster ARGS > log``: stdout into a file (a SLURM job's output, CI, a shell redirect)."""
    with open(log, "w") as fh:
        proc = subprocess.run([GRAIL, *map(str, args)], cwd=cwd, env=clean_env(env), stdout=fh,
                              stderr=subprocess.PIPE, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, Path(log).read_text(encoding="utf-8"), proc.stderr)


def assert_greppable(text: str, *needles: str) -> None:
    """Each of ``needles`` whole on one line of ``text``: what ``grep -F NEEDLE log`` needs."""
    lines = text.splitlines()
    for needle in needles:
        assert any(needle in line for line in lines), (
            f"{needle!r} is not whole on any line (folded or missing):\n{text[:6000]}")


def untouched_state(*paths: str | Path) -> dict[str, tuple]:
    """Relative path -> (sha256, mtime_ns, inode) of every file under ``paths`` (symlinks by target):
    equal before and after means nothing was rewritten, not only that the bytes came out the same,
    which is what a no-op claims."""
    out: dict[str, tuple] = {}
    for base in map(Path, paths):
        for p in ([base] if base.is_file() else sorted(base.rglob("*"))):
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                st = p.stat()
                out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_ino)
    return out
