"""Entry point: `accelerate launch --config_file ds.yaml mftcoder/train.py --train_config cfg.json`.

Also runs as `python mftcoder/train.py ...`, `python -m mftcoder.train ...` and `mftcoder train ...`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

if __package__ in (None, ""):
    # run as a script, Python put mftcoder/ first on sys.path, where our config.py, data/, model/ ... could shadow
    # top-level modules of dependencies: put the repo root there instead
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="mftcoder: multi-task fine-tuning")
    p.add_argument("--train_config", required=True, help="train_config JSON or YAML")
    p.add_argument("--output_dir")
    p.add_argument("--tb_dir")
    p.add_argument("--pretrained_model_path")
    p.add_argument("--data_paths")
    p.add_argument("--micro_batch_size", type=int, help="overrides per_device_train_batch_size and per_device_eval_batch_size")
    p.add_argument("--model_type")
    p.add_argument("--resume_from_checkpoint")
    p.add_argument("--max_train_steps", type=int)
    p.add_argument("--distributed_type", help="accepted for MFTCoder compatibility; the accelerate config decides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("accelerate.checkpointing", "accelerate.accelerator", "bitsandbytes", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mftcoder.config import ConfigError, load_config
    from mftcoder.data.cache import PreprocessError

    overrides = {k: getattr(args, k) for k in ("output_dir", "tb_dir", "pretrained_model_path", "data_paths",
                                               "model_type", "resume_from_checkpoint", "max_train_steps")}
    if args.micro_batch_size:
        overrides["per_device_train_batch_size"] = overrides["per_device_eval_batch_size"] = args.micro_batch_size
    try:
        cfg = load_config(args.train_config, overrides=overrides)
        from mftcoder.trainer.loop import train

        train(cfg)
    except (ConfigError, PreprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
