"""The package's layers (docs/architecture.md), read from the code's own imports, function-level ones
included: an import goes down the layers, never up, stages and backends never import each other, no
modules import each other in a circle, and no module holds more than 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Lower number = lower layer; one layer's parts may import each other (no circles: the last test),
# except stages and backends, which meet only in runs. `sonic` (SONIC's command line, slicing, config
# registry, checkout) sits with core; `sonic.reference`, the CPU reference tracker, with the data tools.
LAYER = {"core": 0, "sonic": 0, "tools": 1, "sonic.reference": 1, "stages": 2, "backends": 2, "runs": 3,
         "entry": 3, "cli": 4, "launchers": 4, "__main__": 5}
# The reference tracker's package face names only where its SONIC-layout root is (no mujoco/torch):
# core asks it that, as it asks any path.
FACES = {"grail_cluster.sonic.reference"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] in ("launchers", "sonic"):
        parts.insert(0, "grail_cluster")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "grail_cluster" or len(parts) < 2:
        return None
    if parts[1] == "sonic" and len(parts) > 2 and parts[2] == "reference":
        return "sonic.reference"
    return parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import module` imports the module; `from module import name` the module itself.
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                    if (f"{node.module}.{a.name}".replace("grail_cluster.", "", 1).replace(".", "/") + ".py") in _FILES]
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in out if m.startswith("grail_cluster.")]


def _sources() -> list[Path]:
    return [p for d in ("grail_cluster", "launchers", "sonic") for p in sorted((REPO / d).rglob("*.py"))]


# Module files as paths below grail_cluster/ (launchers/ and sonic/ are installed there).
_FILES = {str(Path(_module(p).replace("grail_cluster.", "", 1).replace(".", "/") + ".py")) for p in _sources()
          if p.name != "__init__.py"}


def test_imports_go_down_the_layers():
    wrong = []
    for path in _sources():
        mine = _layer(_module(path))
        for line, target in _imports(path):
            theirs = _layer(target)
            if mine is None or theirs is None or theirs == mine or target in FACES:
                continue
            if LAYER[theirs] > LAYER[mine] or {mine, theirs} == {"stages", "backends"}:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {mine} imports {target} ({theirs})")
    assert not wrong, "imports that run up or across the layers:\n" + "\n".join(wrong)


def test_no_import_circles_between_modules():
    names = {_module(p): p for p in _sources()}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        graph[name] = {target for _, target in _imports(path) if target in names and target != name}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                circles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    # A package's __init__ importing its own modules is its face, not a circle.
    circles = [c for c in circles if not any(c.startswith(f"{p} ->") for p in names if names[p].name == "__init__.py")]
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_module_over_500_lines():
    big = [f"{p.relative_to(REPO)}: {n}" for p in _sources() if (n := len(p.read_text().splitlines())) > 500]
    assert not big, "modules over 500 lines (split them by job):\n" + "\n".join(big)
