"""Resize a causal LM for an extended tokenizer and initialise the new rows from the tokens they replace.

Each new token's embedding row (and, when the head is untied, its lm_head row) starts as the mean of the base rows
of the pieces the base tokenizer splits it into, so the model first reads a new token like the pieces it stands
for. Rows only added to reach `pad_to_multiple_of` (no token maps to them) get the mean of all base rows, a
deterministic choice (transformers' own mean resizing adds random noise). Base rows never change; the matrix never
shrinks (rows the model already had beyond its tokenizer are reused for new ids first). Tied input and output
embeddings stay one tensor.
"""
from __future__ import annotations

import json
import os

import torch

VOCAB_EXTENSION_FILE = "vocab_extension.json"


def rows_needed(current_rows: int, vocab_size: int, pad_to_multiple_of: int | None) -> int:
    rows = max(current_rows, vocab_size)
    if pad_to_multiple_of:
        rows = -(-rows // pad_to_multiple_of) * pad_to_multiple_of
    return rows


def embeddings_tied(model) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


@torch.no_grad()
def _init_rows(weight: torch.Tensor, base_rows: int, new: list, pad_rows: range) -> None:
    base = weight[:base_rows].float()
    for token in new:
        weight[token.id] = base[token.pieces].mean(0).to(weight.dtype)
    if len(pad_rows):
        weight[pad_rows.start:pad_rows.stop] = base.mean(0).to(weight.dtype)


def resize_for_extension(model, base_vocab_size: int, vocab_size: int, new: list,
                         pad_to_multiple_of: int | None = None) -> dict:
    """Resize `model` in place for a tokenizer of `vocab_size` whose ids from `base_vocab_size` on are `new`
    (objects with .id and .pieces); returns what was done (rows before/after, tied)."""
    tied = embeddings_tied(model)
    before = model.get_input_embeddings().num_embeddings
    if any(not t.pieces or max(t.pieces) >= base_vocab_size for t in new):
        raise ValueError("every new token needs base pieces below the base vocabulary size")
    rows = rows_needed(before, vocab_size, pad_to_multiple_of)
    if rows != before:
        model.resize_token_embeddings(rows, mean_resizing=False)
    pad_rows = range(max(before, vocab_size), rows)
    _init_rows(model.get_input_embeddings().weight, base_vocab_size, new, pad_rows)
    if not tied and model.get_output_embeddings() is not None:
        _init_rows(model.get_output_embeddings().weight, base_vocab_size, new, pad_rows)
    if tied and not embeddings_tied(model):
        raise RuntimeError("resizing untied the input and output embeddings")
    return {"embedding_rows_before": before, "embedding_rows": rows, "tied_embeddings": tied}


def read_vocab_extension(model_dir: str) -> dict | None:
    """The model's vocab_extension.json (written by `mftcoder extend-vocab`), or None when it has none."""
    from mftcoder.jsonl import read_json_object

    path = os.path.join(model_dir, VOCAB_EXTENSION_FILE)
    return read_json_object(path) if os.path.isfile(path) else None


def write_vocab_extension(model_dir: str, record: dict) -> str:
    path = os.path.join(model_dir, VOCAB_EXTENSION_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, ensure_ascii=False)
    return path


def _module_name(model, module) -> str:
    """The last component of `module`'s name in `model` ("embed_tokens", "lm_head")."""
    return next(name for name, m in model.named_modules() if m is module).rsplit(".", 1)[-1]


def new_token_ids(model_dir: str, rows: int) -> list[int]:
    """The ids `mftcoder extend-vocab` added to the model in `model_dir` (ConfigError when it was not extended)."""
    from mftcoder.config import ConfigError

    record = read_vocab_extension(model_dir)
    if record is None:
        raise ConfigError(f"train_new_tokens: {os.path.join(model_dir, VOCAB_EXTENSION_FILE)} does not exist; run "
                          "mftcoder extend-vocab first, or use modules_to_save to train whole embeddings")
    ids = record.get("new_token_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and 0 <= i < rows for i in ids):
        raise ConfigError(f"train_new_tokens: {model_dir}/{VOCAB_EXTENSION_FILE} lists no usable new_token_ids "
                          f"(ids below the model's {rows} embedding rows are needed)")
    return ids


def embedding_training_options(model, model_dir: str, train_new_tokens: bool,
                               modules_to_save: list[str] | None) -> dict:
    """Extra LoraConfig arguments for training embeddings under LoRA/QLoRA.

    train_new_tokens: only the rows of the added tokens train (peft `trainable_token_indices`): on the input
    embedding, and on lm_head too when it is untied; a tied lm_head follows the embedding. modules_to_save naming
    the embedding or lm_head of a tied model: `ensure_weight_tying`, so the one trained copy stays shared."""
    from mftcoder.config import ConfigError

    tied = embeddings_tied(model)
    embed = _module_name(model, model.get_input_embeddings())
    head = _module_name(model, model.get_output_embeddings()) if model.get_output_embeddings() is not None else None
    saved = set(modules_to_save or []) & {embed, head}
    if not train_new_tokens:
        return {"ensure_weight_tying": True} if saved and tied else {}
    if saved:
        raise ConfigError(f"train_new_tokens trains the new rows of {embed}/{head}; modules_to_save {sorted(saved)} "
                          "trains the whole matrices: use one of the two")
    ids = new_token_ids(model_dir, model.get_input_embeddings().num_embeddings)
    if tied or head is None:  # peft wraps a tied lm_head around the embedding's trainable rows
        return {"trainable_token_indices": ids}
    return {"trainable_token_indices": {embed: ids, head: ids}}
