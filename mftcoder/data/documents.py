"""Continued-pretraining documents: where they come from and how one becomes token ids.

A document is the `text` of a JSONL line or a whole `.txt` file. It becomes `encode(text) + [eos]` (the eos separates
it from the next document of the block stream, see blocks.py), or, for a `fim_rate` share of the documents, a
fill-in-the-middle sample (fim.py). Every token is trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from mftcoder.data.formats import DataFormatError

TEXT_SUFFIXES = (".txt",)  # a whole file is one document


def is_text_file(path: str) -> bool:
    return path.endswith(TEXT_SUFFIXES)


def decode_text_file(data: bytes, path: str) -> str:
    """A .txt document: UTF-8 (a leading BOM dropped), else an error naming the file and the first bad byte's line."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataFormatError(f"{path}:{line}", f"not valid UTF-8 (byte 0x{data[e.start]:02x} at byte {e.start + 1} "
                                                "of the file); a .txt document must be UTF-8 text (re-encode it, e.g. "
                                                "with iconv)") from None


def is_empty_text(obj: object) -> bool:
    """A JSONL document whose text is empty or whitespace only (counted as `empty`, not an error)."""
    return isinstance(obj, dict) and isinstance(obj.get("text"), str) and not obj["text"].strip()


@dataclass(frozen=True)
class FimSettings:
    rate: float
    spm_rate: float
    tokens: Optional[dict]  # the config's fim_tokens (None: the tokenizer's own sentinels)
    seed: int


class DocumentTokenizer:
    """text -> (token ids int32, how it was written: "plain" | "psm" | "spm")."""

    def __init__(self, tokenizer, fim: Optional[FimSettings] = None):
        self.tokenizer = tokenizer
        self.eos_id = document_eos_id(tokenizer)
        self.fim = None
        if fim is not None and fim.rate > 0:
            from mftcoder.data.fim import FimEncoder

            self.fim = FimEncoder(tokenizer, fim.tokens, fim.rate, fim.spm_rate, fim.seed, eos_id=self.eos_id)

    def encode(self, text: str) -> tuple[np.ndarray, str]:
        if self.fim is not None:
            ids, mode = self.fim.encode(text)
        else:
            ids, mode = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_id], "plain"
        return np.asarray(ids, dtype=np.int32), mode


def document_eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no eos token, which separates pretraining documents; set eos_token in the "
                         "model's tokenizer_config.json")
    return int(eos)
