#!/usr/bin/env python
"""Benchmark the "done stays true" pass of every status refresh at N done shards.

Builds a run dir with N done eval shards (default 10,000): a ledger with N settled shards and, per
shard, one small output file and a success marker listing it with its size and sha256, written in
the marker format (stage, index, plan_hash, outputs). Then times, in this process:

- ``recheck``: ``status.recheck_done`` as every refresh runs it (read each marker, stat each output);
- ``verify``: the same with ``deep=True`` (``status --verify``: re-hash every output);
- ``refresh``: ``status.refresh`` on the settled run with the local backend (no scheduler call),
  which is what ``grail-cluster status`` adds to opening the ledger;
- ``floor``: the least a re-check can do, by hand (read each marker's JSON, stat each output): the
  peer the pass is compared with (``recheck_vs_floor``);
- ``open``: opening the ledger (sqlite ``quick_check`` + table checks) of the N-shard ledger.

Each figure is the median of ``--repeat`` runs on a warm page cache (the second and later reads);
the first (cold-ish) run is reported apart. One output is then deleted and the pass must demote
exactly that shard, so the figure is of a pass that does its job.

    python bench/bench_recheck.py               # 10,000 shards
    python bench/bench_recheck.py --shards 1000

Results go to ``${GRAIL_BENCH_DIR:-.bench}/bench_recheck.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import machine, save_result  # noqa: E402
from grail_cluster.backends.refresh import recheck_done, refresh  # noqa: E402
from grail_cluster.core.ledger import Ledger  # noqa: E402

PLAN_HASH = "b" * 64


def build(run_dir: Path, n: int) -> SimpleNamespace:
    out_dir = run_dir / "rehearsal" / "eval"
    out_dir.mkdir(parents=True)
    for i in range(n):
        body = json.dumps({"stage": "eval", "index": i, "motions": [f"m{i:05d}"]}).encode()
        (out_dir / f"{i}.json").write_bytes(body)
        marker = run_dir / "markers" / "eval" / str(i) / "_SUCCESS.json"
        marker.parent.mkdir(parents=True)
        marker.write_text(json.dumps({"stage": "eval", "index": i, "plan_hash": PLAN_HASH, "attempt": 0,
                                      "finished_at": time.time(),
                                      "outputs": {f"rehearsal/eval/{i}.json": {
                                          "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}}}))
    with Ledger(run_dir) as ledger:
        ledger.record_job(job_id="1", backend="local", stage="eval", chunk=0, round=0, name="bench:eval:0",
                          indices=list(range(n)), index_offset=0, array_spec=f"0-{n - 1}", depends=None)
        with ledger.transaction() as db:
            db.execute("UPDATE shards SET state = 'done', sched_state = 'COMPLETED'")
        ledger.settle("1")
    # The fields of a plan that the pass reads.
    return SimpleNamespace(run_dir=str(run_dir), plan_hash=PLAN_HASH, is_sweep=False,
                           paths={"experiment_dir": str(run_dir / "experiment")})


def timed(fn, repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"first_s": round(times[0], 4), "median_s": round(statistics.median(times[1:]), 4),
            "min_s": round(min(times[1:]), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    bench_dir = Path(os.environ.get("GRAIL_BENCH_DIR", ".bench"))
    bench_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-recheck-") as tmp:
        run_dir = Path(tmp) / "run"
        t0 = time.perf_counter()
        plan = build(run_dir, args.shards)
        build_s = time.perf_counter() - t0

        def pass_(deep: bool):
            def go():
                with Ledger(run_dir, create=False) as ledger:
                    demoted = recheck_done(plan, ledger, deep=deep)
                assert not demoted, demoted[:3]
            return go

        def open_ledger():
            Ledger(run_dir, create=False).close()

        def full_refresh():
            from grail_cluster.backends.local import LocalBackend

            with Ledger(run_dir, create=False) as ledger:
                refresh(plan, ledger, LocalBackend(spawn=False))

        def floor():
            # The least any re-check can do, by hand: read each marker's JSON and stat each output it
            # lists (no ledger, no plan-hash or path checks). The pass is measured against it.
            for i in range(args.shards):
                with open(os.path.join(run_dir, "markers", "eval", str(i), "_SUCCESS.json")) as fh:
                    marker = json.load(fh)
                for rel in marker["outputs"]:
                    os.stat(os.path.join(run_dir, rel))

        result = {
            "shards": args.shards, "repeat": args.repeat, "build_s": round(build_s, 2),
            "floor": timed(floor, args.repeat),
            "open": timed(open_ledger, args.repeat),
            "recheck": timed(pass_(False), args.repeat),
            "verify": timed(pass_(True), max(1, args.repeat // 2)),
            "refresh": timed(full_refresh, args.repeat),
        }
        # The pass does its job: one deleted output demotes exactly that shard.
        victim = args.shards // 2
        (run_dir / "rehearsal" / "eval" / f"{victim}.json").unlink()
        with Ledger(run_dir, create=False) as ledger:
            demoted = recheck_done(plan, ledger)
            state = ledger.shard("eval", victim).state
        assert [(s, i) for s, i, _ in demoted] == [("eval", victim)] and state == "missing-output", demoted
        result["demoted_after_delete"] = len(demoted)
    result["per_shard_us"] = round(result["recheck"]["median_s"] / args.shards * 1e6, 1)
    result["recheck_vs_floor"] = round(result["recheck"]["median_s"] / result["floor"]["median_s"], 2)
    result["wall_s"] = round(time.perf_counter() - t_start, 2)
    result["machine"] = machine()
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    save_result(bench_dir, "bench_recheck", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
