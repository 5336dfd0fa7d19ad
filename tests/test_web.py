"""`grail-cluster web` (the static viewer's manifest and vis/ links), `serve`, and the web stage.

The viewer itself is driven in Chromium by tests/test_web_browser.py, on the library built here
by :func:`make_review_library`.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import joblib
import numpy as np
import pytest

from grail_cluster.cli.main import main as cli
from grail_cluster.core.errors import ConfigError
from grail_cluster.tools.web import generate as gen
from grail_cluster.tools.web import pages
from grail_cluster.tools.web.library_meta import object_class
from grail_cluster.tools.web.serve import make_server
from tests.libgen import make_library, write_malicious_pickle

XSS = '<img src=x onerror="window.__xss=1">'
XSS_KEY = "kid_001_indoor2-pickup-table_rand00001"  # a pipeline-style key: no class in it, so object = meta
GRAIL_META = {"object_name", "table_pos", "table_quat", "table_size"}


# ----------------------------------------------------------------------------- fixtures and builders


def write_mp4(path: Path, frames: int = 50, seed: int = 0) -> Path:
    """A small real H.264 MP4 (2 s at 25 fps), a moving bar so frames differ."""
    import imageio.v2 as iio

    rng = np.random.default_rng(seed)
    colour = rng.integers(64, 255, size=3).astype(np.uint8)
    w = iio.get_writer(str(path), fps=25, codec="libx264", macro_block_size=16)
    try:
        for t in range(frames):
            f = np.zeros((64, 112, 3), np.uint8)
            f[:, (t * 2) % 112] = colour
            w.append_data(f)
    finally:
        w.close()
    return path


@pytest.fixture(scope="session")
def mp4(tmp_path_factory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("video") / "clip.mp4")


def add_videos(lib: Path, keys, mp4: Path) -> None:
    (lib / "vis").mkdir(exist_ok=True)
    for k in keys:
        shutil.copyfile(mp4, lib / "vis" / f"{k}.mp4")


def write_metrics(path: Path, rows: dict[str, dict]) -> Path:
    """A metrics_eval.json (contracts §4.2) with the given per-key rows, keys in sorted order."""
    keys = sorted(rows)
    cols = {"motion_keys": keys}
    for name in ("terminated", "terminate_reason", "progress", "obj_pos_error", "obj_ori_error", "mpjpe_g", "mpjpe_l"):
        cols[name] = [rows[k][name] for k in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"eval/success/success_rate": 0.0, "eval/all_metrics_dict": cols}))
    return path


def make_review_library(root: Path, mp4: Path, n: int = 15) -> dict:
    """A retarget library of ``n`` motions (+ one whose meta object_name is an XSS payload), eval metrics
    with failures, varied errors and frame counts, and videos for all but the last two keys."""
    info = make_library(root / "lib", n, fast=True, lengths=[20 + 5 * i for i in range(n)])
    lib = info.root
    # The XSS motion: robot/objects copied from the first key, a meta whose object_name is markup.
    src = info.keys[0]
    # Re-keyed under its own stem, as every GRAIL pickle is (the index refuses a foreign key).
    for sub in ("robot", "objects"):
        (data,) = joblib.load(lib / sub / f"{src}.pkl").values()
        joblib.dump({XSS_KEY: data}, lib / sub / f"{XSS_KEY}.pkl")
    joblib.dump({"object_name": XSS, "table_pos": [0.5, 0.0, 0.7], "table_quat": [1.0, 0.0, 0.0, 0.0]},
                lib / "meta" / f"{XSS_KEY}.pkl")
    keys = sorted([*info.keys, XSS_KEY])
    lengths = {**info.lengths, XSS_KEY: info.lengths[src]}
    rows = {}
    for j, k in enumerate(keys):
        term = j % 4 == 3
        rows[k] = {"terminated": term, "terminate_reason": "anchor_pos" if term else "",
                   "progress": 0.5 if term else 1.0, "obj_pos_error": round(0.005 * ((j * 7) % n + 1), 4),
                   "obj_ori_error": 0.01 * j, "mpjpe_g": 10.0 + (j * 5) % 13, "mpjpe_l": 5.0 + j}
    rows[keys[-1]]["obj_pos_error"] = None  # unknown values sort last
    metrics = write_metrics(root / "eval" / "step_002000" / "phase1_shard_3" / "metrics_eval.json", rows)
    with_video = keys[:-2]
    add_videos(lib, with_video, mp4)
    return {"lib": lib, "keys": keys, "lengths": lengths, "rows": rows, "metrics": metrics, "with_video": with_video}


@pytest.fixture
def review(tmp_path, mp4):
    return make_review_library(tmp_path, mp4)


def load_manifest(site: Path) -> dict:
    return json.loads((site / "manifest.json").read_text())


# ----------------------------------------------------------------------------- manifest


def test_manifest_has_grail_schema_and_review_fields(tmp_path, review):
    site = tmp_path / "site"
    summary = gen.generate(review["lib"], site, metrics=[review["metrics"]], title="Review")
    man = load_manifest(site)
    assert {"title", "source", "num_motions", "num_with_video", "motions"} <= set(man)
    assert man["title"] == "Review" and man["source"] == str(review["lib"].resolve())
    assert man["num_motions"] == len(review["keys"]) == summary["num_motions"]
    assert man["num_with_video"] == len(review["with_video"])
    names = [m["name"] for m in man["motions"]]
    assert names == sorted(names) == review["keys"]
    for m in man["motions"]:
        k, row = m["name"], review["rows"][m["name"]]
        assert m["frames"] == review["lengths"][k]
        assert ("video" in m) == (k in review["with_video"])
        if "video" in m:
            assert m["video"] == f"vis/{k}.mp4"
        # Only GRAIL's allow-listed meta keys (retarget meta also has scene_scale, smpl_height).
        assert set(m["meta"]) <= GRAIL_META and "object_name" in m["meta"]
        assert m["success"] is (not row["terminated"]) and m["terminated"] is row["terminated"]
        for name in ("progress", "obj_pos_error", "obj_ori_error", "mpjpe_g", "mpjpe_l"):
            assert m[name] == row[name]
        assert m["terminate_reason"] == row["terminate_reason"]
        assert m["step"] == 2000 and m["shard"] == 3 and m["env_idx"] == review["keys"].index(k)
        assert m["fps"] == 30.0
    by = {m["name"]: m for m in man["motions"]}
    assert by["pickup_table__apple_0__000"]["object"] == "apple"
    assert by[XSS_KEY]["object"] == XSS and by[XSS_KEY]["meta"]["object_name"] == XSS
    assert by[XSS_KEY]["meta"]["table_pos"] == [0.5, 0.0, 0.7]
    n_fail = sum(r["terminated"] for r in review["rows"].values())
    assert man["num_failed"] == n_fail and man["num_success"] == len(review["keys"]) - n_fail
    assert man["table_quat_convention"] == "wxyz" and man["metrics_sources"]["eval_metrics"] == [str(review["metrics"])]
    for name in pages.ASSETS:
        assert (site / name).read_bytes() == (pages.assets_dir() / name).read_bytes()
    page = (site / "index.html").read_text()
    assert "Content-Security-Policy" in page and "script-src 'self'" in page and "http://" not in page and "https://" not in page
    js = (site / "main.js").read_text()
    assert "http://" not in js and "https://" not in js  # no CDN, no other origin
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "fetch(\"manifest.json\", { cache: \"no-store\" })" in js


def test_plain_library_defaults_and_grail_frame_keys(tmp_path):
    info = make_library(tmp_path / "pickup_table", 4, fast=True)
    # A hand-made robot pickle with only `joint_pos`: the index has no frame count for it, GRAIL's rule does.
    joblib.dump({"odd__motion__000": {"joint_pos": np.zeros((7, 29), np.float32), "fps": 30}},
                info.root / "robot" / "odd__motion__000.pkl")
    site = tmp_path / "out"
    gen.generate(info.root, site)
    man = load_manifest(site)
    assert man["title"] == "pickup_table" and man["num_with_video"] == 0
    by = {m["name"]: m for m in man["motions"]}
    assert by["odd__motion__000"]["frames"] == 7 and "meta" not in by["odd__motion__000"]
    assert by["odd__motion__000"]["object"] == "motion"  # <scene>__<obj>__<idx>
    for k in info.keys:
        m = by[k]
        assert m["frames"] == info.lengths[k] and "video" not in m
        assert m["success"] is None and m["obj_pos_error"] is None and m["step"] is None and m["shard"] is None
    assert list((site / "vis").iterdir()) == []


def test_object_class_rules():
    assert object_class("pickup_table__apple_0__000") == "apple"
    assert object_class("pickup_ground__water_bottle_12__004") == "water_bottle"
    assert object_class("mug_3_jason_take2_0001") == "mug"
    assert object_class("kid_001_indoor2-pickup-table_rand00001", "cup") == "cup"
    assert object_class("kid_001_indoor2-pickup-table_rand00001") is None


def test_export_manifest_metrics_and_nan(tmp_path):
    info = make_library(tmp_path / "shard_2", 6, variant="export", fast=True)
    man = json.loads((info.root / "export_manifest.json").read_text())
    man["exported_motions"][0]["obj_pos_error"] = float("nan")  # JSON has no NaN: it must become null
    man["exported_motions"][1]["mpjpe_g"] = 12.5
    man["step"] = 1500
    (info.root / "export_manifest.json").write_text(json.dumps(man))
    site = tmp_path / "site"
    gen.generate(info.root, site)
    raw = (site / "manifest.json").read_text()
    assert "NaN" not in raw
    out = json.loads(raw)
    assert out["table_quat_convention"] == "xyzw" and out["step"] == 1500
    by = {m["name"]: m for m in out["motions"]}
    first, second = man["exported_motions"][0]["motion_key"], man["exported_motions"][1]["motion_key"]
    assert by[first]["obj_pos_error"] is None and by[second]["mpjpe_g"] == 12.5
    for m in out["motions"]:
        assert m["success"] is True and m["terminated"] is False and m["progress"] == 1.0
        assert m["shard"] == 2 and m["step"] == 1500 and m["mpjpe_l"] is None
        assert len(m["meta"]["table_quat"]) == 4


def test_unsafe_pickle_is_refused_not_run(tmp_path):
    info = make_library(tmp_path / "lib", 3, fast=True)
    marker = tmp_path / "pwned"
    write_malicious_pickle(info.root / "meta" / f"{info.keys[0]}.pkl", marker)
    site = tmp_path / "site"
    summary = gen.generate(info.root, site)
    assert not marker.exists()
    by = {m["name"]: m for m in load_manifest(site)["motions"]}
    assert "meta" not in by[info.keys[0]] and "refused" in by[info.keys[0]]["error"]
    assert summary["errors"] == 1


# ----------------------------------------------------------------------------- vis/ links, copies, atomicity


def test_video_links_are_relative_and_survive_moving_the_tree(tmp_path, review):
    site = tmp_path / "site"
    gen.generate(review["lib"], site)
    links = sorted((site / "vis").iterdir())
    assert [p.stem for p in links] == review["with_video"]
    for p in links:
        assert p.is_symlink() and not os.path.isabs(os.readlink(p))
        assert p.resolve() == (review["lib"] / "vis" / p.name).resolve()
        assert p.read_bytes()[4:8] == b"ftyp"
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    shutil.move(tmp_path, moved)
    try:
        for p in (moved / "site" / "vis").iterdir():
            assert p.is_file(), f"{p} dangles after moving the tree"
    finally:
        shutil.move(moved, tmp_path)


def test_copy_videos_replaces_links(tmp_path, review):
    site = tmp_path / "site"
    gen.generate(review["lib"], site)
    assert all(p.is_symlink() for p in (site / "vis").iterdir())
    summary = gen.generate(review["lib"], site, copy_videos=True)
    assert summary["videos"] == "copy"
    for p in (site / "vis").iterdir():
        assert not p.is_symlink() and p.is_file()
        assert p.read_bytes() == (review["lib"] / "vis" / p.name).read_bytes()
    # Back to links: the copies are replaced.
    gen.generate(review["lib"], site)
    assert all(p.is_symlink() for p in (site / "vis").iterdir())


def _broken_assets(tmp_path: Path) -> Path:
    broken = tmp_path / "assets-without-main-js"
    broken.mkdir()
    for name in ("index.html", "style.css"):
        shutil.copyfile(pages.assets_dir() / name, broken / name)
    return broken


def test_new_output_appears_whole_or_not_at_all(tmp_path, review, monkeypatch):
    site = tmp_path / "site"
    broken = _broken_assets(tmp_path)
    monkeypatch.setattr(pages, "assets_dir", lambda: broken)  # fails half-way through writing the site
    with pytest.raises(FileNotFoundError):
        gen.generate(review["lib"], site)
    assert not site.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["lib", "eval", broken.name])  # no temp dirs


def test_existing_output_is_updated_atomically(tmp_path, review, monkeypatch):
    site = tmp_path / "site"
    first = gen.generate(review["lib"], site, title="first")
    assert first["mode"] == "new" and first["videos_written"] == len(review["with_video"])
    before = (site / "manifest.json").read_bytes()

    broken = _broken_assets(tmp_path)
    monkeypatch.setattr(pages, "assets_dir", lambda: broken)  # fails half-way through the update
    with pytest.raises(FileNotFoundError):
        gen.generate(review["lib"], site, title="second")
    monkeypatch.undo()
    shutil.rmtree(broken)
    assert (site / "manifest.json").read_bytes() == before  # the old manifest (and its videos) untouched
    assert all((site / m["video"]).is_file() for m in load_manifest(site)["motions"] if "video" in m)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["site", "lib", "eval"])
    assert not [p for p in site.rglob(".*")]  # no temp files left
    # An unchanged library rewrites no link; a removed video disappears only after the new manifest.
    second = gen.generate(review["lib"], site, title="second")
    assert second["mode"] == "update" and second["videos_written"] == 0 and second["videos_removed"] == 0
    assert load_manifest(site)["title"] == "second"
    gone = review["with_video"][0]
    (review["lib"] / "vis" / f"{gone}.mp4").unlink()
    third = gen.generate(review["lib"], site)
    assert third["videos_removed"] == 1 and not (site / "vis" / f"{gone}.mp4").exists()
    assert "video" not in {m["name"]: m for m in load_manifest(site)["motions"]}[gone]


def test_refuses_to_replace_foreign_dirs(tmp_path, review):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="refusing"):
        gen.generate(review["lib"], other)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="replace the motion library"):
        gen.generate(review["lib"], review["lib"].parent)
    (tmp_path / "empty").mkdir()
    gen.generate(review["lib"], tmp_path / "empty")  # an empty dir is fine


def _cold_build(lib: Path, site: Path, cache_home: Path, monkeypatch, **kw) -> dict:
    """A build of ``lib`` from empty caches: a fresh cache home, and the library's own index cache set
    aside for the duration (then put back, so the warm builds keep theirs)."""
    from grail_cluster.core.library import CACHE_NAME

    warm_home = os.environ["XDG_CACHE_HOME"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    own, aside = lib / CACHE_NAME, lib.parent / f"{CACHE_NAME}.aside"
    had_own = own.exists()
    if had_own:
        own.rename(aside)
    try:
        return gen.generate(lib, site, **kw)
    finally:
        (lib / CACHE_NAME).unlink(missing_ok=True)
        if had_own:
            aside.rename(own)
        monkeypatch.setenv("XDG_CACHE_HOME", warm_home)


def test_warm_build_equals_a_cold_build(tmp_path, review, monkeypatch):
    # Both sites sit beside each other, so even the relative vis/ links must come out the same.
    lib, warm_site, metrics = review["lib"], tmp_path / "warm", [review["metrics"]]
    first = gen.generate(lib, warm_site, metrics=metrics)
    assert first["meta_parsed"] == len(review["keys"])
    warm = gen.generate(lib, warm_site, metrics=metrics)
    assert warm["index_cache"] == "hit" and warm["index_parsed"] == 0 and warm["meta_parsed"] == 0
    cold = _cold_build(lib, tmp_path / "cold", tmp_path / "cache-a", monkeypatch, metrics=metrics)
    assert cold["index_cache"] != "hit" and cold["index_parsed"] == cold["meta_parsed"] == len(review["keys"])
    warm_man, cold_man = load_manifest(warm_site), load_manifest(tmp_path / "cold")
    assert warm_man["motions"] and warm_man == cold_man

    # A changed meta file: the warm build re-reads just that one, and still equals a cold build.
    k = review["keys"][1]
    joblib.dump({"object_name": "changed", "table_pos": [0.25, -0.5, 0.75]}, lib / "meta" / f"{k}.pkl")
    again = gen.generate(lib, warm_site, metrics=metrics)
    assert again["meta_parsed"] == 1
    _cold_build(lib, tmp_path / "cold2", tmp_path / "cache-b", monkeypatch, metrics=metrics)
    warm_man, cold_man = load_manifest(warm_site), load_manifest(tmp_path / "cold2")
    assert warm_man == cold_man
    assert {m["name"]: m for m in warm_man["motions"]}[k]["meta"] == {"object_name": "changed",
                                                                     "table_pos": [0.25, -0.5, 0.75]}


# ----------------------------------------------------------------------------- CLI


def test_cli_web_json_and_serve_errors(tmp_path, review, capsys):
    site = tmp_path / "site"
    rc = cli(["web", "--motion_lib", str(review["lib"]), "--output", str(site), "--title", "T", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["num_motions"] == len(review["keys"]) and out["title"] == "T"
    assert cli(["serve", str(tmp_path / "lib"), "--port", "0"]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert cli(["web", "--motion_lib", str(tmp_path / "nope"), "--output", str(site)]) == 1


# ----------------------------------------------------------------------------- serve


@pytest.fixture
def served(tmp_path, review):
    site = tmp_path / "site"
    gen.generate(review["lib"], site)
    server = make_server(site, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, site, review
    server.shutdown()
    server.server_close()
    thread.join(5)


def _get(server, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_serve_binds_loopback_and_serves_ranges(served):
    server, site, review = served
    assert server.server_address[0] == "127.0.0.1"
    resp, body = _get(server, "/manifest.json")
    assert resp.status == 200 and resp.getheader("Cache-Control") == "no-store"
    assert json.loads(body)["num_motions"] == len(review["keys"])
    video = f"/vis/{review['with_video'][0]}.mp4"
    full = (site / video.lstrip("/")).read_bytes()
    resp, body = _get(server, video)
    assert resp.status == 200 and body == full and resp.getheader("Accept-Ranges") == "bytes"
    assert resp.getheader("Content-Type") == "video/mp4"
    resp, body = _get(server, video, {"Range": "bytes=0-99"})
    assert resp.status == 206 and body == full[:100]
    assert resp.getheader("Content-Range") == f"bytes 0-99/{len(full)}"
    resp, body = _get(server, video, {"Range": "bytes=100-"})
    assert resp.status == 206 and body == full[100:]
    resp, body = _get(server, video, {"Range": "bytes=-10"})
    assert resp.status == 206 and body == full[-10:]
    resp, body = _get(server, video, {"Range": f"bytes={len(full)}-"})
    assert resp.status == 416 and resp.getheader("Content-Range") == f"bytes */{len(full)}"
    resp, _ = _get(server, "/../lib/robot/")  # no way out of the site dir but the vis/ links
    assert resp.status == 404
    resp, _ = _get(server, "/vis/missing.mp4", {"Range": "bytes=0-1"})
    assert resp.status == 404
    import socket

    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1 junk\r\n\r\n")  # a malformed request line: a 400 page, not a crash
        assert b"400" in s.recv(4096)
    assert _get(server, "/index.html")[0].status == 200


def test_serve_cli_prints_url_and_stops_on_ctrl_c(tmp_path, review):
    site = tmp_path / "site"
    gen.generate(review["lib"], site)
    proc = subprocess.Popen([sys.executable, "-m", "grail_cluster", "serve", str(site), "--port", "0", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["url"].startswith("http://127.0.0.1:") and info["directory"] == str(site.resolve())
        conn = http.client.HTTPConnection("127.0.0.1", info["port"], timeout=10)
        conn.request("GET", "/index.html")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err


# ----------------------------------------------------------------------------- the web stage


def test_web_stage_builds_one_viewer_per_checkpoint(tmp_path, hoi_pair, sonic_root, mp4, capsys):
    from grail_cluster.core.markers import marker_path, validate_marker
    from grail_cluster.entry import main as entry
    from tests.evalgen import evaluated_run

    _, ha = hoi_pair
    plan, failed = evaluated_run(tmp_path, ha, sonic_root, "web.title=Review run", video=mp4)
    for index in range(plan.stage("export").size):
        assert entry(["export", "--run-dir", plan.run_dir, "--index", str(index)]) == 0
    for index in range(2):
        assert entry(["merge", "--run-dir", plan.run_dir, "--index", str(index)]) == 0
    assert entry(["web", "--run-dir", plan.run_dir, "--index", "0", "--plan-hash", plan.plan_hash]) == 0
    assert validate_marker(plan.run_dir, "web", 0, plan.plan_hash, deep=True)

    web = Path(plan.paths["web_dir"])
    top = load_manifest(web)
    assert [s["step"] for s in top["sites"]] == [1000, 2000] and top["title"] == "Review run"
    page = (web / "index.html").read_text()
    assert 'href="step_001000/index.html"' in page and 'href="step_002000/index.html"' in page
    key_shard = {k: s.shard for s in plan.eval_shards for k in s.motion_keys}
    for step, n in ((1000, len(ha.keys) - 1), (2000, len(ha.keys))):
        man = load_manifest(web / f"step_{step:06d}")
        assert man["num_motions"] == n == man["num_with_video"] == man["num_success"]
        assert man["step"] == step and man["table_quat_convention"] == "xyzw"
        assert len(man["metrics_sources"]["shard_manifests"]) == 3 and len(man["metrics_sources"]["eval_metrics"]) == 3
        for m in man["motions"]:
            assert m["shard"] == key_shard[m["name"]] and m["step"] == step
            assert m["mpjpe_l"] is not None and m["terminate_reason"] == "" and m["success"] is True
            link = web / f"step_{step:06d}" / m["video"]
            assert link.is_symlink() and not os.path.isabs(os.readlink(link)) and link.is_file()
        assert not ({m["name"] for m in man["motions"]} & failed) or step == 2000
        # The viewer against the library it shows: the merged library's motions, each with its frame count.
        merged = Path(plan.paths["experiment_dir"]) / "exported" / f"step_{step:06d}" / "merged"
        robots = sorted((merged / "robot").glob("*.pkl"))
        assert [m["name"] for m in man["motions"]] == [r.stem for r in robots]
        for m, r in zip(man["motions"], robots, strict=True):
            assert m["frames"] == len(joblib.load(r)[r.stem]["dof"])
    # A done web job is a no-op: it says so, rewrites nothing (bytes, mtimes, inodes) and its marker stays valid.
    from tests.adversarial.harness import untouched_state

    before = untouched_state(web, marker_path(plan.run_dir, "web", 0))
    assert entry(["web", "--run-dir", plan.run_dir, "--index", "0"]) == 0
    assert "already done" in capsys.readouterr().out
    assert untouched_state(web, marker_path(plan.run_dir, "web", 0)) == before
    assert validate_marker(plan.run_dir, "web", 0, plan.plan_hash, deep=True)
