"""Per-token cross entropy, with a chunked path that never holds the full [B, T, V] logits.

The chunked path keeps only the final hidden states of the positions that have a label, cuts them into chunks of
`chunk_size` rows, and for each chunk computes lm_head -> fp32 logits -> CE under `torch.utils.checkpoint`, so that
the chunk's logits are freed after the forward and recomputed in the backward. Peak loss memory is then about
`chunk_size x V` floats (a few such buffers) instead of `B x T x V`, for the price of running lm_head twice.

Out of scope: models that transform the lm_head output (logit softcapping as in Gemma 2, logit scaling as in Cohere
or Granite). `model_token_losses` checks this on its first call and refuses such a model with a clear error; use
`chunked=False` for them. An lm_head with a bias is fine (the module is called as is).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mftcoder.data.collator import IGNORE_INDEX
from mftcoder.loss.fused_linear_ce import fused_head_parts, fused_linear_cross_entropy

# Set on a causal LM once its lm_head output has been checked to equal the model's own logits.
_CHECKED_ATTR = "_mftcoder_chunked_ce_checked"


def _float_logits(logits: Tensor) -> Tensor:
    """CE in at least fp32: half-precision logits are upcast, fp64 stays fp64."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _apply_head(hidden: Tensor, lm_head: nn.Module | Tensor) -> Tensor:
    if isinstance(lm_head, Tensor):
        return F.linear(hidden, lm_head)
    return lm_head(hidden)


def _chunk_ce(hidden: Tensor, labels: Tensor, lm_head: nn.Module | Tensor) -> Tensor:
    return F.cross_entropy(_float_logits(_apply_head(hidden, lm_head)), labels, reduction="none")


def token_losses_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Plain reference path: logits [B, T, V], labels [B, T] (-100 = not trained) -> per-token CE [B, T]
    (0 where -100)."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    B, T, V = logits.shape
    losses = F.cross_entropy(
        _float_logits(logits).reshape(B * T, V), labels.reshape(B * T), reduction="none", ignore_index=IGNORE_INDEX
    )
    return losses.view(B, T)


def token_losses_from_hidden(
    hidden: Tensor, lm_head: nn.Module | Tensor, labels: Tensor, chunk_size: int = 1024
) -> Tensor:
    """Per-token CE [B, T] (0 where labels == -100) from final hidden states [B, T, H].

    `lm_head` is the output-embedding module (called as is, so a bias, a LoRA wrapper or ZeRO-3 hooks work) or a
    weight [V, H]. Only positions with a label are projected, in chunks of `chunk_size` rows, each recomputed in
    backward. With no trained position the result is all zeros, still connected to the graph (zero gradients), so
    a backward and DDP's gradient hooks behave as for any other micro-batch.
    """
    if hidden.dim() != 3 or hidden.shape[:2] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be [B, T, H] with labels [B, T] = {tuple(labels.shape)}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, T, H = hidden.shape
    flat_hidden = hidden.reshape(B * T, H)
    flat_labels = labels.reshape(B * T)
    trained = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
    out_dtype = _float_logits(hidden.new_empty(())).dtype

    if trained.numel() == 0:
        # Touch lm_head and hidden through one row so every parameter gets a (zero) gradient.
        anchor = _float_logits(_apply_head(flat_hidden[:1], lm_head)).sum() * 0.0
        return hidden.new_zeros((B, T), dtype=out_dtype) + anchor

    rows = flat_hidden.index_select(0, trained)
    targets = flat_labels.index_select(0, trained)
    recompute = torch.is_grad_enabled()
    pieces = []
    for start in range(0, rows.shape[0], int(chunk_size)):
        h = rows[start : start + chunk_size]
        y = targets[start : start + chunk_size]
        if recompute:
            pieces.append(checkpoint(_chunk_ce, h, y, lm_head, use_reentrant=False))
        else:
            pieces.append(_chunk_ce(h, y, lm_head))
    losses = torch.cat(pieces)
    out = torch.zeros(B * T, dtype=losses.dtype, device=losses.device).index_put((trained,), losses)
    return out.view(B, T)


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The HF causal LM inside DDP / DeepSpeed / torch.compile / PEFT wrappers.

    PEFT injects its LoRA layers into the base model's modules, so the base model returned here still runs them.
    """
    from transformers import PreTrainedModel

    seen = 0
    while not isinstance(model, PreTrainedModel):
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):  # DDP, FSDP1, DeepSpeedEngine
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            raise TypeError(f"cannot find a Hugging Face causal LM inside {type(model).__name__}")
        seen += 1
        if seen > 8:
            raise TypeError("model wrappers nest too deeply to find the causal LM")
    return model


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    # attention_mask=None + use_cache=False: with restarting position_ids transformers builds a block-causal mask,
    # so packed samples stay isolated (an all-ones mask or use_cache=True silently breaks that).
    return dict(
        input_ids=batch["input_ids"], position_ids=batch.get("position_ids"), attention_mask=None, use_cache=False
    )


class ForwardLosses(NamedTuple):
    token_loss: Tensor                              # [B, T] per-token CE, 0 where labels == -100
    router_logits: Optional[tuple[Tensor, ...]]     # MoE models, when asked for: one [B*T, experts] per layer
    # sum_t token_weights_t * token_loss_t, differentiable, when the fused path ran (token_loss is then detached)
    weighted_loss: Optional[Tensor] = None


def model_token_losses(model: nn.Module, batch: dict[str, Any], chunked: bool = True, chunk_size: int = 1024) -> Tensor:
    """Per-token CE [B, T] of `batch` under `model`; see `model_forward_losses`."""
    return model_forward_losses(model, batch, chunked, chunk_size).token_loss


def model_forward_losses(model: nn.Module, batch: dict[str, Any], chunked: bool = True, chunk_size: int = 1024,
                         output_router_logits: bool = False, token_weights: Optional[Tensor] = None) -> ForwardLosses:
    """Per-token CE [B, T] of `batch` under `model` (an HF causal LM, possibly wrapped by PEFT / DDP / DeepSpeed),
    and the router logits of an MoE model when `output_router_logits` (see mftcoder.loss.router).

    Unchunked: the model's full logits. Chunked: the model is still called through its (wrapped) forward, so
    distributed wrappers see a normal forward, but with `logits_to_keep` set to the last position only; the final
    hidden states are taken from the decoder's output by a forward hook and projected chunk by chunk.
    The projection runs after the model's forward returned, so under mixed precision call this inside the same
    autocast context as the model (e.g. `accelerator.autocast()`); the recomputation in backward reuses it.

    `token_weights` [B, T] (chunked, with gradients): the loss's coefficient of each token (see
    `weighting.token_coefficients`). When the lm_head is a plain linear layer, the fused lm_head + cross entropy then
    computes `weighted_loss` = sum of weights x losses with its gradients in the forward (no recomputation), and
    `token_loss` comes back detached; otherwise `weighted_loss` is None and `token_loss` carries the gradient.
    """
    labels = batch["labels"]
    inputs = model_inputs(batch)
    if output_router_logits:
        inputs["output_router_logits"] = True
    if not chunked:
        out = model(**inputs)
        return ForwardLosses(token_losses_from_logits(out.logits, labels), _router_logits(out, output_router_logits))

    lm = unwrap_causal_lm(model)
    decoder = lm.get_decoder()
    head = lm.get_output_embeddings()
    if decoder is None or head is None or decoder is lm:
        raise TypeError(f"{type(lm).__name__} exposes no decoder / output embeddings; use chunked=False")

    captured: list[Tensor] = []

    def grab(_module, _inputs, output):
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        captured.append(hidden)

    T = labels.shape[1]
    last = torch.tensor([T - 1], device=labels.device)
    handle = decoder.register_forward_hook(grab)
    try:
        out = model(**inputs, logits_to_keep=last)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(
            f"expected the decoder of {type(lm).__name__} to run once per forward, it ran {len(captured)} times"
        )
    hidden = captured[0]

    if not getattr(lm, _CHECKED_ATTR, False):
        _check_head_reproduces_logits(lm, head, hidden[:, -1:], out.logits)
        setattr(lm, _CHECKED_ATTR, True)
    router = _router_logits(out, output_router_logits)
    if token_weights is not None and torch.is_grad_enabled():
        fused = _fused_token_losses(hidden, head, labels, token_weights, chunk_size)
        if fused is not None:
            return ForwardLosses(fused[0], router, fused[1])
    return ForwardLosses(token_losses_from_hidden(hidden, head, labels, chunk_size=chunk_size), router)


def _fused_token_losses(hidden: Tensor, head: nn.Module, labels: Tensor, token_weights: Tensor,
                        chunk_size: int) -> Optional[tuple[Tensor, Tensor]]:
    """(detached per-token CE [B, T], the differentiable weighted sum) through the fused lm_head + CE, or None when
    the head or the batch does not suit it (then the checkpointed chunked path runs)."""
    parts = fused_head_parts(head)
    if parts is None or token_weights.shape != labels.shape:
        return None
    B, T, H = hidden.shape
    flat_labels = labels.reshape(B * T)
    trained = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
    if trained.numel() == 0:
        return None  # the plain path keeps an all-masked micro-batch connected to the graph
    rows = hidden.reshape(B * T, H).index_select(0, trained)
    coef = token_weights.reshape(B * T).index_select(0, trained)
    weighted, losses = fused_linear_cross_entropy(rows, parts[0], parts[1], flat_labels.index_select(0, trained),
                                                  coef, chunk_size)
    out = torch.zeros(B * T, dtype=losses.dtype, device=losses.device).index_put((trained,), losses)
    return out.view(B, T), weighted


def _router_logits(out, wanted: bool) -> Optional[tuple[Tensor, ...]]:
    if not wanted:
        return None
    logits = getattr(out, "router_logits", None)
    if not logits:
        raise TypeError("output_router_logits=True but the model returned no router logits (not an MoE model?)")
    return tuple(logits)


def _check_head_reproduces_logits(lm: nn.Module, head: nn.Module, hidden_last: Tensor, model_logits: Tensor) -> None:
    """Refuse models whose logits are not plain lm_head(hidden) (softcapping, logit scaling): the chunked CE would
    silently train on different logits."""
    with torch.no_grad():
        ours = _float_logits(head(hidden_last.detach()))
        theirs = _float_logits(model_logits.detach())
        if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3):
            raise ValueError(
                f"{type(lm).__name__}: its logits are not lm_head(final hidden state) (logit softcapping or scaling?); "
                "the chunked cross entropy does not support this model, compute the loss with chunked=False"
            )
