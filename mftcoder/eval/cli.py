"""`mftcoder eval <benchmark> ...`: one subcommand per benchmark, each implemented by its own module."""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from mftcoder.errors import run_reporting_errors


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str  # has build_parser(parser) and run(args) -> exit status; its docstring is the --help text
    help: str
    example: str  # shown at the end of its --help


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("humaneval", "mftcoder.eval.humaneval",
                  "code benchmarks (HumanEval, HumanEval-X, MultiPL-E, MBPP, any prompt/test jsonl): generate, "
                  "execute in the sandbox, pass@k",
                  "mftcoder eval humaneval --model runs/demo-merged --n 1 --temperature 0 --k 1 --output results.json\n"
                  "mftcoder eval humaneval --samples results.samples.jsonl --output rescored.json"),
        Benchmark("multiple-choice", "mftcoder.eval.multiple_choice",
                  "multiple-choice knowledge sets (MMLU, CMMLU, C-Eval, CSV / jsonl): accuracy by the "
                  "log-likelihood of each choice letter, zero- or k-shot, per subject",
                  "mftcoder eval multiple-choice --model runs/demo-merged --data mmlu/data --shots 5 --output mmlu.json\n"
                  "mftcoder eval multiple-choice --model runs/demo-merged --data ceval --split val --output ceval.json"),
    ]
}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="mftcoder eval", description=__doc__)
    sub = parser.add_subparsers(dest="benchmark", metavar="{" + ",".join(BENCHMARKS) + "}", required=True)
    for bench in BENCHMARKS.values():
        module = importlib.import_module(bench.module)
        child = sub.add_parser(bench.name, help=bench.help, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        module.build_parser(child)
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point for `mftcoder eval`: bad input gives one clear error line and exit status 2."""
    return run_reporting_errors(_run, args)


def _run(args: argparse.Namespace) -> int:
    if args.benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {args.benchmark!r}; available: {', '.join(BENCHMARKS)}")
    return importlib.import_module(BENCHMARKS[args.benchmark].module).run(args)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
