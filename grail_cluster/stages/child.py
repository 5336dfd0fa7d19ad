"""SONIC as a child of the job under the slice audit, and the ``entry audit-slices`` command that puts
the train job's trainer under it.

A slice that disagrees with plan.json stops the child early (``slice_watch``); the job checks and marks
the child's outputs after it exits.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

from grail_cluster.core.errors import EXIT_USAGE, GrailError
from grail_cluster.core.plan import RunPlan, read_plan
from grail_cluster.stages import slice_audit
from grail_cluster.stages.slice_watch import run_watched

AUDIT_MODES = ("enforce", "warn", "off")
AUDIT_TIMEOUT_S = 900.0  # SONIC logs its slices while loading the library, well inside this


def _audit_settings() -> tuple[str, float]:
    """GRAIL_SLICE_AUDIT (enforce|warn|off) and GRAIL_SLICE_AUDIT_TIMEOUT_S, set through job.env."""
    mode = os.environ.get("GRAIL_SLICE_AUDIT", "enforce").strip().lower() or "enforce"
    if mode not in AUDIT_MODES:
        raise GrailError(f"GRAIL_SLICE_AUDIT={mode!r} is not one of {', '.join(AUDIT_MODES)}",
                         fix="job.env.GRAIL_SLICE_AUDIT=enforce (stop on a mismatch), warn (record only) or off")
    raw = os.environ.get("GRAIL_SLICE_AUDIT_TIMEOUT_S", "")
    try:
        timeout = float(raw) if raw.strip() else AUDIT_TIMEOUT_S
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise GrailError(f"GRAIL_SLICE_AUDIT_TIMEOUT_S={raw!r} is not a positive number of seconds",
                         fix="job.env.GRAIL_SLICE_AUDIT_TIMEOUT_S=900")
    return mode, timeout


def run_child(argv: list[str], cwd: str, plan: RunPlan, stage: str, index: int) -> int:
    """Run SONIC as a child (not exec) under the slice audit: its outputs are checked and marked after
    it exits, and a slice that disagrees with plan.json stops it early (``slice_watch``).

    SIGTERM/SIGINT/USR1/USR2/HUP (scancel, SLURM's warning, preemption, Ctrl-C) are passed on.
    """
    mode, timeout = _audit_settings()
    machine = int(os.environ.get("GRAIL_MACHINE_RANK", "0") or 0)
    expect = (slice_audit.train_expectation(plan, index, machine) if stage == "train"
              else slice_audit.eval_expectation(plan, index))
    where = {"machine_rank": machine, "host": socket.gethostname(), "node": os.environ.get("SLURMD_NODENAME") or None}
    audit = slice_audit.SliceAudit(expect, timeout_s=timeout, mode=mode, where=where)
    path = slice_audit.audit_path(plan.run_dir, stage, index, os.environ.get("GRAIL_ATTEMPT", "0") or "0", machine)
    if mode == "off":
        print("[grail] slice audit off (GRAIL_SLICE_AUDIT=off)", flush=True)
        return subprocess.call(argv, cwd=cwd)
    return run_watched(argv, cwd, audit, path)


def audit_slices(argv: list[str]) -> int:
    """``entry audit-slices train --run-dir R --index I [--plan-hash H] -- <trainer argv>``: the train
    job's SONIC command under the slice audit; its exit status (1 on a slice mismatch), no marker."""
    parser = argparse.ArgumentParser(prog="python -m grail_cluster.entry audit-slices")
    parser.add_argument("stage", choices=["train"])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--plan-hash")
    if "--" not in argv:
        parser.error("no trainer command: give it after --")
    cut = argv.index("--")
    args, command = parser.parse_args(argv[:cut]), argv[cut + 1:]
    if not command:
        parser.error("no trainer command after --")
    try:
        plan = read_plan(args.run_dir, rendered_hash=args.plan_hash)
        if not 0 <= args.index < plan.stage(args.stage).size:
            raise GrailError(f"index {args.index} outside 0..{plan.stage(args.stage).size - 1} of stage {args.stage}")
        code = run_child(command, os.getcwd(), plan, args.stage, args.index)
    except GrailError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code or EXIT_USAGE
    return code if code >= 0 else 128 - code
