"""Provenance: SONIC commit (in a real git checkout and outside one), BPS hash, provenance.json beside
plan.json, the plan hash, `status` (rich and --json) and the merged export manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from grail_cluster import __version__
from grail_cluster.cli.main import main
from grail_cluster.core import config
from grail_cluster.core import provenance as prov
from grail_cluster.core.library import scan_library
from grail_cluster.core.plan import read_plan, write_plan
from grail_cluster.runs.planner import build_plan
from grail_cluster.tools.data.merge import merge_step
from tests.conftest import base_overrides, make_sonic_root
from tests.libgen import make_library

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def grail_repo(tmp_path) -> tuple[Path, Path]:
    """A GRAIL checkout with SONIC vendored as a plain directory (imports/SONIC), committed."""
    repo = tmp_path / "GRAIL"
    sonic = make_sonic_root(repo / "imports" / "SONIC")
    (repo / "README.md").write_text("grail\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "snapshot")
    return repo, sonic


@needs_git
def test_sonic_commit_and_dirty_flag_in_a_git_checkout(grail_repo):
    repo, sonic = grail_repo
    head = git(repo, "rev-parse", "HEAD")
    info = prov.sonic_git(sonic)
    assert info["commit"] == head and len(head) == 40
    assert info["dirty"] is False and Path(info["repo"]).resolve() == repo.resolve()
    # Untracked run outputs under SONIC (logs_rl/) and edits outside SONIC do not make SONIC dirty.
    (sonic / "logs_rl").mkdir()
    (sonic / "logs_rl" / "x.txt").write_text("x")
    (repo / "README.md").write_text("edited\n")
    assert prov.sonic_git(sonic)["dirty"] is False
    # An edit of a tracked SONIC file does.
    (sonic / "gear_sonic" / "train_agent_trl.py").write_text("# patched\n")
    assert prov.sonic_git(sonic) == {**info, "dirty": True}


def test_outside_a_git_checkout_the_commit_is_unknown(tmp_path):
    sonic = make_sonic_root(tmp_path / "SONIC")
    info = prov.sonic_git(sonic)
    assert info["commit"] == "unknown" and info["dirty"] is None and info["repo"] is None
    assert prov.sonic_git(tmp_path / "missing")["commit"] == "unknown"
    assert prov.sonic_git(None)["commit"] == "unknown"


@needs_git
def test_without_git_the_commit_is_unknown(grail_repo, monkeypatch):
    _, sonic = grail_repo
    monkeypatch.setattr("shutil.which", lambda name: None)  # no git on PATH, for every reader
    assert prov.sonic_git(sonic)["commit"] == "unknown"


def test_bps_hash_is_content_based(tmp_path):
    a = tmp_path / "a" / "bps"
    a.mkdir(parents=True)
    for name, data in (("_basis.npy", b"basis"), ("k1.npy", b"one"), ("k2.npy", b"two"), ("notes.txt", b"x")):
        (a / name).write_bytes(data)
    h = prov.bps_hash(a)
    assert h["files"] == 3 and h["bytes"] == len(b"basisonetwo") and len(h["sha256"]) == 64
    b = tmp_path / "b" / "bps"
    shutil.copytree(a, b)
    os.utime(b / "k1.npy", (1, 1))
    assert prov.bps_hash(b)["sha256"] == h["sha256"]  # a copy (other mtimes) hashes the same
    (b / "k1.npy").write_bytes(b"ONE")
    assert prov.bps_hash(b)["sha256"] != h["sha256"]
    (b / "k1.npy").write_bytes(b"one")
    (b / "k1.npy").rename(b / "k3.npy")
    assert prov.bps_hash(b)["sha256"] != h["sha256"]  # names count
    assert prov.bps_hash(tmp_path / "none") is None and prov.bps_hash(None) is None


def plan_cli(tmp_path, lib, sonic, capsys, *extra) -> dict:
    rc = main(["plan", *base_overrides(tmp_path, lib, sonic, *extra), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return json.loads(cap.out)


@needs_git
def test_plan_writes_provenance_json_and_hashes_the_sources(tmp_path, hoi_pair, grail_repo, capsys):
    plain, ha = hoi_pair
    repo, sonic = grail_repo
    head = git(repo, "rev-parse", "HEAD")
    first = plan_cli(tmp_path, ha.root, sonic, capsys)
    run_dir = Path(first["run_dir"])
    p = json.loads((run_dir / "provenance.json").read_text())
    plan = read_plan(run_dir)
    assert p["sonic"]["commit"] == head and p["sonic"]["dirty"] is False
    assert p["library"]["index_hash"] == plan.library["fingerprint"] and p["library"]["num_motions"] == 12
    assert p["bps"]["sha256"] == prov.bps_hash(plain.root / "bps")["sha256"] and p["bps"]["files"] == 13
    assert p["config"] == plan.config and p["config"]["sonic"]["root"] == str(sonic)
    assert p["image"] is None and p["grail_cluster_version"] == __version__
    assert p["plan_hash"] == plan.plan_hash and p["run_id"] == plan.run_id and p["sources_in_plan_hash"]
    assert plan.provenance["sonic"]["commit"] == head

    # Same inputs: same plan hash, same provenance bytes.
    before = (run_dir / "provenance.json").read_bytes()
    assert plan_cli(tmp_path, ha.root, sonic, capsys)["plan_hash"] == first["plan_hash"]
    assert (run_dir / "provenance.json").read_bytes() == before
    # A new SONIC commit is a different plan (same run id): jobs rendered for one commit refuse the other.
    (sonic / "gear_sonic" / "eval_agent_trl.py").write_text("# v2\n")
    git(repo, "commit", "-q", "-am", "sonic v2")
    second = plan_cli(tmp_path, ha.root, sonic, capsys)
    assert second["run_id"] == first["run_id"] and second["plan_hash"] != first["plan_hash"]
    assert json.loads((run_dir / "provenance.json").read_text())["sonic"]["commit"] == git(repo, "rev-parse", "HEAD")
    # A changed BPS embedding too.
    bps = sorted((plain.root / "bps").glob("pickup*.npy"))[0]
    bps.write_bytes(bps.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    assert plan_cli(tmp_path, ha.root, sonic, capsys)["plan_hash"] != second["plan_hash"]


def test_kubernetes_image_is_recorded(tmp_path, hoi_pair, sonic_root):
    _, ha = hoi_pair
    c = config.load(base_overrides(tmp_path, ha.root, sonic_root, "cluster=kubernetes", "cluster.image=reg.example/sonic:2.1"))
    assert prov.sources(c, None)["image"] == "reg.example/sonic:2.1"
    c = config.load(base_overrides(tmp_path, ha.root, sonic_root, "cluster=slurm"))
    assert prov.sources(c, None)["image"] is None


def test_write_plan_without_collected_sources_still_writes_provenance(tmp_path, terrain_lib, sonic_root):
    c = config.load(base_overrides(tmp_path, terrain_lib.root, sonic_root, "pipeline=terrain_tracking", "eval.num_shards=2"))
    plan = build_plan(c, scan_library(terrain_lib.root, layout="terrain"))
    assert plan.provenance == {}
    write_plan(plan)
    p = prov.read_provenance(plan.run_dir)
    assert p["sonic"]["commit"] == "unknown" and p["bps"] is None and not p["sources_in_plan_hash"]
    assert p["library"]["index_hash"] == plan.library["fingerprint"] and p["exp"].endswith("scene/terrain_tracking")
    assert prov.read_provenance(tmp_path / "nowhere") is None


@needs_git
def test_status_shows_provenance(tmp_path, hoi_pair, grail_repo, capsys, monkeypatch):
    from grail_cluster.cli import common as cli

    monkeypatch.setattr(cli.out, "width", 300)
    _, ha = hoi_pair
    repo, sonic = grail_repo
    head = git(repo, "rev-parse", "HEAD")
    run_dir = plan_cli(tmp_path, ha.root, sonic, capsys)["run_dir"]
    assert main(["status", run_dir, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["provenance"]["sonic"]["commit"] == head
    assert data["provenance"]["plan_hash"] == data["plan_hash"]
    assert main(["status", run_dir]) == 0
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert first.startswith("provenance: SONIC " + head[:12]) and "BPS " in first and "image none" in first
    # A run dir planned before provenance existed still shows its status.
    os.unlink(Path(run_dir) / "provenance.json")
    assert main(["status", run_dir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["provenance"] is None
    main(["status", run_dir])
    assert "none recorded" in capsys.readouterr().out


def test_summary_line():
    line = prov.summary_line({"sonic": {"commit": "a" * 40, "dirty": True}, "library": {"index_hash": "b" * 64},
                              "bps": None, "image": "img:1", "grail_cluster_version": "0.1.0"})
    assert line == f"provenance: SONIC {'a' * 12} (dirty), library {'b' * 12}, BPS -, image img:1, grail-cluster 0.1.0"


def _export_shard(pool: Path, keys: list[str], dest: Path, chosen: list[str]) -> None:
    for sub in ("robot", "objects", "meta", "object_usd"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for k in chosen:
        for rel in (f"robot/{k}.pkl", f"objects/{k}.pkl", f"meta/{k}.pkl", f"object_usd/{k}.usd"):
            shutil.copyfile(pool / rel, dest / rel)
    src = json.loads((pool / "export_manifest.json").read_text())
    motions = [m for m in src["exported_motions"] if m["motion_key"] in chosen]
    (dest / "export_manifest.json").write_text(json.dumps(
        dict(src, exported_motions=motions, exported_count=len(motions), total_motions_evaluated=len(motions),
             skipped_no_trajectory=0)))


def test_merged_manifest_carries_provenance(tmp_path, capsys):
    info = make_library(tmp_path / "pool", 6, variant="export", fast=True)
    step = tmp_path / "exp" / "exported" / "step_001000"
    _export_shard(info.root, info.keys, step / "shard_0", info.keys[:3])
    _export_shard(info.root, info.keys, step / "shard_1", info.keys[3:])
    record = {"version": 1, "sonic": {"commit": "c" * 40, "dirty": False}, "library": {"index_hash": "d" * 64},
              "config": {"pipeline": {"name": "pnp_table"}}}
    rep = merge_step(tmp_path / "exp", 1000, num_shards=2, provenance=record)
    assert rep["sound"], rep["problems"]
    manifest = json.loads((step / "merged" / "export_manifest.json").read_text())
    assert manifest["provenance"] == record and rep["provenance_recorded"]
    # Without provenance there is no key (GRAIL's own manifests have none).
    merge_step(tmp_path / "exp", 1000, num_shards=2)
    assert "provenance" not in json.loads((step / "merged" / "export_manifest.json").read_text())
    # The CLI takes a run dir (its provenance.json) or the file.
    run_dir = tmp_path / "run"
    prov.write_provenance(run_dir, record)
    for arg in (run_dir, run_dir / "provenance.json"):
        rc = main(["merge", "--exp_dir", str(tmp_path / "exp"), "--step", "1000", "--num_shards", "2",
                   "--provenance", str(arg), "--json"])
        capsys.readouterr()
        assert rc == 0
        assert json.loads((step / "merged" / "export_manifest.json").read_text())["provenance"] == record
    rc = main(["merge", "--exp_dir", str(tmp_path / "exp"), "--step", "1000", "--num_shards", "2",
               "--provenance", str(tmp_path / "nope"), "--json"])
    assert rc == 1 and "provenance file not found" in capsys.readouterr().err


def test_bps_hash_memo_is_keyed_by_name_size_and_mtime(tmp_path):
    d = tmp_path / "bps"
    d.mkdir()
    (d / "k1.npy").write_bytes(b"one")
    (d / "k2.npy").write_bytes(b"two")
    first = prov.bps_hash(d)
    assert prov._bps_cache_path(d.resolve()).is_file()
    # Same size and mtime: the memo answers without reading the file again ...
    st = (d / "k1.npy").stat()
    (d / "k1.npy").write_bytes(b"ONE")
    os.utime(d / "k1.npy", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert prov.bps_hash(d)["sha256"] == first["sha256"]
    # ... reading it anyway gives the content hash, and any new mtime invalidates the memo.
    fresh = prov.bps_hash(d, use_cache=False)["sha256"]
    assert fresh != first["sha256"]
    os.utime(d / "k1.npy", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert prov.bps_hash(d)["sha256"] == fresh


def test_reference_trainer_is_named_as_such(tmp_path):
    from grail_cluster.core.provenance import sources, summary_line
    from grail_cluster.sonic.reference import reference_root

    c = {"sonic": {"root": reference_root()}, "cluster": {"backend": "local"}}
    src = sources(c, None)
    assert src["sonic"]["trainer"] == "reference"
    assert summary_line({"sonic": src["sonic"]}).startswith("provenance: reference tracker, code ")
    other = sources({"sonic": {"root": str(tmp_path)}, "cluster": {"backend": "local"}}, None)
    assert other["sonic"]["trainer"] == "sonic"
