"""Packed rows under flash_attention_2: hand flash-attn the sample boundaries (cu_seqlens) of every row.

transformers 5 turns restarting `position_ids` into varlen attention by itself only for a batch of one row
(`_is_packed_sequence` in modeling_flash_attention_utils: batch_size != 1 -> not packed); with more rows and
`attention_mask=None` it runs plain causal flash attention over each whole row, so a packed sample would attend to
the samples before it. SDPA and eager build a block-causal mask from the position ids at any batch size, so only
flash needs this. A forward pre-hook on the decoder computes the boundaries once per forward (instead of per layer)
and passes them as the `cu_seq_lens_*` / `max_length_*` kwargs transformers forwards to every attention layer,
which then calls `flash_attn_varlen_func` on the flattened batch.
"""
from __future__ import annotations

import torch
from torch import nn

VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def varlen_kwargs(position_ids: torch.Tensor) -> dict | None:
    """cu_seqlens over the flattened [B*T] batch: a sequence starts at each row start and wherever the position
    does not continue the previous one (+1). Row padding continues the count after the row's last sample (see
    data/collator.py), so it joins that sample: causal attention keeps it out of the real tokens' view, and its
    labels are -100. None when every row is a single sequence (plain causal flash is already right)."""
    B, T = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    first = starts.flatten().nonzero().flatten()
    if len(first) == B:
        return None
    total = torch.tensor([B * T], device=first.device)
    cu = torch.cat([first, total]).to(torch.int32)
    longest = int(cu.diff().max())
    return dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)


def packed_position_ids(kwargs: dict) -> torch.Tensor | None:
    """The [B, T] position ids of a decoder forward whose rows may hold packed samples, or None: padded batches (an
    attention mask), generation with a cache, and position ids broadcast over the batch are left as they are."""
    position_ids = kwargs.get("position_ids")
    if (position_ids is None or position_ids.dim() != 2 or kwargs.get("attention_mask") is not None
            or kwargs.get("past_key_values") is not None):
        return None
    rows = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
    if rows is not None and rows.shape[0] != position_ids.shape[0]:
        return None
    return position_ids


def _add_varlen_kwargs(_module: nn.Module, args: tuple, kwargs: dict):
    position_ids = packed_position_ids(kwargs)
    if position_ids is None or any(k in kwargs for k in VARLEN_KEYS):  # boundaries given by the caller: kept
        return None
    extra = varlen_kwargs(position_ids)
    if extra is None:
        return None
    return args, {**kwargs, **extra}


def install_varlen_hook(decoder: nn.Module):
    """Registers the pre-hook on `decoder` (the model's get_decoder()); returns its handle."""
    return decoder.register_forward_pre_hook(_add_varlen_kwargs, with_kwargs=True)
