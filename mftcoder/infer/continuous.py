"""Continuous batching for a server: rows join a running decode between two steps and leave the moment they end.

`generate_texts` knows every prompt up front and decodes sorted, fixed batches (`decode_batch`). A server does
not: a request that arrives while others are decoding should start at the next step, not when the slowest of them
ends. `ContinuousBatch` keeps one left-padded KV cache for the rows in flight. `join` prefills new prompts in a batch
of their own and appends their cache rows, padded on the left to a common length (padding is masked, and positions
are counted from the mask, so every row sees exactly what it would see alone); `step` decodes one token for every row
and drops the rows that ended, then the left columns no row needs any more. Each row samples with its own settings
and seeded generator (`pick_tokens_per_row`), so its tokens do not depend on its neighbours.

Joining needs plain `DynamicLayer` caches (full attention); for other cache layouts (sliding-window layers)
`can_join` is False while rows are in flight, and new rows wait for the batch to drain.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Sequence

from mftcoder.infer.engine import GenerationSettings, pick_tokens_per_row


@dataclass
class Row:
    """One sequence to decode: its prompt, how it samples, and who watches its tokens."""

    prompt: list[int]
    settings: GenerationSettings  # max_new_tokens, temperature, top_p, top_k of this row
    generator: object = None  # a seeded torch.Generator for sampled rows
    on_token: Callable[[list[int]], bool] = lambda ids: False  # sees the ids so far; True ends the row ("stop")
    tag: object = None  # whatever the caller needs back when the row ends
    ids: list[int] = field(default_factory=list)
    reason: str | None = None  # "eos" | "stop" | "length" once it ended


def left_pad(x, length: int, dim: int):
    """`x` padded with zeros on the left of `dim` (a negative index) to `length`."""
    import torch.nn.functional as F

    missing = length - x.shape[dim]
    if missing <= 0:
        return x
    spec = [0, 0] * (-dim - 1) + [missing, 0]
    return F.pad(x, spec)


def left_padded(prompts: Sequence[list[int]], pad_id: int, device):
    """(input_ids, attention_mask) with every prompt padded on the left."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


class ContinuousBatch:
    def __init__(self, model, eos_ids: Sequence[int], pad_id: int = 0):
        self.model, self.eos, self.pad_id = model, set(eos_ids), pad_id
        self.device = next(model.parameters()).device
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        self.rows: list[Row] = []
        self.cache = self.mask = self.next_ids = None

    @property
    def size(self) -> int:
        return len(self.rows)

    def can_join(self) -> bool:
        from transformers.cache_utils import DynamicLayer

        return not self.rows or all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def _forward(self, input_ids, mask, positions, cache):
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, **self.extra)
        return out.logits[:, -1, :]

    def _choose(self, rows: list[Row], logits):
        """Pick each row's next token; (the tokens, positions of the rows still going, the rows that ended)."""
        tokens = pick_tokens_per_row(logits, [r.settings for r in rows], [r.generator for r in rows])
        keep, ended = [], []
        for pos, (row, token) in enumerate(zip(rows, tokens.tolist())):
            if token in self.eos:
                row.reason = "eos"
            else:
                row.ids.append(token)
                if row.on_token(row.ids):
                    row.reason = "stop"
                elif len(row.ids) >= row.settings.max_new_tokens:
                    row.reason = "length"
            if row.reason:
                ended.append(row)
            else:
                keep.append(pos)
        return tokens, keep, ended

    def join(self, rows: list[Row]) -> list[Row]:
        """Prefill `rows` and add them to the batch; returns those that ended at their first token."""
        import torch
        from transformers import DynamicCache

        if not self.can_join():
            raise RuntimeError("this model's cache cannot take rows while others decode; wait for the batch to drain")
        input_ids, mask = left_padded([r.prompt for r in rows], self.pad_id, self.device)
        cache = DynamicCache(config=self.model.config)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate() does for left padding
        tokens, keep, ended = self._choose(rows, self._forward(input_ids, mask, positions, cache))
        if keep:
            index = torch.tensor(keep, device=self.device)
            if len(keep) < len(rows):
                cache.batch_select_indices(index)
            self._append([rows[p] for p in keep], cache, mask[index], tokens[index])
        return ended

    def _append(self, rows: list[Row], cache, mask, next_ids) -> None:
        import torch

        if not self.rows:
            self.rows, self.cache, self.mask, self.next_ids = rows, cache, mask, next_ids
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([left_pad(mine.keys, width, -2), left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([left_pad(mine.values, width, -2), left_pad(theirs.values, width, -2)])
        self.mask = torch.cat([left_pad(self.mask, width, -1), left_pad(mask, width, -1)])
        self.next_ids = torch.cat([self.next_ids, next_ids])
        self.rows = self.rows + rows

    def step(self) -> list[Row]:
        """One new token for every row; returns the rows that ended."""
        import torch

        if not self.rows:
            return []
        self.mask = _grown(self.mask)
        positions = self.mask.sum(-1, keepdim=True) - 1
        logits = self._forward(self.next_ids[:, None], self.mask, positions, self.cache)
        tokens, keep, ended = self._choose(self.rows, logits)
        if ended:
            self._keep(keep)
            tokens = tokens[torch.tensor(keep, device=self.device)] if keep else None
        self.next_ids = tokens
        return ended

    def _keep(self, keep: list[int]) -> None:
        """Drop the rows that ended, then the left columns that only their padding used."""
        import torch

        if not keep:
            self.abandon()
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.rows = [self.rows[p] for p in keep]
        unused = int((self.mask.cumsum(-1) == 0).sum(-1).min())
        if unused:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def abandon(self) -> list[Row]:
        """Every row in flight, removed (after a failed step)."""
        rows, self.rows, self.cache, self.mask, self.next_ids = self.rows, [], None, None, None
        return rows


def _grown(mask):
    import torch

    return torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
