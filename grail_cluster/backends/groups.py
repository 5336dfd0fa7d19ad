"""What to submit, as pure data: the groups of shard indices per stage, their array specs and
dependencies. A backend's ``submit_group`` turns one group into scheduler calls; nothing here
touches a scheduler.

Arrays are chunked under the cluster's MaxArraySize, which caps the array *index*, not the count:
chunk c carries shard indices [c*M, (c+1)*M) as task ids 0..M-1 plus ``GRAIL_INDEX_OFFSET = c*M``.
Chunks of stages joined by ``aftercorr`` line up because both are cut at the same boundaries.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from grail_cluster.core.plan import RunPlan


@dataclass(frozen=True)
class DepRef:
    kind: str  # afterok | aftercorr
    stage: str
    chunk: int | None  # aftercorr: the upstream group of the same chunk; afterok: None (every group)


@dataclass
class Group:
    stage: str
    chunk: int  # position of this group within its stage (0, 1, ...)
    indices: list[int]
    offset: int
    array: bool
    parallelism: int
    depends: list[DepRef] = field(default_factory=list)

    @property
    def task_ids(self) -> list[int]:
        return [i - self.offset for i in self.indices]

    @property
    def array_spec(self) -> str | None:
        if not self.array:
            return None
        return f"{compress_ranges(self.task_ids)}%{self.parallelism}"

    def name(self, run_id: str, round_: int) -> str:
        # <run>:<stage>:<chunk> lets a crashed submitter find what it already queued.
        base = f"{run_id}:{self.stage}:{self.chunk}"
        return base if round_ == 0 else f"{base}:r{round_}"


def name_pattern(run_id: str) -> re.Pattern[str]:
    """The names :meth:`Group.name` gives this run's jobs: stage, chunk and round as groups."""
    return re.compile(rf"^{re.escape(run_id)}:([A-Za-z_]+):(\d+)(?::r(\d+))?$")


def compress_ranges(ids: list[int]) -> str:
    """[0,1,2,3,7,9,10] -> "0-3,7,9-10" (SLURM's --array syntax)."""
    ids = sorted(ids)
    parts: list[str] = []
    start = prev = None
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(parts)


def _share(parallelism: int, sizes: list[int]) -> list[int]:
    """Split one stage's %parallelism over its chunks in proportion to their sizes (each >= 1)."""
    total = sum(sizes)
    if total <= parallelism:
        return list(sizes)
    shares = [max(1, parallelism * s // total) for s in sizes]
    return [min(s, n) for s, n in zip(shares, sizes, strict=True)]


def plan_groups(plan: RunPlan, selected: dict[str, list[int]], *, arrays: Mapping[str, bool],
                max_array_size: int | None, parallelism: int | None) -> list[Group]:
    """Groups for the given indices of each stage, in stage order.

    ``selected`` maps stage -> indices to submit (all indices for a fresh run; the failed ones and
    what depends on them for a resubmit); ``arrays`` says which stages run as arrays (each stage's
    own rule: ``stages.registry.arrays``, or the rendered job specs). A dependency is only recorded
    on an upstream stage that is itself being submitted: a done upstream needs no waiting.
    """
    groups: list[Group] = []
    by_stage: dict[str, list[Group]] = {}
    m = max_array_size or 10**9
    for st in plan.stages:
        indices = sorted(set(selected.get(st.name) or []))
        if not indices:
            continue
        array = arrays[st.name]
        chunks: dict[int, list[int]] = defaultdict(list)
        for i in indices:
            chunks[i // m if array else 0].append(i)
        # Split further where the upstream of aftercorr is resubmitted for some indices only.
        parts: list[tuple[int, list[int], list[DepRef]]] = []
        for c in sorted(chunks):
            by_sig: dict[tuple, list[int]] = defaultdict(list)
            for i in chunks[c]:
                sig = []
                for dep in st.depends_on:
                    up = by_stage.get(dep.stage)
                    if not up:
                        continue
                    if dep.kind == "aftercorr":
                        partner = next((g for g in up if i in g.indices), None)
                        if partner is not None:
                            sig.append(DepRef("aftercorr", dep.stage, partner.chunk))
                    else:
                        sig.append(DepRef("afterok", dep.stage, None))
                by_sig[tuple(sig)].append(i)
            for sig, idx in sorted(by_sig.items(), key=lambda kv: kv[1][0]):
                parts.append((c, idx, list(sig)))
        shares = _share(int(parallelism or 10**9), [len(p[1]) for p in parts])
        stage_groups = []
        for n, ((c, idx, deps), share) in enumerate(zip(parts, shares, strict=True)):
            stage_groups.append(Group(st.name, n, idx, c * m if array and max_array_size else 0, array, share, deps))
        by_stage[st.name] = stage_groups
        groups += stage_groups
    return groups
