"""Everything backend-specific lives here: CPU/CUDA quirks and DeepSpeed/FSDP settings, so the loop stays generic.

- DeepSpeed without CUDA needs an explicit gloo process group (otherwise accelerate's state has no backend).
- FSDP without CUDA: accelerate silently falls back to DDP for MULTI_CPU; marking the shared state MULTI_GPU keeps FSDP2
  (the device stays cpu and the backend gloo).
- Each process gets OMP_NUM_THREADS = cores / local processes unless the user set it.
- Batch geometry comes from the train_config only: a DeepSpeed config that disagrees is overridden, loudly.
"""
from __future__ import annotations

import datetime
import logging
import os

import torch

from mftcoder.config import TrainConfig

log = logging.getLogger(__name__)


def launched_backend() -> str:
    """deepspeed | fsdp | ddp | single, from what `accelerate launch` exported."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "ddp"
    return "single"


def set_thread_count() -> int:
    if "OMP_NUM_THREADS" in os.environ:
        n = int(os.environ["OMP_NUM_THREADS"])
    else:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        n = max(1, (os.cpu_count() or 1) // local)
    torch.set_num_threads(n)
    return n


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    backend = launched_backend()
    set_thread_count()
    timeout = datetime.timedelta(seconds=cfg.init_timeout_seconds)
    kwargs = []
    if not torch.cuda.is_available():
        if backend == "deepspeed":
            kwargs.append(InitProcessGroupKwargs(backend="gloo", timeout=timeout))
        else:
            kwargs.append(InitProcessGroupKwargs(timeout=timeout))
            if backend == "fsdp":
                PartialState(cpu=True).distributed_type = DistributedType.MULTI_GPU
    else:
        kwargs.append(InitProcessGroupKwargs(timeout=timeout))
    _check_accumulation_env(cfg)
    acc = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps, kwargs_handlers=kwargs,
                      cpu=(not torch.cuda.is_available() and backend in ("single", "ddp")))
    if acc.distributed_type == DistributedType.DEEPSPEED:
        configure_deepspeed(acc, cfg)
    return acc


def _check_accumulation_env(cfg: TrainConfig) -> None:
    # accelerate exports the yaml's gradient_accumulation_steps; ours comes from the train_config only
    env = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if env is not None and int(env) != cfg.gradient_accumulation_steps:
        log.warning("accelerate config says gradient_accumulation_steps=%s; using the train_config's %d",
                    env, cfg.gradient_accumulation_steps)
        os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] = str(cfg.gradient_accumulation_steps)


def configure_deepspeed(acc, cfg: TrainConfig) -> None:
    """Make the DeepSpeed config agree with the train_config's batch geometry and clipping."""
    ds = acc.state.deepspeed_plugin.deepspeed_config
    want = {
        "train_micro_batch_size_per_gpu": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * acc.num_processes,
        "gradient_clipping": cfg.max_grad_norm or 0.0,
    }
    for key, value in want.items():
        have = ds.get(key, "auto")
        if have not in ("auto", value):
            log.warning("DeepSpeed config %s=%s overridden by the train_config: %s", key, have, value)
        ds[key] = value
    acc.state.deepspeed_plugin.gradient_accumulation_steps = cfg.gradient_accumulation_steps


def is_sharded(acc) -> bool:
    """Parameters are split across ranks (ZeRO-3 or FSDP): every rank must run the same forwards."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP:
        return True
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return acc.state.deepspeed_plugin.zero_stage == 3
    return False


def clip_and_norm(acc, model, max_grad_norm):
    """Clip (when asked) and return the global grad norm, on every backend."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED:
        # DeepSpeed clips inside its step (gradient_clipping set above); the norm is read after the step
        return None
    norm = acc.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm else float("inf"))
    return float(norm) if norm is not None else None


def deepspeed_grad_norm(acc, model):
    from accelerate.utils import DistributedType

    if acc.distributed_type != DistributedType.DEEPSPEED:
        return None
    engine = model if hasattr(model, "get_global_grad_norm") else None
    norm = engine.get_global_grad_norm() if engine is not None else None
    return float(norm) if norm is not None else None
