"""Installing grail-cluster's extras into a user's environment must not change how other tools there
behave. The case that did: the dev extra pulled in kmock, whose auto-loaded pytest plugin imports
pytest-asyncio (not installed), so `pytest` failed for every other project of that environment."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, distributions
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _extras() -> dict[str, list[str]]:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["optional-dependencies"]


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_no_extra_installs_the_kubernetes_emulator():
    named = {extra: [r for r in reqs if _name(r) == "kmock"] for extra, reqs in _extras().items()}
    assert not any(named.values()), f"kmock's pytest plugin breaks other projects' pytest: {named}"


def _closure(extra: str) -> set[str]:
    """Distribution names an extra installs, following requirements of installed distributions."""
    extras = _extras()
    todo = [r for r in extras[extra]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = _name(req)
        if name == "grail-cluster":
            inner = re.search(r"\[([^\]]+)\]", req)
            for e in (inner.group(1).split(",") if inner else []):
                todo += extras[e.strip()]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [r for r in (distribution(name).requires or []) if "extra ==" not in r]
        except PackageNotFoundError:
            pass
    return seen


def test_every_pytest_plugin_the_dev_extra_installs_loads_on_its_own():
    installed = _closure("dev")
    plugins = [(d.metadata["Name"], ep.value) for d in distributions()
               if _name(d.metadata["Name"]) in installed for ep in d.entry_points if ep.group == "pytest11"]
    assert plugins, "the dev extra installs pytest and hypothesis: their plugins should be listed"
    for dist, module in plugins:
        proc = subprocess.run([sys.executable, "-c", f"import {module.split(':')[0]}"], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, f"{dist}'s pytest plugin {module} does not import: {proc.stderr[-800:]}"


def test_pytest_of_another_project_runs_in_this_environment(tmp_path):
    (tmp_path / "test_other.py").write_text("def test_other():\n    assert 1 + 1 == 2\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout
