"""One motion's MuJoCo scene, posed frame by frame and seen through a camera that follows the robot."""

from __future__ import annotations

import hashlib
import math

import numpy as np

from grail_cluster.core.errors import DataError
from grail_cluster.tools.replay.motion import (
    Motion,
    RenderSettings,
)

_LOD_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # per worker process


def simplify_meshes(model, cell_m: float, min_faces: int = 500) -> int:
    """Vertex-cluster every big mesh of a compiled model in place, for drawing only; returns faces kept.

    Each mesh's vertices are snapped to a grid of ``cell_m``; every cluster is represented by one of
    its own vertices, collapsed and duplicate triangles are dropped, and smooth normals are recomputed
    for the kept triangles. Only ``mesh_face``/``mesh_facenormal``/``mesh_normal``/``mesh_facenum``
    change (what the GL context uploads); kinematics never read them. Results are cached per mesh.
    """
    total = 0
    for i in range(model.nmesh):
        n = int(model.mesh_facenum[i])
        nv = int(model.mesh_vertnum[i])
        if n < min_faces or model.mesh_texcoordnum[i] > 0 or model.mesh_normalnum[i] != nv:
            total += n
            continue
        fa, va, na = int(model.mesh_faceadr[i]), int(model.mesh_vertadr[i]), int(model.mesh_normaladr[i])
        verts = np.asarray(model.mesh_vert[va:va + nv], np.float64)
        faces = np.asarray(model.mesh_face[fa:fa + n], np.int64)
        # Keyed by content: every motion's object mesh has the same name.
        key = (hashlib.blake2b(verts.tobytes() + faces.tobytes(), digest_size=16).digest(), round(cell_m, 6))
        hit = _LOD_CACHE.get(key)
        if hit is None:
            _, first, inverse = np.unique(np.floor(verts / cell_m).astype(np.int64), axis=0,
                                          return_index=True, return_inverse=True)
            new = first[inverse.reshape(-1)][faces]
            new = new[(new[:, 0] != new[:, 1]) & (new[:, 1] != new[:, 2]) & (new[:, 0] != new[:, 2])]
            _, uniq = np.unique(np.sort(new, axis=1), axis=0, return_index=True)
            new = new[np.sort(uniq)]
            normals = np.array(model.mesh_normal[na:na + nv], np.float64)
            fn = np.cross(verts[new[:, 1]] - verts[new[:, 0]], verts[new[:, 2]] - verts[new[:, 0]])
            acc = np.zeros((nv, 3))
            for k in range(3):
                np.add.at(acc, new[:, k], fn)
            used = np.unique(new)
            length = np.linalg.norm(acc[used], axis=1, keepdims=True)
            ok = length[:, 0] > 1e-12
            normals[used[ok]] = acc[used[ok]] / length[ok]
            hit = (new.astype(np.int32), normals.astype(np.float32), used)
            _LOD_CACHE[key] = hit
        new, normals, _ = hit
        model.mesh_face[fa:fa + len(new)] = new
        model.mesh_facenormal[fa:fa + len(new)] = new  # one normal per vertex (normalnum == vertnum)
        model.mesh_normal[na:na + nv] = normals
        model.mesh_facenum[i] = len(new)
        total += len(new)
    return total


def camera_anchor(root_pos: np.ndarray, fps: float, mode: str) -> np.ndarray:
    """(F,3): root x, y and the root's height change since frame 0; smoothed over 0.5 s (or frame 0 only)."""
    root = np.asarray(root_pos, np.float64)
    anchor = np.column_stack([root[:, 0], root[:, 1], root[:, 2] - root[0, 2]])
    if mode == "fixed":
        return np.repeat(anchor[:1], len(anchor), axis=0)
    half = max(int(round(fps * 0.25)), 0)
    if half == 0 or len(anchor) < 3:
        return anchor
    padded = np.concatenate([np.repeat(anchor[:1], half, 0), anchor, np.repeat(anchor[-1:], half, 0)])
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    return np.column_stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(3)])


def look_at(camera, position: np.ndarray, target: np.ndarray) -> None:
    """Point a free mjvCamera from ``position`` at ``target``."""
    d = np.asarray(target, np.float64) - np.asarray(position, np.float64)
    dist = max(float(np.linalg.norm(d)), 1e-6)
    camera.lookat[:] = target
    camera.distance = dist
    camera.azimuth = math.degrees(math.atan2(d[1], d[0]))
    camera.elevation = math.degrees(math.asin(max(-1.0, min(1.0, d[2] / dist))))


class MotionRenderer:
    """The compiled scene of one motion with its offscreen renderer; ``frame(i)`` -> (H,W,3) uint8."""

    def __init__(self, motion: Motion, settings: RenderSettings):
        import mujoco

        from grail_cluster.sonic.reference import scene as S
        from grail_cluster.tools.data.bps import read_usd_mesh

        self.motion, self.settings = motion, settings
        spec = S.SceneSpec(table_pos=motion.table_pos, table_quat_wxyz=motion.table_quat, table_size=motion.table_size)
        if motion.usd and motion.object_pos is not None:
            verts, tris = read_usd_mesh(motion.usd)
            spec.object_vertices, spec.object_faces, spec.object_scale = verts, tris, motion.object_scale
        try:
            self.model = S.build_model(spec, render=True)
        except ValueError as exc:  # MuJoCo's compiler errors
            raise DataError(f"the scene does not compile in MuJoCo: {exc}", path=motion.usd,
                            fix="check the object's USD mesh (it must be a closed, non-degenerate mesh)") from exc
        _trim_heap()  # compiling leaves ~0.5 GB of freed heap behind; give it back before rendering
        if settings.lod_mm > 0:
            simplify_meshes(self.model, settings.lod_mm / 1000.0)
        g = self.model.vis.global_
        g.offwidth, g.offheight = max(int(g.offwidth), settings.width), max(int(g.offheight), settings.height)
        self.data = mujoco.MjData(self.model)
        self.idx = S.indices(self.model)
        self._set_pose = S.set_pose
        self.renderer = mujoco.Renderer(self.model, settings.height, settings.width)
        try:
            flags = self.renderer.scene.flags
            flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self.camera = mujoco.MjvCamera()
            self.camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        except BaseException:
            self.renderer.close()
            raise
        self.anchor = camera_anchor(motion.root_pos, motion.fps, settings.camera_mode)
        self.offset = np.asarray(settings.camera_offset, np.float64)
        self.target = np.asarray(settings.camera_target, np.float64)

    def frame(self, i: int) -> np.ndarray:
        m = self.motion
        self._set_pose(self.model, self.data, self.idx, m.root_pos[i], m.root_quat[i], m.body_dof[i],
                       None if m.hand_dof is None else m.hand_dof[i],
                       None if m.object_pos is None else m.object_pos[i],
                       None if m.object_quat is None else m.object_quat[i])
        a = self.anchor[i]
        look_at(self.camera, a + self.offset, a + self.target)
        self.renderer.update_scene(self.data, camera=self.camera)
        return self.renderer.render()

    def close(self) -> None:
        self.renderer.close()

    def __enter__(self) -> MotionRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass

