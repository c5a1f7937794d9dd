"""One way for every subcommand to turn bad input into a single clear error line and exit status 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError)


def run_reporting_errors(command: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                         errors: tuple[type[Exception], ...] = USER_ERRORS) -> int:
    try:
        return run(args)
    except errors as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        return 2
