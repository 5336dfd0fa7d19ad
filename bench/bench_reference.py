#!/usr/bin/env python
"""Reference-tracker evaluation throughput: simulated seconds per wall-clock second per core.

Work: one eval shard of the demo library (``grail-cluster demo-data``, --motions motions), rolled out
to the end (or termination) with a freshly initialised policy network, metrics computed, no files.

- ours: ``evaluate.rollout``: scenes recompiled from one parsed G1 spec, all motions of the shard
  stepped together with one batched policy call per 50 Hz step; one process (= one core), and
  --procs processes on disjoint halves of the shard for the per-core figure under load.
- peer: the straightforward evaluator: every motion's scene parsed and compiled from the MJCF anew,
  one motion after another, one policy call per env per step (what a per-motion script does).

Both run in this process, on the same motions, with the same physics (dt 0.005, decimation 4).

    python bench/bench_reference.py              # 16 motions
    python bench/bench_reference.py --motions 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import machine  # noqa: E402


def _library(out: Path, motions: int) -> Path:
    from grail_cluster.cli.main import main as cli_main

    if not (out / "demo_pickup_ha" / "robot").is_dir():
        assert cli_main(["demo-data", "--out", str(out), "--motions", str(motions), "--name", "demo_pickup"]) == 0
    return out


def _motions(lib: Path, keys=None):
    from grail_cluster.sonic.reference.motion import load_motion

    ha, src = lib / "demo_pickup_ha", lib / "demo_pickup"
    keys = keys or sorted(p.stem for p in (ha / "robot").glob("*.pkl"))
    return [load_motion(k, ha / "robot" / f"{k}.pkl", ha / "objects" / f"{k}.pkl", ha / "meta" / f"{k}.pkl",
                        next((src / "object_usd").glob(f"{k}.usd*"))) for k in keys]


def _policy():
    import numpy as np
    import torch

    from grail_cluster.sonic.reference.env import ACT_DIM, OBS_DIM
    from grail_cluster.sonic.reference.ppo import ActorCritic

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ActorCritic(OBS_DIM, ACT_DIM, [256, 128], -2.0).eval()

    def policy(obs):
        with torch.no_grad():
            return model.actor(torch.as_tensor(obs, dtype=torch.float32)).numpy().astype(np.float64)

    return policy


def ours(lib: Path, keys=None) -> dict:
    from grail_cluster.sonic.reference.env import Terminations, prepare
    from grail_cluster.sonic.reference.evaluate import rollout

    t0 = time.perf_counter()
    preps = [prepare(m) for m in _motions(lib, keys)]
    rows = rollout(preps, _policy(), Terminations(), 0.25)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "sim_s": sum(r["frames"] for r in rows) * 0.02, "motions": len(rows),
            "success": sum(not r["terminated"] for r in rows)}


def peer(lib: Path) -> dict:
    import numpy as np

    from grail_cluster.sonic.reference import scene
    from grail_cluster.sonic.reference.env import Terminations, prepare
    from grail_cluster.sonic.reference.evaluate import rollout

    policy = _policy()
    t0 = time.perf_counter()
    rows = []
    for motion in _motions(lib):
        scene._base_spec.cache_clear()  # parse and compile the G1 anew for every motion
        prep = prepare(motion)
        rows += rollout([prep], lambda obs: np.stack([policy(o[None])[0] for o in obs]), Terminations(), 0.25)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "sim_s": sum(r["frames"] for r in rows) * 0.02, "motions": len(rows),
            "success": sum(not r["terminated"] for r in rows)}


def _ours_part(args):
    os.environ["OMP_NUM_THREADS"] = "1"
    return ours(*args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--motions", type=int, default=16)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=os.path.join(os.environ.get("GRAIL_BENCH_DIR", ".bench"), "bench_reference.json"))
    args = ap.parse_args(argv)
    lib = _library(Path(tempfile.gettempdir()) / f"grail-bench-demo-{args.motions}", args.motions)
    ours(lib)  # warm: imports, page cache
    one = ours(lib)
    keys = sorted(p.stem for p in (lib / "demo_pickup_ha" / "robot").glob("*.pkl"))
    parts = [(lib, keys[i::args.procs]) for i in range(args.procs)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(args.procs) as pool:
        res = pool.map(_ours_part, parts)
    wall_n = time.perf_counter() - t0
    sim_n = sum(r["sim_s"] for r in res)
    p = peer(lib)
    result = {
        "machine": machine(), "motions": one["motions"], "simulated_s": round(one["sim_s"], 1),
        "success": one["success"],
        "ours_1proc": {"wall_s": round(one["wall_s"], 2), "sim_s_per_wall_s_per_core": round(one["sim_s"] / one["wall_s"], 2)},
        f"ours_{args.procs}proc": {"wall_s": round(wall_n, 2),
                                   "sim_s_per_wall_s_per_core": round(sim_n / max(r["wall_s"] for r in res) / args.procs, 2),
                                   "note": "all cores busy; wall of the slowest worker after its imports, including its first G1 compile"},
        "peer_1proc": {"wall_s": round(p["wall_s"], 2), "sim_s_per_wall_s_per_core": round(p["sim_s"] / p["wall_s"], 2)},
        "ratio_ours_over_peer": round((one["sim_s"] / one["wall_s"]) / (p["sim_s"] / p["wall_s"]), 2),
    }
    assert p["success"] == one["success"], "peer and ours must do the same work"
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
