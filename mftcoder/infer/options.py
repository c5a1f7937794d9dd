"""The command-line options that generate, chat and the evals share, and the settings they make."""
from __future__ import annotations

import argparse

from mftcoder.infer.engine import GenerationSettings
from mftcoder.model.inference import DTYPE_CHOICES


def add_generation_args(parser: argparse.ArgumentParser, max_new_tokens: int = 512, stop: bool = True) -> None:
    parser.add_argument("--model", required=True, help="model directory (a merged model or a base model)")
    parser.add_argument("--adapter", default=None, help="LoRA/QLoRA adapter directory applied on --model")
    parser.add_argument("--force", action="store_true",
                        help="apply --adapter even where it looks trained on another base (warns instead of refusing)")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="weights dtype (auto: as saved; fp16 becomes fp32 on CPU)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling: keep the most likely tokens "
                                                                 "up to this probability mass")
    parser.add_argument("--top_k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    parser.add_argument("--repetition_penalty", type=float, default=1.0,
                        help="> 1 discourages tokens already in the prompt or answer (1 = off; 1.1-1.3 is usual)")
    parser.add_argument("--num_beams", type=int, default=1, help="beam search with this many beams (temperature 0)")
    parser.add_argument("--n", type=int, default=1, help="samples per prompt (needs --temperature > 0 when > 1)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is often fastest on a busy machine)")
    if stop:
        parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def settings_from_args(args: argparse.Namespace, **overrides) -> GenerationSettings:
    """GenerationSettings from the options above; `overrides` win (chat fixes n and batch_size to 1)."""
    values = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                  top_k=args.top_k, repetition_penalty=args.repetition_penalty, num_beams=args.num_beams, n=args.n,
                  batch_size=args.batch_size, seed=args.seed, stop=tuple(getattr(args, "stop", None) or ()))
    return GenerationSettings(**(values | overrides))


def load_from_args(args: argparse.Namespace):
    """(model, tokenizer) for the --model / --adapter / --dtype / --device / --threads / --force options."""
    from mftcoder.model.inference import load_for_inference

    return load_for_inference(args.model, args.adapter, args.dtype, args.device, args.threads, args.force)
