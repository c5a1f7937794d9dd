"""One error style for every command: bad input gives `error: <what>` on stderr and exit status 2.

Also the argument parser that says it the same way, and the guard that ends a data-printing command quietly when
its reader goes away (`mftcoder config-schema | head`).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError)
EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process killed by SIGPIPE (128 + 13)


def report(message: object) -> int:
    """Print `error: <message>` on stderr and return the exit status for bad input."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run_reporting_errors(run: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                         errors: tuple[type[Exception], ...] = USER_ERRORS) -> int:
    """Run a subcommand; the expected kinds of bad input become `error: ...` and exit 2 (the message itself names
    the file, key or option at fault)."""
    try:
        return run(args)
    except errors as e:
        return report(e)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with our error line (`error: ...`, not `<prog>: error: ...`); exit status stays 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"error: {message}\n")


def with_example(parser: argparse.ArgumentParser, example: str) -> argparse.ArgumentParser:
    """End the parser's --help with a runnable example, kept as written (no re-wrapping)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "example:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines())
    return parser


def exit_quietly_on_broken_pipe(main: Callable[[], int]) -> int:
    """Run `main`; if stdout's reader has gone (`| head`), stop without a traceback and with SIGPIPE's status."""
    try:
        try:
            return main()
        finally:  # surface a late EPIPE here (argparse's --version/--help exits included), not at interpreter exit
            sys.stdout.flush()
    except BrokenPipeError:
        # later flushes (at exit) must not fail again: point stdout at /dev/null
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (captured in tests)
            pass
        return EXIT_BROKEN_PIPE
