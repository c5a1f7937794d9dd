"""Load a tokenizer and settle eos/pad the way training and inference both expect (one function for both)."""
from __future__ import annotations

import os

from mftcoder.config import tokenizer_files_problem


def has_tokenizer_files(path: str, trust_remote_code: bool = False) -> bool:
    return tokenizer_files_problem(path, trust_remote_code) is None


def load_tokenizer(path: str, trust_remote_code: bool = False, *, adapter: str | None = None,
                   padding_side: str | None = None, require_fast: bool = True):
    """The tokenizer of `path`, or of `adapter` when that folder carries its own (training saves it beside the
    adapter, with its chat template). pad falls back to eos; `padding_side="left"` for generation.

    A folder without tokenizer files is a ValueError that says so (transformers would blame sentencepiece or
    tiktoken instead). Training needs a fast tokenizer (character offsets map loss masks to tokens)."""
    from transformers import AutoTokenizer

    source = adapter if adapter and has_tokenizer_files(adapter, trust_remote_code) else path
    problem = tokenizer_files_problem(source, trust_remote_code) if os.path.isdir(source) else None
    if problem:
        where = f" (nor in the adapter folder {adapter!r})" if adapter and source != adapter else ""
        raise ValueError(f"{problem}{where}; save the tokenizer there with tokenizer.save_pretrained(...) or copy "
                         "it from the base model")
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if require_fast and not getattr(tok, "is_fast", False):
        raise ValueError(f"{source}: a fast (Rust) tokenizer is needed to map loss masks to tokens; "
                         "provide tokenizer.json")
    if tok.eos_token is None:
        raise ValueError(f"{source}: the tokenizer has no eos_token; set one in tokenizer_config.json")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # padding is never trained nor attended (right padding, causal), so eos is safe
    if padding_side:
        tok.padding_side = padding_side
    return tok
