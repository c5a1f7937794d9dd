"""The `mftcoder` command: train, preprocess, config-schema, merge, generate, chat, eval."""
from __future__ import annotations

import argparse
import sys


def _add_train_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train_config", required=True, help="train_config JSON or YAML file")
    p.add_argument("--output_dir", help="override output_dir")
    p.add_argument("--pretrained_model_path", help="override pretrained_model_path")
    p.add_argument("--data_paths", help='override data_paths, e.g. "[data/a,data/b]"')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mftcoder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune on all tasks of a train_config (same as mftcoder/train.py)")
    _add_train_config_args(p)
    p.add_argument("--micro_batch_size", type=int, help="override per_device_train_batch_size")

    p = sub.add_parser("preprocess", help="tokenise the tasks into the cache and print the statistics")
    _add_train_config_args(p)
    p.add_argument("--cache_dir", help="override cache_dir")

    sub.add_parser("config-schema", help="print every train_config key with its type, default and meaning")

    for name, module in (("merge", "mftcoder.merge"), ("generate", "mftcoder.infer.generate"),
                         ("chat", "mftcoder.infer.chat")):
        p = sub.add_parser(name, help=f"see `mftcoder {name} --help`")
        p.set_defaults(_module=module)
        _lazy_build(module, p)

    p = sub.add_parser("eval", help="benchmarks: `mftcoder eval humaneval ...`")
    ev = p.add_subparsers(dest="benchmark", required=True)
    h = ev.add_parser("humaneval", help="HumanEval (or any jsonl problem set) pass@k")
    h.set_defaults(_module="mftcoder.eval.humaneval")
    _lazy_build("mftcoder.eval.humaneval", h)
    return parser


def _lazy_build(module: str, parser: argparse.ArgumentParser) -> None:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:  # a broken optional part must not take the whole CLI down
        parser.set_defaults(_import_error=str(e))
        return
    mod.build_parser(parser)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config-schema":
        from mftcoder.config import schema_text

        print(schema_text())
        return 0
    if args.command == "preprocess":
        from mftcoder.config import ConfigError
        from mftcoder.data.cache import PreprocessError
        from mftcoder.data import prepare

        try:
            return prepare.run(args)
        except (ConfigError, PreprocessError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.command == "train":
        from mftcoder.train import main as train_main

        return train_main(sys.argv[2:] if argv is None else argv[1:])
    if getattr(args, "_import_error", None):
        print(f"error: {args.command} is unavailable: {args._import_error}", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(args._module).run(args)


if __name__ == "__main__":
    sys.exit(main())
