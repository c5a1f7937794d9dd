"""Load the base model's tokenizer and settle eos/pad the way training and inference both expect."""
from __future__ import annotations


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path}: a fast (Rust) tokenizer is needed to map loss masks to tokens; "
                         "provide tokenizer.json")
    if tok.eos_token is None:
        raise ValueError(f"{path}: the tokenizer has no eos_token; set one in tokenizer_config.json")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # padding is never trained nor attended (right padding, causal), so eos is safe
    return tok
