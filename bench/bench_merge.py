#!/usr/bin/env python
"""Benchmark ``merge_step`` on 5 export shards (20,000 motions in all) against a peer in the same run.

Figures (medians over --repeat runs, shard files in the OS page cache, output removed between runs):

- merge (links): ``merge_step(..., link=True)``: scan, checks, hard links, sha256 of every output,
  merged manifest, atomic rename;
- merge (copies): the same with ``link=False``;
- peer: what GRAIL's merge_exports does to the files: a recursive no-clobber copy in rank order,
  ``shutil.copytree(shard/<sub>, merged/<sub>, dirs_exist_ok=True)`` per shard with a copy
  function that skips existing files. It does no hashing, no checks and writes no manifest.

Shards are ``tests.libgen.make_library(shard_<r>, n/5, variant="export", fast=True,
lengths=heavy_tailed_lengths(n/5, seed=r), scene=f"pickup_table_s{r}", seed=r, with_bps=False)``
(disjoint keys; export shards have no bps/),
generated once under ``${GRAIL_BENCH_DIR:-.bench}/merge20k`` and reused while the marker matches.
Results go to ``${GRAIL_BENCH_DIR:-.bench}/bench_merge.json``.

    python bench/bench_merge.py            # 20,000 motions
    python bench/bench_merge.py --quick    # 2,000 motions
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tests.libgen` lives in the repo, not the package

from bench.machine import machine, mark_dataset, reuse_dataset, save_result  # noqa: E402
from grail_cluster.tools.data.merge import SUBDIRS, merge_step  # noqa: E402
from tests.libgen import heavy_tailed_lengths, make_library  # noqa: E402

NUM_SHARDS = 5
STEP = 1000
TARGET_S = 10.0


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def ensure_shards(bench_dir: Path, n: int) -> tuple[Path, dict[str, Any]]:
    exp = bench_dir / (f"merge{n // 1000}k" if n % 1000 == 0 else f"merge{n}")
    per = n // NUM_SHARDS
    want = {"motions": per * NUM_SHARDS, "num_shards": NUM_SHARDS, "variant": "export", "fast": True,
            "lengths": "heavy_tailed_lengths(n/5, seed=r)", "with_bps": False, "generator": "tests.libgen.make_library"}
    have = reuse_dataset(exp, want)
    if have is not None:
        return exp, have
    print(f"generating {NUM_SHARDS} shards x {per} motions under {exp} (once) ...", flush=True)
    t0 = time.perf_counter()
    step = exp / "exported" / f"step_{STEP:06d}"
    for r in range(NUM_SHARDS):
        make_library(step / f"shard_{r}", per, variant="export", fast=True, seed=r, with_bps=False,
                     lengths=heavy_tailed_lengths(per, seed=r), scene=f"pickup_table_s{r}")
    files = [p for r in range(NUM_SHARDS) for p in files_under(step / f"shard_{r}")]
    info = {**want, "generate_s": round(time.perf_counter() - t0, 1), "files": len(files),
            "bytes": sum(p.stat().st_size for p in files)}
    mark_dataset(exp, info)
    return exp, {**info, "reused": False}


def warm_page_cache(step: Path) -> float:
    t0 = time.perf_counter()
    for p in files_under(step):
        with open(p, "rb") as fh:
            while fh.read(1 << 20):
                pass
    return time.perf_counter() - t0


def peer_merge(step: Path, out: Path) -> None:
    """GRAIL-style: recursive no-clobber copy of every shard in rank order."""

    def no_clobber(src: str, dst: str) -> str:
        if not os.path.exists(dst):
            shutil.copy2(src, dst)
        return dst

    for r in range(NUM_SHARDS):
        for sub in SUBDIRS:
            src = step / f"shard_{r}" / sub
            if src.is_dir():
                shutil.copytree(src, out / sub, dirs_exist_ok=True, copy_function=no_clobber)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 motions instead of 20,000")
    ap.add_argument("--motions", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    n = args.motions or (2000 if args.quick else 20000)
    bench_dir = Path(os.environ.get("GRAIL_BENCH_DIR", REPO / ".bench"))
    bench_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    exp, lib = ensure_shards(bench_dir, n)
    step = exp / "exported" / f"step_{STEP:06d}"
    warm_s = warm_page_cache(step)
    outs = {name: exp / f"out_{name}" for name in ("link", "copy", "peer")}

    def clean() -> None:
        for o in outs.values():
            if o.exists():
                shutil.rmtree(o)

    runs: dict[str, list[float]] = {"link": [], "copy": [], "peer": []}
    reports: dict[str, dict] = {}
    for _ in range(args.repeat):  # interleaved so drift hits every figure alike
        for name in ("link", "copy", "peer"):
            if outs[name].exists():
                shutil.rmtree(outs[name])
            t0 = time.perf_counter()
            if name == "peer":
                peer_merge(step, outs["peer"])
            else:
                reports[name] = merge_step(exp, STEP, num_shards=NUM_SHARDS, output=outs[name],
                                           link=name == "link")
            runs[name].append(time.perf_counter() - t0)
            if name == "peer":
                # Same files as ours (ours adds export_manifest.json), checked once per run, untimed.
                ours = {p.relative_to(outs["link"]).as_posix() for p in files_under(outs["link"])}
                theirs = {p.relative_to(outs["peer"]).as_posix() for p in files_under(outs["peer"])}
                if ours - {"export_manifest.json"} != theirs:
                    raise SystemExit(f"peer and merge disagree on {len(ours ^ theirs)} files")
    rep = reports["link"]
    if not rep["sound"] or rep["mode"] != "link" or reports["copy"]["mode"] != "copy":
        raise SystemExit(f"unexpected merge report: sound={rep['sound']} mode={rep['mode']} {rep['problems']}")
    clean()

    med = {k: statistics.median(v) for k, v in runs.items()}
    rows = [("merge (links)", "link"), ("merge (copies)", "copy"), ("peer (no-clobber copytree)", "peer")]
    print(f"\nmerge of {NUM_SHARDS} shards, {rep['unique_keys']} motions, {rep['files']} files, "
          f"{lib['bytes'] / 1e9:.2f} GB (page cache warmed in {warm_s:.1f}s)")
    print(f"{'figure':30s} {'median s':>9s} {'vs peer':>8s}  runs")
    for label, k in rows:
        print(f"{label:30s} {med[k]:9.2f} {med[k] / med['peer']:7.2f}x  "
              + ", ".join(f"{v:.2f}" for v in runs[k]))
    verdict = "PASS" if med["link"] < TARGET_S else "FAIL"
    print(f"target: {n} motions with hard links under {TARGET_S:.0f} s -> {verdict} ({med['link']:.2f} s)")
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "library": lib,
        "warm_page_cache_s": round(warm_s, 2),
        "runs_s": {k: [round(v, 3) for v in vs] for k, vs in runs.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "ratio_vs_peer": {k: round(v / med["peer"], 3) for k, v in med.items()},
        "files": rep["files"],
        "motions": rep["unique_keys"],
        "target_s": TARGET_S,
        "pass": med["link"] < TARGET_S,
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    save_result(bench_dir, "bench_merge", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
