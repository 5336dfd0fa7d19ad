"""doctor on generated libraries, healthy and broken the ways the seed article warns about."""

import json
import shutil
from pathlib import Path

import joblib
import pytest

from grail_cluster.cli.main import main
from tests.libgen import make_library, make_terrain_library


def doctor(capsys, *args):
    rc = main(["doctor", *map(str, args), "--json"])
    return rc, json.loads(capsys.readouterr().out)


def problems(report, check=None, severity="error"):
    return [p for p in report["problems"] if p["severity"] == severity and (check is None or p["check"] == check)]


def test_healthy_ha_pair_passes_pnp_table(hoi_pair, capsys):
    _, ha = hoi_pair
    rc, rep = doctor(capsys, ha.root, "pipeline=pnp_table")
    assert rc == 0 and rep["ok"], rep["problems"]
    assert rep["counts"] == {"robot": 12, "objects": 12, "meta": 12, "object_usd": 12, "bps": 12}
    assert rep["root_rot"] == {"wxyz": 12}


def test_plain_retarget_library_lacks_hand_actions_for_pnp_table(hoi_pair, capsys):
    plain, _ = hoi_pair
    rc, rep = doctor(capsys, plain.root, "pipeline=pnp_table")
    assert rc == 1
    (p,) = problems(rep, "hand_actions")
    assert "12 robot pickles" in p["problem"] and "_ha" in p["fix"]
    # pnp_ground does not use motion hand actions: only a warning.
    rc, rep = doctor(capsys, plain.root, "pipeline=pnp_ground")
    assert rc == 0 and problems(rep, "hand_actions", "warn")


def test_missing_usd_objects_and_empty_usd_dir(tmp_path, capsys):
    info = make_library(tmp_path / "lib", 8)
    (info.root / "object_usd" / f"{info.keys[1]}.usd").unlink()
    (info.root / "objects" / f"{info.keys[4]}.pkl").unlink()
    rc, rep = doctor(capsys, info.root)
    assert rc == 1
    (usd,) = problems(rep, "object_usd")
    assert info.keys[1] in usd["problem"] and "pairing" in usd["problem"]
    (paired,) = problems(rep, "paired")
    assert info.keys[4] in paired["problem"] and paired["path"].endswith("objects")

    for f in (info.root / "object_usd").glob("*.usd"):
        f.unlink()
    rc, rep = doctor(capsys, info.root)
    (empty,) = problems(rep, "object_usd")
    assert "holds no .usd files" in empty["problem"]


def test_contacts_and_bps_problems(tmp_path, capsys):
    info = make_library(tmp_path / "lib", 6, with_contacts=False)
    (info.bps_dir / "_basis.npy").unlink()
    (info.bps_dir / f"{info.keys[0]}.npy").unlink()
    rc, rep = doctor(capsys, info.root, "pipeline=advanced_manip_table")
    assert rc == 1
    assert problems(rep, "contacts", "warn")[0]["fix"].startswith("re-run process.sh with --include_contact_points")
    bps = problems(rep, "bps")
    assert any(p["path"].endswith("_basis.npy") for p in bps)
    assert any(info.keys[0] in p["problem"] for p in bps)
    rc, rep = doctor(capsys, info.root, "pipeline=pnp_ground")
    assert problems(rep, "contacts")  # pnp pipelines need contact labels


def test_missing_bps_dir(tmp_path, capsys):
    info = make_library(tmp_path / "lib", 4)
    shutil.rmtree(info.bps_dir)
    rc, rep = doctor(capsys, info.root, "pipeline=pnp_ground")
    assert rc == 1 and "data.bps_dir" in problems(rep, "bps")[0]["fix"]
    rc, rep = doctor(capsys, info.root, "--bps_dir", tmp_path / "nowhere", "pipeline=pnp_ground")
    assert rc == 1


def test_unreadable_and_empty_motions(tmp_path, capsys):
    info = make_library(tmp_path / "lib", 5)
    (info.root / "robot" / f"{info.keys[0]}.pkl").write_bytes(b"garbage")
    key = info.keys[1]
    joblib.dump({key: {"dof": __import__("numpy").zeros((0, 29)), "fps": 30}}, info.root / "robot" / f"{key}.pkl")
    rc, rep = doctor(capsys, info.root)
    assert rc == 1
    assert problems(rep, "readable")[0]["path"].endswith(f"{info.keys[0]}.pkl")
    assert key in problems(rep, "frames")[0]["problem"]


def test_terrain_checks(tmp_path, capsys):
    info = make_terrain_library(tmp_path / "terrain", 6)
    rc, rep = doctor(capsys, info.root, "pipeline=terrain_tracking")
    assert rc == 0, rep["problems"]
    (info.root / "flat_placeholder.usd").unlink()
    victim = next(p for p in (info.root / "object_usd").rglob("*.usd"))
    victim.unlink()
    rc, rep = doctor(capsys, info.root, "pipeline=terrain_tracking")
    assert rc == 1
    assert any("flat_placeholder.usd not found" in p["problem"] for p in problems(rep, "terrain"))
    assert any("TerrainAutoDiscover" in p["problem"] and victim.stem in p["problem"] for p in problems(rep, "object_usd"))


def test_people_get_a_table_and_a_fix(hoi_pair, capsys):
    plain, _ = hoi_pair
    rc = main(["doctor", str(plain.root), "pipeline=pnp_table"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "hand_actions" in text and "problems" in text and "1 error(s)" in text


@pytest.mark.parametrize("arg", ["pipeline=nope", "bogus=1"])
def test_bad_arguments_exit_2_without_traceback(hoi_pair, capsys, arg):
    plain, _ = hoi_pair
    rc = main(["doctor", str(plain.root), arg])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "error:" in err


def test_every_check_is_documented():
    """docs/doctor-checks.md lists every check doctor can report, with its severity."""
    from grail_cluster.core.motion_checks import CHECKS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "doctor-checks.md").read_text()
    missing = [name for name in CHECKS if f"| `{name}` |" not in doc]
    assert not missing, f"checks missing from docs/doctor-checks.md: {missing}"
