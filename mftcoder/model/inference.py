"""A model directory (plus an optional adapter) loaded for inference: one place for dtype, device and checks.

`load_for_inference` is what generate, chat, the evals and merge's callers use; training loads its model in
`mftcoder.model.load`.
"""
from __future__ import annotations


from mftcoder.config import read_model_config

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, saved=None, device: str | None = None):
    """A torch dtype for `dtype` (auto: `saved`, the config's dtype, else float32). On a CPU `device`, auto turns
    float16 into float32 (fp16 matmuls are slow or missing there); merge passes no device and keeps fp16."""
    import torch

    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_CHOICES)}")
        return getattr(torch, _DTYPES[dtype])
    if isinstance(saved, torch.dtype):
        chosen = saved
    else:
        chosen = getattr(torch, _DTYPES.get(str(saved).replace("torch.", ""), "float32"))
    if device == "cpu" and chosen == torch.float16:
        chosen = torch.float32
    return chosen


def load_config(model_dir: str):
    """The model's transformers config; a missing folder, config.json or broken JSON is one clear error."""
    from transformers import AutoConfig

    read_model_config(model_dir, key="model")
    return AutoConfig.from_pretrained(model_dir)


def _use_device(device: str, threads: int | None) -> str:
    """The resolved device, after setting torch's CPU threads when asked."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return resolve_device(device)


def _load_causal_lm(model_dir: str, config, dtype: str, device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype, getattr(config, "dtype", None),
                                                                                 device))


def load_for_inference(model_dir: str, adapter: str | None = None, dtype: str = "auto", device: str = "auto",
                       threads: int | None = None, force: bool = False):
    """(model in eval mode on `device`, tokenizer padding left) for generation; an adapter is merged in memory
    (same logits, faster decoding) and its own tokenizer (the training chat template) is used if it has one."""
    from mftcoder.model.adapters import find_adapter_dir, merge_adapter_into
    from mftcoder.model.tokenizer import load_tokenizer

    device = _use_device(device, threads)
    config = load_config(model_dir)
    adapter_dir = find_adapter_dir(adapter) if adapter else None
    tokenizer = load_tokenizer(model_dir, adapter=adapter_dir, padding_side="left", require_fast=False)
    model = _load_causal_lm(model_dir, config, dtype, device)
    if adapter_dir:
        model = merge_adapter_into(model, model_dir, adapter_dir, tokenizer, force)
    model.to(device).eval()
    return model, tokenizer


def load_with_adapters(model_dir: str, adapters: dict[str, str], dtype: str = "auto", device: str = "auto",
                       threads: int | None = None, force: bool = False):
    """(a PeftModel holding every adapter of {name: dir} unmerged, the base tokenizer, {name: its tokenizer}) for
    a server that switches adapters per request. Every adapter must keep the base's vocabulary size."""
    from mftcoder.model.adapters import attach_adapters, find_adapter_dir
    from mftcoder.model.tokenizer import load_tokenizer

    device = _use_device(device, threads)
    config = load_config(model_dir)
    dirs = {name: find_adapter_dir(path) for name, path in adapters.items()}
    base_tokenizer = load_tokenizer(model_dir, padding_side="left", require_fast=False)
    tokenizers = {name: load_tokenizer(model_dir, adapter=d, padding_side="left", require_fast=False)
                  for name, d in dirs.items()}
    grown = {name: len(t) for name, t in tokenizers.items() if len(t) != len(base_tokenizer)}
    if grown:
        raise ValueError(f"--adapter: {', '.join(f'{n} ({v} tokens)' for n, v in grown.items())} changed the "
                         f"vocabulary of the base ({len(base_tokenizer)} tokens), so it cannot share the base "
                         "unmerged; serve it alone (--adapter DIR) or merge it (mftcoder merge)")
    model = attach_adapters(_load_causal_lm(model_dir, config, dtype, device), model_dir, dirs, tokenizers, force)
    model.to(device).eval()
    return model, base_tokenizer, tokenizers
