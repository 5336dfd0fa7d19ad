#!/usr/bin/env python
"""Benchmark the planner's hot path on a generated GRAIL library, against a peer in the same run.

Figures (medians over --repeat runs, library files in the OS page cache):

- index cold: ``scan_library`` with its cache file removed (every pickle parsed);
- index warm: the second scan, a cache hit (directory listing + stat only);
- peer: what a GRAIL user script does today to count frames: ``joblib.load`` of every
  ``robot/*.pkl`` and ``objects/*.pkl``, one after the other;
- plan cold / warm: ``config.load`` + ``scan_library`` + ``build_plan`` + ``write_plan`` with the
  index cold / warm;
- shard balance: slowest eval shard over the ideal, ``sonic_block`` vs ``balanced``.

The library (``make_library(fast=True)`` with the synthetic lognormal lengths of
``heavy_tailed_lengths(n, seed=0)``) is generated once under ``${GRAIL_BENCH_DIR:-.bench}`` and
reused while its marker file matches. Results go to ``${GRAIL_BENCH_DIR:-.bench}/bench_plan.json``.

    python bench/bench_plan.py              # 20,000 motions
    python bench/bench_plan.py --quick      # 2,000 motions
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tests.libgen` and `tests.conftest` live in the repo, not the package

_t_import = time.perf_counter()
import joblib  # noqa: E402

from bench.machine import machine, mark_dataset, reuse_dataset  # noqa: E402
from grail_cluster.core import config  # noqa: E402
from grail_cluster.core.library import _cache_candidates, scan_library  # noqa: E402
from grail_cluster.core.plan import write_plan  # noqa: E402
from grail_cluster.core.sharding import balance, make_shards  # noqa: E402
from grail_cluster.runs.planner import build_plan  # noqa: E402
from tests.conftest import make_sonic_root  # noqa: E402
from tests.libgen import heavy_tailed_lengths, make_library  # noqa: E402

IMPORT_S = time.perf_counter() - _t_import

SEED = 0
SHARD_COUNTS = (8, 32, 128)
PLAN_OVERRIDES = ("pipeline=advanced_manip_table", "eval.sharding=balanced", "train.num_envs=4096")


# ----------------------------------------------------------------------------- helpers


def lib_name(n: int) -> str:
    return f"lib{n // 1000}k" if n % 1000 == 0 else f"lib{n}"


def ensure_library(bench_dir: Path, n: int) -> tuple[Path, dict[str, Any]]:
    """Generate the library once; reuse it while the marker says it is complete and the same."""
    root = bench_dir / lib_name(n)
    want = {"motions": n, "lengths": f"heavy_tailed_lengths({n}, seed={SEED})", "fast": True,
            "variant": "retarget", "generator": "tests.libgen.make_library"}
    have = reuse_dataset(root, want)
    if have is not None:
        return root, have
    print(f"generating {n} motions under {root} (once; reused on the next run) ...", flush=True)
    t0 = time.perf_counter()
    make_library(root, n, fast=True, lengths=heavy_tailed_lengths(n, seed=SEED), seed=SEED)
    info = {**want, "generate_s": round(time.perf_counter() - t0, 2), "bytes": du(root)}
    mark_dataset(root, info)
    return root, {**info, "reused": False}


def du(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def warm_page_cache(root: Path) -> float:
    """Read every pickle once (untimed for the figures) so cold/peer runs compare CPU, not disk."""
    t0 = time.perf_counter()
    for sub in ("robot", "objects", "meta"):
        for path in glob.glob(os.path.join(root, sub, "*.pkl")):
            with open(path, "rb") as fh:
                while fh.read(1 << 20):
                    pass
    return time.perf_counter() - t0


def drop_index_cache(root: Path) -> None:
    for path in _cache_candidates(root.resolve()):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def peer_count_frames(root: Path) -> dict[str, int]:
    """The naive script: joblib.load every robot and objects pickle, sequentially, count frames."""
    frames: dict[str, int] = {}
    names: dict[str, str | None] = {}
    for path in sorted(glob.glob(os.path.join(root, "robot", "*.pkl"))):
        key = os.path.splitext(os.path.basename(path))[0]
        robot = joblib.load(path)[key]
        objects = joblib.load(os.path.join(root, "objects", f"{key}.pkl"))[key]
        frames[key] = int(robot["dof"].shape[0])
        names[key] = objects.get("object_name")
    return frames


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# ----------------------------------------------------------------------------- benchmarks


def bench_index(root: Path, repeat: int) -> dict[str, Any]:
    cold, cold1, warm, peer = [], [], [], []
    index = None
    for _ in range(repeat):
        dt, peer_frames = timed(lambda: peer_count_frames(root))
        peer.append(dt)
        drop_index_cache(root)
        dt, index = timed(lambda: scan_library(root, use_cache=True))
        assert index.cache == "miss", index.cache
        cold.append(dt)
        drop_index_cache(root)
        dt, idx1 = timed(lambda: scan_library(root, use_cache=True, workers=1))
        assert idx1.cache == "miss", idx1.cache
        cold1.append(dt)
        for _ in range(3):
            dt, again = timed(lambda: scan_library(root, use_cache=True))
            assert again.cache == "hit", again.cache
            warm.append(dt)
    assert index is not None
    got = {m.key: m.frames for m in index.motions}
    assert got == peer_frames, "the index and the peer disagree on frame counts"
    return {
        "motions": len(index.motions),
        "total_frames": sum(got.values()),
        "cold_s": cold, "cold_1worker_s": cold1, "warm_s": warm, "peer_s": peer,
        "cold_median_s": med(cold), "cold_1worker_median_s": med(cold1),
        "warm_median_s": med(warm), "peer_median_s": med(peer),
        "warm_over_peer": med(warm) / med(peer),
        "cold_over_peer": med(cold) / med(peer),
        "cold_1worker_over_peer": med(cold1) / med(peer),
        "index_workers": os.cpu_count(),
    }


def bench_plan(root: Path, bench_dir: Path, repeat: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="plan.", dir=bench_dir))
    try:
        sonic = make_sonic_root(work / "SONIC")
        overrides = [f"data.motion_lib={root}", f"sonic.root={sonic}", f"run.root={work / 'runs'}",
                     *PLAN_OVERRIDES]
        t_first_load, _ = timed(lambda: config.load(overrides))  # Hydra's first compose, untimed below

        def once(cold: bool) -> dict[str, Any]:
            if cold:
                drop_index_cache(root)
            t0 = time.perf_counter()
            c = config.load(overrides)
            t1 = time.perf_counter()
            index = scan_library(root, use_cache=True)
            t2 = time.perf_counter()
            plan = build_plan(c, index)
            t3 = time.perf_counter()
            path = write_plan(plan)
            t4 = time.perf_counter()
            assert index.cache == ("miss" if cold else "hit"), index.cache
            return {"total_s": t4 - t0, "config_s": t1 - t0, "index_s": t2 - t1, "build_s": t3 - t2,
                    "write_s": t4 - t3, "plan_hash": plan.plan_hash, "plan_bytes": path.stat().st_size}

        cold = [once(True) for _ in range(repeat)]
        warm = [once(False) for _ in range(max(repeat, 3))]
        hashes = {r["plan_hash"] for r in cold + warm}
        assert len(hashes) == 1, f"plan hash is not stable: {hashes}"

        def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
            keys = ("total_s", "config_s", "index_s", "build_s", "write_s")
            return {**{f"{k[:-2]}_median_s": med([r[k] for r in runs]) for k in keys},
                    "total_s": [r["total_s"] for r in runs]}

        return {"overrides": list(PLAN_OVERRIDES), "first_config_load_s": t_first_load,
                "plan_hash": hashes.pop(), "plan_bytes": cold[0]["plan_bytes"],
                "cold": summary(cold), "warm": summary(warm)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_balance(keys: list[str], frames: dict[str, int]) -> list[dict[str, Any]]:
    keys = sorted(keys)
    total, largest = sum(frames.values()), max(frames.values())
    rows = []
    for n in SHARD_COUNTS:
        if n > len(keys):
            continue
        t0 = time.perf_counter()
        block = balance(make_shards("sonic_block", keys, frames, n))
        t1 = time.perf_counter()
        lpt = balance(make_shards("balanced", keys, frames, n))
        t2 = time.perf_counter()
        rows.append({
            "num_shards": n,
            "sonic_block": block,
            "balanced": lpt,
            "block_over_balanced": block / lpt,
            "best_possible": max(1.0, largest / (total / n)),  # the longest motion alone sets a floor
            "sonic_block_ms": (t1 - t0) * 1e3,
            "balanced_ms": (t2 - t1) * 1e3,
        })
    return rows


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--motions", type=int, default=20000, help="library size (default 20000)")
    ap.add_argument("--quick", action="store_true", help="2,000 motions: a fast check")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; medians are reported (default 3)")
    args = ap.parse_args(argv)
    n = 2000 if args.quick else args.motions
    if n < 1 or args.repeat < 1:
        ap.error("--motions and --repeat must be >= 1")

    bench_dir = Path(os.environ.get("GRAIL_BENCH_DIR", ".bench")).expanduser().resolve()
    bench_dir.mkdir(parents=True, exist_ok=True)
    # The index falls back to $XDG_CACHE_HOME for read-only libraries: keep that inside the bench dir.
    os.environ["XDG_CACHE_HOME"] = str(bench_dir / "xdg-cache")

    t_start = time.perf_counter()
    root, lib = ensure_library(bench_dir, n)
    page_cache_s = warm_page_cache(root)
    print(f"library: {root} — {n} motions, heavy-tailed synthetic lengths "
          f"(lognormal, median ~90 frames, clipped to 20..5000), fast=True (uncompressed pickles); "
          + (f"reused (generated earlier in {lib.get('generate_s')} s)" if lib["reused"]
             else f"generated in {lib['generate_s']} s") + f", {lib.get('bytes', du(root)) / 1e9:.2f} GB", flush=True)

    print(f"index: {args.repeat} x (peer, cold, cold 1 worker, 3 x warm) ...", flush=True)
    index = bench_index(root, args.repeat)
    print("plan ...", flush=True)
    plan = bench_plan(root, bench_dir, args.repeat)
    scanned = scan_library(root)
    frames = {m.key: int(m.frames or 0) for m in scanned.motions}
    assert sorted(frames.values()) == sorted(heavy_tailed_lengths(n, seed=SEED)), "library lengths drifted"
    shards = bench_balance(list(frames), frames)

    result = {
        "command": "python bench/bench_plan.py" + (" --quick" if args.quick else "")
                   + (f" --motions {n}" if not args.quick and n != 20000 else "")
                   + (f" --repeat {args.repeat}" if args.repeat != 3 else ""),
        "machine": machine(),
        "library": {**lib, "root": str(root), "page_cache_warmup_s": page_cache_s},
        "import_s": IMPORT_S,
        "index": index,
        "plan": plan,
        "balance": shards,
        "wall_s": time.perf_counter() - t_start,
    }
    out = bench_dir / "bench_plan.json"
    out.write_text(json.dumps(result, indent=1) + "\n")

    mc = result["machine"]
    print()
    print(f"bench_plan: {index['motions']} motions, {index['total_frames']} frames; "
          f"{mc['cpus']} CPUs, {mc['mem_gib']} GiB; medians of {args.repeat} runs (warm: {len(index['warm_s'])})")
    rows = [
        ("index cold", index["cold_median_s"], f"{index['cold_over_peer']:.2f}x peer ({index['index_workers']} workers)"),
        ("index cold, 1 worker", index["cold_1worker_median_s"], f"{index['cold_1worker_over_peer']:.2f}x peer"),
        ("index warm", index["warm_median_s"], f"{index['warm_over_peer']:.4f}x peer "
                                               f"({1 / index['warm_over_peer']:.0f}x faster)"),
        ("peer (joblib.load all)", index["peer_median_s"], "sequential robot+objects loads"),
        ("plan cold", plan["cold"]["total_median_s"],
         f"config {plan['cold']['config_median_s']:.2f} + index {plan['cold']['index_median_s']:.2f} + "
         f"build {plan['cold']['build_median_s']:.2f} + write {plan['cold']['write_median_s']:.2f}"),
        ("plan warm", plan["warm"]["total_median_s"],
         f"config {plan['warm']['config_median_s']:.2f} + index {plan['warm']['index_median_s']:.2f} + "
         f"build {plan['warm']['build_median_s']:.2f} + write {plan['warm']['write_median_s']:.2f}"),
    ]
    print(f"{'figure':<24}{'seconds':>10}  note")
    for name, secs, note in rows:
        print(f"{name:<24}{secs:>10.3f}  {note}")
    print()
    print(f"{'shards':>6}  {'sonic_block':>11}  {'balanced':>8}  {'block/bal':>9}  {'floor':>6}   (max shard frames / ideal)")
    for r in shards:
        print(f"{r['num_shards']:>6}  {r['sonic_block']:>11.4f}  {r['balanced']:>8.4f}  "
              f"{r['block_over_balanced']:>9.3f}  {r['best_possible']:>6.3f}")
    print()
    print(f"plan.json {plan['plan_bytes'] / 1e6:.1f} MB, hash {plan['plan_hash'][:12]} (identical in all runs); "
          f"wall {result['wall_s']:.0f} s; written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
