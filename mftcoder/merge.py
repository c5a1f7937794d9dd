"""Merge a LoRA / QLoRA adapter into its base: `mftcoder merge --base DIR --adapter DIR --output DIR`.

The result is a plain Hugging Face model directory (safetensors, no LoRA modules, no quantization config)
with the tokenizer and chat template the adapter was trained with, loadable by anyone with `from_pretrained`.

Loading is strict (see `mftcoder.model.adapters`): renamed keys from distributed training are normalised, an
unsaved ZeRO-3 shard, a missing LoRA weight or an unused tensor is an error, and an adapter on a base it was
not trained on (other architecture, layer count or vocabulary; the recorded base's config differs) is refused
unless `--force`. A QLoRA adapter merges into the unquantized base (load the original base model directory,
not a 4-bit one). The adapter's `task_type` picks the model class: a reward model's adapter (`SEQ_CLS`, saved with
its scalar head) merges into a one-label sequence classifier, every other one into a causal LM.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

from mftcoder.errors import USER_ERRORS, ArgumentParser, run_reporting_errors, with_example
from mftcoder.model.adapters import find_adapter_dir, merge_adapter_into, read_adapter_config
from mftcoder.model.inference import DTYPE_CHOICES, load_config, resolve_dtype
from mftcoder.model.tokenizer import load_tokenizer

EXAMPLE = """\
mftcoder merge --base ~/.cache/mftcoder/smollm2-135m-instruct --adapter runs/demo --output runs/demo-merged
"""


def _load_base(base: str, task_type: str | None, dtype, pad_token_id: int | None):
    """The base with the head the adapter was trained on: a one-label sequence classifier (a reward model, whose
    trained head the adapter carries) for SEQ_CLS, else a causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task_type != "SEQ_CLS":
        return AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=dtype)
    if model.config.pad_token_id is None:  # where the classifier finds a sequence's last token, as in training
        model.config.pad_token_id = pad_token_id
    return model


def merge_adapter(base: str, adapter: str, output: str, dtype: str = "auto", overwrite: bool = False,
                  force: bool = False) -> str:
    """Merge `adapter` into `base` in `dtype` (auto: the base's saved dtype) and save to `output`; returns it.
    An adapter trained on another base is refused unless `force`.

    Written to a temporary directory beside `output` and renamed when complete."""
    config = load_config(base)
    adapter_dir = find_adapter_dir(adapter)
    output = os.path.abspath(output)
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} exists; choose another --output or pass --overwrite")
    if getattr(config, "quantization_config", None):
        raise ValueError(f"{base} is a quantized model; merge into the original unquantized base (a QLoRA adapter "
                         "was trained on a 4-bit view of it and merges into its full-precision weights)")
    torch_dtype = resolve_dtype(dtype, getattr(config, "dtype", None))
    tokenizer = load_tokenizer(base, adapter=adapter_dir, require_fast=False)
    task_type = read_adapter_config(adapter_dir).get("task_type")
    model = _load_base(base, task_type, torch_dtype, tokenizer.pad_token_id)
    merged = merge_adapter_into(model, base, adapter_dir, tokenizer, force)
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
                       "adapter_config": read_adapter_config(adapter_dir)}, f, indent=2)
        os.chmod(tmp, 0o755)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or ArgumentParser(prog="mftcoder merge", description=__doc__.split("\n\n")[0])
    with_example(parser, EXAMPLE)
    parser.add_argument("--base", required=True, help="base model directory the adapter was trained on (unquantized)")
    parser.add_argument("--adapter", required=True, help="adapter directory (adapter_config.json + weights)")
    parser.add_argument("--output", required=True, help="directory for the merged model")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="dtype of the merged weights (auto: the base's saved dtype)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--force", action="store_true",
                        help="merge even where the adapter looks trained on another base (warns instead of refusing)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point for `mftcoder merge`: bad input gives one clear error line and exit status 2."""
    return run_reporting_errors(_run, args, USER_ERRORS + (FileExistsError,))


def _run(args: argparse.Namespace) -> int:
    out = merge_adapter(args.base, args.adapter, args.output, args.dtype, args.overwrite, args.force)
    print(f"merged {args.adapter} into {args.base} -> {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
