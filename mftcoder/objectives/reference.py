"""DPO's reference model: where its log-probs come from, decided once per run.

- "adapter": LoRA/QLoRA on the base: the policy with its adapter disabled is the base; no second copy is held.
- "policy":  full fine-tuning whose reference is the base, with `precompute_reference`: the policy before its first
             optimizer step is the base, so the log-probs are computed with it and no copy is ever loaded.
- "copy":    a frozen model loaded from `reference_model_path` (or the base, for full fine-tuning computed on the fly):
             one more copy of the weights, not sharded, so refused under ZeRO-3 / FSDP2.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
from torch import nn

from mftcoder.config import ConfigError
from mftcoder.data.cache import file_digest

log = logging.getLogger("mftcoder")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def reference_source(cfg, sharded: bool) -> str:
    """"adapter" | "policy" | "copy" for this config (see the module docstring), or a ConfigError saying why none works."""
    ref = cfg.reference_model_path
    is_base = ref is None or os.path.realpath(ref) == os.path.realpath(cfg.pretrained_model_path)
    if is_base and cfg.peft_type:
        return "adapter"
    if is_base and cfg.precompute_reference:
        return "policy"
    if sharded:
        why = ("full fine-tuning keeps a frozen copy of the base as the reference" if is_base else
               f"reference_model_path={ref!r} would be loaded as a frozen copy")
        fix = ("set precompute_reference: true (the log-probs are computed once, before the first step)" if is_base
               else "use the base model as the reference (drop reference_model_path)")
        raise ConfigError(f"objective 'dpo' under ZeRO-3 / FSDP2: {why}, which these backends cannot shard; {fix}, "
                          "or train with LoRA")
    return "copy"


def model_digest(path: str) -> str:
    """The identity of a model folder's weights (file contents, not names or times)."""
    files = sorted(f for f in os.listdir(path) if f.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise ConfigError(f"reference_model_path: no weight files in {path!r}")
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(f"{f}:{file_digest(os.path.join(path, f))}".encode())
    return h.hexdigest()[:20]


def load_frozen_copy(path: str, dtype: torch.dtype, attn: Optional[str], trust_remote_code: bool) -> nn.Module:
    from transformers import AutoModelForCausalLM

    from mftcoder.config import read_model_config

    read_model_config(path, key="reference_model_path")
    log.info("loading the DPO reference model %s (%s, frozen)", path, dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn,
                                                 trust_remote_code=trust_remote_code)
    model.config.use_cache = False
    model.requires_grad_(False)
    return model.eval()


def find_peft_model(model: nn.Module) -> nn.Module:
    """The PeftModel inside DDP / DeepSpeed / torch.compile wrappers (it can switch its adapter off)."""
    for _ in range(8):
        if hasattr(model, "disable_adapter"):
            return model
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    raise TypeError(f"no PEFT model inside {type(model).__name__}: the adapter cannot be disabled")


def adapter_disabled(model: nn.Module):
    """A context in which the (wrapped) policy runs as its base model."""
    return find_peft_model(model).disable_adapter()
