"""The CPU reference tracker: MuJoCo's Unitree G1 and a PPO residual policy behind SONIC's entry points.

This module stays import-light (no mujoco/torch): the planner asks it only where the reference root is.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent / "root"


def reference_root() -> str:
    """The SONIC-layout directory that plays ``sonic.root`` with ``trainer=reference``."""
    return str(ROOT)
