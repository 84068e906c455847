"""What a run reads and how fast it learns: the mixture it samples, the learning-rate schedule,
the optimizer and the number of steps (pieces of ``train.loop``, each usable on its own)."""

from __future__ import annotations

import math

import torch

from babeltower.corpus.shards import TokenShards
from babeltower.mixture.generators import natural
from babeltower.mixture.sampler import available_tokens
from babeltower.mixture.spec import MixtureSpec
from babeltower.train.config import TrainConfig


def resolve_mixture(config: TrainConfig, shards: TokenShards) -> MixtureSpec:
    """The run's ``MixtureSpec``: the configured one, or natural over all training data."""
    if config.mixture is None:
        return natural(available_tokens(shards, "train"))
    return MixtureSpec.from_any(config.mixture)



def lr_at(step: int, config: TrainConfig, max_steps: int) -> float:
    """Learning rate after ``step`` updates: linear warmup, then cosine/linear/constant."""
    lr = config.optimizer.lr
    sch = config.schedule
    min_lr = sch.min_lr if sch.min_lr is not None else 0.1 * lr
    warmup = sch.warmup_steps if sch.warmup_steps is not None else int(
        round(sch.warmup_fraction * max_steps))
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if sch.decay == "constant" or max_steps <= warmup:
        return lr
    frac = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if sch.decay == "linear":
        return min_lr + (lr - min_lr) * (1.0 - frac)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * frac))



def make_optimizer(model: torch.nn.Module, config: TrainConfig, fused: bool | None = None):
    """AdamW with weight decay on matrices only; fused kernel where torch has one."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    oc = config.optimizer
    groups = [{"params": decay, "weight_decay": oc.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=oc.lr, betas=tuple(oc.betas), eps=oc.eps, **kw)



def plan_steps(config: TrainConfig, n_sequences: int, world: int = 1) -> int:
    """Optimizer steps of the run: max_steps, or the token budget, or one mixture pass."""
    per_step = config.micro_batch_size * config.grad_accum * world
    if config.max_steps is not None:
        return config.max_steps
    if config.tokens is not None:
        return max(1, math.ceil(config.tokens / (per_step * config.seq_len)))
    return max(1, n_sequences // per_step)
