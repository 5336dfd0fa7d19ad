#!/usr/bin/env python
"""Benchmark the web viewer on 20,000 motions against GRAIL's approach, measured in the same run.

Generator figures (wall time, library files in the OS page cache):

- ours cold: ``grail_cluster.tools.web.generate.generate`` with no index, no meta cache and no site (it parses
  every robot/objects/meta pickle through the allow-listed loader, in a process pool, writes both
  caches and builds the site in a temp dir);
- ours warm, new site: caches valid, no site: directory listings, two JSON caches, the whole site;
- ours warm (update): caches valid and the site exists: the in-place update (unchanged links kept);
- peer: GRAIL's approach to generate_manifest, re-implemented from the contract (the GRAIL code is
  non-commercial and not used): one ``joblib.load`` of every ``robot/<stem>.pkl`` (frame count) and
  ``meta/<stem>.pkl`` (allow-listed keys), one after another, a relative symlink per video, one JSON
  file. No caches, no metrics join, no allow-listing loader, no atomic rename.

Viewer figures, in headless Chromium (Debian's /usr/bin/chromium via Playwright), every page served
by ``grail_cluster.tools.web.serve`` from the same site and the same ``manifest.json``:

- time to first grid: navigation start -> the first frame painted after the first card exists
  (an init script polls ``.card`` every animation frame, then takes ``performance.now()`` in a task after
  the next frame); a fresh browser context per load;
- filter keystroke: ``keyboard.press`` of one character (or Backspace) in the search box -> the frame
  after the grid was updated (keydown ``timeStamp`` to a task after the next animation frame); the
  sequence types ``apple_1`` and erases it, three times (42 keystrokes), 30 ms apart;
- peer pages: GRAIL's viewer approach, a page that builds every card up front (name, frames, object,
  table position to 3 decimals) and filters by toggling ``style.display`` on every card. "peer +video"
  gives each card a ``<video muted loop preload=metadata src=...>`` as GRAIL's cards have; "peer DOM-only"
  leaves the video out (a lower bound for the GRAIL approach).

Before every timed generator run the bench deletes what that run must not find (untimed) and calls
``os.sync()``, so pending deletes are not billed to the next run that creates 20,000 links.

Data (generated once under ``${GRAIL_BENCH_DIR:-.bench}/web20k``, reused while the marker matches, never
timed): ``tests.libgen.make_library(lib, n, variant="export", fast=True, with_bps=False)`` (robot/ objects/
meta/ object_usd/ + export_manifest.json) and ``vis/<stem>.mp4`` for every motion, hard links to one
1-second 112x64 H.264 clip. Results go to ``${GRAIL_BENCH_DIR:-.bench}/bench_web.json``.

    python bench/bench_web.py            # 20,000 motions
    python bench/bench_web.py --quick    # 2,000 motions
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `tests.libgen` lives in the repo, not the package

from bench.machine import machine, mark_dataset, reuse_dataset, save_result  # noqa: E402
from grail_cluster.tools.web import generate as gen  # noqa: E402
from grail_cluster.tools.web import library_meta, pages  # noqa: E402
from grail_cluster.tools.web.serve import make_server  # noqa: E402
from tests.libgen import make_library  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1600, "height": 1000}
TYPED = "apple_1"

# Installed in every page before its own scripts: first-grid and keystroke-latency probes, the same for all.
PROBE = """
(() => {
  const poll = () => {
    if (document.querySelector('.card')) {
      requestAnimationFrame(() => setTimeout(() => { window.__firstGrid = performance.now(); }, 0));
      return;
    }
    requestAnimationFrame(poll);
  };
  requestAnimationFrame(poll);
  window.__lat = [];
  let down = 0;
  document.addEventListener('keydown', (e) => { down = e.timeStamp; }, true);
  document.addEventListener('input', () => {
    const t0 = down;
    requestAnimationFrame(() => setTimeout(() => window.__lat.push(performance.now() - t0), 0));
  }, true);
})();
"""

PEER_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>peer</title>
<style>
body { margin: 0; font: 14px system-ui, "DejaVu Sans", sans-serif; }
header { position: sticky; top: 0; background: #fff; padding: 8px; z-index: 1; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 12px; padding: 12px; }
.card { border: 1px solid #ccc; border-radius: 8px; overflow: hidden; }
.card video { width: 100%; aspect-ratio: 16 / 9; display: block; background: #000; }
.name { font-weight: 600; padding: 4px 8px 0; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.meta { color: #666; padding: 0 8px 6px; font-size: 12px; }
</style>
<script src="peer.js" defer></script></head>
<body><header><input id="q" type="search" placeholder="search"> <span id="count"></span></header>
<div id="grid"></div></body></html>
"""

PEER_JS = """
"use strict";
const WITH_VIDEO = new URLSearchParams(location.search).get("video") === "1";
const f3 = (v) => (typeof v === "number" ? v.toFixed(3) : "-");
fetch("manifest.json", { cache: "no-store" }).then((r) => r.json()).then((data) => {
  const grid = document.getElementById("grid");
  const q = document.getElementById("q");
  const count = document.getElementById("count");
  const cards = [];
  const frag = document.createDocumentFragment();
  for (const m of data.motions) {
    const card = document.createElement("div");
    card.className = "card";
    if (WITH_VIDEO && m.video) {
      const v = document.createElement("video");
      v.muted = true; v.loop = true; v.preload = "metadata"; v.src = m.video;
      card.appendChild(v);
      card.addEventListener("mouseenter", () => { v.play().catch(() => {}); });
      card.addEventListener("mouseleave", () => v.pause());
    }
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = m.name;
    card.appendChild(name);
    const meta = document.createElement("div");
    meta.className = "meta";
    const md = m.meta || {};
    meta.textContent = `${m.frames ?? "?"} frames · ${md.object_name ?? "-"} · table ${(md.table_pos || []).map(f3).join(", ")}`;
    card.appendChild(meta);
    frag.appendChild(card);
    cards.push([m.name.toLowerCase(), card]);
  }
  grid.appendChild(frag);
  count.textContent = `${cards.length} / ${cards.length}`;
  q.addEventListener("input", () => {
    const s = q.value.toLowerCase();
    let n = 0;
    for (const [nm, card] of cards) {
      const show = nm.includes(s);
      card.style.display = show ? "" : "none";
      n += show;
    }
    count.textContent = `${n} / ${cards.length}`;
  });
});
"""


# ----------------------------------------------------------------------------- data (untimed)


def ensure_library(bench_dir: Path, n: int) -> tuple[Path, dict[str, Any]]:
    base = bench_dir / (f"web{n // 1000}k" if n % 1000 == 0 else f"web{n}")
    lib = base / "lib"
    want = {"motions": n, "variant": "export", "fast": True, "with_bps": False, "videos": n,
            "generator": "tests.libgen.make_library"}
    have = reuse_dataset(base, want)
    if have is not None:
        return lib, have
    print(f"generating {n} motions + videos under {lib} (once) ...", flush=True)
    t0 = time.perf_counter()
    info = make_library(lib, n, variant="export", fast=True, with_bps=False)
    clip = base / "clip.mp4"
    write_clip(clip)
    vis = lib / "vis"
    vis.mkdir(exist_ok=True)
    for k in info.keys:
        os.link(clip, vis / f"{k}.mp4")
    info_d = {**want, "generate_s": round(time.perf_counter() - t0, 1), "clip_bytes": clip.stat().st_size}
    mark_dataset(base, info_d)
    return lib, {**info_d, "reused": False}


def write_clip(path: Path) -> None:
    import imageio.v2 as iio
    import numpy as np

    w = iio.get_writer(str(path), fps=25, codec="libx264", macro_block_size=16)
    for t in range(25):
        f = np.full((64, 112, 3), 30, np.uint8)
        f[:, (t * 4) % 112] = 220
        w.append_data(f)
    w.close()


def warm_page_cache(lib: Path) -> float:
    t0 = time.perf_counter()
    for sub in ("robot", "objects", "meta"):
        for p in (lib / sub).iterdir():
            with open(p, "rb") as fh:
                while fh.read(1 << 20):
                    pass
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- generator


def drop_caches(lib: Path) -> None:
    """Forget the index and meta caches (not the OS page cache)."""
    (lib / ".grail_index.json").unlink(missing_ok=True)
    shutil.rmtree(Path(os.environ["XDG_CACHE_HOME"]) / "grail-cluster", ignore_errors=True)


def peer_generate(lib: Path, out: Path) -> int:
    """GRAIL's generate_manifest approach (from the contract): joblib.load per robot and meta pickle."""
    import joblib
    import numpy as np

    (out / "vis").mkdir(parents=True)
    for name in pages.ASSETS:
        shutil.copyfile(pages.assets_dir() / name, out / name)
    motions = []
    rel_vis = os.path.relpath(lib / "vis", out / "vis")
    for p in sorted((lib / "robot").glob("*.pkl")):
        stem = p.stem
        d = joblib.load(p)
        if isinstance(d, dict) and len(d) == 1 and isinstance(next(iter(d.values())), dict):
            d = next(iter(d.values()))
        entry: dict[str, Any] = {"name": stem}
        for k in library_meta.FRAME_KEYS:
            if k in d:
                entry["frames"] = len(d[k])
                break
        if (lib / "vis" / f"{stem}.mp4").exists():
            os.symlink(f"{rel_vis}/{stem}.mp4", out / "vis" / f"{stem}.mp4")
            entry["video"] = f"vis/{stem}.mp4"
        mp = lib / "meta" / f"{stem}.pkl"
        if mp.exists():
            raw = joblib.load(mp)
            entry["meta"] = {k: (np.asarray(raw[k]).tolist() if k != "object_name" else raw[k])
                             for k in library_meta.META_KEYS if k in raw}
        motions.append(entry)
    manifest = {"title": lib.name, "source": str(lib), "num_motions": len(motions),
                "num_with_video": sum("video" in m for m in motions), "motions": motions}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return len(motions)


GEN_FIGURES = ("cold", "warm_new", "warm", "peer")


def bench_generator(lib: Path, site: Path, peer_out: Path, repeat: int) -> dict[str, Any]:
    """cold: no caches, no site; warm_new: caches valid, no site; warm: caches valid, site exists
    (the in-place update); peer: always from scratch (it has neither caches nor updates)."""
    runs: dict[str, list[float]] = {k: [] for k in GEN_FIGURES}
    summaries = {}
    for _ in range(repeat):  # interleaved so drift hits every figure alike
        for name in GEN_FIGURES:
            if name in ("cold", "warm_new") and site.exists():
                shutil.rmtree(site)  # untimed
            if name == "cold":
                drop_caches(lib)
            if name == "peer" and peer_out.exists():
                shutil.rmtree(peer_out)  # untimed
            # Flush the untimed deletes first: this VM's ext4 is mounted with `discard`, and 20k pending
            # unlinks would otherwise stall whichever timed run happens to create files next.
            os.sync()
            t0 = time.perf_counter()
            if name == "peer":
                n_peer = peer_generate(lib, peer_out)
            else:
                summaries[name] = gen.generate(lib, site)
            runs[name].append(time.perf_counter() - t0)
    if summaries["warm"]["index_cache"] != "hit" or summaries["warm"]["meta_parsed"] != 0 \
            or summaries["warm"]["mode"] != "update" or summaries["warm_new"]["mode"] != "new":
        raise SystemExit(f"warm runs were not what they claim: {summaries['warm']} {summaries['warm_new']}")
    ours = json.loads((site / "manifest.json").read_text())
    peer = json.loads((peer_out / "manifest.json").read_text())
    if n_peer != ours["num_motions"] or [m.get("frames") for m in peer["motions"]] != [m.get("frames") for m in ours["motions"]]:
        raise SystemExit("peer and ours disagree on motions or frame counts")
    shutil.rmtree(peer_out)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items()},
            "median_s": {k: round(v, 3) for k, v in med.items()},
            "ratio_vs_peer": {k: round(v / med["peer"], 3) for k, v in med.items()},
            "warm_breakdown_s": {k: summaries["warm"][k] for k in ("index_s", "meta_s", "metrics_s", "videos_s", "write_s")},
            "cold_breakdown_s": {k: summaries["cold"][k] for k in ("index_s", "meta_s", "metrics_s", "videos_s", "write_s")},
            "manifest_bytes": (site / "manifest.json").stat().st_size,
            "num_motions": ours["num_motions"], "num_with_video": ours["num_with_video"]}


# ----------------------------------------------------------------------------- viewer in Chromium


def measure_page(browser, url: str, loads: int, keys: list[str], settle_s: float) -> dict[str, Any]:
    first: list[float] = []
    lat: list[float] = []
    extra: dict[str, Any] = {}
    for i in range(loads):
        ctx = browser.new_context(viewport=VIEWPORT, bypass_csp=True)
        ctx.add_init_script(PROBE)
        page = ctx.new_page()
        page.goto(url, wait_until="commit")
        page.wait_for_function("window.__firstGrid !== undefined", timeout=300_000, polling=50)
        first.append(page.evaluate("window.__firstGrid"))
        if i == loads - 1:  # keystrokes and DOM size on the last load only (each load is fresh)
            page.wait_for_timeout(settle_s * 1000)
            extra["dom_elements"] = page.evaluate("document.getElementsByTagName('*').length")
            extra["video_elements"] = page.evaluate("document.getElementsByTagName('video').length")
            page.click("#q")
            page.evaluate("window.__lat = []")
            for k in keys:
                n = page.evaluate("window.__lat.length")
                page.keyboard.press(k)
                page.wait_for_function(f"window.__lat.length > {n}", timeout=120_000, polling=10)
                page.wait_for_timeout(30)
            lat = page.evaluate("window.__lat")
            extra["final_query"] = page.input_value("#q")
        ctx.close()
    lat_sorted = sorted(lat)
    return {"first_grid_ms": [round(x, 1) for x in first], "first_grid_median_ms": round(statistics.median(first), 1),
            "keystroke_ms": [round(x, 1) for x in lat], "keystroke_median_ms": round(statistics.median(lat), 1),
            "keystroke_p95_ms": round(lat_sorted[min(len(lat_sorted) - 1, int(0.95 * len(lat_sorted)))], 1),
            "keystroke_max_ms": round(lat_sorted[-1], 1), **extra}


def bench_viewer(site: Path, loads: int, settle_s: float, variants: list[str]) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    (site / "peer.html").write_text(PEER_HTML)
    (site / "peer.js").write_text(PEER_JS)
    keys = ([*TYPED] + ["Backspace"] * len(TYPED)) * 3
    pages = {"ours": "index.html", "peer_dom_only": "peer.html", "peer_video": "peer.html?video=1"}
    server = make_server(site, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    out: dict[str, Any] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            version = browser.version
            for name in variants:
                print(f"  chromium: {name} ...", flush=True)
                out[name] = measure_page(browser, server.url + pages[name], loads, keys, settle_s)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    out["chromium"] = version
    out["keystrokes"] = len(keys)
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 motions instead of 20,000")
    ap.add_argument("--motions", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="generator runs (each: cold, warm, peer)")
    ap.add_argument("--loads", type=int, default=5, help="page loads per viewer variant")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after load before typing")
    ap.add_argument("--variants", default="ours,peer_dom_only,peer_video",
                    help="comma list of ours, peer_dom_only, peer_video")
    args = ap.parse_args(argv)
    if not os.path.exists(CHROMIUM):
        raise SystemExit(f"{CHROMIUM} is missing: run `make browser` (tests/infra/browser/setup.sh)")
    n = args.motions or (2000 if args.quick else 20000)
    bench_dir = Path(os.environ.get("GRAIL_BENCH_DIR", REPO / ".bench")).expanduser().resolve()
    bench_dir.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(bench_dir / "xdg-cache")  # keep the meta cache inside the bench dir
    t_all = time.perf_counter()
    lib, data = ensure_library(bench_dir, n)
    warm_s = warm_page_cache(lib)
    site = lib.parent / "site"
    print(f"generator: {args.repeat} x (cold, warm, peer) on {n} motions ...", flush=True)
    g = bench_generator(lib, site, lib.parent / "peer_site", args.repeat)
    v = bench_viewer(site, args.loads, args.settle, [s.strip() for s in args.variants.split(",") if s.strip()])

    print(f"\nweb viewer, {g['num_motions']} motions ({g['num_with_video']} with video), manifest.json "
          f"{g['manifest_bytes'] / 1e6:.1f} MB, {v['chromium']} headless (page cache warmed in {warm_s:.1f}s)")
    print(f"{'generator':28s} {'median s':>9s} {'vs peer':>8s}  runs")
    for label, k in (("ours cold (no caches, new)", "cold"), ("ours warm caches, new site", "warm_new"),
                     ("ours warm (update)", "warm"), ("peer (joblib.load loop)", "peer")):
        print(f"{label:28s} {g['median_s'][k]:9.2f} {g['ratio_vs_peer'][k]:7.2f}x  "
              + ", ".join(f"{x:.2f}" for x in g["runs_s"][k]))
    print(f"{'viewer':28s} {'first grid ms':>13s} {'key median':>10s} {'key p95':>8s} {'DOM nodes':>9s}")
    for k in ("ours", "peer_dom_only", "peer_video"):
        if k in v:
            r = v[k]
            print(f"{k:28s} {r['first_grid_median_ms']:13.0f} {r['keystroke_median_ms']:10.1f} "
                  f"{r['keystroke_p95_ms']:8.1f} {r['dom_elements']:9d}")
    ratios = {}
    for k in ("peer_dom_only", "peer_video"):
        if "ours" in v and k in v:
            ratios[k] = {"first_grid": round(v[k]["first_grid_median_ms"] / v["ours"]["first_grid_median_ms"], 2),
                         "keystroke": round(v[k]["keystroke_median_ms"] / v["ours"]["keystroke_median_ms"], 2)}
            print(f"{k} / ours: first grid {ratios[k]['first_grid']}x, keystroke {ratios[k]['keystroke']}x")
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "library": data,
        "warm_page_cache_s": round(warm_s, 2),
        "generator": g,
        "viewer": v,
        "peer_over_ours": ratios,
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    save_result(bench_dir, "bench_web", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
