"""``grail-cluster run cluster=local`` without ``--detach``: submit, then run the round in this
process with a progress screen; Ctrl-C cancels."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from grail_cluster.backends.local import LocalBackend, Runner
from grail_cluster.core.ledger import Ledger
from grail_cluster.core.plan import RunPlan
from grail_cluster.core.states import ACTIVE, ShardState
from grail_cluster.runs.control import submit_run
from grail_cluster.runs.status import summarise


def run_foreground(plan: RunPlan, console, json_out: bool = False) -> int:
    """Submit, then run here with progress bars; the exit code: 0 all done, 1 failures, 130 cancelled."""
    result = submit_run(plan, backend=LocalBackend(spawn=False))
    with Ledger(plan.run_dir) as ledger:
        ledger.set_meta(f"runner_pid_r{result.round}", os.getpid())  # this process is the runner
    progress = Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[states]}"), console=console, disable=json_out)
    bars = {st.name: progress.add_task(st.name, total=st.size, states="") for st in plan.stages}

    def show(state: dict) -> None:
        for st in plan.stages:
            mine = [s for (name, _), s in state.items() if name == st.name]
            counts = Counter(mine)
            progress.update(bars[st.name], completed=sum(v for k, v in counts.items() if k not in ACTIVE),
                            states=" ".join(f"{k}:{v}" for k, v in sorted(counts.items()) if k != ShardState.DONE))

    runner = Runner(plan.run_dir, result.round, progress=show)
    previous = signal.signal(signal.SIGINT, lambda *_: setattr(runner, "cancelled", True))
    try:
        with progress:
            code = runner.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    with Ledger(plan.run_dir) as ledger:
        stages = summarise(plan, ledger)
    if json_out:
        sys.stdout.write(json.dumps({"run_id": plan.run_id, "run_dir": plan.run_dir, "ok": code == 0,
                                     "cancelled": runner.cancelled,
                                     "stages": [{"name": s.name, "counts": s.counts} for s in stages]}, indent=1) + "\n")
    else:
        console.print(f"run {plan.run_id}: {'done' if code == 0 else 'cancelled' if runner.cancelled else 'finished with failures'}"
                      f"; status: grail-cluster status {plan.run_dir}")
    return 130 if runner.cancelled else code
