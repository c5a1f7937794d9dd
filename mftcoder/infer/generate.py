"""Batched generation: `mftcoder generate --model DIR [--adapter DIR] --input prompts.jsonl --output out.jsonl`.

Input lines are read like training data: chat_rounds, messages, ShareGPT conversations, Firefly conversation,
prompt/answer pairs (Alpaca's instruction + input too) or a prompt key alone, with an optional system. A
trailing assistant answer is left out of the prompt (it stays in the output line as the reference; an input
"output" field moves to "reference"). Prompts are
rendered with the model's chat template (the one training saved, so inference sees the training format token for
token) and tokenised with `add_special_tokens=False`; `--raw` sends a prompt/text field as plain text.
Decoding: `mftcoder.infer.engine`. Every input field is copied to the output line, which gains "output" (and
"outputs" when --n > 1).

`--fim` fills a hole instead: each line has "prefix" and "suffix", the prompt is `[PRE] prefix [SUF] suffix [MID]`
with the model's own fill-in-the-middle sentinels (or `--fim_tokens`), no chat template, and the output line gains
"middle" (the generated code, stopped at eos or any sentinel; an input "middle" moves to "reference").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from mftcoder.data.fim import fim_prompt_ids, parse_fim_tokens, resolve_fim_tokens
from mftcoder.errors import ArgumentParser, run_reporting_errors, with_example
from mftcoder.infer.engine import generate_texts
from mftcoder.infer.options import add_generation_args, load_from_args, settings_from_args
from mftcoder.infer.prompts import fim_parts, raw_prompt, record_messages, render_messages
from mftcoder.jsonl import iter_json_objects
from mftcoder.runtime import data_stdout

EXAMPLE = """\
printf '%s\\n' '{"id": 1, "prompt": "Write a function that reverses a string."}' > prompts.jsonl
mftcoder generate --model runs/demo-merged --input prompts.jsonl --output out.jsonl \\
    --max_new_tokens 128 --temperature 0.2 --top_k 40 --repetition_penalty 1.1
printf '%s\\n' '{"id": 2, "prefix": "def add(a, b):\\n    ", "suffix": "\\n\\nprint(add(1, 2))\\n"}' > holes.jsonl
mftcoder generate --model Qwen2.5-Coder-0.5B --input holes.jsonl --output filled.jsonl --fim --max_new_tokens 64
"""


def read_jsonl(path: str) -> list[tuple[int, dict]]:
    return list(iter_json_objects(path, "input"))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or ArgumentParser(prog="mftcoder generate", description=__doc__.split("\n\n")[0])
    with_example(parser, EXAMPLE)
    add_generation_args(parser)
    parser.add_argument("--input", required=True, help="prompts jsonl(.gz), one line in any training format")
    parser.add_argument("--output", required=True, help="output jsonl (input fields + output); - for stdout")
    parser.add_argument("--raw", action="store_true", help="send the prompt text as is, without the chat template")
    parser.add_argument("--fim", action="store_true",
                        help='fill in the middle: lines {"prefix": .., "suffix": ..}; the output gains "middle"')
    parser.add_argument("--fim_tokens", default=None, metavar="JSON",
                        help='--fim sentinels when the tokenizer\'s own are not recognised: '
                             '\'{"prefix": "<fim_prefix>", "middle": "<fim_middle>", "suffix": "<fim_suffix>"}\'')
    parser.add_argument("--no_progress", action="store_true")
    return parser


def prompts_of(records: list[tuple[int, dict]], path: str, tokenizer, raw: bool) -> list[str]:
    """The prompt text of every input line (errors name path:line)."""
    if raw:
        return [raw_prompt(rec, f"{path}:{lineno}") for lineno, rec in records]
    return [render_messages(tokenizer, record_messages(rec, f"{path}:{lineno}")) for lineno, rec in records]


def fim_prompts_of(records: list[tuple[int, dict]], path: str, tokenizer, fim_tokens=None):
    """(the prompt ids of every --fim line, the sentinels used); errors name path:line or --fim_tokens."""
    tokens = resolve_fim_tokens(tokenizer, fim_tokens, key="--fim_tokens")
    return [fim_prompt_ids(tokenizer, tokens, *fim_parts(rec, f"{path}:{lineno}")) for lineno, rec in records], tokens


def _check_lines(records: list[tuple[int, dict]], args: argparse.Namespace) -> None:
    """Bad lines fail before the model loads."""
    for lineno, rec in records:
        if args.fim:
            fim_parts(rec, f"{args.input}:{lineno}")
        elif not args.raw:
            record_messages(rec, f"{args.input}:{lineno}")


def run(args: argparse.Namespace) -> int:
    """Entry point for `mftcoder generate`: bad input gives one clear error line and exit status 2."""
    return run_reporting_errors(_run, args)


def _run(args: argparse.Namespace) -> int:
    if args.fim and args.raw:
        raise ValueError("--fim builds its own prompt from prefix and suffix; leave out --raw")
    if args.fim_tokens is not None and not args.fim:
        raise ValueError("--fim_tokens only applies with --fim")
    fim_tokens = parse_fim_tokens(args.fim_tokens)
    settings = settings_from_args(args)
    records = read_jsonl(args.input)
    _check_lines(records, args)
    with data_stdout() as stdout:  # with --output -, stdout carries the jsonl and nothing else
        model, tokenizer = load_from_args(args)
        if args.fim:
            prompts, tokens = fim_prompts_of(records, args.input, tokenizer, fim_tokens)
            settings = replace(settings, stop=settings.stop + tokens.stops)
        else:
            prompts = prompts_of(records, args.input, tokenizer, args.raw)
        result = generate_texts(model, tokenizer, prompts, settings, add_special_tokens=args.raw,
                                progress=not args.no_progress)
        lines = output_lines(records, result.texts, settings.n, answer_key="middle" if args.fim else None)
        if args.output == "-":
            stdout.writelines(lines)
        else:
            _write_atomically(args.output, lines)
    print(f"generated {len(records)} x {settings.n} samples, {result.new_tokens} tokens in {result.seconds:.1f} s "
          f"({result.tokens_per_s:.1f} tokens/s) -> {args.output}", file=sys.stderr)
    return 0


def output_lines(records: list[tuple[int, dict]], texts: list[list[str]], n: int,
                 answer_key: str | None = None) -> list[str]:
    """Each input line with its answer: "output" (and "outputs" when n > 1), and under `answer_key` too (--fim's
    "middle")."""
    lines = []
    for (_, rec), answers in zip(records, texts):
        out = dict(rec)
        for key in ("output", answer_key):  # an answer in the input (Alpaca's, a FIM benchmark's) becomes the reference
            if key and key in out:
                out.setdefault("reference", out.pop(key))
        out["output"] = answers[0]
        if answer_key:
            out[answer_key] = answers[0]
        if n > 1:
            out["outputs"] = answers
        lines.append(json.dumps(out, ensure_ascii=False) + "\n")
    return lines


def _write_atomically(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
