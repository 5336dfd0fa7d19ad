"""Plan-time checks that need the scheduler: every stage's request against its partition's limits.

A request over a partition's limits is either refused by ``sbatch`` halfway through submitting a
DAG (earlier stages already queued) or, for a time limit, left PENDING forever with reason
``PartitionTimeLimit``. One ``sinfo`` call tells all of it, so a plan that cannot run on this
cluster is refused before anything is written or queued.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from grail_cluster.core.errors import ConfigError
from grail_cluster.core.plan import Resources, RunPlan

_GPU = re.compile(r"gpu(?::[^:,()\s]+)?:(\d+)")


@dataclass
class Partition:
    name: str
    default: bool = False
    time_min: float | None = None  # None: no limit
    max_nodes: int | None = None  # largest job in nodes; None: no limit
    avail: str = "up"
    nodes: list[tuple[int, int, int]] = field(default_factory=list)  # (CPUs, memory MB, GPUs) per node

    def describe(self) -> str:
        cpus = max(n[0] for n in self.nodes)
        mem = max(n[1] for n in self.nodes)
        gpus = max(n[2] for n in self.nodes)
        limit = "no time limit" if self.time_min is None else f"time limit {self.time_min:g} min"
        return (f"partition {self.name}: {len(self.nodes)} node(s), at most {cpus} CPUs, {mem} MB, {gpus} GPUs "
                f"per node, {limit}")


def _minutes(text: str) -> float | None:
    """SLURM's time limit ([days-]hours:minutes:seconds, minutes, infinite) in minutes."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1 and not days:
        return float(parts[0])  # a bare number is minutes
    while len(parts) < 3:
        parts.append(0) if days else parts.insert(0, 0)
    h, m, sec = parts
    return days * 1440 + h * 60 + m + sec / 60


def _int(text: str) -> int:
    return int(text.strip().rstrip("+") or 0)


def parse_sinfo(text: str) -> dict[str, Partition]:
    """``sinfo -N -o '%P|%l|%s|%c|%m|%G|%a'`` -> partitions with their nodes."""
    parts: dict[str, Partition] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 7:
            continue
        name, limit, size, cpus, mem, gres, avail = fields[:7]
        default = name.endswith("*")
        name = name.rstrip("*")
        p = parts.setdefault(name, Partition(name, default))
        p.default = p.default or default
        p.time_min = _minutes(limit)
        top = size.split("-")[-1].strip()
        p.max_nodes = None if top.lower() in ("infinite", "unlimited", "") else int(top)
        p.avail = avail.strip()
        gpus = sum(int(g) for g in _GPU.findall(gres))
        p.nodes.append((_int(cpus), _int(mem), gpus))
    return parts


def _mem_mb(gb: float) -> int:
    """The --mem the template writes (backends.slurm.slurm_mem), in MB."""
    return math.ceil(gb) * 1024 if gb >= 1 else math.ceil(gb * 1024)


def _stage_problems(stage: str, r: Resources, p: Partition) -> list[tuple[str, str]]:
    """(problem naming the key, fix) for one stage's request."""
    out: list[tuple[str, str]] = []
    gpu_key = "train.gpus_per_node" if stage == "train" else f"resources.{stage}.gpus"
    node_key = "train.nodes" if stage == "train" else f"resources.{stage}.nodes"
    if p.time_min is not None and r.time_min > p.time_min:
        out.append((f"resources.{stage}.time={r.time_min} min is over partition {p.name}'s limit of "
                    f"{p.time_min:g} min (the job would wait forever: PartitionTimeLimit)",
                    f"resources.{stage}.time={int(p.time_min)}"))
    limit = min(p.max_nodes or len(p.nodes), len(p.nodes))
    if r.nodes > limit:
        out.append((f"{node_key}={r.nodes} but partition {p.name} runs jobs of at most {limit} node(s)",
                    f"{node_key}={limit}"))
        return out
    need_mb = _mem_mb(r.mem_gb)
    fitting = [n for n in p.nodes if n[0] >= r.cpus and n[1] >= need_mb and n[2] >= r.gpus]
    if len(fitting) >= r.nodes:
        return out
    cpus, mem, gpus = (max(n[i] for n in p.nodes) for i in range(3))
    if r.cpus > cpus:
        out.append((f"resources.{stage}.cpus={r.cpus} but partition {p.name}'s nodes have at most {cpus} CPUs",
                    f"resources.{stage}.cpus={cpus}"))
    if need_mb > mem:
        out.append((f"resources.{stage}.mem={r.mem_gb:g} (GiB per node) but partition {p.name}'s nodes have at most "
                    f"{mem} MB", f"resources.{stage}.mem={max(1, mem // 1024)}"))
    if r.gpus > gpus:
        out.append((f"{gpu_key}={r.gpus} but partition {p.name}'s nodes have at most {gpus} GPU(s) (GRES)",
                    f"{gpu_key}={gpus}" if gpus else f"a GPU partition (cluster.partition=...), or {gpu_key}=0"))
    if not out:
        out.append((f"resources.{stage} ({r.nodes} node(s) x {r.cpus} CPUs, {r.mem_gb:g}G, {r.gpus} GPUs) fits no "
                    f"{r.nodes} node(s) of partition {p.name} at once", f"lower resources.{stage}"))
    return out


def check_partition(plan: RunPlan, sinfo_text: str) -> list[str]:
    """Raise a ConfigError naming every request over the partition's limits; return notes."""
    parts = parse_sinfo(sinfo_text)
    if not parts:
        return ["`sinfo` listed no partitions: partition limits not checked"]
    wanted = plan.settings.cluster.partition  # a slurm plan
    names = ", ".join(sorted(parts))
    if wanted:
        part = parts.get(str(wanted))
        if part is None:
            raise ConfigError(f"cluster.partition={wanted} is not a partition of this cluster (sinfo lists: {names})",
                              fix=f"cluster.partition=<one of {names}>, or cluster.check_limits=false when "
                                  "rendering for another cluster")
    else:
        part = next((p for p in parts.values() if p.default), None)
        if part is None:
            raise ConfigError(f"cluster.partition is not set and this cluster has no default partition ({names})",
                              fix=f"cluster.partition=<one of {names}>")
    problems = [pf for st in plan.stages for pf in _stage_problems(st.name, st.resources, part)]
    if problems:
        lines = "\n  ".join(p for p, _ in problems)
        fixes = " ".join(dict.fromkeys(f for _, f in problems))
        raise ConfigError(f"{len(problems)} request(s) do not fit {part.describe()}:\n  {lines}",
                          fix=f"{fixes} (or another cluster.partition; cluster.check_limits=false when rendering "
                              "for another cluster)")
    notes = []
    if part.avail not in ("up", "UP"):
        notes.append(f"partition {part.name} is {part.avail}: jobs will queue until it is up")
    return notes
