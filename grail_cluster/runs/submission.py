"""Which shards a resubmission takes along (pure): what waits on the chosen shards, and what
consumed their outputs. The groups they are submitted as: :mod:`grail_cluster.backends.groups`.
"""

from __future__ import annotations

from grail_cluster.core.plan import RunPlan


def downstream_closure(plan: RunPlan, seeds: dict[str, set[int]], not_done: dict[str, set[int]]) -> dict[str, set[int]]:
    """Seeds plus every not-done index that depends on them: aftercorr keeps the index, afterok
    takes the downstream stage's not-done indices (merge c, web)."""
    out = {k: set(v) for k, v in seeds.items()}
    for st in plan.stages:
        for dep in st.depends_on:
            up = out.get(dep.stage)
            if not up:
                continue
            mine = not_done.get(st.name, set())
            if dep.kind == "aftercorr":
                out.setdefault(st.name, set()).update(i for i in up if i in mine)
            else:
                out.setdefault(st.name, set()).update(mine)
    return {k: v for k, v in out.items() if v}


def consumers(plan: RunPlan, seeds: dict[str, set[int]]) -> dict[str, set[int]]:
    """Seeds plus every index downstream that consumed their outputs, done or not: re-running a seed
    changes what they read. aftercorr keeps the index; merge c reads the export shards of checkpoint c
    (index c*N .. c*N+N-1); any other afterok reads its whole upstream stage."""
    out = {k: set(v) for k, v in seeds.items()}
    shards_per_checkpoint = int(plan.eval.get("num_shards") or 1)
    for st in plan.stages:
        for dep in st.depends_on:
            up = out.get(dep.stage)
            if not up:
                continue
            if dep.kind == "aftercorr":
                mine = {i for i in up if i < st.size}
            elif (dep.stage, st.name) == ("export", "merge"):
                mine = {i // shards_per_checkpoint for i in up if i // shards_per_checkpoint < st.size}
            else:
                mine = set(range(st.size))
            out.setdefault(st.name, set()).update(mine)
    return {k: v for k, v in out.items() if v}
