"""Optimizer and learning-rate schedule, both sized in optimizer steps (the only unit of the schedule)."""
from __future__ import annotations

import torch

from mftcoder.config import TrainConfig


def make_optimizer(model, cfg: TrainConfig):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # biases and norm scales are not decayed (MFTCoder decayed everything)
        (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    if cfg.optimizer == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=cfg.learning_rate, betas=betas)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    if isinstance(cfg.num_warmup_steps, float):
        return int(round(cfg.num_warmup_steps * total_steps))
    return int(cfg.num_warmup_steps)


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    """Any transformers schedule; cosine decays to min_lr, the others are floored at min_lr."""
    from transformers import get_scheduler

    warmup = warmup_steps(cfg, total_steps)
    if cfg.lr_scheduler_type == "cosine" and cfg.min_lr > 0:
        return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                             scheduler_specific_kwargs={"min_lr": cfg.min_lr})
    sched = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    floor = cfg.min_lr / cfg.learning_rate
    if floor > 0 and hasattr(sched, "lr_lambdas"):
        # LambdaLR: floor each multiplier after warmup so the rate never drops below min_lr
        sched.lr_lambdas = [_floored(f, floor, warmup) for f in sched.lr_lambdas]
    return sched


def _floored(fn, floor: float, warmup: int):
    return lambda step: fn(step) if step < warmup else max(fn(step), floor)
