"""Continued-pretraining rows: the documents of one task and split, concatenated in cache order (each document already
ends with the tokenizer's eos), cut into blocks of seq_length+1 tokens with a stride of seq_length.

Consecutive blocks share one token (the last of a block is the first of the next), so every next-token target of the
stream is trained exactly once and no token is lost: a long document is split across blocks, never truncated. The
final block is kept however short (it needs two tokens: one input, one target).

A block is a tuple of spans (document, start, stop), the pieces of the documents it holds. With `reset_position_ids`
each span becomes its own sample of the row (position ids restart at 0, attention stays inside the document: the
mechanism SFT packing uses), and a span of a single token, which holds no target, is left out; without it the spans
are joined into one sample (classic blocks, attention across document boundaries).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Span = tuple[int, int, int]  # (document index in its store, first token, end token) of one document piece


def block_starts(total_tokens: int, seq_length: int) -> range:
    """Stream offsets where the blocks of `total_tokens` tokens begin."""
    return range(0, max(int(total_tokens) - 1, 0), int(seq_length))


def build_blocks(lengths: Sequence[int], seq_length: int) -> list[tuple[Span, ...]]:
    """The blocks of documents with token counts `lengths`."""
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    total = int(ends[-1]) if len(ends) else 0
    blocks = []
    for start in block_starts(total, seq_length):
        stop = min(start + seq_length + 1, total)
        first = int(np.searchsorted(ends, start, side="right"))  # the document holding token `start`
        last = int(np.searchsorted(starts, stop, side="left"))  # documents starting before `stop`
        blocks.append(tuple((d, max(start, int(starts[d])) - int(starts[d]), min(stop, int(ends[d])) - int(starts[d]))
                            for d in range(first, last) if lengths[d] > 0))
    return blocks


def block_samples(spans: Sequence[Span], store, reset_position_ids: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """The samples (ids, mask) of one block's row (see the module docstring)."""
    pieces = []
    for d, a, b in spans:
        ids, mask = store[d]
        pieces.append((ids[a:b], mask[a:b]))
    if reset_position_ids:
        return [p for p in pieces if len(p[0]) >= 2]
    return [(np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces]))]


def block_stats(lengths: Sequence[int], seq_length: int) -> dict:
    """blocks and the tokens of the last one: (blocks - 1) x seq_length + last_block_tokens == tokens."""
    total = int(np.sum(np.asarray(lengths, dtype=np.int64)))
    starts = block_starts(total, seq_length)
    return {"blocks": len(starts), "last_block_tokens": total - starts[-1] if len(starts) else total}
