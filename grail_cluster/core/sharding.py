"""Eval sharding: which motion keys each eval shard rolls out.

``sonic_block`` is what SONIC does with ``motion_shard_world_size/rank`` (the contiguous block of
sorted keys). ``balanced`` packs by frame count with longest-processing-time-first, which keeps
the slowest shard close to the ideal on heavy-tailed length distributions; its shards are handed
to SONIC as exact ``filter_motion_keys`` lists with world size 1.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from grail_cluster.sonic.slicing import block_bounds

STRATEGIES = ("sonic_block", "balanced")


@dataclass(frozen=True)
class ShardAssignment:
    shard: int
    motion_keys: list[str]  # sorted: SONIC sorts the motion side and reads USDs in filter order
    frames: int


def sonic_block_shards(sorted_keys: Sequence[str], frames: Mapping[str, int], num_shards: int) -> list[ShardAssignment]:
    out = []
    for i in range(num_shards):
        a, b = block_bounds(len(sorted_keys), num_shards, i)
        keys = list(sorted_keys[a:b])
        out.append(ShardAssignment(i, keys, sum(frames[k] for k in keys)))
    return out


def balanced_shards(sorted_keys: Sequence[str], frames: Mapping[str, int], num_shards: int) -> list[ShardAssignment]:
    """LPT: longest motion first onto the least-loaded shard; ties broken by key and shard index."""
    heap = [(0, 0, i) for i in range(num_shards)]  # (frames, count, shard)
    members: list[list[str]] = [[] for _ in range(num_shards)]
    for key in sorted(sorted_keys, key=lambda k: (-frames[k], k)):
        load, count, shard = heapq.heappop(heap)
        members[shard].append(key)
        heapq.heappush(heap, (load + frames[key], count + 1, shard))
    return [ShardAssignment(i, sorted(m), sum(frames[k] for k in m)) for i, m in enumerate(members)]


def make_shards(strategy: str, sorted_keys: Sequence[str], frames: Mapping[str, int], num_shards: int) -> list[ShardAssignment]:
    if strategy == "sonic_block":
        return sonic_block_shards(sorted_keys, frames, num_shards)
    if strategy == "balanced":
        return balanced_shards(sorted_keys, frames, num_shards)
    raise ValueError(f"unknown sharding strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def balance(shards: Sequence[ShardAssignment]) -> float:
    """Max shard frames over the ideal (total / N): 1.0 is perfect; the slowest shard sets wall time."""
    total = sum(s.frames for s in shards)
    if total == 0 or not shards:
        return 1.0
    return max(s.frames for s in shards) / (total / len(shards))
