"""A small PPO learner in torch: Gaussian residual policy + value function, clipped surrogate, GAE."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def _mlp(sizes: list[int], out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.ELU()]
    last = nn.Linear(sizes[-2], sizes[-1])
    nn.init.orthogonal_(last.weight, gain=out_gain)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class ActorCritic(nn.Module):
    """One module so DistributedDataParallel syncs actor, critic and the log-std in one all-reduce."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], init_log_std: float):
        super().__init__()
        # A near-zero last layer: the untrained policy is the PD controller on the reference itself.
        self.actor = _mlp([obs_dim, *hidden, act_dim], out_gain=0.01)
        self.critic = _mlp([obs_dim, *hidden, 1], out_gain=1.0)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.actor(obs), self.log_std.expand(obs.shape[0], -1), self.critic(obs).squeeze(-1)


class Normalizer:
    """Running mean/std of observations, kept identical on every rank (stats are all-reduced)."""

    def __init__(self, dim: int):
        self.mean = np.zeros(dim)
        self.var = np.ones(dim)
        self.count = 1e-4

    def update(self, batch_mean: np.ndarray, batch_var: np.ndarray, n: float) -> None:
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta ** 2 * self.count * n / total) / total
        self.count = total

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.clip((obs - self.mean) / np.sqrt(self.var + 1e-8), -5.0, 5.0)

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = np.asarray(state["mean"]), np.asarray(state["var"]), float(state["count"])


@dataclass
class PPOConfig:
    num_learning_epochs: int = 4
    num_mini_batches: int = 4
    gamma: float = 0.97
    lam: float = 0.95
    clip_param: float = 0.2
    value_loss_coef: float = 1.0
    entropy_coef: float = 0.0
    max_grad_norm: float = 1.0


def gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_values: np.ndarray,
        gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(advantages, returns) for (steps, envs) arrays; a done step does not bootstrap."""
    steps = len(rewards)
    adv = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1])
    for t in reversed(range(steps)):
        next_v = last_values if t == steps - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_v * nonterminal - values[t]
        running = delta + gamma * lam * nonterminal * running
        adv[t] = running
    return adv, adv + values


def log_prob(mean: torch.Tensor, log_std: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((act - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)


def update(model: nn.Module, optimizer: torch.optim.Optimizer, accelerator, cfg: PPOConfig, batch: dict) -> dict:
    """PPO epochs over one rollout. ``model`` is the accelerate-prepared (DDP) module."""
    n = len(batch["obs"])
    stats = {"loss/surrogate": 0.0, "loss/value": 0.0, "loss/entropy": 0.0}
    updates = 0
    adv = batch["adv"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    gen = torch.Generator().manual_seed(int(batch["seed"]))
    for _ in range(cfg.num_learning_epochs):
        perm = torch.randperm(n, generator=gen)
        for chunk in perm.chunk(cfg.num_mini_batches):
            mean, log_std, value = model(batch["obs"][chunk])
            logp = log_prob(mean, log_std, batch["act"][chunk])
            ratio = torch.exp(logp - batch["logp"][chunk])
            a = adv[chunk]
            surrogate = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip_param, 1 + cfg.clip_param) * a).mean()
            value_loss = (batch["ret"][chunk] - value).pow(2).mean()
            entropy = (log_std + 0.5 * np.log(2 * np.pi * np.e)).sum(-1).mean()
            loss = surrogate + cfg.value_loss_coef * value_loss - cfg.entropy_coef * entropy
            optimizer.zero_grad()
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            stats["loss/surrogate"] += float(surrogate.detach())
            stats["loss/value"] += float(value_loss.detach())
            stats["loss/entropy"] += float(entropy.detach())
            updates += 1
    return {k: v / max(1, updates) for k, v in stats.items()}
