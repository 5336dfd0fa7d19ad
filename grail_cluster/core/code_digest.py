"""What code produced a result: source digests and git state, for keys of reusable results.

A result may be reused only for the code that produced it (issue 14 §2). Two readings of "the
code", because each misses something the other sees:

- :func:`task_sources`: the source file of a task function and, followed through its ``import``
  statements (read with ``ast``, resolved by the import system's finders without importing
  anything), every module of the same project it reaches. It sees an untracked helper file and
  works outside git; it does not see data files, dynamic imports or installed packages.
- :func:`git_state`: the commit of the checkout holding a path and a digest of its uncommitted
  changes to tracked files (``git diff HEAD``), not a dirty flag alone: two different edits on
  the same commit are two codes. Untracked files (sweep and run outputs) do not count.

Both are deterministic for the same files: what is already imported does not matter, so a
second launch in the same process gets the same digest as the first.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

GIT_TIMEOUT_S = 20
# Bound on the modules followed from one task (a task importing a huge monorepo still gets a key).
MAX_FILES = 5000
# (path, size, mtime_ns) -> (sha256, imported names); the same file is not parsed twice per process.
_PARSED: dict[tuple[str, int, int], tuple[str, list[tuple[str, int, list[str]]]]] = {}


def git_output(root: Path, *args: str) -> bytes | None:
    """``git -C root args...``'s stdout, or None without git, outside a checkout, or on failure."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        proc = subprocess.run([git, "-C", str(root), *args], capture_output=True, timeout=GIT_TIMEOUT_S,
                              check=False, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_toplevel(path: str | Path) -> Path | None:
    out = git_output(Path(path), "rev-parse", "--show-toplevel")
    return Path(out.decode().strip()) if out else None


def git_state(path: str | Path) -> dict[str, Any] | None:
    """``{"commit", "dirty", "diff_sha256"}`` for the tracked files under ``path`` (a directory in
    a git checkout), else None. ``diff_sha256`` hashes ``git diff HEAD`` under ``path``: None
    when clean."""
    path = Path(path)
    if not path.is_dir():
        return None
    commit = git_output(path, "rev-parse", "--verify", "HEAD")
    if not commit:
        return None
    diff = git_output(path, "diff", "--no-ext-diff", "--no-color", "--binary", "HEAD", "--", ".")
    if diff is None:
        return {"commit": commit.decode().strip(), "dirty": None, "diff_sha256": None}
    return {"commit": commit.decode().strip(), "dirty": bool(diff),
            "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None}


# ----------------------------------------------------------------------------- a task's sources


def _installed_roots() -> list[str]:
    """Where installed packages live (a venv inside the project must not count as the project)."""
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix) if p}
    return sorted(roots)


def _is_project_file(path: str, root: str, installed: list[str]) -> bool:
    real = os.path.realpath(path)
    if not real.endswith(".py") or not (real == root or real.startswith(root + os.sep)):
        return False
    parts = real.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not any(real.startswith(r + os.sep) for r in installed if r != root)


def _parse(path: str) -> tuple[str, list[tuple[str, int, list[str]]]]:
    """The file's sha256 and its imports as (module, level, names) triples."""
    st = os.stat(path)
    memo = (path, st.st_size, st.st_mtime_ns)
    if memo in _PARSED:
        return _PARSED[memo]
    data = Path(path).read_bytes()
    imports: list[tuple[str, int, list[str]]] = []
    try:
        tree = ast.parse(data, filename=path)
    except (SyntaxError, ValueError):
        tree = None  # its digest still counts; it just leads nowhere
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Import):
            imports += [(a.name, 0, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.module or "", node.level, [a.name for a in node.names if a.name != "*"]))
    out = (hashlib.sha256(data).hexdigest(), imports)
    _PARSED[memo] = out
    return out


def _find_spec(name: str) -> Any:
    """The spec the import system would use for ``name``, found without executing any module
    (``importlib.util.find_spec`` imports the parents of a dotted name)."""
    parent_path = None
    spec = None
    parts = name.split(".")
    for i in range(len(parts)):
        sub = ".".join(parts[: i + 1])
        mod = sys.modules.get(sub)
        spec = getattr(mod, "__spec__", None) if mod is not None else None
        if spec is None:
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                try:
                    spec = find(sub, parent_path)
                except Exception:  # noqa: BLE001 - a third-party finder's failure is "not found"
                    spec = None
                if spec is not None:
                    break
        if spec is None:
            return None
        parent_path = spec.submodule_search_locations
        if parent_path is None and i < len(parts) - 1:
            return None
    return spec


def _package_of(path: str, module: str | None) -> str | None:
    if module and module != "__main__":
        return module if os.path.basename(path) == "__init__.py" else module.rpartition(".")[0]
    return None


def _resolve(module: str, level: int, package: str | None) -> str | None:
    if level == 0:
        return module
    if not package:
        return None
    base = package.split(".")
    if level - 1 > len(base):
        return None
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base) or None


def _task_file(fn: Any) -> tuple[str | None, str | None, Any]:
    """(source file, module name, code object) of a task callable: a function, a bound method, a
    functools.partial or an object with ``__call__``."""
    seen = 0
    while seen < 10:
        seen += 1
        fn = inspect.unwrap(fn) if callable(fn) else fn
        inner = getattr(fn, "func", None)  # functools.partial
        if inner is not None and callable(inner):
            fn = inner
            continue
        break
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is None and callable(fn):
        call = type(fn).__dict__.get("__call__")  # an object with __call__ defined in Python
        code = getattr(call, "__code__", None)
    path = code.co_filename if code is not None else None
    if path is None or not os.path.isfile(path):
        try:
            path = inspect.getsourcefile(fn if inspect.isroutine(fn) or inspect.isclass(fn) else type(fn))
        except TypeError:
            path = None
    module = getattr(fn, "__module__", None) or getattr(type(fn), "__module__", None)
    return (os.path.realpath(path) if path and os.path.isfile(path) else None), module, code


def task_sources(fn: Any) -> dict[str, Any]:
    """Digest of a task's source file and of the project modules its imports reach.

    ``root`` (the project) is the git checkout holding the task's file, else the file's
    directory; a file under an installed prefix is hashed alone. Returns ``{"task", "root",
    "files", "sha256"}`` (``files``: how many were hashed). A task without a source file (defined
    in an interactive session) is keyed by its compiled code instead."""
    name = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    path, module, code = _task_file(fn)
    if path is None:
        blob = marshal.dumps(code) if code is not None else repr(fn).encode()
        return {"task": name, "root": None, "files": 0, "sha256": hashlib.sha256(blob).hexdigest()}
    installed = _installed_roots()
    top = git_toplevel(os.path.dirname(path))
    root = os.path.realpath(str(top)) if top else os.path.dirname(path)
    if not _is_project_file(path, root, installed):
        root = None
    digests: dict[str, str] = {}
    todo: list[tuple[str, str | None]] = [(path, module)]
    while todo and len(digests) < MAX_FILES:
        file, mod = todo.pop()
        if file in digests:
            continue
        sha, imports = _parse(file)
        digests[file] = sha
        if root is None:
            continue
        package = _package_of(file, mod)
        for target, level, names in imports:
            absolute = _resolve(target, level, package)
            if not absolute:
                continue
            for candidate in [absolute, *(f"{absolute}.{n}" for n in names)]:
                spec = _find_spec(candidate)
                origin = getattr(spec, "origin", None) if spec is not None else None
                if origin and os.path.isfile(origin) and _is_project_file(origin, root, installed):
                    real = os.path.realpath(origin)
                    if real not in digests:
                        todo.append((real, candidate))
    h = hashlib.sha256()
    for file in sorted(digests):
        rel = os.path.relpath(file, root) if root else os.path.basename(file)
        h.update(f"{len(rel)}:{rel}:{digests[file]}\n".encode())
    return {"task": name, "root": root, "files": len(digests), "sha256": h.hexdigest()}


# ----------------------------------------------------------------------------- a package's sources


def tree_digest(dirs: list[str | Path]) -> dict[str, Any]:
    """sha256 over every file under ``dirs`` (bytecode caches left out): names and contents."""
    h = hashlib.sha256()
    count = 0
    for base in dirs:
        base = Path(base)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith((".pyc", ".pyo")) or name.startswith("."):  # caches, editor files
                    continue
                full = Path(dirpath) / name
                try:
                    data = full.read_bytes()
                except OSError:
                    continue
                rel = f"{base.name}/{full.relative_to(base).as_posix()}"
                h.update(f"{len(rel)}:{rel}:{len(data)}:".encode())
                h.update(data)
                count += 1
    return {"files": count, "sha256": h.hexdigest()}
