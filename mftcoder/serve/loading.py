"""From `mftcoder serve`'s options to a running Service: the served names, the model(s), the scheduler, the limits.

- No adapter: the model, under its folder name (or --served_model_name).
- One plain `--adapter DIR`: merged in memory (the logits of the PeftModel, decoding at the base's speed), under
  the adapter's folder name, with the adapter's own tokenizer and chat template when training saved them.
- `--adapter NAME=DIR` (repeatable): one PeftModel holds every adapter unmerged; a request picks one by its
  `model` field (a batch holds one adapter), and the model's own name gives the base with adapters off.
"""
from __future__ import annotations

import argparse
import os
import re

from mftcoder.serve.scheduler import Scheduler
from mftcoder.serve.service import Limits, ServedModel, Service

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


def folder_name(path: str) -> str:
    return os.path.basename(os.path.normpath(path))


def parse_adapters(values: list[str]) -> tuple[dict[str, str], bool]:
    """({name: dir}, named) from the --adapter values; named: every value was NAME=DIR."""
    named = [v for v in values if "=" in v and not os.path.isdir(v)]
    if named and len(named) != len(values):
        raise ValueError("--adapter: give every adapter as NAME=DIR, or a single DIR alone")
    if not named and len(values) > 1:
        raise ValueError("--adapter: several adapters need names, e.g. --adapter sql=runs/sql --adapter py=runs/py")
    if not named:
        return ({folder_name(values[0]): values[0]} if values else {}), False
    adapters = {}
    for value in values:
        name, path = value.split("=", 1)
        if not NAME.match(name):
            raise ValueError(f"--adapter {value}: the name {name!r} must be letters, digits, '.', '_', ':' or '-'")
        if name in adapters:
            raise ValueError(f"--adapter: the name {name!r} is given twice")
        adapters[name] = path
    return adapters, True


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(max_tokens=args.max_tokens, max_n=args.max_n, max_prompt_tokens=args.max_prompt_tokens,
                  max_request_bytes=args.max_request_bytes)


def scheduler_from_args(args: argparse.Namespace) -> Scheduler:
    return Scheduler(max_batch_rows=args.max_batch_size, wait_s=args.batch_wait_ms / 1000.0, max_pending=args.max_queue)


def served_models(args: argparse.Namespace) -> list[ServedModel]:
    """The models of the transformers engine, loaded with mftcoder's one inference loader."""
    from mftcoder.model.inference import load_for_inference, load_with_adapters

    adapters, named = parse_adapters(args.adapter)
    if not named:
        model, tokenizer = load_for_inference(args.model, args.adapter[0] if adapters else None, args.dtype,
                                              args.device, args.threads, args.force)
        name = args.served_model_name or folder_name(args.adapter[0] if adapters else args.model)
        return [ServedModel(name, model, tokenizer)]
    base_name = args.served_model_name or folder_name(args.model)
    if base_name in adapters:
        raise ValueError(f"--adapter: the name {base_name!r} is the base model's; choose another or set "
                         "--served_model_name")
    model, base_tokenizer, tokenizers = load_with_adapters(args.model, adapters, args.dtype, args.device,
                                                           args.threads, args.force)
    served = [ServedModel(base_name, model, base_tokenizer, None, multi_adapter=True)]
    return served + [ServedModel(n, model, tokenizers[n], n, multi_adapter=True) for n in adapters]


def build_service(args: argparse.Namespace) -> Service:
    limits = limits_from_args(args)  # bad limits fail before the model loads
    if args.engine == "vllm":
        from mftcoder.serve.vllm_engine import vllm_service

        return vllm_service(args, limits)
    scheduler = scheduler_from_args(args)
    return Service(served_models(args), scheduler, limits)
