"""Training: PPO of a residual on PD joint targets, one process per rank under ``accelerate launch``.

Launched exactly as SONIC's trainer (``accelerate launch --num_processes=W gear_sonic/train_agent_trl.py
+exp=... num_envs=... ++experiment_dir=...``), on CPU processes (gloo). Each rank tracks its block of
the sorted motion keys (contracts §3.1), sliced from the data on the command line as SONIC slices it
(never from ``plan.json``), and logs SONIC's ``[Motion Shard]`` lines from what it really loads, so the
job's slice audit (grail_cluster/stages/slice_audit.py) is tested end to end against it.

The experiment dir has SONIC's layout (§2.4): ``config.yaml`` (unresolved), ``meta.yaml``
(``wandb_run``, ``max_train_steps``), ``model_step_NNNNNN.pt`` every ``callbacks.model_save.save_frequency``, ``last.pt``
(rewritten atomically), TensorBoard events with ``eval/success/success_rate``, ``eval/all/mpjpe_l``,
``eval/all/obj_pos_error`` at ``eval_step`` = iteration, and an offline W&B run when enabled.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from grail_cluster.core.errors import DataError, GrailError
from grail_cluster.sonic.reference.env import ACT_DIM, OBS_DIM, Prepared, Terminations, TrackingEnv, prepare
from grail_cluster.sonic.reference.evaluate import rollout


def _experiment_dir(cfg) -> Path:
    if cfg.get("experiment_dir"):
        return Path(str(cfg.experiment_dir))
    stamp = time.strftime("%Y%m%d_%H%M%S")
    return Path(str(cfg.base_dir)) / str(cfg.project_name) / f"{cfg.experiment_name}-{stamp}"


def save_frequency(cfg) -> int:
    """The checkpoint period, read where SONIC's model-save callback reads it (contracts §2.2)."""
    return int(cfg.callbacks.model_save.save_frequency)


def _resume_source(cfg, exp: Path) -> tuple[Path | None, str, Path]:
    """(checkpoint to load, SONIC's mode for it: fresh | weights | warm | resume, output dir) by §2.2."""
    from grail_cluster.sonic.experiment import resolve_resume

    r = resolve_resume(exp, cfg.get("checkpoint"), bool(cfg.get("resume")),
                       experiment_dir_given=bool(cfg.get("experiment_dir")))
    if r.mode == "fresh" and cfg.get("resume"):
        raise DataError(f"resume=True but nothing to resume ({r.rule})", path=exp,
                        fix="drop ++resume=True for a fresh run")
    if r.load is not None and not r.load_exists:
        raise DataError("checkpoint to start from not found", path=r.load, fix="check ++checkpoint= / ++experiment_dir=")
    return (Path(r.load) if r.load else None), r.mode, Path(r.output_dir)


def _rank_keys(cfg, rank: int, world: int) -> tuple[list[str], dict[str, Path]]:
    """This rank's block of the command's data, logged in SONIC's exact form (contracts §3.1)."""
    from grail_cluster.sonic.reference.setup import motion_keys
    from grail_cluster.sonic.slicing import block_bounds

    keys, files = motion_keys(cfg)
    if cfg.get("motion_shard_by_rank"):
        print(f"[Motion Shard] Enabled: rank {rank}/{world}", flush=True)
        a, b = block_bounds(len(keys), world, rank)
        mine = keys[a:b]
        print(f"[Motion Shard] Rank {rank}/{world}: motions [{a}:{b}] = {b - a}/{len(keys)}", flush=True)
    else:
        mine = keys
    if not mine:
        raise DataError(f"rank {rank} of {world} has no motions", fix="use fewer processes than motions")
    # Which motions this rank really trains (the marker above gives only the bounds).
    print(f"[reference] rank {rank}/{world}: {len(mine)} motions ({mine[0]} .. {mine[-1]})", flush=True)
    return mine, files


class Trainer:
    def __init__(self, cfg, accelerator, exp: Path):
        import torch

        from grail_cluster.sonic.reference.ppo import ActorCritic, Normalizer, PPOConfig
        from grail_cluster.sonic.reference.setup import load_motions

        self.cfg, self.acc, self.exp = cfg, accelerator, exp
        algo = cfg.algo.config
        self.algo = algo
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        keys, files = _rank_keys(cfg, self.rank, self.world)
        self.preps: list[Prepared] = [prepare(m) for m in load_motions(cfg, keys, files)]
        self.terms = Terminations.from_config(cfg.manager_env.terminations)
        self.rng = np.random.default_rng(int(cfg.seed) + self.rank)  # SONIC: seed + rank per process
        torch.manual_seed(int(cfg.seed))  # same initial weights on every rank
        self._gen = torch.Generator().manual_seed(int(cfg.seed) * 1000 + self.rank)  # exploration noise per rank
        self.num_envs = int(cfg.num_envs)
        # use_paired_motions: env k tracks motion k mod N (contracts §3.1).
        self.envs = [TrackingEnv(self.preps[k % len(self.preps)], self.terms, float(algo.action_scale), self.rng)
                     for k in range(self.num_envs)]
        self.model = ActorCritic(OBS_DIM, ACT_DIM, list(algo.hidden_dims), float(algo.init_log_std))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=float(algo.learning_rate))
        self.normalizer = Normalizer(OBS_DIM)
        self.ppo = PPOConfig(**{k: algo[k] for k in PPOConfig.__dataclass_fields__})
        self.iteration = 0
        self.ep_len = np.zeros(self.num_envs)
        self.ep_ret = np.zeros(self.num_envs)
        self.done_lens: list[float] = []
        self.done_rets: list[float] = []

    # -- checkpoints -------------------------------------------------------------------------------
    def load(self, path: Path, mode: str) -> None:
        """``resume`` continues the run; ``warm`` takes weights and optimizer into a new run;
        ``weights`` (a checkpoint without resume=True) the policy weights only, fresh optimizer."""
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["policy_state_dict"])
        if mode != "weights":
            self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.normalizer.load_state_dict(state["env_state_dict"]["obs_normalizer"])
        if mode == "resume":
            self.iteration = int(state["state"]["iteration"])
        what = {"resume": "continuing", "warm": "warm start (weights + optimizer)",
                "weights": "warm start (weights only, fresh optimizer)"}[mode]
        print(f"[resume] {what} from {path} (iteration {self.iteration})", flush=True)

    def save(self, path: Path) -> None:
        import torch

        model = self.acc.unwrap_model(self.model)
        algo = self.algo
        state = {
            "policy_state_dict": model.state_dict(),
            "value_state_dict": model.critic.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "lr_scheduler_state_dict": {},
            "state": {"iteration": self.iteration},
            "args": {"obs_dim": OBS_DIM, "act_dim": ACT_DIM, "hidden_dims": list(algo.hidden_dims),
                     "init_log_std": float(algo.init_log_std), "action_scale": float(algo.action_scale)},
            "env_state_dict": {"obs_normalizer": self.normalizer.state_dict()},
        }
        tmp = path.with_name(f".{path.name}.tmp")
        for attempt in range(5):  # SONIC retries the atomic rename of last.pt 5 times
            try:
                torch.save(state, tmp)
                os.replace(tmp, path)
                return
            except OSError:
                if attempt == 4:
                    raise
                time.sleep(0.5)

    # -- rollout -----------------------------------------------------------------------------------
    def _reset(self, i: int) -> None:
        env = self.envs[i]
        start_max = max(1, min(int(self.cfg.manager_env.commands.motion.motion_lib_cfg.sample_from_n_initial_frames),
                               env.m.frames - 2))
        env.reset(int(self.rng.integers(0, start_max)))
        self.ep_len[i] = self.ep_ret[i] = 0.0

    def _sync_normalizer(self, obs: np.ndarray) -> None:
        import torch

        stats = torch.tensor(np.concatenate([obs.mean(0), obs.var(0)]), dtype=torch.float64)
        stats = self.acc.reduce(stats, reduction="mean")
        self.normalizer.update(stats[:OBS_DIM].numpy(), stats[OBS_DIM:].numpy(), len(obs) * self.world)

    def collect(self) -> dict:
        import torch

        from grail_cluster.sonic.reference.ppo import log_prob

        steps = int(self.algo.num_steps_per_env)
        model = self.acc.unwrap_model(self.model)
        raw, acts, logps, vals = [], [], [], []
        rews, dones = np.zeros((steps, self.num_envs)), np.zeros((steps, self.num_envs))
        obs = np.stack([e.observe() for e in self.envs])
        for t in range(steps):
            raw.append(obs)
            with torch.no_grad():
                mean, log_std, value = model(torch.as_tensor(self.normalizer(obs), dtype=torch.float32))
                act = mean + log_std.exp() * torch.randn(mean.shape, generator=self._gen)
                logps.append(log_prob(mean, log_std, act).numpy())
            acts.append(act.numpy())
            vals.append(value.numpy())
            for i, env in enumerate(self.envs):
                r, terminated, timed_out, _ = env.step(act[i].numpy().astype(np.float64))
                if timed_out:  # a time-out is not a failure: bootstrap from the value of where it stopped
                    with torch.no_grad():
                        r += float(self.ppo.gamma) * float(model.critic(torch.as_tensor(
                            self.normalizer(env.observe()[None]), dtype=torch.float32)))
                rews[t, i] = r
                dones[t, i] = float(terminated or timed_out)
                self.ep_len[i] += 1
                self.ep_ret[i] += r
                if terminated or timed_out:
                    self.done_lens.append(self.ep_len[i])
                    self.done_rets.append(self.ep_ret[i])
                    self._reset(i)
            obs = np.stack([e.observe() for e in self.envs])
        with torch.no_grad():
            last_v = model(torch.as_tensor(self.normalizer(obs), dtype=torch.float32))[2].numpy()
        raw_obs = np.stack(raw)
        return {"raw_obs": raw_obs, "act": np.stack(acts), "logp": np.stack(logps), "val": np.stack(vals),
                "rew": rews, "done": dones, "last_v": last_v}

    def learn(self, ro: dict) -> dict:
        import torch

        from grail_cluster.sonic.reference.ppo import gae, update

        adv, ret = gae(ro["rew"], ro["val"], ro["done"], ro["last_v"], float(self.ppo.gamma), float(self.ppo.lam))
        flat = lambda x: torch.as_tensor(x.reshape(-1, *x.shape[2:]), dtype=torch.float32)  # noqa: E731
        batch = {"obs": flat(self.normalizer(ro["raw_obs"])), "act": flat(ro["act"]), "logp": flat(ro["logp"]),
                 "adv": flat(adv), "ret": flat(ret), "seed": int(self.cfg.seed) * 100003 + self.iteration}
        stats = update(self.model, self.optimizer, self.acc, self.ppo, batch)
        self._sync_normalizer(ro["raw_obs"].reshape(-1, OBS_DIM))
        return stats

    # -- periodic evaluation -------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Every rank rolls out its motions from frame 0 with the mean action; totals are all-reduced."""
        import torch

        model = self.acc.unwrap_model(self.model)

        def policy(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model.actor(torch.as_tensor(self.normalizer(obs), dtype=torch.float32)).numpy().astype(np.float64)

        eval_terms = Terminations(self.terms.anchor_pos_z, self.terms.anchor_ori, self.terms.ee_z, None)
        rows = rollout(self.preps, policy, eval_terms, float(self.algo.action_scale))
        local = [len(rows), sum(not r["terminated"] for r in rows),
                 sum(r["mpjpe_l"] * r["frames"] for r in rows), sum(r["mpjpe_g"] * r["frames"] for r in rows),
                 sum(r["frames"] for r in rows), sum((r["obj_pos_error"] or 0.0) for r in rows),
                 sum(r["obj_pos_error"] is not None for r in rows)]
        tot = self.acc.reduce(torch.tensor(local, dtype=torch.float64), reduction="sum").tolist()
        out = {"eval/success/success_rate": tot[1] / tot[0], "eval/all/mpjpe_l": tot[2] / tot[4],
               "eval/all/mpjpe_g": tot[3] / tot[4]}
        if tot[6]:
            out["eval/all/obj_pos_error"] = tot[5] / tot[6]
        return out


def _write_yaml(path: Path, data) -> None:
    import yaml

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def _utc_ms(t: float) -> str:
    """A wall-clock time to the millisecond, as the job script's ``date -u +%FT%T.%3NZ`` writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def train(cfg) -> int:
    from accelerate import Accelerator
    from omegaconf import OmegaConf

    t_join = time.time()
    accelerator = Accelerator(cpu=True)
    if accelerator.num_processes > 1:
        # Accelerator() returns once every rank joined the gloo process group: this is the rendezvous,
        # and on several nodes the line says which host each rank really runs on.
        print(f"[reference] rank {accelerator.process_index}/{accelerator.num_processes} on {socket.gethostname()}: "
              f"gloo process group up in {time.time() - t_join:.2f} s, at {_utc_ms(time.time())}", flush=True)
    source, mode, exp = _resume_source(cfg, _experiment_dir(cfg))
    main = accelerator.is_main_process
    algo = cfg.algo.config
    if main:
        exp.mkdir(parents=True, exist_ok=True)
        # SONIC writes the unresolved config before the env exists; keep ours the same.
        (exp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=False))
        meta_path = exp / "meta.yaml"
        import yaml

        meta = yaml.safe_load(meta_path.read_text()) if meta_path.is_file() else {}
        meta = {"wandb_run": meta.get("wandb_run") or uuid.uuid4().hex[:8],
                "max_train_steps": int(algo.num_learning_iterations)}
        _write_yaml(meta_path, meta)
    accelerator.wait_for_everyone()

    trainer = Trainer(cfg, accelerator, exp)
    if source is not None:
        trainer.load(source, mode)
    trainer.model, trainer.optimizer = accelerator.prepare(trainer.model, trainer.optimizer)
    for i in range(trainer.num_envs):
        trainer._reset(i)

    writer = wandb_run = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(exp))
        if cfg.get("use_wandb"):
            wandb_run = _wandb_init(cfg, exp)
    total = int(algo.num_learning_iterations)
    period = save_frequency(cfg)
    t_start = time.time()
    samples = 0
    while trainer.iteration < total:
        t0 = time.time()
        ro = trainer.collect()
        stats = trainer.learn(ro)
        trainer.iteration += 1
        it = trainer.iteration
        samples += ro["rew"].size * trainer.world
        log = {**stats, "rewards/total": float(ro["rew"].mean()), "throughput/fps": ro["rew"].size * trainer.world / (time.time() - t0)}
        if trainer.done_lens:
            log["Train/mean_episode_length"] = float(np.mean(trainer.done_lens[-50:]))
        evaluated = None
        if it % period == 0 or it == total:
            evaluated = trainer.evaluate()
        if main:
            for k, v in log.items():
                writer.add_scalar(k, v, it)
            if evaluated:
                for k, v in evaluated.items():
                    writer.add_scalar(k, v, it)
                writer.add_scalar("eval_step", it, it)
                trainer.save(exp / f"model_step_{it:06d}.pt")
                print(f"[eval] iteration {it}: success rate {evaluated['eval/success/success_rate']:.3f}, "
                      f"mpjpe_l {evaluated['eval/all/mpjpe_l']:.1f} mm", flush=True)
            if it % int(algo.last_frequency) == 0 or it == total or evaluated:
                trainer.save(exp / "last.pt")
            if wandb_run is not None:
                wandb_run.log({**log, **(evaluated or {}), **({"eval_step": it} if evaluated else {}), "global_step": it})
            if it % 10 == 0 or it == 1:
                print(f"[train] iteration {it}/{total}: reward {log['rewards/total']:.3f}, "
                      f"{log['throughput/fps']:.0f} steps/s, {time.time() - t_start:.0f}s", flush=True)
            writer.flush()
    accelerator.wait_for_everyone()
    if main:
        writer.close()
        if wandb_run is not None:
            wandb_run.finish()
        print(f"[train] done: {total} iterations, {samples} env steps in {time.time() - t_start:.0f}s -> {exp}", flush=True)
    accelerator.end_training()
    return 0


def _wandb_init(cfg, exp: Path):
    import wandb
    import yaml

    meta = yaml.safe_load((exp / "meta.yaml").read_text())
    w = cfg.wandb
    return wandb.init(project=str(w.get("wandb_project") or cfg.project_name), entity=w.get("wandb_entity"),
                      group=w.get("wandb_group"), id=meta["wandb_run"], resume="allow", name=exp.name,
                      dir=str(exp), config={"experiment_dir": str(exp)}, sync_tensorboard=False)


def main(argv: list[str] | None = None) -> int:
    from grail_cluster.sonic.reference.setup import argv_overrides, compose, cpu_threads

    try:
        cpu_threads()
        cfg = compose("base", argv if argv is not None else argv_overrides())
        return train(cfg)
    except GrailError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code or 2


if __name__ == "__main__":
    sys.exit(main())
