"""``bps`` (§1.6) with real usd-core on USDs written by tests.libgen."""

from __future__ import annotations

import numpy as np
import pytest

from grail_cluster.core.errors import DataError
from grail_cluster.tools.data.bps import compute_bps, fibonacci_basis, main, read_usd_mesh
from tests.libgen import bps_basis, bps_encode, make_library, write_usd_mesh


def _sphere(n_lat: int, n_lon: int, radius: float = 0.05):
    """UV sphere with (n_lat-1)*n_lon+2 vertices, triangles only."""
    verts = [(0.0, 0.0, -radius)]
    for i in range(1, n_lat):
        th = np.pi * i / n_lat - np.pi / 2
        for j in range(n_lon):
            ph = 2 * np.pi * j / n_lon
            verts.append((radius * np.cos(th) * np.cos(ph), radius * np.cos(th) * np.sin(ph), radius * np.sin(th)))
    verts.append((0.0, 0.0, radius))
    top, faces = len(verts) - 1, []

    def ring(i, j):
        return 1 + (i - 1) * n_lon + (j % n_lon)

    for j in range(n_lon):
        faces += [(0, ring(1, j + 1), ring(1, j)), (top, ring(n_lat - 1, j), ring(n_lat - 1, j + 1))]
        for i in range(1, n_lat - 1):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j + 1), ring(i + 1, j)
            faces += [(a, b, c), (a, c, d)]
    return np.array(verts, np.float32), np.array(faces)


def test_basis_matches_libgen():
    np.testing.assert_allclose(fibonacci_basis(10), bps_basis(10), atol=1e-7)
    assert fibonacci_basis(10).dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fibonacci_basis(33), axis=1), 1.0, atol=1e-6)


def test_library_bps_matches_generator(tmp_path):
    lib = make_library(tmp_path / "lib", n_motions=9, fast=True)
    out = tmp_path / "bps"
    summary = compute_bps(lib.root / "object_usd", out)
    assert summary["count"] == len(lib.keys)
    assert sorted(p.stem for p in out.glob("*.npy")) == sorted(["_basis", *lib.keys])
    np.testing.assert_array_equal(np.load(out / "_basis.npy"), np.load(lib.bps_dir / "_basis.npy"))
    for key in lib.keys:
        got = np.load(out / f"{key}.npy")
        assert got.shape == (10,) and got.dtype == np.float32
        # libgen encoded the float32 vertices; the usda stores them with 6 significant digits
        np.testing.assert_allclose(got, np.load(lib.bps_dir / f"{key}.npy"), atol=2e-5)
    assert not list(tmp_path.glob(".bps.*")), "temp dir left behind"


def test_world_transform_applied(tmp_path):
    v, f = _sphere(6, 10)
    usd = tmp_path / "usd" / "squashed.usda"
    write_usd_mesh(usd, v, f, name="obj")
    text = usd.read_text().replace(
        '    kind = "component"\n)\n{\n',
        '    kind = "component"\n)\n{\n    double3 xformOp:scale = (3, 1, 0.5)\n'
        '    double3 xformOp:translate = (1, 2, 3)\n'
        '    uniform token[] xformOpOrder = ["xformOp:translate", "xformOp:scale"]\n', 1)
    usd.write_text(text)
    pts, tris = read_usd_mesh(usd)
    np.testing.assert_allclose(pts, v * [3, 1, 0.5] + [1, 2, 3], atol=1e-5)
    assert tris.shape == (len(f), 3)
    compute_bps(usd.parent, tmp_path / "bps")
    np.testing.assert_allclose(np.load(tmp_path / "bps" / "squashed.npy"), bps_encode(v * [3, 1, 0.5]), atol=2e-5)


def test_dense_mesh_sampling_deterministic(tmp_path):
    v, f = _sphere(60, 60)  # 3542 vertices > 2048: area-weighted samples
    assert len(v) > 2048
    quads = [list(t) for t in f[:10]]  # mixed polygon list exercises the fan triangulation path too
    write_usd_mesh(tmp_path / "usd" / "dense.usda", v, quads + [list(t) for t in f[10:]], name="dense")

    def run(name, **kw):
        compute_bps(tmp_path / "usd", tmp_path / name, **kw)
        return np.load(tmp_path / name / "dense.npy")

    a, b, c = run("a"), run("b"), run("c", seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # 2048 surface samples of a unit-ish sphere: every basis point (on the unit sphere) is close to one
    assert a.shape == (10,) and np.all(a >= 0) and np.all(a < 0.1)
    np.testing.assert_allclose(a, c, atol=0.05)
    # with n_surface above the vertex count the vertices themselves are used (= libgen's rule)
    # (libgen's bps_encode stops at 2048 vertices, so the reference is written out here)
    p = v.astype(np.float64) - v.astype(np.float64).mean(0)
    p /= np.linalg.norm(p, axis=1).max()
    ref = np.linalg.norm(bps_basis()[:, None].astype(np.float64) - p[None], axis=-1).min(1)
    np.testing.assert_allclose(run("d", n_surface=4000), ref, atol=2e-5)


def test_rerun_replaces_output_atomically(tmp_path):
    lib = make_library(tmp_path / "lib", n_motions=3, fast=True)
    out = tmp_path / "bps"
    out.mkdir()
    (out / "stale.npy").write_bytes(b"x")
    compute_bps(lib.root / "object_usd", out, num_basis=16)
    assert not (out / "stale.npy").exists()
    assert np.load(out / "_basis.npy").shape == (16, 3)
    assert np.load(out / f"{lib.keys[0]}.npy").shape == (16,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bps", "lib"]


def test_bad_usd_errors(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.usda").write_text("#usda 1.0\nthis is not usd {{{\n")
    with pytest.raises(DataError, match="unreadable USD") as exc:
        compute_bps(bad, tmp_path / "out")
    assert exc.value.path.endswith("broken.usda")
    assert not (tmp_path / "out").exists()

    empty = tmp_path / "nomesh"
    empty.mkdir()
    (empty / "xform.usda").write_text('#usda 1.0\ndef Xform "obj"\n{\n}\n')
    with pytest.raises(DataError, match="no Mesh"):
        compute_bps(empty, tmp_path / "out")

    assert main(["--usd_dir", str(bad), "--output_dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "broken.usda" in err and "Traceback" not in err
    assert main(["--usd_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")]) == 1
