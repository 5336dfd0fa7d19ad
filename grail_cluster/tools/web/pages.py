"""Writing the viewer: assets, ``vis/`` links or copies and ``manifest.json``, never visible half-written;
and the index page of a run's per-step viewers."""

from __future__ import annotations

import contextlib
import html
import json
import os
import shutil
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import ConfigError
from grail_cluster.tools.data.io import atomic_dir

ASSETS = ("index.html", "main.js", "style.css")
MANIFEST = "manifest.json"



def assets_dir() -> Path:
    return Path(__file__).resolve().with_name("assets")



def check_output(out: Path, lib: Path) -> None:
    if out == lib or lib.is_relative_to(out):
        raise ConfigError("the output dir would replace the motion library", path=out,
                          fix="choose an output dir outside the library, e.g. <library>/../web")
    if out.exists():
        if not out.is_dir():
            raise ConfigError("output exists and is not a directory", path=out, fix="choose another --output")
        if not (out / MANIFEST).exists() and any(out.iterdir()):
            raise ConfigError("output dir is not empty and holds no viewer (manifest.json); refusing to replace it",
                              path=out, fix="choose a new or empty dir, or one a previous `grail-cluster web` wrote")


def manifest_text(manifest: dict[str, Any], *, indent: int | None = None) -> str:
    # json.dumps encodes in C in one go; json.dump to a file would take the pure-Python path (2x slower).
    return json.dumps(manifest, separators=None if indent else (",", ":"), indent=indent, allow_nan=False,
                      ensure_ascii=False)


def replace_file(dst: Path, write) -> None:
    """``write(tmp)`` a sibling temp file, then rename it over ``dst`` (readers see old or new, never half)."""
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(dst: Path, text: str) -> None:
    replace_file(dst, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class _VideoPlan:
    """What ``vis/<stem>.mp4`` must be: a relative symlink (its target text) or a copy (source stat)."""

    def __init__(self, videos: dict[str, Path], final: Path, copy_videos: bool):
        self.copy = copy_videos
        self.want: dict[str, tuple[Path, str | None]] = {}
        rel_dirs: dict[Path, str] = {}  # one realpath/relpath per source dir, not per video
        for stem, src in videos.items():
            target = None
            if not copy_videos:
                rel = rel_dirs.get(src.parent)
                if rel is None:
                    rel = rel_dirs[src.parent] = os.path.relpath(os.path.realpath(src.parent), final / "vis")
                target = f"{rel}/{src.name}"
            self.want[f"{stem}.mp4"] = (src, target)

    def make(self, name: str, dst: Path) -> None:
        src, target = self.want[name]
        if target is None:
            shutil.copy2(src, dst)  # copy2 keeps the mtime, so an unchanged copy is recognised next time
        else:
            os.symlink(target, dst)

    def current(self, name: str, entry: os.DirEntry) -> bool:
        src, target = self.want[name]
        try:
            if target is not None:
                return entry.is_symlink() and os.readlink(entry.path) == target
            if entry.is_symlink() or not entry.is_file():
                return False
            a, b = entry.stat(), os.stat(src)
            return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns
        except OSError:
            return False


def write_site(out_dir: Path, manifest: dict[str, Any], videos: dict[str, Path], *,
               copy_videos: bool = False, final_dir: Path | None = None) -> None:
    """Write the viewer into ``out_dir`` (an empty dir). Relative links are computed for
    ``final_dir`` (where ``out_dir`` will be renamed to; a sibling of the same depth)."""
    plan = _VideoPlan(videos, Path(os.path.realpath(final_dir or out_dir)), copy_videos)
    for name in ASSETS:
        shutil.copyfile(assets_dir() / name, out_dir / name)
    vis = out_dir / "vis"
    vis.mkdir()
    for name in plan.want:
        plan.make(name, vis / name)
    (out_dir / MANIFEST).write_text(manifest_text(manifest), encoding="utf-8")


def publish_site(out: Path, manifest: dict[str, Any], videos: dict[str, Path], *,
                 copy_videos: bool = False) -> dict[str, Any]:
    """Write or update the viewer at ``out``; never visible half-written.

    A new (or empty) ``out`` is built in a temp dir and renamed into place. An existing viewer is
    updated in place, one atomic rename per file, in an order that keeps it consistent for someone
    browsing it meanwhile: missing or changed ``vis/`` entries first, then the assets, then
    ``manifest.json``, and only then the videos the new manifest no longer lists are removed. So a
    re-run on an unchanged library rewrites three assets and one manifest, not 20,000 links.
    """
    vis = out / "vis"
    fresh = not out.exists() or not any(out.iterdir())
    if not fresh and (vis.is_symlink() or (vis.exists() and not vis.is_dir())):
        fresh = True  # never write through a vis/ that is a link to somewhere else
    if fresh:
        with atomic_dir(out) as tmp:
            write_site(tmp, manifest, videos, copy_videos=copy_videos, final_dir=out)
        return {"mode": "new", "videos_written": len(videos), "videos_removed": 0}
    plan = _VideoPlan(videos, Path(os.path.realpath(out)), copy_videos)
    vis.mkdir(exist_ok=True)
    with os.scandir(vis) as it:
        have = {e.name: e for e in it}
    written = 0
    for name in plan.want:
        entry = have.get(name)
        if entry is None or not plan.current(name, entry):
            replace_file(vis / name, lambda tmp, name=name: plan.make(name, tmp))
            written += 1
    for name in ASSETS:
        replace_file(out / name, lambda tmp, name=name: shutil.copyfile(assets_dir() / name, tmp))
    write_text(out / MANIFEST, manifest_text(manifest))
    removed = 0
    for name, entry in have.items():
        stale_tmp = name.startswith(".") and ".tmp-" in name  # left by an interrupted run
        if name not in plan.want and (name.endswith(".mp4") or stale_tmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
            removed += 1
    return {"mode": "update", "videos_written": written, "videos_removed": removed}



def site_row(name: str, step: int, man: dict[str, Any]) -> dict[str, Any]:
    """One checkpoint of the index: the headline numbers (eval metrics of every shard), then the library."""
    h = man.get("headline") or {}
    return {"step": step, "path": f"{name}/", "num_motions": man["num_motions"],
            "num_with_video": man["num_with_video"], "source": man["source"],
            "evaluated": h.get("evaluated"), "succeeded": h.get("succeeded"), "success_rate": h.get("success_rate"),
            "exported": h.get("exported"), "num_shards": h.get("num_shards"), "shards_ok": h.get("shards_ok"),
            "partial": h.get("partial", True), "headline": man.get("headline")}


def sites_page(index: dict[str, Any]) -> str:
    """A static page linking the per-step viewers (every value escaped)."""
    from grail_cluster.tools.data.headline import headline_text, partial_text

    e = html.escape
    rows = []
    for s in index["sites"]:
        h = s["headline"]
        if h is None:
            cells = '<td colspan="4">no eval metrics found (not an exported library)</td>'
        else:
            rate = "–" if h["success_rate"] is None else f"{100 * h['success_rate']:.1f}%"
            note = partial_text(h)
            cells = (f'<td class="num">{h["evaluated"]}</td><td class="num">{h["succeeded"]}</td>'
                     f'<td class="num rate">{e(rate)}' + (f'<br><strong class="partial">{e(note)}</strong>' if note else "")
                     + f'</td><td class="num">{"–" if h["exported"] is None else h["exported"]}</td>')
        title = e(headline_text(h)) if h else ""
        rows.append(f'<tr title="{title}"><td><a href="{e(s["path"])}index.html">step {s["step"]}</a></td>{cells}'
                    f'<td class="num">{s["num_with_video"]}</td><td class="path">{e(s["source"])}</td></tr>')
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'self'; script-src 'none'\">"
        f"<title>{e(index['title'])}</title><link rel=\"stylesheet\" href=\"style.css\"></head>\n"
        f"<body class=\"sites\"><header class=\"bar\"><h1>{e(index['title'])}</h1>"
        f"<span class=\"counts\">{len(index['sites'])} checkpoint(s), {index['num_motions']} motions in their libraries"
        "</span></header>\n"
        "<main class=\"sites-main\"><table class=\"meta\"><thead><tr><th>checkpoint</th><th>evaluated</th>"
        "<th>succeeded</th><th>success rate (eval, all shards)</th><th>exported</th><th>with video</th>"
        "<th>library</th></tr></thead><tbody>\n"
        + "\n".join(rows) + "\n</tbody></table></main></body></html>\n"
    )

