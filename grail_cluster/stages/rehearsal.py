"""Rehearsal: every stage of the DAG does small, real CPU work with the same shape as the real one
(each stage's ``rehearse``; this module holds what they share).

Train digests the whole library, eval shard i reads its shard's motion files and digests them,
render/export shard i derive from eval shard i, merge c combines every export shard of checkpoint
rank c (each motion exactly once), web indexes the merges. Outputs go to
``<run>/rehearsal/<stage>/<index>.json`` (temp file + rename), then the success marker.

Nothing here pretends to train or evaluate: the outputs say ``"rehearsal": true`` and hold only
digests. Fault injection (``rehearsal.faults``) lets tests make chosen shards fail on their first
attempt in the ways real jobs fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grail_cluster.core import safe_pickle
from grail_cluster.core.errors import DataError
from grail_cluster.core.markers import file_digest, validate_marker, write_marker
from grail_cluster.core.plan import RunPlan

FAULTS = ("exit1", "kill", "hang", "no_marker")


def output_path(plan: RunPlan, stage: str, index: int) -> Path:
    return Path(plan.run_dir) / "rehearsal" / stage / f"{index}.json"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def read_upstream(plan: RunPlan, stage: str, index: int) -> dict[str, Any]:
    if not validate_marker(plan.run_dir, stage, index, plan.plan_hash):
        raise DataError(f"upstream {stage} index {index} has no valid success marker",
                        path=str(output_path(plan, stage, index)), fix=f"resubmit {stage} index {index} first")
    with open(output_path(plan, stage, index)) as fh:
        return json.load(fh)


def motion_digest(plan: RunPlan, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Read each motion's robot pickle (through the safe loader) and digest its bytes."""
    root = Path(plan.library["root"])
    out = {}
    for key in keys:
        path = root / "robot" / f"{key}.pkl"
        if not path.exists():  # terrain libraries nest robot/ files
            matches = list((root / "robot").rglob(f"{key}.pkl"))
            path = matches[0] if matches else path
        data = safe_pickle.load(path)
        inner = next(iter(data.values())) if isinstance(data, dict) and len(data) == 1 else data
        frames = int(inner["dof"].shape[0]) if isinstance(inner, dict) and "dof" in inner else None
        out[key] = {"frames": frames, "sha256": file_digest(path)}
    return out


def combine(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def derive_from_eval(plan: RunPlan, stage: str, index: int) -> dict[str, Any]:
    """Render and export rehearse alike: each motion of eval shard ``index``, digested with the stage's name."""
    ev = read_upstream(plan, "eval", index)
    return {"checkpoint_rank": ev["checkpoint_rank"], "shard": ev["shard"],
            "motions": {k: combine(stage, v) for k, v in ev["motions"].items()}}


def _inject(fault: str) -> None:
    print(f"[grail] rehearsal fault injected: {fault}", flush=True)
    if fault == "exit1":
        print("RuntimeError: injected failure (rehearsal.faults)", file=sys.stderr, flush=True)
        sys.exit(1)
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "hang":
        while True:
            time.sleep(60)


def parse_faults(items: list[str]) -> dict[str, str]:
    """["eval/3:exit1", ...] -> {"eval/3": "exit1"}."""
    out = {}
    for item in items:
        where, _, fault = str(item).rpartition(":")
        if fault not in FAULTS or "/" not in where:
            raise DataError(f"bad rehearsal fault {item!r}: write <stage>/<index>:<fault> with fault one of "
                            f"{', '.join(FAULTS)}")
        out[where] = fault
    return out


def run(plan: RunPlan, stage: str, index: int, work: Callable[[RunPlan, int], dict[str, Any]]) -> int:
    """Index ``index`` of ``stage``: faults first, then ``work`` (the stage's rehearsal), its output
    and the success marker."""
    cfg = plan.settings.rehearsal
    attempt = int(os.environ.get("GRAIL_ATTEMPT", "0"))
    fault = parse_faults(cfg.faults or []).get(f"{stage}/{index}")
    if fault and attempt == 0 and fault != "no_marker":
        _inject(fault)
    if cfg.work_seconds:
        time.sleep(float(cfg.work_seconds))
    result = {"rehearsal": True, "stage": stage, "index": index, **work(plan, index)}
    path = output_path(plan, stage, index)
    _write_json(path, result)
    if fault == "no_marker" and attempt == 0:
        print("[grail] rehearsal fault injected: no_marker (output written, marker skipped)", flush=True)
        return 0
    write_marker(plan.run_dir, stage, index, plan.plan_hash,
                 {os.path.relpath(path, plan.run_dir): {"size": path.stat().st_size, "sha256": file_digest(path)}})
    print(f"[grail] rehearsal {stage} {index} done: {path}")
    return 0

