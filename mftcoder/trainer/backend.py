"""Everything backend-specific lives here: CPU/CUDA quirks and DeepSpeed/FSDP2 settings, so the loop stays generic.

- DeepSpeed without CUDA needs an explicit gloo process group (otherwise accelerate's state has no backend and
  DeepSpeed's batch check fails), and must not see ACCELERATE_USE_CPU (which silently turns DeepSpeed off).
- FSDP without CUDA: accelerate silently falls back to DDP for MULTI_CPU; marking the shared state MULTI_GPU keeps
  FSDP2 (the device stays cpu and the backend gloo).
- Each process gets OMP_NUM_THREADS = cores / local processes unless the user set it.
- Batch geometry and clipping come from the train_config only: a DeepSpeed or accelerate config that disagrees is
  overridden everywhere accelerate and DeepSpeed read it, with a warning; an optimizer or scheduler block in a
  DeepSpeed config is rejected (the train_config defines both).
- FSDP2 wraps the model's own decoder-layer class, found at run time.
- The chunked cross entropy needs the whole lm_head weight after the model's forward; under ZeRO-3 and FSDP2 that
  weight is sharded, so those backends use the plain logits path.
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


def thread_count(env: dict | None = None, cpu_count: int | None = None) -> int:
    """OMP_NUM_THREADS if set, else the machine's cores shared among this node's processes."""
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS"):
        return max(1, int(env["OMP_NUM_THREADS"]))
    local = int(env.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (cpu_count or os.cpu_count() or 1) // max(local, 1))


def set_thread_count() -> int:
    n = thread_count()
    torch.set_num_threads(n)
    return n


def process_group_kwargs(backend: str, cuda: bool, timeout: datetime.timedelta) -> list:
    """The CPU quirks, applied before the Accelerator exists; returns its process-group kwargs handler."""
    from accelerate.utils import InitProcessGroupKwargs

    if cuda:
        return [InitProcessGroupKwargs(timeout=timeout)]
    if backend == "deepspeed":
        if os.environ.pop("ACCELERATE_USE_CPU", None) is not None:
            # accelerate reads it as "not DeepSpeed"; DeepSpeed on CPU only needs its own accelerator switch
            log.warning("ACCELERATE_USE_CPU is ignored under DeepSpeed (it would disable DeepSpeed); "
                        "DeepSpeed runs on CPU through DS_ACCELERATOR=cpu")
        from mftcoder.runtime import choose_deepspeed_accelerator

        choose_deepspeed_accelerator()  # normally already done when mftcoder was imported; the one owner of the choice
        return [InitProcessGroupKwargs(backend="gloo", timeout=timeout)]
    if backend == "fsdp":
        from accelerate import PartialState
        from accelerate.utils import DistributedType

        # accelerate enables FSDP only for GPU-like states; the state keeps device cpu and backend gloo
        PartialState(cpu=True, timeout=timeout).distributed_type = DistributedType.MULTI_GPU
    return [InitProcessGroupKwargs(timeout=timeout)]


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    from mftcoder.runtime import settle_mixed_precision

    backend = launched_backend()
    set_thread_count()
    settle_mixed_precision()  # the yaml's bf16 on hardware without it: fp32, with one warning
    cuda = torch.cuda.is_available()
    kwargs = process_group_kwargs(backend, cuda, datetime.timedelta(seconds=cfg.init_timeout_seconds))
    _check_accumulation_env(cfg)
    from mftcoder.trainer.tracking import log_with

    acc = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps, kwargs_handlers=kwargs,
                      cpu=(not cuda and backend in ("single", "ddp")), log_with=log_with(cfg))
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


def deepspeed_geometry(cfg: TrainConfig, num_processes: int) -> dict:
    """The DeepSpeed config values that the train_config decides."""
    return {
        "train_micro_batch_size_per_gpu": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * num_processes,
        "gradient_clipping": cfg.max_grad_norm or 0.0,
    }


def reconcile_deepspeed_config(ds: dict, cfg: TrainConfig, num_processes: int,
                               source: str = "DeepSpeed config") -> dict:
    """Write the train_config's batch geometry and clipping into a DeepSpeed config dict (in place, returned).

    "auto" or equal values are filled silently, different ones are overridden with a warning. An optimizer or
    scheduler block is rejected: mftcoder builds both from the train_config, and two sources would disagree.
    """
    for block, keys in (("optimizer", "learning_rate, weight_decay, adam_beta1, adam_beta2, optimizer"),
                        ("scheduler", "lr_scheduler_type, num_warmup_steps, min_lr")):
        if block in ds:
            raise ValueError(f"{source} defines {block!r}; mftcoder builds the {block} from the train_config "
                             f"({keys}): remove the {block!r} block from the DeepSpeed config")
    for key, value in deepspeed_geometry(cfg, num_processes).items():
        have = ds.get(key, "auto")
        if have not in ("auto", value):
            log.warning("%s %s=%s overridden by the train_config: %s", source, key, have, value)
        ds[key] = value
    return ds


def configure_deepspeed(acc, cfg: TrainConfig) -> None:
    """Make the live DeepSpeed plugin agree with the train_config (before `prepare` builds the engine)."""
    plugin = acc.state.deepspeed_plugin
    source = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    source = "DeepSpeed config" if source == "none" else f"DeepSpeed config {source}"
    reconcile_deepspeed_config(plugin.deepspeed_config, cfg, acc.num_processes, source)
    plugin.gradient_accumulation_steps = cfg.gradient_accumulation_steps
    plugin.gradient_clipping = cfg.max_grad_norm or 0.0
    acc.gradient_accumulation_steps = cfg.gradient_accumulation_steps


def is_sharded(acc) -> bool:
    """Parameters are split across ranks (ZeRO-3 or FSDP): every rank must run the same forwards."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP:
        return True
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return acc.state.deepspeed_plugin.zero_stage == 3
    return False


def chunked_ce(acc, cfg: TrainConfig) -> bool:
    """Whether the loss uses the chunked cross entropy: asked for, and the lm_head weight is whole on this rank."""
    if not cfg.chunked_ce:
        return False
    if is_sharded(acc):
        if not getattr(acc, "_mftcoder_said_chunked", False):
            acc._mftcoder_said_chunked = True
            if acc.is_main_process:
                log.info("chunked_ce: off under %s (the lm_head weight is sharded); computing full logits",
                         acc.distributed_type)
        return False
    return True


def fsdp_wrap_class_names(model, requested: list[str] | None = None) -> list[str]:
    """The decoder-layer class names FSDP2 wraps one by one: `requested` (from the accelerate config) if given, else
    the model's own `_no_split_modules`; only names of classes really in the model, or a clear error."""
    from mftcoder.model.load import decoder_layer_class_names

    present = {type(m).__name__ for m in model.modules()}
    if requested:
        missing = [n for n in requested if n not in present]
        if missing:
            raise ValueError(f"fsdp_transformer_layer_cls_to_wrap {missing} not found in {type(model).__name__}; "
                             f"remove it from the accelerate config to use the model's own decoder layer "
                             f"({decoder_layer_class_names(model) or 'none declared'})")
        return list(requested)
    names = [n for n in decoder_layer_class_names(model) if n in present]
    if not names:
        raise ValueError(f"cannot find the decoder-layer class of {type(model).__name__} for FSDP auto-wrap (the "
                         "model declares no _no_split_modules); set fsdp_transformer_layer_cls_to_wrap in the "
                         "accelerate config")
    return names


def keep_4bit_weights_unpacked(model) -> int:
    """Turn off bitsandbytes' CPU repacking of 4-bit weights for training; returns how many layers it was on for.

    On CPUs with avx512_bf16, bitsandbytes 0.50 repacks a Linear4bit weight in place (new `.data`, a flag on its
    quant state) at its first no-grad eval forward, an inference-only format:
    - every later training backward through a repacked weight gives wrong input gradients (tiny Llama QLoRA:
      grad norm 0.358 instead of 0.690 after one evaluation), in a single process too;
    - ZeRO-3 and FSDP2 own `.data` (gathered and freed around each forward), so the flag outlives the repacked data,
      and ZeRO-3's checkpoint save fails in `_convert_weight_packed_for_cpu_inverse` (storage dtype is not uint8).
    """
    n = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def prepare(acc, model, optimizer):
    """accelerate.prepare, with the FSDP2 auto-wrap class taken from the model itself."""
    from accelerate.utils import DistributedType

    keep_4bit_weights_unpacked(model)  # QLoRA on CPU: evaluation must not switch weights to bnb's inference format
    if acc.distributed_type == DistributedType.FSDP:
        plugin = acc.state.fsdp_plugin
        requested = plugin.transformer_cls_names_to_wrap
        if isinstance(requested, str):
            requested = [n.strip() for n in requested.split(",") if n.strip()]
        plugin.transformer_cls_names_to_wrap = fsdp_wrap_class_names(model, requested)
        if acc.is_main_process:
            log.info("FSDP%s wraps %s", getattr(plugin, "fsdp_version", ""), plugin.transformer_cls_names_to_wrap)
    return acc.prepare(model, optimizer)


def clip_and_norm(acc, model, max_grad_norm):
    """Clip (when asked) and return the global grad norm, on every backend."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED:
        # DeepSpeed clips inside its step (gradient_clipping set above); the norm is read after the step
        return None
    norm = acc.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm else float("inf"))
    return float(norm) if norm is not None else None


def deepspeed_grad_norm(acc, model):
    """DeepSpeed's global (pre-clipping) grad norm of the step that just ran."""
    from accelerate.utils import DistributedType

    if acc.distributed_type != DistributedType.DEEPSPEED:
        return None
    engine = model if hasattr(model, "get_global_grad_norm") else None
    norm = engine.get_global_grad_norm() if engine is not None else None
    return float(norm) if norm is not None else None
