"""``python -m grail_cluster.<tool>``: a data tool run on its own, with the CLI's error handling."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from grail_cluster.core.errors import GrailError


def run_tool(register: Callable[[Any], Any], command: str, argv: list[str] | None = None) -> int:
    """Parse ``argv`` as ``grail-cluster <command> ...`` and run it; user mistakes print, not raise."""
    parser = argparse.ArgumentParser(prog="grail-cluster")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except GrailError as exc:
        sys.stderr.write(f"error: {exc.render()}\n")
        return exc.exit_code
