"""``python -m grail_cluster.launchers.hydra_launcher <state_dir>``: every job of a sweep as its
ledger and result files tell it, without asking the scheduler."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from grail_cluster.launchers.keys import RESUME_HELP
from grail_cluster.launchers.ledger import LEDGER_FILE, SweepLedger
from grail_cluster.launchers.payloads import read_result


def sweep_status(state_dir: Path) -> dict[int, dict[str, Any]]:
    """``state`` is done / failed / lost / refused from a result, else ``submitted`` (queued or
    running, or gone without a result: the next run of the sweep finds out)."""
    out: dict[int, dict[str, Any]] = {}
    for num, rec in sorted(SweepLedger(state_dir).records().items()):
        result = read_result(state_dir / rec["result"]) if rec.get("result") else None
        state = rec["state"]
        if result is not None:
            state = {"completed": "done"}.get(result["status"], result["status"])
        out[num] = {"state": state, "overrides": rec.get("overrides", []), "attempt": rec.get("attempt"),
                    "scheduler_id": rec.get("sched_id"),
                    "result": str(state_dir / rec["result"]) if rec.get("result") else None,
                    "return": (result or {}).get("return", rec.get("return")),
                    "error": (result or {}).get("error", rec.get("error"))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grail_cluster.launchers.hydra_launcher",
                                     description="The jobs of a sweep run with "
                                                 "hydra/launcher=grail_local|grail_slurm",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=RESUME_HELP)
    parser.add_argument("state_dir",
                        help="the sweep's launcher state folder (<hydra.sweep.dir>/.grail by default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    state = Path(args.state_dir)
    if not (state / LEDGER_FILE).exists() and (state / ".grail" / LEDGER_FILE).exists():
        state = state / ".grail"  # the sweep dir was given
    if not (state / LEDGER_FILE).exists():
        print(f"{state}: no {LEDGER_FILE} here (give <hydra.sweep.dir>/.grail)", file=sys.stderr)
        return 2
    jobs = sweep_status(state)
    if args.json:
        print(json.dumps({str(k): v for k, v in jobs.items()}, indent=1, default=str))
        return 0
    for num, job in jobs.items():
        detail = job["return"] if job["state"] == "done" else (job["error"] or {}).get("message", "")
        print(f"#{num:<5} {job['state']:<10} {job['scheduler_id'] or '':<14} {' '.join(job['overrides'])}  "
              f"{json.dumps(detail, default=str)[:100]}")
    counts = Counter(job["state"] for job in jobs.values())
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0
