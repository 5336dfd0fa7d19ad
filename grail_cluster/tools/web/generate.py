"""``web``: a static, self-contained viewer of a motion library (contracts §5.6), for reviewers.

Writes ``index.html``, ``main.js``, ``style.css`` (copied from ``assets/``), ``manifest.json`` and
``vis/<stem>.mp4`` (relative symlinks to the library's videos, or copies with ``copy_videos``).

``manifest.json`` keeps GRAIL's schema -- ``title, source, num_motions, num_with_video,
motions[{name, frames?, video?, meta?{object_name, table_pos, table_quat, table_size}}]`` sorted by
stem -- and adds what a reviewer filters on, per motion: ``object`` (class from the key, else the
meta ``object_name``), ``success``/``terminated``/``terminate_reason``, ``progress``,
``obj_pos_error``, ``obj_ori_error``, ``mpjpe_g``, ``mpjpe_l``, ``step``, ``shard``, ``env_idx`` and
``fps``; ``null`` where unknown. They come from, in order:

1. the library's own ``export_manifest.json`` (``exported_motions``: every listed motion passed the
   export's success test);
2. for a merged library (``.../step_S/merged``), the sibling ``shard_<r>/export_manifest.json``
   files (shard of origin: the lowest rank listing the key, as the merge's first-shard-wins rule)
   and, where it still exists, each shard's ``source_eval_dir/metrics_eval.json``
   (``terminated``, ``terminate_reason``, ``mpjpe_l``);
3. ``metrics_eval.json`` files given explicitly (``--metrics``), e.g. to review a source library
   with its eval results, failures included.

A plain library without any of them gets the GRAIL fields and ``null`` metrics.

Speed (20,000 motions): frames and object names come from the library index cache
(``.grail_index.json``, :func:`grail_cluster.core.library.scan_library`); the allow-listed meta fields
are cached per meta file (size, mtime) in the user cache dir. A warm run lists directories, reads
two JSON caches and writes the site. Pickles are read only through :mod:`grail_cluster.core.safe_pickle`.

Output is never visible half-written: a new site is built in a temp dir next to the output and
renamed into place; an existing one is updated file by file, each through a temp file and a rename,
with ``manifest.json`` consistent with ``vis/`` at every moment (see :func:`publish_site`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grail_cluster import __version__
from grail_cluster.core.errors import EXIT_OK
from grail_cluster.tools.web.pages import (
    MANIFEST,
    assets_dir,
    check_output,
    manifest_text,
    publish_site,
    replace_file,
    site_row,
    sites_page,
    write_text,
)
from grail_cluster.tools.web.site_data import build_manifest


def _output_path(output: str | Path) -> Path:
    out = Path(os.path.abspath(os.path.expanduser(output)))
    return Path(os.path.realpath(out.parent)) / out.name


def generate(motion_lib: str | Path, output: str | Path, *, copy_videos: bool = False, title: str | None = None,
             metrics: Sequence[str | Path] = (), use_cache: bool = True) -> dict[str, Any]:
    """Build (or update) the viewer of ``motion_lib`` at ``output``; return a summary."""
    t_all = time.perf_counter()
    lib = Path(motion_lib).expanduser().resolve()
    out = _output_path(output)
    check_output(out, lib)
    manifest, videos, stats = build_manifest(lib, title=title, metrics=metrics, use_cache=use_cache)
    t0 = time.perf_counter()
    written = publish_site(out, manifest, videos, copy_videos=copy_videos)
    stats["write_s"] = round(time.perf_counter() - t0, 4)
    return {
        "output": str(out),
        "manifest": str(out / MANIFEST),
        "title": manifest["title"],
        "source": manifest["source"],
        "num_motions": manifest["num_motions"],
        "num_with_video": manifest["num_with_video"],
        "num_success": manifest["num_success"],
        "num_failed": manifest["num_failed"],
        "success_rate": manifest["success_rate"],
        "step": manifest["step"],
        "headline": manifest["headline"],
        "videos": "copy" if copy_videos else "symlink",
        "metrics_sources": manifest["metrics_sources"],
        **written,
        **stats,
        "seconds": round(time.perf_counter() - t_all, 4),
    }


_STEP_DIR = re.compile(r"^(p\d{3,}_)?step_\d{6,}$")


def generate_run_site(web_dir: str | Path, libraries: Sequence[tuple], *,
                      title: str | None = None, copy_videos: bool = False) -> dict[str, Any]:
    """One viewer per checkpoint step, ``web_dir/step_<S:06d>/`` (``(step, library)``; a third item
    names the dir instead, e.g. ``p001_step_<S>`` for a sweep's winners), plus a small index page
    (``index.html`` linking them, ``manifest.json`` listing them). Each viewer is published as
    :func:`publish_site` does, then the index files are replaced, then viewers of steps no longer
    listed are removed."""
    web = _output_path(web_dir)
    for _, lib, *_ in libraries:
        check_output(web, Path(lib).resolve())
    built = []
    for step, lib, *named in libraries:
        name = named[0] if named else f"step_{int(step):06d}"
        manifest, videos, stats = build_manifest(lib, title=f"{title or 'GRAIL'} · step {int(step)}")
        if manifest["step"] is None:
            manifest["step"] = int(step)
            for m in manifest["motions"]:
                m["step"] = m["step"] if m["step"] is not None else int(step)
        built.append((name, int(step), manifest, videos, stats))
    sites = [site_row(name, step, man) for name, step, man, _, _ in built]
    index = {"title": title or "GRAIL", "kind": "sites", "generator": f"grail-cluster {__version__}",
             "num_motions": sum(s["num_motions"] for s in sites), "num_with_video": sum(s["num_with_video"] for s in sites),
             "sites": sites}
    web.mkdir(parents=True, exist_ok=True)
    for name, _, manifest, videos, stats in built:
        if (web / name).exists():
            check_output(web / name, Path(manifest["source"]))
        stats.update(publish_site(web / name, manifest, videos, copy_videos=copy_videos))
    replace_file(web / "style.css", lambda tmp: shutil.copyfile(assets_dir() / "style.css", tmp))
    write_text(web / "index.html", sites_page(index))
    write_text(web / MANIFEST, manifest_text(index, indent=1))
    keep = {name for name, *_ in built}
    for old in web.iterdir():
        if _STEP_DIR.match(old.name) and old.name not in keep and (old / MANIFEST).is_file() and not old.is_symlink():
            shutil.rmtree(old)
    return {"output": str(web), "manifest": str(web / MANIFEST), "sites": sites,
            "stats": {name: stats for name, _, _, _, stats in built}}



# ----------------------------------------------------------------------------- CLI


def _cmd_web(args: argparse.Namespace) -> int:
    summary = generate(args.motion_lib, args.output, copy_videos=args.copy_videos, title=args.title,
                       metrics=args.metrics or (), use_cache=not args.no_cache)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        return EXIT_OK
    from grail_cluster.tools.data.headline import headline_text

    print(f"wrote {summary['output']}: {summary['num_motions']} motions, {summary['num_with_video']} with video "
          f"({summary['videos']}), in {summary['seconds']:.2f} s "
          f"(index {summary['index_cache']}, {summary['meta_parsed']} meta parsed)")
    if summary["headline"] is not None:  # the checkpoint's eval, not the library's own (all-success) count
        print(f"checkpoint {headline_text(summary['headline'])}")
    elif summary["success_rate"] is not None:
        known = summary["num_success"] + summary["num_failed"]
        print(f"motions with a result in this library: {summary['num_success']}/{known} succeeded "
              f"= {100 * summary['success_rate']:.1f}%")
    for w in summary["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if summary.get("error_motions"):
        # Shown in the viewer with their error, and named here: nothing is dropped silently.
        bad = summary["error_motions"]
        print(f"warning: {len(bad)} motion(s) have unreadable or refused files (listed in the viewer with the error):",
              file=sys.stderr)
        for row in bad[:20]:
            print(f"  {row['motion']}: {row['error']}", file=sys.stderr)
        if len(bad) > 20:
            print(f"  … {len(bad) - 20} more; `grail-cluster doctor` names each file with its fix", file=sys.stderr)
    print(f"view it: grail-cluster serve {summary['output']}")
    return EXIT_OK


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``web`` subcommand (sets ``func``)."""
    p = subparsers.add_parser(
        "web", help="write the static web viewer of a motion library (manifest.json + vis/ links)",
        description="Write index.html, main.js, style.css, manifest.json and vis/<stem>.mp4 (relative symlinks, "
                    "or copies) for a motion library (GRAIL generate_manifest), with per-motion success and error "
                    "metrics from export_manifest.json / metrics_eval.json where present. A new output is built in a "
                    "temp dir and renamed; an existing viewer is updated file by file (atomic renames, unchanged "
                    "links kept). View it with `grail-cluster serve OUTPUT`.")
    p.add_argument("--motion_lib", "--motion-lib", dest="motion_lib", required=True,
                   help="library root holding robot/ (optional vis/, meta/, export_manifest.json)")
    p.add_argument("--output", required=True, help="site directory (created, or replaced if it holds a viewer)")
    p.add_argument("--copy_videos", "--copy-videos", dest="copy_videos", action="store_true",
                   help="copy the videos instead of linking them (a self-contained site)")
    p.add_argument("--title", help="page title (default: the library's directory name)")
    p.add_argument("--metrics", action="append", metavar="METRICS_EVAL",
                   help="a metrics_eval.json (or eval shard dir) whose per-motion results to show; repeatable")
    p.add_argument("--no-cache", action="store_true", help="re-read every pickle (ignore the index and meta caches)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(func=_cmd_web)
    return p

