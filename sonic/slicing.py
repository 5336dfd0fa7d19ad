"""SONIC's per-rank data slicing, reproduced exactly (contracts §3).

These are the formulas the trainer applies inside each process; the planner runs them once,
centrally, so the plan shows which motions and USDs every rank will train on, and so the CPU
reference backend can read its slice from ``plan.json`` instead of re-deriving it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def block_bounds(total: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[floor(r*T/W), floor((r+1)*T/W))``: SONIC's contiguous block of a sorted key list."""
    if world_size < 1:
        raise ValueError("world_size must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    return rank * total // world_size, (rank + 1) * total // world_size


def select_keys(keys: Sequence[str], filter_keys: Sequence[str] | None = None,
                remove_prefixes: Sequence[str] | None = None) -> list[str]:
    """The motion side's key list before slicing: exact-key filter, prefix removal, then sorted."""
    out = list(keys)
    if filter_keys:
        wanted = set(filter_keys)
        out = [k for k in out if k in wanted]
    if remove_prefixes:
        out = [k for k in out if not any(k.startswith(p) for p in remove_prefixes)]
    return sorted(out)


@dataclass(frozen=True)
class HoiRankSlice:
    rank: int
    start: int
    stop: int
    motion_keys: list[str]
    unused_past_num_envs: int  # motions on this rank beyond num_envs are never used


def hoi_rank_slices(sorted_keys: Sequence[str], world_size: int, num_envs: int,
                    max_unique_motions: int | None = None) -> list[HoiRankSlice]:
    """Every rank's block (§3.1). The USD side applies the same formula to the same sorted stems."""
    slices = []
    for rank in range(world_size):
        a, b = block_bounds(len(sorted_keys), world_size, rank)
        keys = list(sorted_keys[a:b])
        if max_unique_motions is not None:
            keys = keys[:max_unique_motions]
        slices.append(HoiRankSlice(rank, a, b, keys, max(0, len(keys) - num_envs)))
    return slices


def terrain_envs(num_envs: int, flat_to_terrain_ratio: int) -> int:
    """``num_envs // (R+1)``: how many of a rank's envs are terrain envs."""
    return num_envs // (flat_to_terrain_ratio + 1)


def terrain_window(num_keys: int, num_envs: int, flat_to_terrain_ratio: int, rank: int) -> list[int]:
    """Indices of the terrain keys rank ``rank`` trains on: a cyclic window (§3.2 step 4)."""
    if num_keys == 0:
        return []
    n = terrain_envs(num_envs, flat_to_terrain_ratio)
    return [(rank * n + i) % num_keys for i in range(n)]


def terrain_never_trained(num_keys: int, num_envs: int, flat_to_terrain_ratio: int, world_size: int) -> int:
    """Keys past ``W * n`` are never trained when the windows do not reach them (§3.2 step 8)."""
    covered = set()
    for rank in range(world_size):
        covered.update(terrain_window(num_keys, num_envs, flat_to_terrain_ratio, rank))
    return num_keys - len(covered)
