"""`mftcoder extend-vocab`: a base model with more tokens, as a plain HF model directory.

    mftcoder extend-vocab --base DIR --output DIR (--tokens FILE | --train_corpus PATH --new_tokens N)
                          [--pad_to_multiple_of N]

Base token ids never change (see `mftcoder.model.vocab_tokenizer`); new rows start as the mean of the rows of
the base pieces they replace (see `mftcoder.model.vocab_model`). The output holds the model (safetensors), its
tokenizer with the chat template, and `vocab_extension.json` (base vocabulary size, new ids and strings, how they
were made), which training reads for `train_new_tokens`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

from mftcoder.errors import USER_ERRORS, ArgumentParser, run_reporting_errors, with_example
from mftcoder.model import vocab_tokenizer as vt
from mftcoder.model.vocab_model import resize_for_extension, write_vocab_extension

EXAMPLE = """\
mftcoder extend-vocab --base ~/models/base --output runs/base-zh --train_corpus data/zh_corpus --new_tokens 2000
mftcoder extend-vocab --base ~/models/base --output runs/base-fim --tokens tokens.txt --pad_to_multiple_of 64
"""


def _tokenizer_from_json(base_dir: str, staging: str):
    """A loader that writes a tokenizer.json dict next to a copy of the base tokenizer files and loads it back with
    the base's tokenizer class (its special tokens and chat template kept)."""
    from transformers import AutoTokenizer

    def build(tokenizer_json: dict):
        folder = os.path.join(staging, "tokenizer")
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
        with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tokenizer_json, f, ensure_ascii=False)
        return AutoTokenizer.from_pretrained(folder)
    return build


def extend_tokenizer(base_dir: str, staging: str, tokens: list[str] | None = None, corpus: list[str] | None = None,
                     new_tokens: int | None = None) -> vt.Extension:
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(base_dir)
    if not getattr(base, "is_fast", False):
        raise ValueError(f"{base_dir}: extend-vocab needs a fast tokenizer (tokenizer.json)")
    if tokens is not None:
        return vt.add_listed_tokens(base, tokens, lambda: AutoTokenizer.from_pretrained(base_dir))
    return vt.add_trained_tokens(base, corpus, new_tokens, _tokenizer_from_json(base_dir, staging))


def _record(ext: vt.Extension, args: argparse.Namespace, resized: dict, counts: dict) -> dict:
    return {"base": os.path.abspath(args.base), "method": ext.method,
            "source": os.path.abspath(args.tokens or args.train_corpus), "base_vocab_size": ext.base_vocab_size,
            "vocab_size": len(ext.tokenizer), "pad_to_multiple_of": args.pad_to_multiple_of, **resized,
            "new_token_ids": [t.id for t in ext.new], "new_tokens": [t.token for t in ext.new],
            "new_token_pieces": [t.pieces for t in ext.new],
            "new_token_merges": [list(t.merge) for t in ext.new] if ext.method == "bpe" else None,
            "skipped_existing": ext.skipped_existing,
            "merges_added": ext.merges_added, **counts}


def extend_vocab(args: argparse.Namespace) -> dict:
    """Build the extended model directory `args.output`; returns the vocab_extension.json record."""
    from transformers import AutoModelForCausalLM

    from mftcoder.model.inference import load_config

    _check_output(args.output)
    config = load_config(args.base)
    tokens = vt.read_token_file(args.tokens) if args.tokens else None
    corpus = list(vt.iter_corpus(args.train_corpus)) if args.train_corpus else None
    if corpus is not None and not corpus:
        raise ValueError(f"--train_corpus: {args.train_corpus} holds only empty documents")
    output = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=os.path.dirname(output))
    try:
        ext = extend_tokenizer(args.base, tmp, tokens, corpus, args.new_tokens)
        base_tok = _load_tokenizer(args.base)
        counts = vt.corpus_counts(base_tok, ext.tokenizer, corpus, [t.id for t in ext.new]) if corpus else {}
        model = AutoModelForCausalLM.from_pretrained(args.base, dtype=getattr(config, "dtype", None) or "auto")
        resized = resize_for_extension(model, ext.base_vocab_size, len(ext.tokenizer), ext.new,
                                       args.pad_to_multiple_of)
        final = os.path.join(tmp, "model")
        model.save_pretrained(final, safe_serialization=True)
        ext.tokenizer.save_pretrained(final)
        record = _record(ext, args, resized, counts)
        write_vocab_extension(final, record)
        if os.path.isdir(output):
            os.rmdir(output)  # empty (checked above): made beforehand by the caller
        os.rename(final, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _check_output(output: str) -> None:
    if os.path.isfile(output) or (os.path.isdir(output) and os.listdir(output)):
        raise FileExistsError(f"--output {output} exists and is not empty; choose a new directory")


def summary(record: dict) -> str:
    lines = [f"added {len(record['new_token_ids'])} tokens (ids {record['base_vocab_size']}.."
             f"{record['vocab_size'] - 1}), skipped {len(record['skipped_existing'])} already in the base vocabulary"]
    if record["skipped_existing"]:
        lines.append("  skipped: " + ", ".join(map(repr, record["skipped_existing"][:20]))
                     + (" ..." if len(record["skipped_existing"]) > 20 else ""))
    if "corpus_tokens_before" in record:
        before, after = record["corpus_tokens_before"], record["corpus_tokens_after"]
        lines.append(f"training corpus: {before} tokens before, {after} after (ratio {after / before:.3f}); "
                     f"{record['new_tokens_used_in_corpus']} of the new tokens occur in its new encoding")
    lines.append(f"embedding rows: {record['embedding_rows_before']} -> {record['embedding_rows']} "
                 f"({'tied' if record['tied_embeddings'] else 'untied'} input/output embeddings)")
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or ArgumentParser(prog="mftcoder extend-vocab", description=__doc__.split("\n\n")[0])
    with_example(parser, EXAMPLE)
    parser.add_argument("--base", required=True, help="base model directory (config.json, weights, tokenizer.json), "
                                                      "or builtin:smollm2-135m-instruct")
    parser.add_argument("--output", required=True, help="new directory for the extended model (must not exist, "
                                                         "or be empty)")
    parser.add_argument("--tokens", help="file of tokens to add, one per line (UTF-8; blank lines skipped)")
    parser.add_argument("--train_corpus", help="a .txt file (one document), a .jsonl file of {\"text\": ...} lines, "
                                               "or a folder of them: train a BPE on it and add its new tokens")
    parser.add_argument("--new_tokens", type=int, help="with --train_corpus: how many tokens to add")
    parser.add_argument("--pad_to_multiple_of", type=int,
                        help="round the embedding rows up to a multiple of N (extra rows: mean of the base rows)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    if bool(args.tokens) == bool(args.train_corpus):
        raise ValueError("give exactly one of --tokens FILE or --train_corpus PATH (with --new_tokens N)")
    if args.train_corpus and args.new_tokens is None:
        raise ValueError("--train_corpus needs --new_tokens N (how many tokens to add, N > 0)")
    if args.new_tokens is not None and args.new_tokens <= 0:
        raise ValueError(f"--new_tokens must be > 0, got {args.new_tokens}")
    if args.tokens and args.new_tokens is not None:
        raise ValueError("--new_tokens applies to --train_corpus; --tokens adds every token of the file")
    if args.pad_to_multiple_of is not None and args.pad_to_multiple_of <= 0:
        raise ValueError(f"--pad_to_multiple_of must be > 0, got {args.pad_to_multiple_of}")


def run(args: argparse.Namespace) -> int:
    """Entry point for `mftcoder extend-vocab`: bad input gives one clear error line and exit status 2."""
    return run_reporting_errors(_run, args, USER_ERRORS + (FileExistsError,))


def _run(args: argparse.Namespace) -> int:
    from mftcoder.config import resolve_builtin

    check_args(args)
    args.base = resolve_builtin(args.base, "--base")  # "builtin:smollm2-135m-instruct" is converted once, then a folder
    record = extend_vocab(args)  # ConfigError (a bad --base) is a ValueError too
    print(summary(record))
    print(f"saved {os.path.abspath(args.output)}")
    return 0
