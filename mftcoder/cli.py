"""The `mftcoder` command: train, preprocess, config-schema, merge, extend-vocab, generate, chat, serve, report,
eval."""
from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata

from mftcoder import __version__
from mftcoder import train as train_cli
from mftcoder.runtime import add_verbose_flag, configure_logging
from mftcoder.eval.cli import BENCHMARKS
from mftcoder.errors import ArgumentParser, exit_quietly_on_broken_pipe, report, with_example

# the libraries whose versions decide how a run behaves; reported by `mftcoder --version`
VERSIONED_DEPENDENCIES = ("torch", "transformers", "peft", "accelerate", "deepspeed")

# subcommands implemented in other modules: (name, module, help, example)
MODULE_COMMANDS = (
    ("merge", "mftcoder.merge", "merge a LoRA/QLoRA adapter into its base model",
     "mftcoder merge --base ~/models/base --adapter runs/demo --output runs/demo-merged"),
    ("extend-vocab", "mftcoder.model.vocab", "add tokens to a base model (a token list or a BPE trained on a corpus)",
     "mftcoder extend-vocab --base ~/models/base --output runs/base-ext --train_corpus corpus/ --new_tokens 2000"),
    ("generate", "mftcoder.infer.generate", "answer a jsonl file of prompts",
     "mftcoder generate --model runs/demo-merged --input prompts.jsonl --output answers.jsonl --temperature 0"),
    ("chat", "mftcoder.infer.chat", "chat with a model in the terminal",
     'mftcoder chat --model runs/demo-merged --system "You are a coding assistant."'),
    ("serve", "mftcoder.serve.command", "serve a model: OpenAI-compatible API and a web chat",
     "mftcoder serve --model runs/demo-merged --port 8000"),
    ("report", "mftcoder.report.command", "plots and tables of a training run (or runs compared) as one HTML page",
     "mftcoder report runs/demo --compare runs/sft"),
)


def version_text() -> str:
    """mftcoder's version and those of the libraries it runs on, read from package metadata (nothing imported)."""
    lines = [f"mftcoder {__version__}", f"python {sys.version.split()[0]}"]
    for name in VERSIONED_DEPENDENCIES:
        try:
            lines.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{name} not installed")
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def _add(sub, name: str, help: str, example: str, build=None) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with an example: the building module's own, else `example`."""
    parser = sub.add_parser(name, help=help, description=help)
    if build is not None:
        build(parser)
    add_verbose_flag(parser)
    if parser.epilog:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the module's example lines as written
        return parser
    return with_example(parser, example)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="mftcoder", description=__doc__)
    parser.add_argument("--version", action=_VersionAction,
                        help="print the versions of mftcoder, torch, transformers, peft, accelerate, deepspeed")
    sub = parser.add_subparsers(dest="command", required=True)

    _add(sub, "train", "fine-tune on all tasks of a train_config (same options as mftcoder/train.py)",
         train_cli.EXAMPLE, train_cli.build_parser)
    _add(sub, "preprocess", "tokenise the tasks into the cache and print the statistics",
         "mftcoder preprocess --train_config configs/example_lora.json --pretrained_model_path ~/models/base",
         _build_preprocess)
    _add(sub, "config-schema", "print every train_config key with its type, default and meaning",
         "mftcoder config-schema | grep -A1 '^data_split'")
    for name, module, help, example in MODULE_COMMANDS:
        _add(sub, name, help, example, lambda p, module=module: _lazy_build(module, p))

    p = _add(sub, "eval", "benchmarks: `mftcoder eval {" + ",".join(BENCHMARKS) + "} ...`",
             "\n".join(b.example for b in BENCHMARKS.values()))
    ev = p.add_subparsers(dest="benchmark", required=True)
    for bench in BENCHMARKS.values():
        _add(ev, bench.name, bench.help, bench.example, lambda p, module=bench.module: _lazy_build(module, p))
    return parser


def _build_preprocess(parser: argparse.ArgumentParser) -> None:
    train_cli.add_config_args(parser)
    parser.add_argument("--cache_dir", help="override cache_dir")


def _lazy_build(module: str, parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(_module=module)
    try:
        mod = importlib.import_module(module)
    except ImportError as e:  # a broken optional part must not take the whole CLI down
        parser.set_defaults(_import_error=str(e))
        return
    mod.build_parser(parser)


def _config_schema(args: argparse.Namespace) -> int:
    from mftcoder.config import schema_text

    print(schema_text())
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from mftcoder.config import ConfigError
    from mftcoder.data import prepare
    from mftcoder.data.cache import PreprocessError

    try:
        return prepare.run(args)
    except (ConfigError, PreprocessError) as e:
        return report(e)


COMMANDS = {"config-schema": _config_schema, "preprocess": _preprocess, "train": train_cli.run}


def _dispatch(args: argparse.Namespace) -> int:
    configure_logging(getattr(args, "verbose", False))
    if args.command in COMMANDS:
        return COMMANDS[args.command](args)
    if getattr(args, "_import_error", None):
        return report(f"{args.command} is unavailable: {args._import_error}")
    return importlib.import_module(args._module).run(args)


def main(argv=None) -> int:
    return exit_quietly_on_broken_pipe(lambda: _dispatch(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
