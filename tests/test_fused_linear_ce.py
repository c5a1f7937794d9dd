"""The fused lm_head + cross entropy (gradients formed in the forward) equals the plain path: the weighted step loss
of every mode, the per-token losses and every gradient, with and without bf16 autocast, tied and biased heads; and
the coefficients reproduce micro_batch_loss exactly."""
import pytest
import torch

from mftcoder.loss import WEIGHTED_LOSS_MODES, count_micro_batch, micro_batch_loss, sum_counts
from mftcoder.loss.cross_entropy import model_forward_losses, token_losses_from_logits
from mftcoder.loss.fused_linear_ce import fused_head_parts, fused_linear_cross_entropy
from mftcoder.loss.weighting import token_coefficients
from test_cross_entropy import assert_close, make_batch
from test_weighting import COBA_W, EXPECTED, W, hand_step


@pytest.mark.parametrize("mode", WEIGHTED_LOSS_MODES)
def test_coefficients_reproduce_every_mode(mode):
    weights = COBA_W if mode == "coba" else W
    steps = hand_step()
    counts = sum_counts([count_micro_batch(b, 3) for b, _ in steps])
    total = 0.0
    for batch, token_loss in steps:
        coef = token_coefficients(batch, counts, mode, weights)
        assert bool((coef[batch["labels"] == -100] == 0).all())
        ours = (coef * token_loss.detach()).sum()
        assert abs(float(ours) - float(micro_batch_loss(token_loss, batch, counts, mode, weights).loss)) < 1e-12
        total += float(ours)
    assert abs(total - EXPECTED[mode]) < 1e-12


def _reference(hidden, head, targets, coef):
    losses = token_losses_from_logits(head(hidden).unsqueeze(0), targets.unsqueeze(0)).squeeze(0)
    return (losses.double() * coef.double()).sum().float(), losses


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_fused_equals_plain_losses_and_gradients(bias, chunk_size):
    torch.manual_seed(0)
    N, H, V = 23, 16, 61
    head = torch.nn.Linear(H, V, bias=bias)
    hidden = torch.randn(N, H, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    coef = torch.rand(N, dtype=torch.float64)

    ref_loss, ref_tokens = _reference(hidden, head, targets, coef)
    (ref_loss * 3.0).backward()  # a scale like the loop's accumulation factor reaches the stored gradients
    ref_grads = [hidden.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if bias else [])
    hidden.grad = None
    head.zero_grad(set_to_none=True)

    loss, tokens = fused_linear_cross_entropy(hidden, head.weight, head.bias, targets, coef, chunk_size)
    assert not tokens.requires_grad
    (loss * 3.0).backward()
    assert_close(loss.detach(), ref_loss.detach(), 1e-5)
    assert_close(tokens, ref_tokens.detach(), 1e-5)
    grads = [hidden.grad, head.weight.grad] + ([head.bias.grad] if bias else [])
    for ours, ref in zip(grads, ref_grads):  # fp32, values O(1): the order of the scalings moves the last bits
        assert_close(ours, ref, 1e-5)


def test_fused_under_bf16_autocast_matches_the_plain_autocast_path():
    """Matmuls in bf16, softmax in fp32 on both paths: the same rounding, so agreement far below bf16's step (one
    chunk: the plain path rounds the weight gradient's whole matmul to bf16 once, chunks would round per chunk)."""
    torch.manual_seed(1)
    N, H, V = 40, 32, 97
    head = torch.nn.Linear(H, V, bias=False)
    hidden = torch.randn(N, H, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    coef = torch.full((N,), 1.0 / N, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref_tokens = _reference(hidden, head, targets, coef)
    ref_loss.backward()
    ref = [hidden.grad.clone(), head.weight.grad.clone()]
    hidden.grad = None
    head.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, tokens = fused_linear_cross_entropy(hidden, head.weight, None, targets, coef, 1024)
    loss.backward()
    assert_close(tokens, ref_tokens.detach().float(), 1e-6)
    assert_close(hidden.grad, ref[0], 1e-6)
    assert_close(head.weight.grad, ref[1], 1e-6)


def test_model_forward_losses_fused_equals_checkpointed_path(tiny_model_dir):
    """Through a real (tied-embedding) model: the same weighted loss and the same gradients on every parameter."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = make_batch()
    counts = count_micro_batch(batch, 2)
    coef = token_coefficients(batch, counts, "case3", [1.0, 3.0])

    def run(fused):
        model.zero_grad(set_to_none=True)
        out = model_forward_losses(model, batch, chunked=True, chunk_size=7, token_weights=coef if fused else None)
        if fused:
            assert out.weighted_loss is not None and not out.token_loss.requires_grad
            loss = out.weighted_loss
        else:
            loss = micro_batch_loss(out.token_loss, batch, counts, "case3", [1.0, 3.0]).loss
        loss.backward()
        return loss.detach(), out.token_loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_loss, ref_tokens, ref_grads = run(False)
    loss, tokens, grads = run(True)
    assert_close(loss.double(), ref_loss.double(), 1e-6)
    assert_close(tokens, ref_tokens, 1e-6)
    for name, g in ref_grads.items():
        assert_close(grads[name], g, 1e-6)


def test_heads_the_fused_path_cannot_read_fall_back():
    lora_like = torch.nn.Sequential(torch.nn.Linear(4, 8))
    assert fused_head_parts(lora_like) is None
    assert fused_head_parts(torch.nn.Linear(4, 8)) is not None
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_cross_entropy(torch.randn(3, 4), torch.randn(8, 4), None, torch.zeros(3, dtype=torch.long),
                                   torch.ones(3), chunk_size=0)
