#!/usr/bin/env python
"""Benchmark ``export_shard`` and ``summarize`` on 8 eval shards (20,000 rollouts) against peers in the same run.

Figures (medians over --repeat runs; export outputs removed, untimed, between runs):

- export (sequential): ``export_shard`` of the 8 shards one after another (reads, checks, conversion,
  robot/objects/meta pickles, USD copy, sha256 of every output, manifest, self-verification, atomic rename);
- export (pool of 2): the same 8 calls through a ``ProcessPoolExecutor(2)`` over shards (pool start timed);
- naive peer: ``naive_peer_export`` below -- NOT GRAIL's exporter (that code is non-commercial and not
  available here) but the straightforward sequential script a user would write: for each successful key
  ``joblib.load`` the trajectory and the source robot pickle, reorder joints with numpy fancy indexing,
  ``joblib.dump`` robot/ and objects/ pickles. No meta, no USD copy, no hashing, no checks, no atomic rename;
- summarize: ``summarize(exp)`` vs a plain loop that ``json.load``s every metrics file and sums ``terminated``.

Data (generated once under ``${GRAIL_BENCH_DIR:-.bench}/data20k``, reused while the marker matches, never
timed): ``tests.libgen.make_ha_pair(lib, "pickup", n, fast=True)`` and 8 shards of n/8 sorted keys each,
``tests.evalgen.make_eval_shard(<exp>/eval/step_001000/phase1_shard_<i>, ha, keys, terminated=~10%)``.
Results go to ``${GRAIL_BENCH_DIR:-.bench}/bench_data.json``.

    python bench/bench_data.py            # 20,000 rollouts
    python bench/bench_data.py --quick    # 2,000 rollouts
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import joblib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tests.libgen` lives in the repo, not the package

from bench.machine import machine, mark_dataset, reuse_dataset  # noqa: E402
from grail_cluster.tools.data import g1  # noqa: E402
from grail_cluster.tools.data.export import export_shard  # noqa: E402
from grail_cluster.tools.data.summarize import summarize  # noqa: E402
from tests import evalgen  # noqa: E402
from tests.libgen import make_ha_pair  # noqa: E402

NUM_SHARDS = 8
STEP = 1000
TERMINATED_FRACTION = 0.10


# ----------------------------------------------------------------------------------------------
# Data generation (untimed in the figures)
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _index(root: Path, sub: str) -> dict[str, Path]:
    return {p.stem: p for p in sorted((root / sub).rglob("*.pkl"))} if (root / sub).is_dir() else {}


def _find_indexed(root: Path, sub: str, key: str) -> Path | None:
    return _index(Path(root), sub).get(key)


def ensure_data(bench_dir: Path, n: int) -> tuple[Path, Path, dict[str, Any]]:
    base = bench_dir / (f"data{n // 1000}k" if n % 1000 == 0 else f"data{n}")
    exp, lib = base / "exp", base / "lib"
    per = n // NUM_SHARDS
    want = {"rollouts": per * NUM_SHARDS, "num_shards": NUM_SHARDS, "fast": True,
            "terminated_fraction": TERMINATED_FRACTION, "generator": "tests.libgen.make_ha_pair + tests.evalgen"}
    have = reuse_dataset(base, want)
    if have is not None:
        return exp, lib / "pickup_ha", have
    print(f"generating a _ha pair of {n} motions and {NUM_SHARDS} eval shards under {base} (once) ...", flush=True)
    t0 = time.perf_counter()
    _, ha = make_ha_pair(lib, "pickup", n, fast=True)
    lib_s = time.perf_counter() - t0
    # evalgen looks each key up with an rglob of the whole robot/objects/meta dir (fine for tests,
    # quadratic at 20k keys); index each dir once instead. The trajectories written are the same.
    evalgen._find = _find_indexed
    keys = sorted(ha.keys)[: per * NUM_SHARDS]
    rng = np.random.default_rng(0)
    term = {k for k, x in zip(keys, rng.random(len(keys)), strict=True) if x < TERMINATED_FRACTION}
    t1 = time.perf_counter()
    for i in range(NUM_SHARDS):
        chunk = keys[i * per:(i + 1) * per]
        evalgen.make_eval_shard(shard_dir(exp, i), ha, chunk, terminated=term & set(chunk))
    info = {**want, "generate_library_s": round(lib_s, 1), "generate_shards_s": round(time.perf_counter() - t1, 1),
            "terminated": len(term), "successful": len(keys) - len(term)}
    mark_dataset(base, info)
    return exp, Path(ha.root), {**info, "reused": False}


def shard_dir(exp: Path, i: int) -> Path:
    return exp / "eval" / f"step_{STEP:06d}" / f"phase1_shard_{i}"


def warm_page_cache(*roots: Path) -> float:
    t0 = time.perf_counter()
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file():
                with open(p, "rb") as fh:
                    while fh.read(1 << 20):
                        pass
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# Peers
# ----------------------------------------------------------------------------------------------
def naive_peer_export(eval_dir: Path, source: Path, out: Path) -> int:
    """NAIVE PEER (not GRAIL's code): the sequential script a user would write. No meta/, no USD copy,
    no hashing, no checks, no atomic rename. Returns the number of motions written."""
    metrics = json.load(open(eval_dir / "metrics_eval.json"))["eval/all_metrics_dict"]
    (out / "robot").mkdir(parents=True, exist_ok=True)
    (out / "objects").mkdir(parents=True, exist_ok=True)
    reorder = list(g1.G1_ISAACLAB_TO_MUJOCO_DOF)
    count = 0
    for key, terminated in zip(metrics["motion_keys"], metrics["terminated"], strict=True):
        if terminated:
            continue
        traj = joblib.load(eval_dir / f"{key}.trajectory.pkl")
        src = joblib.load(source / "robot" / f"{key}.pkl")[key]
        dof_pos = np.asarray(traj["dof_pos"])
        F, fps = len(dof_pos), float(traj["fps"])
        idx = np.clip(np.rint(np.arange(F) * float(src["fps"]) / fps).astype(int), 0, len(src["dof"]) - 1)
        robot = {
            "root_trans_offset": traj["root_pos_w"],
            "dof": dof_pos[:, :29][:, reorder],
            "root_rot": np.asarray(traj["root_quat_w"])[:, [1, 2, 3, 0]],  # wxyz -> xyzw
            "hand_dof_pos": dof_pos[:, 29:],
            "hand_action_left": np.asarray(src["hand_action_left"])[idx],
            "hand_action_right": np.asarray(src["hand_action_right"])[idx],
            "fps": fps,
        }
        objects = {"root_pos": traj["object_pos_w"][:, None], "root_quat": traj["object_quat_w"][:, None], "fps": fps}
        joblib.dump({key: robot}, out / "robot" / f"{key}.pkl")
        joblib.dump({key: objects}, out / "objects" / f"{key}.pkl")
        count += 1
    return count


def peer_summarize(exp: Path) -> dict[str, int]:
    n = n_term = 0
    for path in sorted(glob.glob(str(exp / "eval" / "step_*" / "phase1_shard_*" / "metrics_eval.json"))):
        with open(path) as fh:
            term = json.load(fh)["eval/all_metrics_dict"]["terminated"]
        n += len(term)
        n_term += sum(bool(t) for t in term)
    return {"n_motions": n, "n_success": n - n_term}


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------
def _export_one(args: tuple[str, str, str]) -> int:
    return export_shard(args[0], args[1], args[2], step=STEP)["exported_count"]


def ours_export(exp: Path, source: Path, out: Path, workers: int) -> int:
    jobs = [(str(shard_dir(exp, i)), str(source), str(out / f"shard_{i}")) for i in range(NUM_SHARDS)]
    if workers <= 1:
        return sum(map(_export_one, jobs))
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(_export_one, jobs))


def timed(fn, *args) -> tuple[float, Any]:
    t0 = time.perf_counter()
    res = fn(*args)
    return time.perf_counter() - t0, res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 rollouts instead of 20,000")
    ap.add_argument("--rollouts", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (summarize)")
    ap.add_argument("--export-repeat", type=int, default=None, help="runs per export figure (default: --repeat)")
    args = ap.parse_args(argv)
    n = args.rollouts or (2000 if args.quick else 20000)
    export_repeat = args.export_repeat or args.repeat
    bench_dir = Path(os.environ.get("GRAIL_BENCH_DIR", REPO / ".bench"))
    bench_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    exp, source, data = ensure_data(bench_dir, n)
    warm_s = warm_page_cache(exp, source, source.parent / source.name[: -len("_ha")] / "object_usd")
    outs = {name: exp.parent / f"out_{name}" for name in ("seq", "pool2", "peer")}

    def clean() -> None:
        for o in outs.values():
            if o.exists():
                shutil.rmtree(o)

    runs: dict[str, list[float]] = {"export_seq": [], "export_pool2": [], "export_peer": [],
                                    "summarize": [], "summarize_peer": []}
    counts: dict[str, int] = {}
    for r in range(export_repeat):  # interleaved so drift hits every figure alike
        for name, fn in (("export_seq", lambda: ours_export(exp, source, outs["seq"], 1)),
                         ("export_pool2", lambda: ours_export(exp, source, outs["pool2"], 2)),
                         ("export_peer", lambda: sum(naive_peer_export(shard_dir(exp, i), source,
                                                                       outs["peer"] / f"shard_{i}")
                                                     for i in range(NUM_SHARDS)))):
            clean()
            dt, counts[name] = timed(fn)
            runs[name].append(dt)
            print(f"  run {r + 1}: {name:<13} {dt:7.2f} s ({counts[name]} motions)", flush=True)
    clean()
    summ: dict[str, Any] = {}
    for _ in range(args.repeat):
        dt, res = timed(summarize, exp)
        runs["summarize"].append(dt)
        summ["ours"] = res
        dt, summ["peer"] = timed(peer_summarize, exp)
        runs["summarize_peer"].append(dt)
    if len({counts["export_seq"], counts["export_pool2"], counts["export_peer"]}) != 1:
        raise SystemExit(f"exported counts differ: {counts}")

    med = {k: statistics.median(v) for k, v in runs.items()}
    rows = [("export (sequential)", "export_seq", "export_peer"), ("export (pool of 2)", "export_pool2", "export_peer"),
            ("naive peer export", "export_peer", "export_peer"), ("summarize", "summarize", "summarize_peer"),
            ("peer summarize loop", "summarize_peer", "summarize_peer")]
    print(f"\n{data['rollouts']} rollouts in {NUM_SHARDS} shards, {counts['export_seq']} successful "
          f"(data {'reused' if data['reused'] else 'generated'}; page-cache warm-up {warm_s:.1f} s)")
    print(f"{'figure':<22}{'median':>10}  {'runs':<28}{'vs peer':>9}")
    table = []
    for label, key, peer in rows:
        ratio = med[key] / med[peer]
        runs_s = ", ".join(f"{x:.3f}" for x in runs[key])
        print(f"{label:<22}{med[key]:>9.3f}s  {runs_s:<28}{ratio:>8.2f}x")
        table.append({"figure": label, "median_s": med[key], "runs_s": runs[key], "vs_peer": ratio})
    st = summ["ours"]["steps"][0]
    print(f"summarize: ours {st['total_motions']} motions, {st['total_success']} successful; "
          f"peer {summ['peer']['n_motions']} motions, {summ['peer']['n_success']} successful")
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "data": data, "warm_page_cache_s": warm_s, "exported": counts,
              "runs_s": runs, "median_s": med, "table": table, "summarize_peer": summ["peer"],
              "wall_s": time.perf_counter() - t_all}
    out = bench_dir / "bench_data.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out} (wall {result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
