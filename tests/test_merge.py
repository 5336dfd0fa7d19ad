"""merge_step / `grail-cluster merge`: first shard wins, soundness checks, atomic + deterministic output."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest

from grail_cluster.core.errors import DataError
from grail_cluster.tools.data import merge_files
from grail_cluster.tools.data.merge import merge_step, register
from tests.libgen import make_library, make_terrain_library

STEP = 1000


def step_dir(exp: Path) -> Path:
    return exp / "exported" / f"step_{STEP:06d}"


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> tuple[Path, list[str]]:
    """One export-shaped library (30 motions, textures in both layouts); shards are key subsets."""
    root = tmp_path_factory.mktemp("pool") / "pool"
    info = make_library(root, 30, variant="export", fast=True)
    return root, info.keys


def _key_files(pool_root: Path, key: str) -> list[str]:
    rels = [f"robot/{key}.pkl", f"objects/{key}.pkl", f"meta/{key}.pkl", f"object_usd/{key}.usd"]
    tex = pool_root / "object_usd" / "textures"
    rels += [f"object_usd/textures/{p.name}" for p in tex.glob(f"{key}_*")]
    if (tex / key).is_dir():
        rels += [f"object_usd/textures/{key}/{p.name}" for p in (tex / key).iterdir()]
    return rels


def make_shard(pool: tuple[Path, list[str]], dest: Path, idx, *, evaluated: int | None = None,
               videos: bool = False, env_offset: int = 0) -> list[str]:
    """Copy the files of pool keys ``idx`` into an export shard with a matching manifest."""
    root, keys = pool
    chosen = [keys[i] for i in idx]
    for sub in ("robot", "objects", "meta", "object_usd/textures", "vis"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / "object_usd" / "config.yaml", dest / "object_usd" / "config.yaml")
    for k in chosen:
        for rel in _key_files(root, k):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, dest / rel)
        if videos:
            (dest / "vis" / f"{k}.mp4").write_bytes(b"fake mp4 " + k.encode())
    src = json.loads((root / "export_manifest.json").read_text())
    motions = [dict(m, env_idx=m["env_idx"] + env_offset) for m in src["exported_motions"] if m["motion_key"] in chosen]
    manifest = dict(src, exported_motions=motions, exported_count=len(motions),
                    total_motions_evaluated=evaluated if evaluated is not None else len(motions) + 2,
                    skipped_no_trajectory=1)
    (dest / "export_manifest.json").write_text(json.dumps(manifest, indent=1))
    return chosen


def make_shards(pool, exp: Path, splits, **kw) -> list[list[str]]:
    return [make_shard(pool, step_dir(exp) / f"shard_{r}", idx, **kw) for r, idx in enumerate(splits)]


def run_cli(argv: list[str], capsys) -> tuple[int, dict]:
    from grail_cluster.core.errors import GrailError

    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["merge", *argv, "--json"])
    try:
        rc = args.func(args)
    except GrailError as exc:
        return exc.exit_code, {"error": exc.render()}
    return rc, json.loads(capsys.readouterr().out)


THREE = [range(0, 10), range(10, 20), range(20, 30)]


def test_clean_three_shard_merge(pool, tmp_path, capsys):
    exp = tmp_path / "exp"
    make_shards(pool, exp, THREE)
    src = make_library(tmp_path / "source", 40, variant="retarget", fast=True)  # 30 exported of 40
    rc, rep = run_cli(["--exp_dir", str(exp), "--step", str(STEP), "--num_shards", "3",
                       "--source_data", str(src.root)], capsys)
    assert rc == 0, rep["problems"]
    assert rep["sound"] and rep["problems"] == [] and rep["duplicates"] == []
    out = step_dir(exp) / "merged"
    assert rep["output"] == str(out)
    for sub in ("robot", "objects", "meta"):
        assert len(list((out / sub).glob("*.pkl"))) == 30
    assert len(list((out / "object_usd").glob("*.usd"))) == 30
    assert (out / "vis").is_dir() and (out / "object_usd" / "config.yaml").is_file()
    # both texture layouts kept
    tex = out / "object_usd" / "textures"
    assert any(p.is_dir() for p in tex.iterdir()) and any(p.suffix == ".png" for p in tex.iterdir())
    man = json.loads((out / "export_manifest.json").read_text())
    assert man["num_shards"] == 3
    assert man["total_motions_evaluated"] == 36  # (10 + 2) * 3
    assert man["exported_count"] == 30 and man["skipped_no_trajectory"] == 3
    assert man["success_rate"] == pytest.approx(30 / 36, abs=1e-6)
    assert man["coverage"] == pytest.approx(30 / 40) and rep["coverage"] == man["coverage"]
    keys = [m["motion_key"] for m in man["exported_motions"]]
    assert keys == sorted(pool[1])
    assert [s["status"] for s in man["shards"]] == ["ok"] * 3
    assert man["missing_shards"] == [] and man["stale_shards"] == []
    assert set(man["outputs"]) == {p.relative_to(out).as_posix() for p in out.rglob("*")
                                   if p.is_file() and p.name != "export_manifest.json"}
    # hard links really shared
    k = pool[1][12]
    assert (out / "robot" / f"{k}.pkl").stat().st_ino == (step_dir(exp) / "shard_1" / "robot" / f"{k}.pkl").stat().st_ino
    assert rep["mode"] == "link" and rep["copied"] == 0
    assert not list(step_dir(exp).glob("merged.*"))  # no temp dir left


def test_duplicates_first_shard_wins(pool, tmp_path, capsys):
    exp = tmp_path / "exp"
    make_shard(pool, step_dir(exp) / "shard_0", range(0, 10))
    make_shard(pool, step_dir(exp) / "shard_1", range(8, 20), env_offset=1000)  # 8, 9 duplicated
    rc, rep = run_cli(["--exp_dir", str(exp), "--step", str(STEP), "--num_shards", "2"], capsys)
    # Eval shards partition the library: a key in two shards is counted twice in the success rate.
    assert rc == 1 and not rep["sound"] and any("more than one shard" in p for p in rep["problems"])
    keys = pool[1]
    assert rep["duplicates"] == [{"key": keys[i], "kept_from": 0, "dropped_from": [1]} for i in (8, 9)]
    assert not (step_dir(exp) / "merged").exists()
    out = step_dir(exp) / "merged.unsound"
    assert rep["output"] == str(out) and rep["published"] == "unsound"
    for i in (8, 9):
        for sub, ext in (("robot", "pkl"), ("objects", "pkl"), ("meta", "pkl"), ("object_usd", "usd")):
            merged = (out / sub / f"{keys[i]}.{ext}").stat().st_ino
            assert merged == (step_dir(exp) / "shard_0" / sub / f"{keys[i]}.{ext}").stat().st_ino
    man = json.loads((out / "export_manifest.json").read_text())
    assert man["exported_count"] == 20 and len(man["exported_motions"]) == 20
    by_key = {m["motion_key"]: m for m in man["exported_motions"]}
    assert by_key[keys[8]]["env_idx"] < 1000 and by_key[keys[15]]["env_idx"] >= 1000
    assert man["duplicates"] == rep["duplicates"]
    assert [s["kept"] for s in man["shards"]] == [10, 10]


def test_stale_shard_high_overlap_fails(pool, tmp_path, capsys):
    exp = tmp_path / "exp"
    make_shards(pool, exp, [range(0, 10), range(10, 20), range(5, 20)])  # shard_2 from another split
    rc, rep = run_cli(["--exp_dir", str(exp), "--step", str(STEP), "--num_shards", "3"], capsys)
    assert rc == 1 and not rep["sound"]
    pairs = [s["shards"] for s in rep["stale_shards"]]
    assert [1, 2] in pairs and [0, 2] in pairs  # 10/10 and 5/10 >= 0.5
    assert any("stale" in p for p in rep["problems"])
    assert not (step_dir(exp) / "merged").exists()
    man = json.loads((step_dir(exp) / "merged.unsound" / "export_manifest.json").read_text())
    assert man["sound"] is False and man["stale_shards"] == rep["stale_shards"]
    assert man["findings"] and all(f["fix"] for f in man["findings"])
    # a higher threshold accepts the 50% pair but not the 100% one
    rc, rep = run_cli(["--exp_dir", str(exp), "--step", str(STEP), "--num_shards", "3",
                       "--overlap_threshold", "0.9"], capsys)
    assert rc == 1 and [s["shards"] for s in rep["stale_shards"]] == [[1, 2]]


def test_missing_shard_fails_and_is_reported(pool, tmp_path, capsys):
    exp = tmp_path / "exp"
    make_shard(pool, step_dir(exp) / "shard_0", range(0, 10))
    make_shard(pool, step_dir(exp) / "shard_2", range(20, 30))
    rc, rep = run_cli(["--exp_dir", str(exp), "--step", str(STEP), "--num_shards", "3"], capsys)
    assert rc == 1 and rep["missing_shards"] == [1]
    assert [s["status"] for s in rep["shards"]] == ["ok", "missing", "ok"]
    assert any("missing shards: [1]" in p for p in rep["problems"])


def test_shards_beyond_num_shards_are_stale(pool, tmp_path, capsys):
    exp = tmp_path / "exp"
    make_shards(pool, exp, [range(0, 8), range(8, 16), range(16, 24), range(24, 30)])
    rc, rep = run_cli(["--exp_dir", str(exp), "--step", str(STEP), "--num_shards", "3"], capsys)
    assert rc == 1
    assert {"shards": [3], "reason": "shard_3 exists but --num_shards is 3"} in rep["stale_shards"]
    assert rep["shards"][-1] == {"rank": 3, "status": "stale", "exported": 6, "kept": 0}
    assert rep["counts"]["robot"] == 24  # shard_3 is not merged
    rc, rep = run_cli(["--exp_dir", str(exp), "--step", str(STEP), "--num_shards", "4"], capsys)
    assert rc == 0 and rep["counts"]["robot"] == 30


def test_unpadded_step_and_videos(pool, tmp_path):
    exp = tmp_path / "exp"
    for r, idx in enumerate([range(0, 5), range(5, 10)]):
        make_shard(pool, exp / "exported" / f"step_{STEP}" / f"shard_{r}", idx, videos=True)
    rep = merge_step(exp, f"{STEP:06d}", num_shards=2)
    assert rep["sound"] and rep["counts"]["vis"] == 10
    out = exp / "exported" / f"step_{STEP}" / "merged"
    assert len(list((out / "vis").glob("*.mp4"))) == 10
    # a missing video makes the counts disagree
    (exp / "exported" / f"step_{STEP}" / "shard_1" / "vis" / f"{pool[1][7]}.mp4").unlink()
    rep = merge_step(exp, STEP, num_shards=2)
    assert not rep["sound"] and any("count mismatch" in p for p in rep["problems"])


def test_terrain_placeholder_and_config_at_root(pool, tmp_path, capsys):
    exp = tmp_path / "exp"
    make_shards(pool, exp, [range(0, 4), range(4, 8)])
    src = make_terrain_library(tmp_path / "terrain", 6, placeholder="legacy")
    (src.root / "object_usd" / "config.yaml").write_text("terrain: true\n")
    rc, rep = run_cli(["--exp_dir", str(exp), "--step", str(STEP), "--num_shards", "2",
                       "--source_data", str(src.root)], capsys)
    assert rc == 0, rep["problems"]
    out = step_dir(exp) / "merged"
    assert rep["terrain"]
    assert (out / "flat_placeholder.usd").read_bytes() == (src.root / "object_usd" / "flat_placeholder.usd").read_bytes()
    assert (out / "config.yaml").read_text() == "terrain: true\n"
    assert not (out / "object_usd" / "flat_placeholder.usd").exists()
    assert rep["counts"]["object_usd"] == rep["counts"]["robot"] == 8
    assert rep["source_motions"] == 6  # robot/metadata.pkl is not a motion
    man = json.loads((out / "export_manifest.json").read_text())
    assert "flat_placeholder.usd" in man["outputs"] and "config.yaml" in man["outputs"]


def test_deterministic(pool, tmp_path):
    exp = tmp_path / "exp"
    make_shards(pool, exp, [range(0, 12), range(12, 20), range(20, 30)])
    a = merge_step(exp, STEP, num_shards=3, output=tmp_path / "a")
    assert a["sound"], a["problems"]
    b = merge_step(exp, STEP, num_shards=3, output=tmp_path / "b", link=False)

    def tree(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    ta, tb = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert ta == tb
    volatile = ("output", "final_path", "mode", "linked", "copied")
    assert {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}
    # re-merging in place replaces the previous output with identical bytes
    merge_step(exp, STEP, num_shards=3, output=tmp_path / "a")
    assert tree(tmp_path / "a") == ta


def test_copy_makes_independent_files(pool, tmp_path, capsys):
    exp = tmp_path / "exp"
    make_shards(pool, exp, [range(0, 5), range(5, 10)])
    rc, rep = run_cli(["--exp_dir", str(exp), "--step", str(STEP), "--num_shards", "2", "--copy"], capsys)
    assert rc == 0 and rep["mode"] == "copy" and rep["linked"] == 0
    k = pool[1][0]
    merged = step_dir(exp) / "merged" / "robot" / f"{k}.pkl"
    shard = step_dir(exp) / "shard_0" / "robot" / f"{k}.pkl"
    assert merged.stat().st_ino != shard.stat().st_ino and merged.stat().st_nlink == 1
    before = shard.read_bytes()
    merged.write_bytes(b"changed")
    assert shard.read_bytes() == before


def test_link_falls_back_to_copy_on_exdev(pool, tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    make_shards(pool, exp, [range(0, 3)])

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")  # EXDEV

    monkeypatch.setattr(merge_files.os, "link", no_link)
    rep = merge_step(exp, STEP, num_shards=1)
    assert rep["sound"] and rep["mode"] == "copy" and rep["copied"] == rep["files"]


def test_error_midway_leaves_no_output(pool, tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    make_shards(pool, exp, [range(0, 5), range(5, 10)])
    first = merge_step(exp, STEP, num_shards=2)
    out = Path(first["output"])
    before = (out / "export_manifest.json").read_bytes()
    # now shard_1 changes and the new merge dies half-way: the old merge stays as it was
    make_shard(pool, step_dir(exp) / "shard_1", range(5, 15))
    calls = {"n": 0}
    real = merge_files.Placer.place

    def flaky(self, src, dst):
        calls["n"] += 1
        if calls["n"] == 20:
            raise OSError(28, "No space left on device")
        real(self, src, dst)

    monkeypatch.setattr(merge_files.Placer, "place", flaky)
    # A full disk is the user's to fix: a DataError naming the final path and what to do, not a traceback.
    with pytest.raises(DataError, match="no space left on device") as info:
        merge_step(exp, STEP, num_shards=2)
    assert info.value.path == str(out) and "df -h" in info.value.fix
    assert (out / "export_manifest.json").read_bytes() == before
    assert sorted(p.name for p in step_dir(exp).iterdir()) == ["merged", "shard_0", "shard_1"]
    # and with no previous merge there is no output dir at all
    shutil.rmtree(out)
    calls["n"] = 0
    with pytest.raises(DataError, match="ENOSPC"):
        merge_step(exp, STEP, num_shards=2)
    assert sorted(p.name for p in step_dir(exp).iterdir()) == ["shard_0", "shard_1"]
    # Any other I/O error is not dressed up as a full disk.
    def broken(self, src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(merge_files.Placer, "place", broken)
    with pytest.raises(OSError) as info:
        merge_step(exp, STEP, num_shards=2)
    assert not isinstance(info.value, DataError) and info.value.errno == 5
    assert sorted(p.name for p in step_dir(exp).iterdir()) == ["shard_0", "shard_1"]


def test_malformed_manifest_is_a_clear_data_error(pool, tmp_path, capsys):
    exp = tmp_path / "exp"
    make_shards(pool, exp, [range(0, 3), range(3, 6)])
    bad = step_dir(exp) / "shard_1" / "export_manifest.json"
    bad.write_text("{not json")
    rep = merge_step(exp, STEP, num_shards=2)
    assert not rep["sound"] and rep["shards"][1]["status"] == "bad_manifest"
    finding = next(f for f in rep["findings"] if f["path"] == str(bad))
    assert "malformed" in finding["problem"] and finding["fix"]
    bad.write_text(json.dumps({"total_motions_evaluated": "3", "exported_count": 3, "exported_motions": []}))
    rc, rep = run_cli(["--exp_dir", str(exp), "--step", str(STEP), "--num_shards", "2"], capsys)
    assert rc == 1 and any(str(bad) in p and "total_motions_evaluated" in p for p in rep["problems"])
    assert not (step_dir(exp) / "merged").exists() and (step_dir(exp) / "merged.unsound").is_dir()


def test_manifest_disagreeing_with_files_and_missing_step(pool, tmp_path):
    exp = tmp_path / "exp"
    make_shards(pool, exp, [range(0, 3)])
    os.remove(step_dir(exp) / "shard_0" / "robot" / f"{pool[1][1]}.pkl")
    rep = merge_step(exp, STEP, num_shards=1)
    assert not rep["sound"]
    assert any("lists 3 motions but robot/ holds 2" in p for p in rep["problems"])
    with pytest.raises(DataError, match="no export for step 5"):
        merge_step(exp, 5, num_shards=1)


def test_cli_main_integration(pool, tmp_path, capsys):
    """If cli.py wires `merge` in, the subcommand runs through the real entry point."""
    from grail_cluster.cli import main as cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "merge" not in sub.choices:
        pytest.skip("merge is not registered in grail_cluster.cli.main yet")
    exp = tmp_path / "exp"
    make_shards(pool, exp, [range(0, 3)])
    assert cli.main(["merge", "--exp_dir", str(exp), "--step", str(STEP), "--num_shards", "1"]) == 0


def test_unsound_merge_never_lands_at_merged_unless_allowed(pool, tmp_path):
    exp = tmp_path / "exp"
    make_shards(pool, exp, [range(0, 5), range(5, 10)])
    assert merge_step(exp, STEP, num_shards=2)["sound"]
    shutil.rmtree(step_dir(exp) / "shard_1")
    rep = merge_step(exp, STEP, num_shards=2)
    # the old merged/ was built from a shard that is gone: moved aside, not left looking current
    assert not rep["sound"] and rep["output"] == str(step_dir(exp) / "merged.unsound")
    assert rep["previous"]["action"] == "moved" and not (step_dir(exp) / "merged").exists()
    assert (step_dir(exp) / "merged.superseded" / "export_manifest.json").is_file()
    rep = merge_step(exp, STEP, num_shards=2, allow_unsound=True)
    man = json.loads((step_dir(exp) / "merged" / "export_manifest.json").read_text())
    assert rep["published"] == "final" and man["sound"] is False and man["allowed_unsound"] is True
    assert not (step_dir(exp) / "merged.unsound").exists()
    # the second superseded merge does not overwrite the first
    shutil.rmtree(step_dir(exp) / "shard_0")
    merge_step(exp, STEP, num_shards=2)
    assert (step_dir(exp) / "merged.superseded.2").is_dir() and (step_dir(exp) / "merged.superseded").is_dir()
