"""`mftcoder eval <benchmark> ...`: one subcommand per benchmark (HumanEval and jsonl sets of the same shape)."""
from __future__ import annotations

import argparse
import sys

from mftcoder.errors import run_reporting_errors


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    from mftcoder.eval import humaneval

    parser = parser or argparse.ArgumentParser(prog="mftcoder eval", description=__doc__)
    sub = parser.add_subparsers(dest="benchmark", metavar="{humaneval}", required=True)
    he = sub.add_parser("humaneval", help="HumanEval / any prompt-test-entry_point jsonl: generate, execute, pass@k",
                        description=humaneval.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    humaneval.build_parser(he)
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point for `mftcoder eval`: bad input gives one clear error line and exit status 2."""
    return run_reporting_errors(_run, args)


def _run(args: argparse.Namespace) -> int:
    if args.benchmark == "humaneval":
        from mftcoder.eval import humaneval

        return humaneval.run(args)
    raise ValueError(f"unknown benchmark {args.benchmark!r}; available: humaneval")


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
