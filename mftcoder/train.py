"""Entry point: `accelerate launch --config_file ds.yaml mftcoder/train.py --train_config cfg.json`.

Also runs as `python mftcoder/train.py ...`, `python -m mftcoder.train ...` and `mftcoder train ...`; the options are
defined once here (`build_parser`) and `mftcoder train` reuses them, so the two can never differ.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    # run as a script, Python put mftcoder/ first on sys.path, where our config.py, data/, model/ ... could shadow
    # top-level modules of dependencies: put the repo root there instead
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

from mftcoder.errors import ArgumentParser, exit_quietly_on_broken_pipe, report, with_example  # noqa: E402
from mftcoder.runtime import add_verbose_flag  # noqa: E402

EXAMPLE = """\
mftcoder train --train_config configs/example_lora.json --pretrained_model_path ~/models/base --max_train_steps 10
mftcoder train --train_config configs/example_lora.json --resume_from_checkpoint latest
accelerate launch --config_file configs/accelerate/ds_zero2.yaml mftcoder/train.py \\
    --train_config configs/example_lora.json
"""

# command-line options that override the train_config key of the same name
OVERRIDE_KEYS = ("output_dir", "tb_dir", "pretrained_model_path", "data_paths", "model_type", "resume_from_checkpoint",
                 "max_train_steps")


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The options every train_config command has (train and preprocess)."""
    p.add_argument("--train_config", required=True, help="train_config JSON or YAML file")
    p.add_argument("--output_dir", help="override output_dir")
    p.add_argument("--pretrained_model_path", help="override pretrained_model_path")
    p.add_argument("--data_paths", help='override data_paths, e.g. "[data/a,data/b]"')


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The train options; `mftcoder train` builds its subcommand with this same function."""
    parser = parser or ArgumentParser(prog="mftcoder train", description="mftcoder: multi-task fine-tuning")
    add_config_args(parser)
    parser.add_argument("--tb_dir", help="override tb_dir")
    parser.add_argument("--micro_batch_size", type=int,
                        help="override per_device_train_batch_size and per_device_eval_batch_size")
    parser.add_argument("--model_type", help="override model_type")
    parser.add_argument("--resume_from_checkpoint",
                        help='override resume_from_checkpoint: a checkpoint folder or "latest"')
    parser.add_argument("--max_train_steps", type=int, help="override max_train_steps")
    parser.add_argument("--distributed_type", help="accepted for MFTCoder compatibility; the accelerate config decides")
    add_verbose_flag(parser)
    return with_example(parser, EXAMPLE)


def run(args: argparse.Namespace) -> int:
    from mftcoder.runtime import configure_logging

    configure_logging(getattr(args, "verbose", False))  # library noise hidden unless --verbose
    from mftcoder.config import ConfigError, load_config
    from mftcoder.data.cache import PreprocessError

    overrides = {k: getattr(args, k) for k in OVERRIDE_KEYS}
    if args.micro_batch_size is not None:
        overrides["per_device_train_batch_size"] = overrides["per_device_eval_batch_size"] = args.micro_batch_size
    try:
        cfg = load_config(args.train_config, overrides=overrides)
        from mftcoder.trainer.loop import train

        train(cfg)
    except (ConfigError, PreprocessError) as e:
        return report(e)
    return 0


def main(argv=None) -> int:
    return exit_quietly_on_broken_pipe(lambda: run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
