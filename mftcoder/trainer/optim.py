"""Optimizer and learning-rate schedule, both sized in optimizer steps (the only unit of the schedule)."""
from __future__ import annotations

import torch

from mftcoder.config import TrainConfig
from mftcoder.trainer.backend import launched_backend


def make_optimizer(model, cfg: TrainConfig):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # biases and norm scales are not decayed (MFTCoder decayed everything)
        # (ZeRO-3 init leaves a 1-D empty local shard: its real shape is ds_shape)
        (no_decay if len(getattr(p, "ds_shape", p.shape)) < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    if cfg.optimizer == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=cfg.learning_rate, betas=betas)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas, fused=fused_adamw_ok(groups) or None)


def fused_adamw_ok(groups: list[dict]) -> bool:
    """torch's fused AdamW (one kernel over all parameters; on CPU it also skips the foreach path's temporaries) for
    ordinary floating tensors on CPU or CUDA, one process or DDP. DeepSpeed and FSDP2 step their own flat or sharded
    parameters, so they keep the default implementation."""
    if launched_backend() not in ("single", "ddp"):
        return False
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(type(p) is torch.nn.Parameter and p.is_floating_point()
                                and p.device.type in ("cpu", "cuda") for p in params)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    if isinstance(cfg.num_warmup_steps, float):
        return int(round(cfg.num_warmup_steps * total_steps))
    return int(cfg.num_warmup_steps)


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    """Any transformers schedule; cosine decays to min_lr, the others are floored at min_lr."""
    from transformers import get_scheduler

    warmup = warmup_steps(cfg, total_steps)
    name = cfg.lr_scheduler_type
    if name in MIN_LR_COSINES or (name == "cosine" and cfg.min_lr > 0):
        return get_scheduler("cosine_with_min_lr" if name == "cosine" else name, optimizer, num_warmup_steps=warmup,
                             num_training_steps=total_steps, scheduler_specific_kwargs={"min_lr": cfg.min_lr})
    if name == "constant" and warmup > 0:
        name = "constant_with_warmup"  # transformers' "constant" silently ignores num_warmup_steps
    sched = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    floor = cfg.min_lr / cfg.learning_rate
    if floor > 0 and hasattr(sched, "lr_lambdas"):
        # LambdaLR: floor each multiplier after warmup so the rate never drops below min_lr
        sched.lr_lambdas = [_floored(f, floor, warmup) for f in sched.lr_lambdas]
    return sched


def check_scheduler(cfg: TrainConfig, total_steps: int) -> None:
    """Build and step the schedule on a throwaway optimizer, so a bad lr_scheduler_type stops the run before the
    model loads (names transformers does not know, schedules that need a metric or extra arguments)."""
    from transformers import SchedulerType

    from mftcoder.config import ConfigError

    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    try:
        sched = make_scheduler(probe, cfg, max(total_steps, 1))
        probe.step()
        sched.step()
    except (ValueError, TypeError, KeyError) as e:
        usable = [t.value for t in SchedulerType if t.value not in UNUSABLE_SCHEDULES]
        raise ConfigError(f"lr_scheduler_type={cfg.lr_scheduler_type!r} cannot schedule this run ({e}); "
                          f"valid: {', '.join(usable)}") from None


MIN_LR_COSINES = ("cosine_with_min_lr", "cosine_warmup_with_min_lr")
UNUSABLE_SCHEDULES = ("reduce_lr_on_plateau", "greedy", "warmup_stable_decay")  # need a metric or decay arguments


def _floored(fn, floor: float, warmup: int):
    return lambda step: fn(step) if step < warmup else max(fn(step), floor)
