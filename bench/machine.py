"""The machine a benchmark ran on, recorded beside its figures."""

from __future__ import annotations

import os
import platform
from typing import Any


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
