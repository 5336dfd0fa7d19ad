"""Per-motion tracking metrics and SONIC's ``metrics_eval.json`` (contracts §4.2), from simulation.

Body metrics are in mm over the frames the rollout reached (SONIC's ``im_eval``): MPJPE global
(``mpjpe_g``), root-relative (``mpjpe_l``), Procrustes-aligned (``mpjpe_pa``), velocity and
acceleration distances (per 50 Hz frame), each also over the body groups SONIC reports.
"""

from __future__ import annotations

import numpy as np

from grail_cluster.sonic.reference import scene as S

GROUPS = {
    "": S.TRACKED_BODIES,
    "_legs": S.LEG_BODIES + S.FOOT_BODIES,
    "_vr_3points": S.VR_3POINT_BODIES,
    "_other_upper_bodies": S.UPPER_BODIES,
    "_foot": S.FOOT_BODIES,
}
BODY_METRICS = ("mpjpe_g", "mpjpe_l", "mpjpe_pa", "accel_dist", "vel_dist")
_COLS = {suffix: [S.TRACKED_BODIES.index(b) for b in bodies] for suffix, bodies in GROUPS.items()}


def _procrustes(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Align each frame of ``pred`` (F,B,3) to ``gt`` by the best similarity transform."""
    mp, mg = pred.mean(1, keepdims=True), gt.mean(1, keepdims=True)
    p, g = pred - mp, gt - mg
    u, s, vt = np.linalg.svd(np.einsum("fbi,fbj->fij", p, g))
    d = np.sign(np.linalg.det(np.einsum("fij,fjk->fik", u, vt)))
    s[:, -1] *= d
    u[:, :, -1] *= d[:, None]
    rot = np.einsum("fij,fjk->fik", u, vt)
    scale = s.sum(1) / np.maximum((p ** 2).sum((1, 2)), 1e-12)
    return scale[:, None, None] * np.einsum("fbi,fij->fbj", p, rot) + mg


def body_metrics(sim: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """sim, ref: (F,B,3) positions of scene.TRACKED_BODIES in metres (pelvis first)."""
    out: dict[str, float] = {}
    local_sim, local_ref = sim - sim[:, :1], ref - ref[:, :1]
    aligned = _procrustes(sim, ref)
    for suffix, cols in _COLS.items():
        def err(a: np.ndarray, b: np.ndarray, cols=cols) -> float:
            return float(np.linalg.norm(a[:, cols] - b[:, cols], axis=-1).mean() * 1000.0)

        out["mpjpe_g" + suffix] = err(sim, ref)
        out["mpjpe_l" + suffix] = err(local_sim, local_ref)
        out["mpjpe_pa" + suffix] = err(aligned, ref)
        if len(sim) > 2:
            out["vel_dist" + suffix] = err(np.diff(sim, axis=0), np.diff(ref, axis=0))
            out["accel_dist" + suffix] = err(np.diff(sim, 2, axis=0), np.diff(ref, 2, axis=0))
        else:
            out["vel_dist" + suffix] = out["accel_dist" + suffix] = 0.0
    return out


def object_metrics(pos: np.ndarray, quat: np.ndarray, ref_pos: np.ndarray, ref_quat: np.ndarray) -> dict[str, float]:
    dots = np.clip(np.abs(np.sum(quat * ref_quat, axis=1)), 0.0, 1.0)
    return {"obj_pos_error": float(np.linalg.norm(pos - ref_pos, axis=1).mean()),
            "obj_ori_error": float((2.0 * np.arccos(dots)).mean())}


def metric_names() -> list[str]:
    return [m + s for m in BODY_METRICS for s in GROUPS]


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _weighted(values, weights) -> float | None:
    pairs = [(float(v), float(w)) for v, w in zip(values, weights, strict=True) if v is not None]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def metrics_eval(rows: list[dict]) -> dict:
    """SONIC's metrics_eval.json from per-motion rows (in the shard's load order)."""
    names = ["motion_keys", "terminated", "terminate_reason", "progress", *metric_names(), "sampling_prob",
             "obj_pos_error", "obj_ori_error", "grasp_help_frames", "frames"]
    n = len(rows)
    table = {k: [r.get(k) for r in rows] for k in names}
    table["sampling_prob"] = [1.0 / n] * n if n else []
    failed_idx = [i for i, r in enumerate(rows) if r["terminated"]]
    succ_idx = [i for i, r in enumerate(rows) if not r["terminated"]]
    out: dict = {}
    for k in [*metric_names(), "obj_pos_error", "obj_ori_error", "progress"]:
        col = table[k]
        weights = table["frames"]
        body = k not in ("obj_pos_error", "obj_ori_error", "progress")
        out[f"eval/all/{k}"] = _weighted(col, weights) if body else _mean(col)
        succ = [col[i] for i in succ_idx]
        out[f"eval/success/{k}"] = (_weighted(succ, [weights[i] for i in succ_idx]) if body else _mean(succ)) \
            if succ_idx else None
    out["eval/success/success_rate"] = len(succ_idx) / n if n else 0.0
    out["eval/success/progress_rate"] = _mean(table["progress"]) if n else 0.0
    frames = sum(table["frames"])
    out["eval/all/grasp_help_rate"] = sum(table["grasp_help_frames"]) / frames if frames else 0.0
    out["eval/all_metrics_dict"] = table
    out["eval/failed_metrics_dict"] = {k: [v[i] for i in failed_idx] for k, v in table.items()}
    out["failed_keys"] = [table["motion_keys"][i] for i in failed_idx]
    out["failed_idxes"] = failed_idx
    out["simulator"] = "grail-cluster CPU reference tracker (MuJoCo G1); grasp help: weld while the hand is closed"
    return out
