"""Batched generation: `mftcoder generate --model DIR [--adapter DIR] --input prompts.jsonl --output out.jsonl`.

Input lines are read like training data: chat_rounds, messages, ShareGPT conversations, Firefly conversation,
prompt/answer pairs (Alpaca's instruction + input too) or a prompt key alone, with an optional system. A
trailing assistant answer is left out of the prompt (it stays in the output line as the reference; an input
"output" field moves to "reference"). Prompts are
rendered with the model's chat template (the one training saved, so inference sees the training format token for
token) and tokenised with `add_special_tokens=False`; `--raw` sends a prompt/text field as plain text.
Decoding: `mftcoder.infer.engine`. Every input field is copied to the output line, which gains "output" (and
"outputs" when --n > 1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from mftcoder.errors import ArgumentParser, run_reporting_errors, with_example
from mftcoder.infer.engine import generate_texts
from mftcoder.infer.options import add_generation_args, load_from_args, settings_from_args
from mftcoder.infer.prompts import raw_prompt, record_messages, render_messages
from mftcoder.jsonl import iter_json_objects
from mftcoder.runtime import data_stdout

EXAMPLE = """\
printf '%s\\n' '{"id": 1, "prompt": "Write a function that reverses a string."}' > prompts.jsonl
mftcoder generate --model runs/demo-merged --input prompts.jsonl --output out.jsonl \\
    --max_new_tokens 128 --temperature 0.2 --top_k 40 --repetition_penalty 1.1
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
    parser.add_argument("--no_progress", action="store_true")
    return parser


def prompts_of(records: list[tuple[int, dict]], path: str, tokenizer, raw: bool) -> list[str]:
    """The prompt text of every input line (errors name path:line)."""
    if raw:
        return [raw_prompt(rec, f"{path}:{lineno}") for lineno, rec in records]
    return [render_messages(tokenizer, record_messages(rec, f"{path}:{lineno}")) for lineno, rec in records]


def run(args: argparse.Namespace) -> int:
    """Entry point for `mftcoder generate`: bad input gives one clear error line and exit status 2."""
    return run_reporting_errors(_run, args)


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    records = read_jsonl(args.input)
    if not args.raw:  # the lines are checked before the model loads
        for lineno, rec in records:
            record_messages(rec, f"{args.input}:{lineno}")
    with data_stdout() as stdout:  # with --output -, stdout carries the jsonl and nothing else
        model, tokenizer = load_from_args(args)
        prompts = prompts_of(records, args.input, tokenizer, args.raw)
        result = generate_texts(model, tokenizer, prompts, settings, add_special_tokens=args.raw,
                                progress=not args.no_progress)
        lines = output_lines(records, result.texts, settings.n)
        if args.output == "-":
            stdout.writelines(lines)
        else:
            _write_atomically(args.output, lines)
    print(f"generated {len(records)} x {settings.n} samples, {result.new_tokens} tokens in {result.seconds:.1f} s "
          f"({result.tokens_per_s:.1f} tokens/s) -> {args.output}", file=sys.stderr)
    return 0


def output_lines(records: list[tuple[int, dict]], texts: list[list[str]], n: int) -> list[str]:
    """Each input line with its answer: "output" (and "outputs" when n > 1)."""
    lines = []
    for (_, rec), answers in zip(records, texts):
        out = dict(rec)
        if "output" in out:  # an Alpaca answer in the input: kept as the reference, not overwritten
            out.setdefault("reference", out.pop("output"))
        out["output"] = answers[0]
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
