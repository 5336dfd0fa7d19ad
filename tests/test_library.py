import joblib
import numpy as np
import pytest

from grail_cluster.core.errors import DataError
from grail_cluster.core.library import CACHE_NAME, scan_library
from grail_cluster.core.quaternions import detect_root_rot_convention, rotvec_to_wxyz
from tests.libgen import make_library, make_terrain_library


def test_index_reports_every_field(hoi_pair):
    plain, ha = hoi_pair
    index = scan_library(ha.root)
    assert index.layout == "hoi"
    assert index.keys == sorted(ha.keys)
    # _ha libraries keep USDs and BPS in the non-_ha sibling (contracts §1.1, §10.8).
    assert index.usd_dir == str(plain.root / "object_usd")
    assert index.bps_dir == str(plain.root / "bps") and index.bps_basis
    assert "sibling" in index.usd_dir_note
    for m in index.motions:
        assert m.frames == ha.lengths[m.key]
        assert m.fps == 30.0
        assert m.hand_actions and m.contacts and m.bps and m.has_meta and m.has_objects
        assert m.usd == str(plain.root / "object_usd" / f"{m.key}.usd")
        assert m.root_rot == "wxyz"
        assert m.object_name and m.object_name in m.key
        assert m.error is None
    plain_index = scan_library(plain.root)
    assert not any(m.hand_actions for m in plain_index.motions)


def test_export_variant_is_detected_as_xyzw(tmp_path):
    info = make_library(tmp_path / "exp", 5, variant="export")
    index = scan_library(info.root)
    assert {m.root_rot for m in index.motions} == {"xyzw"}
    assert all(m.fps == 25.0 for m in index.motions)


def test_cache_hit_and_partial_rescan(tmp_path):
    info = make_library(tmp_path / "lib", 10)
    first = scan_library(info.root)
    assert first.cache == "miss" and first.parsed == 10
    assert (info.root / CACHE_NAME).exists()
    second = scan_library(info.root)
    assert second.cache == "hit" and second.parsed == 0
    assert second.fingerprint() == first.fingerprint()
    # Rewrite one motion with a different length: only it is re-read, and the index sees it.
    key = info.keys[3]
    path = info.root / "robot" / f"{key}.pkl"
    data = joblib.load(path)
    inner = data[key]
    data[key] = {k: (v[:7] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == info.lengths[key] else v)
                 for k, v in inner.items()}
    joblib.dump(data, path, compress=3)
    third = scan_library(info.root)
    assert third.cache == "partial" and third.parsed == 1
    assert third.by_key()[key].frames == 7
    assert third.fingerprint() != first.fingerprint()


def test_read_only_library_caches_elsewhere(tmp_path, monkeypatch):
    import grail_cluster.core.library as lib

    # Root ignores permission bits, so make the in-library cache unwritable another way: its
    # parent is a regular file. The scan must fall back to the user cache dir and still hit.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    real = lib._cache_candidates
    monkeypatch.setattr(lib, "_cache_candidates", lambda root: [blocker / CACHE_NAME] + real(root)[1:])
    info = make_library(tmp_path / "lib", 4)
    assert scan_library(info.root).cache == "miss"
    assert not (info.root / CACHE_NAME).exists()
    assert scan_library(info.root).cache == "hit"


def test_terrain_discovery_is_recursive_and_finds_the_placeholder(tmp_path):
    info = make_terrain_library(tmp_path / "terrain", 8)
    index = scan_library(info.root)
    assert index.layout == "terrain"
    assert index.keys == sorted(info.keys)
    assert index.flat_placeholder == str(info.root / "flat_placeholder.usd")
    assert all(m.usd and not m.usd.endswith("flat_placeholder.usd") for m in index.motions)
    legacy = make_terrain_library(tmp_path / "legacy", 4, placeholder="legacy")
    assert scan_library(legacy.root).flat_placeholder == str(legacy.root / "object_usd" / "flat_placeholder.usd")


def test_not_a_library_is_a_clear_error(tmp_path):
    with pytest.raises(DataError) as exc:
        scan_library(tmp_path)
    assert "robot/" in str(exc.value) and "fix" in str(exc.value)
    with pytest.raises(DataError):
        scan_library(tmp_path / "nope")


# Inputs for the convention detector, built without grail_cluster.core.quaternions: rotation matrices from
# roll/pitch/yaw, then the quaternion (Shepperd's method) and the rotation vector (matrix log) of each.


def _rpy_matrices(roll, pitch, yaw):
    """R = Rz(yaw) @ Ry(pitch) @ Rx(roll), element by element, (T,3,3)."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    return np.stack([
        np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1),
        np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1),
        np.stack([-sp, cp * sr, cp * cr], -1),
    ], -2)


def _matrix_to_wxyz(R):
    out = []
    for m in R:
        tr = np.trace(m)
        if tr > 0:
            s = 2.0 * np.sqrt(1.0 + tr)
            q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
        else:
            i = int(np.argmax(np.diag(m)))
            j, k = (i + 1) % 3, (i + 2) % 3
            s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
            v = np.zeros(3)
            v[i], v[j], v[k] = 0.25 * s, (m[j, i] + m[i, j]) / s, (m[k, i] + m[i, k]) / s
            q = [(m[k, j] - m[j, k]) / s, *v]
        out.append(q)
    return np.array(out)


def _matrix_to_rotvec(R):
    angle = np.arccos(np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1, 1))
    axis = np.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], -1)
    return axis / (2 * np.sin(angle))[:, None] * angle[:, None]


def _as_xyzw(wxyz):
    return wxyz[:, [1, 2, 3, 0]]


def test_independent_builders_agree_on_known_rotations():
    # A pure yaw of theta is (cos theta/2, 0, 0, sin theta/2) in wxyz, and rotvec (0, 0, theta).
    theta = np.array([0.3, 1.2, -2.0])
    R = _rpy_matrices(np.zeros(3), np.zeros(3), theta)
    np.testing.assert_allclose(_matrix_to_wxyz(R), np.stack([np.cos(theta / 2), 0 * theta, 0 * theta,
                                                             np.sin(theta / 2)], -1), atol=1e-12)
    np.testing.assert_allclose(_matrix_to_rotvec(R), np.stack([0 * theta, 0 * theta, theta], -1), atol=1e-12)
    # And the product's rotvec_to_wxyz, which the detector relies on, gives the same rotations.
    roll, pitch, yaw = np.array([0.1, -0.05, 0.2]), np.array([0.04, 0.1, -0.2]), np.array([0.5, -2.5, 2.9])
    R = _rpy_matrices(roll, pitch, yaw)
    q = _matrix_to_wxyz(R)
    ours = rotvec_to_wxyz(_matrix_to_rotvec(R))
    np.testing.assert_allclose(np.abs(np.sum(ours * q, axis=1)), 1.0, atol=1e-9)
    assert np.all(np.abs(ours[:, 0] - q[:, 0] * np.sign(np.sum(ours * q, axis=1))) < 1e-9)


@pytest.mark.parametrize("yaw", [0.0, 0.7, 1.5707963, 3.0, -2.2])
def test_quaternion_convention_from_pose_aa(yaw):
    t = np.linspace(0, 1, 40)
    R = _rpy_matrices(0.05 * np.sin(5 * t), 0.03 * np.cos(3 * t), yaw + 0.5 * t)
    q = _matrix_to_wxyz(R)
    pose_aa = np.zeros((40, 30, 3))
    pose_aa[:, 0] = _matrix_to_rotvec(R)
    assert detect_root_rot_convention(q, pose_aa) == "wxyz"
    assert detect_root_rot_convention(_as_xyzw(q), pose_aa) == "xyzw"


def test_pose_aa_decides_where_uprightness_cannot():
    # A robot lying on its side (roll 90 degrees) turning through 3 rad: uprightness does not hold, pose_aa does.
    t = np.linspace(0, 1, 40)
    R = _rpy_matrices(np.full(40, np.pi / 2), 0.1 * t, -2.2 + 3 * t)
    q, pose_aa = _matrix_to_wxyz(R), np.zeros((40, 30, 3))
    pose_aa[:, 0] = _matrix_to_rotvec(R)
    assert detect_root_rot_convention(q, pose_aa) == "wxyz"
    assert detect_root_rot_convention(_as_xyzw(q), pose_aa) == "xyzw"
    # (0.5, 0.5, 0.5, 0.5) reads the same in both orders: no honest answer exists, and none is claimed.
    R = _rpy_matrices(np.full(40, np.pi / 2), np.zeros(40), np.full(40, np.pi / 2))
    q = _matrix_to_wxyz(R)
    np.testing.assert_allclose(q, 0.5, atol=1e-12)
    pose_aa[:, 0] = _matrix_to_rotvec(R)
    assert detect_root_rot_convention(q, pose_aa) == "ambiguous"


def test_quaternion_convention_without_pose_aa_uses_uprightness():
    t = np.linspace(0, 1, 50)
    q = _matrix_to_wxyz(_rpy_matrices(0.02 * t, 0.02 * t, 0.3 + 2 * t))
    assert detect_root_rot_convention(q) == "wxyz"
    assert detect_root_rot_convention(_as_xyzw(q)) == "xyzw"
    # Identity in xyzw is also a 180-degree yaw in wxyz: genuinely ambiguous without pose_aa.
    assert detect_root_rot_convention(np.tile([0.0, 0.0, 0.0, 1.0], (10, 1))) == "ambiguous"
    assert detect_root_rot_convention(np.zeros((3, 3))) == "unknown"


def test_warm_scan_opens_no_usd_and_a_shared_file_verdict_is_cached(tmp_path):
    """The terrain placeholder (shared by every env) is checked once; a warm scan in a fresh process
    is a stat pass that never imports usd-core, and a broken placeholder keeps its finding."""
    import subprocess
    import sys

    info = make_terrain_library(tmp_path / "terrain", 4)
    assert scan_library(info.root).findings == []
    probe = ("import sys; from grail_cluster.core.library import scan_library; "
             f"i = scan_library({str(info.root)!r}); assert i.cache == 'hit', i.cache; "
             "print('pxr' in sys.modules, len(i.findings))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split() == \
        ["False", "0"]
    (info.root / "flat_placeholder.usd").write_text("not a usd\n")
    index = scan_library(info.root)
    assert [f["check"] for f in index.findings] == ["usd"] and "flat_placeholder" in index.findings[0]["file"]
    assert scan_library(info.root).findings == index.findings  # warm: the cached verdict


@pytest.mark.parametrize("garbage", ['{"version": 3, "root": "ROOT", "motions": [1, 2]}',
                                     '{"version": 3, "root": "ROOT", "motions": {"k": 5}, "shared": 7}',
                                     '[1, 2, 3]', '{"version": 3, "root": "ROOT", "motions": {"k": {"sig": 1}}}'])
def test_a_malformed_index_cache_is_ignored_not_trusted(tmp_path, garbage):
    info = make_library(tmp_path / "lib", 3, fast=True)
    (info.root / CACHE_NAME).write_text(garbage.replace("ROOT", str(info.root.resolve())))
    index = scan_library(info.root)
    assert index.cache == "miss" and len(index.motions) == 3 and all(m.frames for m in index.motions)
