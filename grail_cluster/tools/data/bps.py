"""``bps``: basis-point-set embeddings of object meshes (contracts §1.6).

Writes ``_basis.npy`` ((n,3) f32 Fibonacci-sphere points on the unit sphere) and ``<stem>.npy``
((n,) f32) per USD of ``usd_dir``. Each USD's meshes are read with usd-core (``pxr``), in world space;
a mesh with at most ``n_surface`` vertices uses its vertices, a bigger one ``n_surface``
area-weighted surface samples drawn with ``seed``. The points are centred on their centroid and scaled
so the farthest is at radius 1; entry i is the distance from basis point i to the nearest point.
The output is written into a temp dir next to ``output_dir`` and renamed into place.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from grail_cluster.core.errors import EXIT_OK, ConfigError, DataError

USD_SUFFIXES = (".usd", ".usda", ".usdc")


def fibonacci_basis(n: int = 10) -> np.ndarray:
    """n points spread on the unit sphere (golden-angle spiral, z from +1-1/n to -1+1/n), (n,3) f32."""
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - 2.0 * (i + 0.5) / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1).astype(np.float32)


def read_usd_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """World-space vertices (V,3) f64 and triangles (T,3) int of every Mesh prim in a USD file."""
    path = Path(path)
    try:
        from pxr import Usd, UsdGeom
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("reading USD needs usd-core", fix="pip install 'grail-cluster[bps]' (or pip install usd-core)") from exc
    try:
        stage = Usd.Stage.Open(str(path))
    except Exception as exc:  # noqa: BLE001 - pxr raises Tf.ErrorException
        stage, why = None, str(exc).strip().splitlines()[-1:] or ["?"]
    else:
        why = ["USD could not open it"]
    if stage is None:
        raise DataError(f"unreadable USD ({why[0]})", path=path,
                        fix="re-export the object USD (usd/usda/usdc), or remove it from the USD dir")
    cache = UsdGeom.XformCache(Usd.TimeCode.Default())
    verts: list[np.ndarray] = []
    tris: list[np.ndarray] = []
    offset = 0
    for prim in stage.Traverse(Usd.TraverseInstanceProxies()):
        if not prim.IsA(UsdGeom.Mesh):
            continue
        mesh = UsdGeom.Mesh(prim)
        pts = mesh.GetPointsAttr().Get()
        if pts is None or len(pts) == 0:
            continue
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        m = np.asarray(cache.GetLocalToWorldTransform(prim), dtype=np.float64)  # row-vector convention
        p = p @ m[:3, :3] + m[3, :3]
        if not np.isfinite(p).all():
            # NaN/inf would turn every distance of the embedding into NaN: the motion lib then feeds NaN
            # observations to the policy without a word.
            bad = int((~np.isfinite(p).all(axis=1)).sum())
            raise DataError(f"mesh {prim.GetPath()}: {bad} of {len(p)} points are NaN or infinite (after its "
                            "transform)", path=path, fix="re-export the object USD with finite vertex positions "
                                                         "(and a finite xform)")
        counts = np.asarray(mesh.GetFaceVertexCountsAttr().Get() or [], dtype=np.int64)
        idx = np.asarray(mesh.GetFaceVertexIndicesAttr().Get() or [], dtype=np.int64)
        if counts.sum() != len(idx) or (len(idx) and (idx.min() < 0 or idx.max() >= len(p))):
            raise DataError(f"mesh {prim.GetPath()} has inconsistent face indices", path=path,
                            fix="re-export the object USD")
        tris.append(_fan_triangles(counts, idx) + offset)
        verts.append(p)
        offset += len(p)
    del stage
    if not verts:
        raise DataError("no Mesh prim with points in this USD", path=path,
                        fix="the object USD must hold the object's mesh (UsdGeom.Mesh)")
    return np.concatenate(verts), np.concatenate(tris) if tris else np.zeros((0, 3), np.int64)


def _fan_triangles(counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    out: list[np.ndarray] = []
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else np.zeros(0, np.int64)
    for n in np.unique(counts):
        if n < 3:
            continue
        s = starts[counts == n]
        for j in range(1, n - 1):
            out.append(np.stack([idx[s], idx[s + j], idx[s + j + 1]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 3), np.int64)


def sample_surface(verts: np.ndarray, tris: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n area-weighted uniform samples on the triangles (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        return verts  # degenerate surface: fall back to the vertices
    face = rng.choice(len(tris), size=n, p=area / total)
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[face] + u[:, None] * (b[face] - a[face]) + v[:, None] * (c[face] - a[face])


def bps_vector(points: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Centre, scale to radius 1, nearest distance per basis point: (n,) f32."""
    p = np.asarray(points, np.float64)
    p = p - p.mean(axis=0)
    p = p / float(np.linalg.norm(p, axis=1).max())
    d = np.linalg.norm(basis.astype(np.float64)[:, None, :] - p[None, :, :], axis=-1)
    return d.min(axis=1).astype(np.float32)


# Below this extent (m) a mesh has no shape to embed: scaling it to radius 1 would blow up noise.
MIN_EXTENT_M = 1e-6


def usd_bps(path: str | Path, basis: np.ndarray, n_surface: int = 2048, seed: int = 42) -> np.ndarray:
    verts, tris = read_usd_mesh(path)
    extent = float(np.ptp(verts, axis=0).max())
    if extent < MIN_EXTENT_M:
        raise DataError(f"the mesh collapses to a point ({len(verts)} vertices within {extent:.3g} m)", path=path,
                        fix="re-export the object USD with its real geometry (check units and scale)")
    pts = verts if len(verts) <= n_surface or len(tris) == 0 else sample_surface(verts, tris, n_surface, seed)
    return bps_vector(pts, basis)


def _usd_files(usd_dir: Path) -> list[Path]:
    files = sorted(p for p in usd_dir.rglob("*") if p.suffix.lower() in USD_SUFFIXES and p.is_file()
                   and "textures" not in p.relative_to(usd_dir).parts)
    by_stem: dict[str, Path] = {}
    for f in files:
        if f.stem.startswith("_"):
            raise DataError("USD name starts with '_' (such BPS files are skipped by the motion lib)", path=f,
                            fix="rename the USD to its motion key")
        if f.stem in by_stem:
            raise DataError(f"two USDs for stem {f.stem!r}: {by_stem[f.stem]} and {f}", path=usd_dir,
                            fix="keep one USD per motion key")
        by_stem[f.stem] = f
    return files


def _check_replaceable(output_dir: Path, usd_dir: Path) -> None:
    """The output dir is replaced as a whole: it may only be a previous BPS dir (``*.npy`` files), never the
    USD dir, a dir above it, or a dir holding anything else (a library root given by mistake)."""
    out, src = output_dir.resolve(), usd_dir.resolve()
    if out == src or out in src.parents:
        raise ConfigError("--output_dir is (or holds) the USD dir; writing BPS there would replace the USDs",
                          path=output_dir, fix="write BPS to the library's bps/ dir, beside object_usd/")
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ConfigError("--output_dir is a file", path=output_dir, fix="pass a directory for the BPS files (bps/)")
    other = sorted(p.name for p in output_dir.iterdir() if not (p.is_file() and p.suffix == ".npy"))
    if other:
        raise ConfigError(f"--output_dir holds files that are not BPS embeddings ({', '.join(other[:5])}); it "
                          "would be replaced as a whole", path=output_dir,
                          fix="pass the library's bps/ dir (or a new one); move those files out first")


def compute_bps(usd_dir: str | Path, output_dir: str | Path, num_basis: int = 10, n_surface: int = 2048,
                seed: int = 42) -> dict[str, Any]:
    """§1.6 BPS of every USD in ``usd_dir`` into ``output_dir`` (replaced atomically). Returns a summary."""
    usd_dir, output_dir = Path(usd_dir), Path(output_dir)
    if num_basis < 1 or n_surface < 1:
        raise ConfigError(f"--num_basis and --n_surface must be >= 1 (got {num_basis}, {n_surface})")
    if not usd_dir.is_dir():
        raise DataError("USD dir is a file, not a directory" if usd_dir.exists() else "USD dir not found",
                        path=usd_dir, fix="pass the library's object_usd/ dir")
    _check_replaceable(output_dir, usd_dir)
    files = _usd_files(usd_dir)
    if not files:
        raise DataError("no .usd/.usda/.usdc files here", path=usd_dir, fix="pass the library's object_usd/ dir")
    basis = fibonacci_basis(num_basis)
    vectors = {f.stem: usd_bps(f, basis, n_surface, seed) for f in files}  # all read before anything is written

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    old = None
    try:
        np.save(tmp / "_basis.npy", basis)
        for stem, vec in vectors.items():
            np.save(tmp / f"{stem}.npy", vec)
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
            os.replace(output_dir, old)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not output_dir.exists():
            os.replace(old, output_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return {"usd_dir": str(usd_dir), "output_dir": str(output_dir), "num_basis": num_basis,
            "n_surface": n_surface, "seed": seed, "count": len(vectors)}


def cmd_bps(args: argparse.Namespace) -> int:
    summary = compute_bps(args.usd_dir, args.output_dir, num_basis=args.num_basis, n_surface=args.n_surface,
                          seed=args.seed)
    if args.json:
        import json

        sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    else:
        sys.stdout.write(f"wrote {summary['count']} BPS vectors + _basis.npy to {summary['output_dir']}\n")
    return EXIT_OK


def register(subparsers: Any) -> argparse.ArgumentParser:
    desc = ("Basis-point-set embeddings of object USDs (§1.6): _basis.npy (num_basis,3) and <stem>.npy "
            "(num_basis,) per USD, written atomically into --output_dir.")
    p = subparsers.add_parser("bps", help="BPS embeddings of object USDs", description=desc)
    p.add_argument("--usd_dir", required=True, help="object USD dir (the library's object_usd/)")
    p.add_argument("--output_dir", required=True, help="BPS dir to write (the library's bps/)")
    p.add_argument("--num_basis", type=int, default=10)
    p.add_argument("--n_surface", type=int, default=2048, help="surface samples when a mesh has more vertices")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bps)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m grail_cluster.tools.data.bps``: the same command, standalone."""
    from grail_cluster.core.standalone import run_tool

    return run_tool(register, "bps", argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
