"""What every command module of the CLI shares: the two consoles, JSON output, the error handling
around a command, and turning overrides into a plan (compose, index the library, build).

Command modules import these from here, never from ``cli.main``, so that ``main`` can import every
command module without an import circle.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.markup import escape

from grail_cluster.core.console import make_console
from grail_cluster.core.errors import EXIT_OK, GrailError

# Without a terminal (a log, a pipe) these never fold a key or a path: see console.py.
out = make_console()
err = make_console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def run_command(func: Callable[[Any], int], args: Any) -> int:
    """Run one command: a user mistake prints one clear message and its exit code, no traceback."""
    try:
        return int(func(args))
    except GrailError as exc:
        err.print("[red]error:[/] " + escape(exc.render()), highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK


def progress_scan(path: str, **kw: Any):
    """Scan with a progress bar on stderr when someone is watching (pickles are parsed only on change)."""
    from grail_cluster.core.library import scan_library

    if not sys.stderr.isatty():
        return scan_library(path, **kw)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("indexing motions"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("index", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return scan_library(path, progress=tick, **kw)


def sweep_configs(overrides: list[str], sweep_file: str | None) -> tuple[list[dict[str, Any]], Any]:
    """Each point's resolved config (Hydra composes every point, as with SONIC's own -m)."""
    from grail_cluster.core import config
    from grail_cluster.core.sweep import check_points, expand

    sweep = expand(overrides, sweep_file)
    points = sweep.points
    if sys.stderr.isatty() and len(points) > 20:
        from rich.progress import track

        points = track(points, description="composing sweep points", console=err, transient=True)
    configs = [config.load(p) for p in points]
    check_points(configs, sweep)
    return configs, sweep


def plan_from_overrides(overrides: list[str], *, multirun: bool = False, sweep_file: str | None = None):
    from grail_cluster.core import config
    from grail_cluster.core.provenance import sources
    from grail_cluster.core.settings import settings
    from grail_cluster.runs.planner import build_plan

    sweep = None
    if multirun or sweep_file:
        configs, swept = sweep_configs(overrides, sweep_file)
        c = configs[0]
        sweep = {"configs": configs, "swept": swept.swept}
    else:
        c = config.load(overrides)
    # Terrain pipelines force terrain discovery; HOI pipelines auto-detect so that a terrain root
    # handed to an HOI pipeline is caught as a mismatch instead of half-indexed.
    cs = settings(c)
    layout = "terrain" if cs.pipeline.kind == "terrain" else "auto"
    index = progress_scan(cs.data.motion_lib, layout=layout, usd_dir=cs.data.object_usd_dir, bps_dir=cs.data.bps_dir)
    plan = build_plan(c, index, provenance=sources(c, index.bps_dir), sweep=sweep)
    from grail_cluster.runs.planner import check_cluster

    # The scheduler's limits (one sinfo call), before anything is written or queued.
    for note in check_cluster(plan):
        err.print(f"note: {escape(note)}", highlight=False)
    return plan
