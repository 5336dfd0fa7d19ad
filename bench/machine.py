"""The machine a benchmark ran on, recorded beside its figures."""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

MARKER = ".bench_complete.json"  # written last into a generated dataset: its recipe and sizes


def machine() -> dict[str, Any]:
    mem_kb = 0
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/meminfo") as fh:
            mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except (OSError, StopIteration):
        pass
    return {
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_gib": round(mem_kb / 2**20, 1),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def reuse_dataset(base: Path, want: dict[str, Any]) -> dict[str, Any] | None:
    """The marker of a dataset generated earlier with the same recipe (``want``), or None after
    removing whatever stands at ``base`` (a half-generated or differently generated dataset)."""
    marker = base / MARKER
    if marker.is_file():
        try:
            have = json.loads(marker.read_text())
        except ValueError:
            have = {}
        if {k: have.get(k) for k in want} == want:
            return {**have, "reused": True}
    if base.exists():
        shutil.rmtree(base)
    return None


def mark_dataset(base: Path, info: dict[str, Any]) -> None:
    """Record a finished dataset (last, so an interrupted generation is never reused)."""
    (base / MARKER).write_text(json.dumps(info, indent=1))


def save_result(bench_dir: Path, name: str, result: dict[str, Any]) -> Path:
    """Write a benchmark's figures to ``<bench_dir>/<name>.json`` and say where (with its wall time)."""
    out = bench_dir / f"{name}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wall {result['wall_s']} s -> {out}")
    return out
