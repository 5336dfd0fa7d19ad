"""What SONIC says it took, compared with what the plan gave each rank or shard (contracts §3).

SONIC logs the slice every process really loads: ``[Motion Shard] Rank r/W: motions [a:b] = n/T``
(HOI, §3.1), ``[PerRankUSD] rank=..., terrain_motions=...`` and ``[PerRankMotion] Loaded N motion keys
from /tmp/rank_<r>_motion_keys.txt`` (terrain, §3.2). A library that changed between plan and run, or
a SONIC that slices differently, shows up there within the first minutes; this module parses those
lines and judges each against plan.json. It knows nothing about processes: ``slice_watch`` feeds it.

The audit is written beside the job's logs (``logs/<stage>/<index>/<attempt>.slices.json``) so
``status`` and ``logs`` can show it without reading the logs again.
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grail_cluster.sonic.slicing import block_bounds

# Markers are matched anywhere in a line: launchers and loggers prefix lines ("[rank0]: ", timestamps).
_MARKER_START = re.compile(r"(?=\[(?:Motion Shard|PerRankUSD|PerRankMotion)\] )")
# Each pattern is matched at the start of one marker's segment of a line.
MOTION_SHARD = re.compile(r"\[Motion Shard\] Rank (\d+)\s*/\s*(\d+): motions \[(\d+):(\d+)\] = (\d+)\s*/\s*(\d+)")
MOTION_SHARD_ENABLED = re.compile(r"\[Motion Shard\] Enabled: rank (\d+)\s*/\s*(\d+)")
PER_RANK_USD = re.compile(r"\[PerRankUSD\] (rank=\d+,.*)$")
PER_RANK_USD_KEYS = re.compile(r"\[PerRankUSD\] terrain_keys\[0:3\]=(\[.*\])\s*$")
PER_RANK_MOTION = re.compile(r"\[PerRankMotion\] Loaded (\d+) motion keys from (\S*?rank_(\d+)_motion_keys\.txt)")
_FIELD = re.compile(r"(\w+)=([^,\s]+)")

FIX = ("re-plan the run on the library as it is now (`grail-cluster run ...`), or restore the library the "
       "plan was made from; if SONIC's slicing is meant to differ, GRAIL_SLICE_AUDIT=warn (job.env) records "
       "the difference without stopping the job")


@dataclass
class RankPlan:
    """One rank's (or eval shard's) slice as plan.json has it, in the terms SONIC logs."""

    rank: int
    start: int | None = None  # HOI block [start:stop) of T sorted keys
    stop: int | None = None
    total: int | None = None
    num_envs: int | None = None  # terrain window
    terrain_envs: int | None = None
    ratio: int | None = None
    terrain_motions: int | None = None
    first_keys: list[str] = field(default_factory=list)


@dataclass
class Expectation:
    """What this job's SONIC child should print: the slicing kind, the world size, and the ranks
    whose output this process sees (a node of a multi-node training sees only its own ranks)."""

    stage: str
    index: int
    kind: str  # "hoi_block" | "terrain_window"
    world: int
    ranks: dict[int, RankPlan]
    all_first_keys: list[list[str]] = field(default_factory=list)
    unit: str = "ranks"  # "ranks" (train) or "shards" (eval)


def train_expectation(plan, index: int, machine_rank: int = 0) -> Expectation:
    pt = plan.point_train(index)
    ranks = pt["ranks"]
    world = int(pt["world_size"])
    mine = [r for r in ranks if int(r.get("node", 0)) == machine_rank]
    if pt.get("slicing") == "terrain_window":
        exp = {r["rank"]: RankPlan(r["rank"], num_envs=int(pt["num_envs_per_process"]),
                                   terrain_envs=int(pt["terrain_envs_per_process"]),
                                   ratio=int(pt["flat_to_terrain_ratio"]), terrain_motions=len(r["motion_keys"]),
                                   first_keys=list(r["motion_keys"][:3])) for r in mine}
        return Expectation("train", index, "terrain_window", world, exp,
                           [list(r["motion_keys"][:3]) for r in ranks])
    total = int(ranks[-1]["stop"]) if ranks else 0
    exp = {r["rank"]: RankPlan(r["rank"], start=int(r["start"]), stop=int(r["stop"]), total=total) for r in mine}
    return Expectation("train", index, "hoi_block", world, exp)


def eval_expectation(plan, index: int) -> Expectation:
    """An eval shard is rank ``shard`` of ``num_shards`` (sonic_block) or rank 0 of 1 over its own
    key list (balanced, and terrain, where the window of ``n`` envs is the whole shard)."""
    _, shard = plan.eval_index(index)
    n = len(shard.motion_keys)
    if plan.library.get("layout") == "terrain":
        rp = RankPlan(0, num_envs=n, terrain_envs=n, ratio=0, terrain_motions=n, first_keys=list(shard.motion_keys[:3]))
        return Expectation("eval", index, "terrain_window", 1, {0: rp}, [rp.first_keys], unit="shards")
    if plan.eval["strategy"] == "sonic_block":
        total = sum(len(s.motion_keys) for s in plan.eval_shards)
        world = int(plan.eval["num_shards"])
        a, b = block_bounds(total, world, shard.shard)
        return Expectation("eval", index, "hoi_block", world, {shard.shard: RankPlan(shard.shard, a, b, total)},
                           unit="shards")
    return Expectation("eval", index, "hoi_block", 1, {0: RankPlan(0, 0, n, n)}, unit="shards")


@dataclass
class Seen:
    marker: str
    rank: int | None
    line: str
    ok: bool
    problem: str | None = None


class SliceAudit:
    """Feed it lines; it records every marker and says the first time one disagrees with the plan."""

    def __init__(self, expectation: Expectation, *, timeout_s: float, mode: str = "enforce",
                 where: dict[str, Any] | None = None):
        self.exp = expectation
        # Which machine rank, host and SLURM node this audit watched (a multi-node training has one per node).
        self.where = dict(where or {})
        self.timeout_s = timeout_s
        self.mode = mode
        self.seen: list[Seen] = []
        self.matched: set[int] = set()
        self.bad: set[int] = set()
        self.usd_flat: dict[int, int] = {}
        self.mismatch: str | None = None
        self.timed_out = False
        self.started = time.time()

    # -- parsing ------------------------------------------------------------------------------------
    def feed(self, line: str) -> str | None:
        """One line of the child's output; returns the mismatch signature the first time there is one."""
        if "[" not in line or not any(t in line for t in ("[Motion Shard]", "[PerRankUSD]", "[PerRankMotion]")):
            return None
        before = self.mismatch
        # Ranks share one pipe, and unbuffered Python writes a line's text and its newline apart, so
        # two ranks' markers arrive glued on one line: each marker is judged from its own segment.
        for segment in _MARKER_START.split(line.rstrip("\r\n"))[1:]:
            self._segment(segment)
        return self.mismatch if self.mismatch and not before else None

    def _segment(self, seg: str) -> None:
        if m := MOTION_SHARD.match(seg):
            # Text glued after T (another rank's output) could have lengthened T's digits: such a
            # segment is trusted when it agrees with the plan, and only noted when it does not.
            glued = bool(seg[m.end():].strip())
            self._motion_shard(seg, *map(int, m.groups()), glued=glued)
        elif m := MOTION_SHARD_ENABLED.match(seg):
            self._enabled(seg, int(m.group(1)), int(m.group(2)))
        elif m := PER_RANK_USD_KEYS.match(seg):
            self._usd_keys(seg, m.group(1))
        elif m := PER_RANK_USD.match(seg):
            self._usd(seg, dict(_FIELD.findall(m.group(1))))
        elif m := PER_RANK_MOTION.match(seg):
            self._per_rank_motion(seg, int(m.group(1)), int(m.group(3)))

    def _record(self, marker: str, rank: int | None, line: str, problem: str | None, counts: bool = True) -> None:
        self.seen.append(Seen(marker, rank, line[-400:], problem is None, problem))
        if problem is not None:
            if rank is not None:
                self.bad.add(rank)
            if self.mismatch is None:
                self.mismatch = f"slice mismatch: {self.exp.stage} {self.exp.index}: {problem}"
        elif counts and rank is not None and rank not in self.bad:
            self.matched.add(rank)

    def _who(self, rank: int, world: int) -> str:
        return f"{self.exp.stage} {'shard' if self.exp.unit == 'shards' else 'rank'} {rank}/{world}"

    def _motion_shard(self, line: str, r: int, w: int, a: int, b: int, n: int, t: int, glued: bool = False) -> None:
        if self.exp.kind == "terrain_window":
            # Terrain forces motion_shard_world_size=1 after cutting its own window (§3.2 step 7):
            # every rank logs "Rank 0/1" over its own key file, which names no global rank.
            self.seen.append(Seen("Motion Shard", None, line[-400:], True, "terrain: not attributable to a rank"))
            return
        rp = self.exp.ranks.get(r)
        if glued and (rp is None or w != self.exp.world or (a, b, n, t) != (rp.start, rp.stop, rp.stop - rp.start, rp.total)):
            self.seen.append(Seen("Motion Shard", r, line[-400:], True, "other output glued after it: not judged"))
            return
        if w != self.exp.world:
            self._record("Motion Shard", r, line, f"{self._who(r, w)} sliced {w} ways, plan.json {self.exp.world} "
                                                  f"(took motions [{a}:{b}] = {n}/{t})")
        elif rp is None:
            if r >= w:
                self._record("Motion Shard", r, line, f"rank {r}/{w} is outside the plan's {self.exp.world} ranks")
            else:  # another node's rank: its own node's audit judges it
                self.seen.append(Seen("Motion Shard", r, line[-400:], True, "not a rank of this node"))
        elif (a, b, n, t) != (rp.start, rp.stop, rp.stop - rp.start, rp.total):
            self._record("Motion Shard", r, line,
                         f"{self._who(r, w)} took motions [{a}:{b}] = {n}/{t}, plan.json planned "
                         f"[{rp.start}:{rp.stop}] = {rp.stop - rp.start}/{rp.total} (T planned {rp.total}, seen {t})")
        else:
            self._record("Motion Shard", r, line, None)

    def _enabled(self, line: str, r: int, w: int) -> None:
        if self.exp.kind == "hoi_block" and w != self.exp.world:
            self._record("Motion Shard Enabled", r, line,
                         f"{self._who(r, w)}: SONIC runs {w} processes, plan.json planned {self.exp.world}")
        else:
            self.seen.append(Seen("Motion Shard Enabled", r, line[-400:], True))

    def _usd(self, line: str, fields: dict[str, str]) -> None:
        try:
            r = int(fields["rank"])
            got = {k: int(fields[k]) for k in ("num_envs", "terrain_envs", "terrain_motions")}
            ratio = int(fields["ratio"].split(":")[0])
            self.usd_flat[r] = int(fields.get("flat_motions", "0"))
        except (KeyError, ValueError):
            self.seen.append(Seen("PerRankUSD", None, line[-400:], True, "unparsed: a form this version does not know"))
            return
        rp = self.exp.ranks.get(r)
        if self.exp.kind != "terrain_window":
            self._record("PerRankUSD", r, line, f"{self._who(r, self.exp.world)} took the terrain path, "
                                                f"plan.json planned HOI blocks")
            return
        if rp is None:
            if r >= self.exp.world:
                self._record("PerRankUSD", r, line, f"rank {r} is outside the plan's {self.exp.world} ranks")
            else:
                self.seen.append(Seen("PerRankUSD", r, line[-400:], True, "not a rank of this node"))
            return
        want = {"num_envs": rp.num_envs, "terrain_envs": rp.terrain_envs, "terrain_motions": rp.terrain_motions}
        diff = [f"{k} {got[k]} (planned {v})" for k, v in want.items() if got[k] != v]
        if ratio != rp.ratio:
            diff.append(f"ratio {ratio}:1 (planned {rp.ratio}:1)")
        self._record("PerRankUSD", r, line,
                     f"{self._who(r, self.exp.world)} took " + ", ".join(diff) if diff else None)

    def _usd_keys(self, line: str, text: str) -> None:
        try:
            keys = ast.literal_eval(text)  # a Python list repr; literal_eval evaluates no code
            keys = [str(k) for k in keys]
        except (ValueError, SyntaxError, TypeError):
            self.seen.append(Seen("PerRankUSD keys", None, line[-400:], True, "unparsed"))
            return
        # The keys line carries no rank, and ranks' lines interleave: it must be some planned rank's window.
        if any(keys == first[: len(keys)] for first in self.exp.all_first_keys):
            self.seen.append(Seen("PerRankUSD keys", None, line[-400:], True))
        else:
            self._record("PerRankUSD keys", None, line,
                         f"a rank's terrain window starts with {keys}, which is no planned rank's window "
                         f"(plan.json rank 0 starts with {self.exp.all_first_keys[0] if self.exp.all_first_keys else []})",
                         counts=False)

    def _per_rank_motion(self, line: str, loaded: int, r: int) -> None:
        rp = self.exp.ranks.get(r)
        if rp is None or self.exp.kind != "terrain_window":
            self.seen.append(Seen("PerRankMotion", r, line[-400:], True, "not a rank of this job"))
            return
        flat = self.usd_flat.get(r)
        want = rp.terrain_motions + flat if flat is not None else None
        # /tmp/rank_<r>_motion_keys.txt is named by rank only (§3.2): another job on the node can overwrite it.
        if (want is not None and loaded != want) or loaded < rp.terrain_motions:
            self._record("PerRankMotion", r, line,
                         f"{self._who(r, self.exp.world)} loaded {loaded} motion keys from its keys file, planned "
                         f"{rp.terrain_motions} terrain" + (f" + {flat} flat" if flat is not None else "")
                         + " (another job on this node may have rewritten /tmp/rank_<r>_motion_keys.txt)", counts=False)
        else:
            self.seen.append(Seen("PerRankMotion", r, line[-400:], True))

    # -- verdict ------------------------------------------------------------------------------------
    def missing(self) -> list[int]:
        return sorted(set(self.exp.ranks) - self.matched - self.bad)

    def check_timeout(self) -> str | None:
        """Once, after ``timeout_s``: the ranks whose marker never came, as a warning (SONIC versions differ)."""
        if self.timed_out or time.time() - self.started < self.timeout_s:
            return None
        self.timed_out = True
        missing = self.missing()
        if not missing:
            return None
        return (f"[grail] slice audit warning: no slice marker from {self.exp.unit} {_ranges(missing)} within "
                f"{self.timeout_s:.0f} s; not checked (this SONIC may log its slices differently)")

    def record(self, *, finished: bool = False, exit_code: int | None = None) -> dict[str, Any]:
        missing = self.missing()
        verdict = "mismatch" if self.mismatch else ("match" if not missing else
                                                    ("incomplete" if (finished or self.timed_out) else "watching"))
        return {"stage": self.exp.stage, "index": self.exp.index, "kind": self.exp.kind, "world": self.exp.world,
                "unit": self.exp.unit, "mode": self.mode, "expected": sorted(self.exp.ranks),
                "matched": sorted(self.matched), "mismatched": sorted(self.bad), "missing": missing,
                "verdict": verdict, "signature": self.mismatch, "timeout_s": self.timeout_s,
                "started_at": self.started, "updated_at": time.time(), "finished": finished, "exit_code": exit_code,
                "markers": [asdict(s) for s in self.seen[-200:]], **self.where}


def _ranges(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:20])) + (f" (+{len(ranks) - 20} more)" if len(ranks) > 20 else "")


# -- the record beside the logs ---------------------------------------------------------------------
def audit_path(run_dir: str | Path, stage: str, index: int, attempt: int | str, machine_rank: int = 0) -> Path:
    node = "" if int(machine_rank) == 0 else f".node{int(machine_rank)}"
    return Path(run_dir) / "logs" / stage / str(index) / f"{attempt}{node}.slices.json"


def write_audit(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_audits(run_dir: str | Path, stage: str, index: int, attempt: int) -> list[dict[str, Any]]:
    """Every node's audit of one attempt; a torn or foreign file is skipped, never trusted."""
    base = Path(run_dir) / "logs" / stage / str(index)
    out = []
    for p in sorted(base.glob(f"{attempt}.slices.json")) + sorted(base.glob(f"{attempt}.node*.slices.json")):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("verdict"), str):
            out.append(data)
    return out


def stage_summary(run_dir: str | Path, stage: str, attempts: dict[int, int]) -> dict[str, Any] | None:
    """One stage's audits (index -> attempt of the ledger): units matched/expected, mismatches, unchecked."""
    expected = matched = 0
    mismatches, unchecked, unit = [], [], "ranks"
    found = False
    for idx, attempt in sorted(attempts.items()):
        for a in read_audits(run_dir, stage, idx, attempt):
            found = True
            unit = a.get("unit", unit)
            expected += len(a.get("expected") or [])
            matched += len(a.get("matched") or [])
            if a["verdict"] == "mismatch":
                mismatches.append({"index": idx, "signature": a.get("signature")})
            elif a.get("missing") and a["verdict"] != "watching":
                unchecked.append({"index": idx, "missing": a["missing"]})
    if not found:
        return None
    return {"unit": unit, "expected": expected, "matched": matched, "mismatches": mismatches, "unchecked": unchecked}


def summary_line(stage: str, s: dict[str, Any]) -> str:
    text = f"{stage}: slices {s['matched']}/{s['expected']} {s['unit']} match plan"
    if s["mismatches"]:
        text += f"; {len(s['mismatches'])} mismatch: {s['mismatches'][0]['signature']}"
    if s["unchecked"]:
        n = sum(len(u["missing"]) for u in s["unchecked"])
        text += f"; {n} {s['unit']} printed no slice marker (not checked)"
    return text


def audit_text(a: dict[str, Any]) -> str:
    """One index's audit for ``logs``: the verdict, then every marker seen with its judgement."""
    unit = a.get("unit", "ranks")
    node = a.get("node") or a.get("host")
    head = (f"slice audit ({a.get('stage')} {a.get('index')}): {a['verdict']}, "
            f"{len(a.get('matched') or [])}/{len(a.get('expected') or [])} {unit} match plan")
    if node:
        head += f", machine rank {a.get('machine_rank', 0)} on {node}"
    if a.get("signature"):
        head += f"\n  {a['signature']}"
    if a.get("missing") and a["verdict"] != "mismatch":
        head += f"\n  no marker from {unit} {_ranges(a['missing'])} (not checked)"
    lines = [head]
    for m in a.get("markers") or []:
        verdict = "ok" if m.get("ok") else "MISMATCH"
        note = f" ({m['problem']})" if m.get("problem") and m.get("ok") else ""
        lines.append(f"  {verdict:<8} {m.get('line', '')}{note}")
    return "\n".join(lines)
