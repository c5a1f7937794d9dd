"""`mftcoder report RUN_DIR [--compare RUN_DIR ...]`: one self-contained HTML page of a training run's curves and
tables (or several runs overlaid, task by task), with each figure also as a PNG."""
from __future__ import annotations

import argparse
import os
import sys

from mftcoder.errors import ArgumentParser, run_reporting_errors, with_example
from mftcoder.report.runs import ReportError, load_run

EXAMPLE = """\
mftcoder report runs/demo
mftcoder report runs/mft --compare runs/sft --name MFT SFT --out compare.html
"""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or ArgumentParser(prog="mftcoder report", description=__doc__.split("\n\n")[0])
    with_example(parser, EXAMPLE)
    parser.add_argument("run_dir", help="a training output_dir (metrics.jsonl, data_stats.json, train_config.json)")
    parser.add_argument("--compare", nargs="+", default=[], metavar="RUN_DIR",
                        help="more run dirs to overlay on the same figures (one panel per task, one line per run)")
    parser.add_argument("--out", help="the HTML file to write (default: RUN_DIR/report.html)")
    parser.add_argument("--png_dir", help="folder for the PNGs (default: <out stem>_files beside --out)")
    parser.add_argument("--name", nargs="+", default=[], metavar="NAME",
                        help="run names for the legends, in order: RUN_DIR's, then each --compare's "
                             "(default: the folder names)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point: bad input gives one `error:` line and exit status 2."""
    return run_reporting_errors(_run, args)


def _load_runs(args: argparse.Namespace):
    dirs = [args.run_dir, *args.compare]
    if len(args.name) > len(dirs):
        raise ReportError(f"--name: {len(args.name)} names for {len(dirs)} run dir(s); give at most one per run")
    names = args.name + [None] * (len(dirs) - len(args.name))
    runs = [load_run(d, n) for d, n in zip(dirs, names)]
    seen = [r.name for r in runs]
    if len(set(seen)) < len(seen):
        raise ReportError(f"--name: the runs are named {seen}; give each its own name (--name A B ...)")
    return runs


def _run(args: argparse.Namespace) -> int:
    from mftcoder.report.build import write_report

    runs = _load_runs(args)
    out = args.out or os.path.join(args.run_dir, "report.html")
    png_dir = args.png_dir or os.path.splitext(out)[0] + "_files"
    written = write_report(runs, out, png_dir)
    for name, warnings in written.warnings.items():
        for w in warnings:
            print(f"warning: {name}: {w}", file=sys.stderr)
    print(f"wrote {written.html} ({len(written.pngs)} figures; PNGs in {png_dir})")
    return 0
