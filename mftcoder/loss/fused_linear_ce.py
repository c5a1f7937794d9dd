"""lm_head + cross entropy + the weighted sum of the per-token losses in one pass, gradients computed in the forward.

The step loss of every weighting mode is linear in the per-token losses: loss = sum_t c_t * l_t, with c_t known before
the forward (`mftcoder.loss.weighting.token_coefficients`, from the whole step's counts). So the gradient of the
loss with respect to the logits, c_t * (softmax_t - onehot_t), can be formed while the chunk's logits exist, and
turned at once into the gradients of the hidden states and of the lm_head weight. The chunk's logits are then freed
and never recomputed: three lm_head-sized matmuls per chunk instead of the four of the checkpointed chunked path
(`token_losses_from_hidden`: forward, recomputed forward, two gradient matmuls), one softmax instead of two, and the
same peak memory (one chunk of logits; plus one fp32 weight-sized gradient buffer until the backward).

The per-token losses come back too (detached), for the per-task logging. The backward only scales the stored
gradients by the incoming gradient (e.g. the loop's accumulation factor).

Mixed precision follows autocast as the plain path does: matmuls in the autocast dtype, the softmax in fp32, the
weight gradient summed in fp32.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


def fused_head_parts(head: nn.Module) -> Optional[tuple[Tensor, Optional[Tensor]]]:
    """(weight, bias) of an lm_head the fused path can read directly: a plain nn.Linear whose weight is an ordinary
    tensor. None for anything else (a LoRA-wrapped head, a ZeRO-3 partitioned or FSDP2-sharded weight, quantised
    layers): those keep the checkpointed chunked path, which calls the module as is."""
    if type(head) is not nn.Linear:
        return None
    weight = head.weight
    if type(weight) not in (Tensor, nn.Parameter) or hasattr(weight, "ds_id") or weight.numel() == 0:
        return None
    return weight, head.bias


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor, coef: Tensor,
                chunk_size: int, compute_dtype: torch.dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)
            grad_hidden = torch.empty_like(hidden)
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
            grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and bias.requires_grad else None
            losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], chunk_size):
                h = hidden[start:start + chunk_size].to(compute_dtype)
                y = targets[start:start + chunk_size]
                logits = (h @ w.t()).float()
                if bias is not None:
                    logits = logits + bias.to(compute_dtype).float()
                lse = torch.logsumexp(logits, dim=-1)
                losses[start:start + chunk_size] = lse - logits.gather(1, y.unsqueeze(1)).squeeze(1)
                # d(sum c l)/d logits = c * (softmax - onehot), formed in place of the logits
                grad_logits = logits.sub_(lse.unsqueeze(1)).exp_()
                grad_logits.scatter_add_(1, y.unsqueeze(1), torch.full_like(lse, -1.0).unsqueeze(1))
                grad_logits.mul_(coef[start:start + chunk_size].to(torch.float32).unsqueeze(1))
                g = grad_logits.to(compute_dtype)
                grad_hidden[start:start + chunk_size] = (g @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (g.t() @ h).float()
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
        weighted = (losses.double() * coef.double()).sum().to(torch.float32)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.mark_non_differentiable(losses)
        return weighted, losses

    @staticmethod
    def backward(ctx, grad_weighted: Tensor, _grad_losses: Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_weighted.to(torch.float32)
        dh = grad_hidden * scale.to(grad_hidden.dtype)
        dw = (grad_weight * scale).to(ctx.weight_dtype) if grad_weight is not None else None
        db = (grad_bias * scale).to(ctx.bias_dtype) if grad_bias is not None else None
        return dh, dw, db, None, None, None, None


def fused_linear_cross_entropy(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor,
                               coef: Tensor, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """(sum_t coef_t * CE_t, the per-token CE [N] detached) for hidden rows [N, H] with targets [N] under
    lm_head (weight [V, H], bias [V] or None). The first is differentiable with respect to hidden, weight and bias;
    their gradients are computed here, chunk by chunk, and only scaled in the backward."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1] or coef.shape != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be [N, H] with targets and coef [N], got "
                         f"{tuple(targets.shape)} and {tuple(coef.shape)}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device_type = hidden.device.type
    compute_dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                     else weight.dtype)
    return _FusedLinearCE.apply(hidden, weight, bias, targets, coef, int(chunk_size), compute_dtype)
