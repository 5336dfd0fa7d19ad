"""Evaluation: roll out every motion of a shard with SONIC's eval terminations and write
``metrics_eval.json`` + ``<motion_key>.trajectory.pkl`` in SONIC's schema (contracts §4.2, §4.3).

``python gear_sonic/eval_agent_trl.py +checkpoint=... ++eval_output_dir=D ++MLC.motion_shard_world_size=N
++MLC.motion_shard_rank=i <data overrides> [++manager_env.recorders.trajectory.save_path=D]`` from the
reference root, exactly as grail-cluster renders it for SONIC.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from grail_cluster.core.errors import DataError, GrailError
from grail_cluster.sonic.reference import metrics as M
from grail_cluster.sonic.reference.env import (
    TRAJECTORY_EVERY,
    Prepared,
    StartVelocity,
    Terminations,
    TrackingEnv,
    prepare,
)

Policy = Callable[[np.ndarray], np.ndarray]


def rollout(preps: list[Prepared], policy: Policy, terms: Terminations, action_scale: float,
            record_trajectories: bool = False, start_velocity: StartVelocity | None = None,
            seed: int = 0) -> list[dict]:
    """One episode per motion from frame 0, all motions stepped as one batch; deterministic given
    ``seed`` (and without any draw at all when ``start_velocity`` is zero or None)."""
    envs = [TrackingEnv(p, terms, action_scale, np.random.default_rng([seed, i])) for i, p in enumerate(preps)]
    for env in envs:
        env.reset(0, record=True, velocity=start_velocity)
    active = list(range(len(envs)))
    reasons = [""] * len(envs)
    while active:
        actions = policy(np.stack([envs[i].observe() for i in active]))
        still = []
        for a, i in zip(actions, active, strict=True):
            _, terminated, timed_out, why = envs[i].step(a)
            if terminated:
                reasons[i] = why
            elif not timed_out:
                still.append(i)
        active = still
    return [_row(env, reasons[i], record_trajectories) for i, env in enumerate(envs)]


def _row(env: TrackingEnv, reason: str, with_trajectory: bool) -> dict:
    m, rec = env.m, env.record
    reached = len(rec.body_pos)  # frames 0..t
    sim = np.asarray(rec.body_pos)
    row = {"motion_keys": m.key, "terminated": bool(reason), "terminate_reason": reason,
           "progress": 1.0 if not reason else (reached - 1) / max(1, m.frames - 1),
           "frames": reached, "grasp_help_frames": env.grasp_frames,
           **M.body_metrics(sim, m.body_pos[:reached])}
    if m.has_object:
        row.update(M.object_metrics(np.asarray(rec.object_pos), np.asarray(rec.object_quat),
                                    m.object_pos[:reached], m.object_quat[:reached]))
    else:
        row.update(obj_pos_error=None, obj_ori_error=None)
    if with_trajectory:
        row["_trajectory"] = _trajectory(env)
    return row


def _trajectory(env: TrackingEnv) -> dict:
    tr = env.record.traj
    frames = len(tr["dof_pos"])
    scene = env.m.scene
    table = scene.table_pos is not None
    return {
        "dof_pos": np.stack(tr["dof_pos"]), "root_pos_w": np.stack(tr["root_pos_w"]),
        "root_quat_w": np.stack(tr["root_quat_w"]), "quat_format": "wxyz",
        "fps": 1.0 / (0.02 * TRAJECTORY_EVERY), "num_joints": 43, "total_frames": frames,
        "object_pos_w": np.stack(tr["object_pos_w"]) if tr["object_pos_w"] else None,
        "object_quat_w": np.stack(tr["object_quat_w"]) if tr["object_quat_w"] else None,
        "table_pos_w": np.tile(np.asarray(scene.table_pos, np.float32), (frames, 1)) if table else None,
        "table_quat_w": np.tile(np.asarray(scene.table_quat_wxyz, np.float32), (frames, 1)) if table else None,
    }


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_shard(rows: list[dict], out_dir: Path, traj_dir: Path | None) -> dict:
    """Trajectories first, metrics_eval.json last: a shard dir with metrics is a finished shard."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for row in rows:
        traj = row.pop("_trajectory", None)
        if traj is not None and traj_dir is not None:
            traj_dir.mkdir(parents=True, exist_ok=True)
            _atomic_bytes(traj_dir / f"{row['motion_keys']}.trajectory.pkl", pickle.dumps(traj, protocol=4))
    result = M.metrics_eval(rows)
    _atomic_bytes(out_dir / "metrics_eval.json", json.dumps(result, indent=1).encode())
    return result


def load_policy(checkpoint: Path):
    """(policy function, train config) from a reference checkpoint, loaded with torch's safe loader."""
    import torch

    from grail_cluster.sonic.reference.ppo import ActorCritic, Normalizer

    if not checkpoint.is_file():
        raise DataError("checkpoint not found", path=checkpoint, fix="pass +checkpoint=<model_step_NNNNNN.pt>")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        args = state["args"]
        model = ActorCritic(args["obs_dim"], args["act_dim"], list(args["hidden_dims"]), args["init_log_std"])
        model.load_state_dict(state["policy_state_dict"])
        norm = Normalizer(args["obs_dim"])
        norm.load_state_dict(state["env_state_dict"]["obs_normalizer"])
    except (KeyError, RuntimeError, ValueError, TypeError, pickle.UnpicklingError) as exc:
        raise DataError(f"not a reference-tracker checkpoint ({type(exc).__name__}: {str(exc)[:200]})", path=checkpoint,
                        fix="evaluate checkpoints written by the reference trainer (SONIC's need SONIC)") from None
    model.eval()

    def policy(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.actor(torch.as_tensor(norm(obs), dtype=torch.float32)).numpy().astype(np.float64)

    return policy, args


def main(argv: list[str] | None = None) -> int:
    from grail_cluster.sonic.reference.setup import (
        argv_overrides,
        compose,
        cpu_threads,
        load_motions,
        mlc,
        motion_keys,
        shard_keys,
    )
    from grail_cluster.sonic.slicing import block_bounds

    try:
        cpu_threads()
        overrides = argv if argv is not None else argv_overrides()
        cfg = compose("base_eval", overrides)
        if not cfg.get("checkpoint"):
            raise GrailError("no checkpoint", fix="pass +checkpoint=<experiment_dir>/model_step_NNNNNN.pt")
        t0 = time.time()
        policy, train_args = load_policy(Path(str(cfg.checkpoint)))
        keys, files = motion_keys(cfg)
        lib = mlc(cfg)
        rank, world = int(lib.motion_shard_rank), int(lib.motion_shard_world_size)
        shard = shard_keys(keys, rank, world)
        a, b = block_bounds(len(keys), world, rank)  # SONIC's exact log line, from what is really loaded (§3.1)
        print(f"[Motion Shard] Rank {rank}/{world}: motions [{a}:{b}] = {b - a}/{len(keys)}", flush=True)
        if len(shard) > int(cfg.num_envs):
            print(f"[warning] {len(shard)} motions > num_envs={cfg.num_envs}: SONIC would need more shards "
                  "(one batch per shard); the reference tracker rolls them all out", flush=True)
        preps = [prepare(m) for m in load_motions(cfg, shard, files)]
        terms = Terminations.from_config(cfg.manager_env.terminations)
        recorder = (cfg.manager_env.get("recorders") or {}).get("trajectory") or {}
        traj_dir = Path(str(recorder["save_path"])) if recorder.get("save_path") else None
        # SONIC's motion command randomises the initial velocities unless the command zeroes them (HOI eval).
        start = StartVelocity.from_config(cfg.manager_env.commands.motion)
        print(f"[eval] initial velocities: {'zeroed' if start.zero else 'randomised'} "
              f"(velocity_range {[list(r) for r in start.root]}, joint_velocity_range {list(start.joint)})", flush=True)
        rows = rollout(preps, policy, terms, float(train_args["action_scale"]), record_trajectories=traj_dir is not None,
                       start_velocity=start, seed=int(cfg.get("seed") or 0))
        out = Path(str(cfg.eval_output_dir or "."))
        result = write_shard(rows, out, traj_dir)
        sim_seconds = sum(r["frames"] for r in rows) * 0.02
        wall = time.time() - t0
        print(f"[eval] {len(rows)} motions, success rate {result['eval/success/success_rate']:.3f}, "
              f"mpjpe_l {result['eval/all/mpjpe_l'] or 0:.1f} mm, {sim_seconds:.1f} simulated s in {wall:.1f} s "
              f"-> {out / 'metrics_eval.json'}", flush=True)
        return 0
    except GrailError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code or 2


if __name__ == "__main__":
    sys.exit(main())
