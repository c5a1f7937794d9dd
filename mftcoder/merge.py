"""Merge a LoRA / QLoRA adapter into its base: `mftcoder merge --base DIR --adapter DIR --output DIR`.

The result is a plain Hugging Face model directory (safetensors, no LoRA modules, no quantization config)
with the tokenizer and chat template the adapter was trained with, loadable by anyone with `from_pretrained`.

Loading is strict, unlike `PeftModel.from_pretrained`, which warns and carries on with zero-initialised LoRA
weights when the saved keys do not match (the merged model would silently equal the base):
  * wrapper prefixes that distributed training adds to names (`module.`, FSDP's `_fsdp_wrapped_module.`,
    activation checkpointing's `_checkpoint_wrapped_module.`, torch.compile's `_orig_mod.`) and an adapter
    name left in the keys (`lora_A.default.weight`) are removed;
  * an empty tensor (a ZeRO-3 shard saved without gathering) is an error that says how to save it;
  * every LoRA weight the config implies must be present and every saved tensor must be used.
A QLoRA adapter merges into the unquantized base (load the original base model directory, not a 4-bit one).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile

from mftcoder.errors import USER_ERRORS, run_reporting_errors

ADAPTER_CONFIG = "adapter_config.json"
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_WRAPPERS = re.compile(r"(^|\.)(module|_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")
_ADAPTER_NAME_IN_KEY = re.compile(r"\.(lora_[A-Za-z_]+|modules_to_save)\.default(\.|$)")


def find_adapter_dir(path: str) -> str:
    """`path` if it holds adapter_config.json, else its single subdirectory that does."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"adapter directory {path} does not exist")
    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        return path
    subdirs = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, ADAPTER_CONFIG)))
    if len(subdirs) == 1:
        return os.path.join(path, subdirs[0])
    found = f"; subdirectories with one: {subdirs}" if subdirs else ""
    raise FileNotFoundError(f"{path} holds no {ADAPTER_CONFIG} (a LoRA adapter saved by peft){found}")


def normalize_key(key: str) -> str:
    """Saved adapter key -> the name peft expects (`base_model.model.<module path>.lora_A.weight`)."""
    previous = None
    while previous != key:
        previous, key = key, _WRAPPERS.sub(r"\1", key)
    return _ADAPTER_NAME_IN_KEY.sub(r".\1\2", key)


def load_adapter_weights(adapter_dir: str) -> dict:
    """The adapter tensors with normalized keys; empty (unsaved ZeRO-3 shard) tensors are an error."""
    import torch

    path = next((os.path.join(adapter_dir, f) for f in _WEIGHT_FILES if os.path.isfile(os.path.join(adapter_dir, f))), None)
    if path is None:
        raise FileNotFoundError(f"{adapter_dir} has {ADAPTER_CONFIG} but no weights ({' or '.join(_WEIGHT_FILES)})")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        raw = load_file(path)
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    weights = {}
    for key, tensor in raw.items():
        if tensor.numel() == 0:
            raise ValueError(
                f"{path}: tensor {key} is empty (shape {tuple(tensor.shape)}). It was saved from a ZeRO-3 partition "
                "without gathering; save the adapter with the full state dict (accelerator.get_state_dict(model) "
                "or DeepSpeed's zero3 16-bit save) and merge again"
            )
        new = normalize_key(key)
        if new in weights:
            raise ValueError(f"{path}: keys {key!r} and another both map to {new!r}")
        weights[new] = tensor
    if not weights:
        raise ValueError(f"{path} holds no tensors")
    return weights


def apply_adapter(model, adapter: str):
    """Wrap `model` with the adapter in `adapter` (a PeftModel in eval mode), strictly (see module docstring)."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict

    adapter_dir = find_adapter_dir(adapter)
    config = PeftConfig.from_pretrained(adapter_dir)
    config.inference_mode = True
    weights = load_adapter_weights(adapter_dir)
    peft_model = get_peft_model(model, config)
    expected = {k for k in peft_model.state_dict() if ".lora_" in k or ".modules_to_save." in k}
    try:
        result = set_peft_model_state_dict(peft_model, weights)
    except RuntimeError as e:  # size mismatches: wrong base model or rank
        raise ValueError(f"adapter {adapter_dir} does not fit this base model: {e}") from None
    missing = sorted(k for k in result.missing_keys if k in expected)
    if result.unexpected_keys or missing:
        detail = []
        if result.unexpected_keys:
            detail.append(f"{len(result.unexpected_keys)} saved tensors match no module, e.g. {sorted(result.unexpected_keys)[:3]}")
        if missing:
            detail.append(f"{len(missing)} LoRA weights are missing from the file, e.g. {missing[:3]}")
        raise ValueError(f"adapter {adapter_dir} does not match the base model: " + "; ".join(detail))
    peft_model.eval()
    return peft_model


def _resolve_dtype(dtype: str, config):
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        saved = getattr(config, "dtype", None)
        if isinstance(saved, torch.dtype):
            return saved
        return names.get(str(saved).replace("torch.", ""), torch.float32)
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, {', '.join(names)}")
    return names[dtype]


def merge_adapter(base: str, adapter: str, output: str, dtype: str = "auto", overwrite: bool = False) -> str:
    """Merge `adapter` into `base` in `dtype` (auto: the base's saved dtype) and save to `output`; returns it.

    Written to a temporary directory beside `output` and renamed when complete."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from mftcoder.infer.generate import load_tokenizer

    if not os.path.isdir(base):
        raise FileNotFoundError(f"base model directory {base} does not exist")
    adapter_dir = find_adapter_dir(adapter)
    output = os.path.abspath(output)
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} exists; choose another --output or pass --overwrite")
    config = AutoConfig.from_pretrained(base)
    if getattr(config, "quantization_config", None):
        raise ValueError(f"{base} is a quantized model; merge into the original unquantized base (a QLoRA adapter "
                         "was trained on a 4-bit view of it and merges into its full-precision weights)")
    torch_dtype = _resolve_dtype(dtype, config)
    tokenizer = load_tokenizer(base, adapter_dir)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # training added tokens; the adapter carries their rows
    merged = apply_adapter(model, adapter_dir).merge_and_unload()
    leftovers = [n for n, _ in merged.named_modules() if "lora_" in n]
    if leftovers:
        raise RuntimeError(f"merge left LoRA modules behind: {leftovers[:3]}")
    merged = merged.to(torch_dtype)
    merged.config.dtype = torch_dtype
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config

    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.padding_side = "right"  # what training and plain scoring expect; generation sets left itself
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "merge_info.json"), "w") as f:
            json.dump({"base": os.path.abspath(base), "adapter": os.path.abspath(adapter_dir),
                       "dtype": str(torch_dtype).replace("torch.", ""),
                       "adapter_config": json.load(open(os.path.join(adapter_dir, ADAPTER_CONFIG)))}, f, indent=2)
        os.chmod(tmp, 0o755)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="mftcoder merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="base model directory the adapter was trained on (unquantized)")
    parser.add_argument("--adapter", required=True, help="adapter directory (adapter_config.json + weights)")
    parser.add_argument("--output", required=True, help="directory for the merged model")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="dtype of the merged weights (auto: the base's saved dtype)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point for `mftcoder merge`: bad input gives one clear error line and exit status 2."""
    return run_reporting_errors("mftcoder merge", _run, args, USER_ERRORS + (FileExistsError,))


def _run(args: argparse.Namespace) -> int:
    out = merge_adapter(args.base, args.adapter, args.output, args.dtype, args.overwrite)
    print(f"merged {args.adapter} into {args.base} -> {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
