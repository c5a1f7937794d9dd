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


class DocumentBlocks(Sequence):
    """The blocks of documents with token counts `lengths`, computed when asked for (a corpus of 500k blocks keeps
    two arrays of document offsets, not 500k tuples): blocks[k] is block k's tuple of spans."""

    def __init__(self, lengths: Sequence[int], seq_length: int):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.ends = np.cumsum(self.lengths)
        self.starts = self.ends - self.lengths
        self.seq_length = int(seq_length)
        self._starts = block_starts(int(self.ends[-1]) if len(self.ends) else 0, seq_length)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, k: int) -> tuple[Span, ...]:
        start = self._starts[k]
        stop = min(start + self.seq_length + 1, int(self.ends[-1]))
        first = int(np.searchsorted(self.ends, start, side="right"))  # the document holding token `start`
        last = int(np.searchsorted(self.starts, stop, side="left"))  # documents starting before `stop`
        return tuple((d, max(start, int(self.starts[d])) - int(self.starts[d]),
                      min(stop, int(self.ends[d])) - int(self.starts[d]))
                     for d in range(first, last) if self.lengths[d] > 0)


def build_blocks(lengths: Sequence[int], seq_length: int) -> list[tuple[Span, ...]]:
    """Every block of documents with token counts `lengths`, as a list."""
    return list(DocumentBlocks(lengths, seq_length))


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
