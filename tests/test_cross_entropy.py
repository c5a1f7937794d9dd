"""Chunked cross entropy == plain cross entropy (losses and gradients), for plain, LoRA and DDP-wrapped models."""
import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mftcoder.data.collator import collate
from mftcoder.loss.cross_entropy import (
    model_token_losses,
    token_losses_from_hidden,
    token_losses_from_logits,
)

TOL = 1e-6


def make_batch(seed=0, vocab=500):
    """3 rows: two packed samples, one sample, one short sample; prompts (mask 0) and answers (mask 1)."""
    rng = np.random.default_rng(seed)

    def sample(n, prompt):
        ids = rng.integers(5, vocab, n)
        mask = np.r_[np.zeros(prompt, int), np.ones(n - prompt, int)]
        return ids, mask

    units = [[sample(17, 6), sample(12, 3)], [sample(33, 10)], [sample(9, 2)]]
    batch = collate(units, task_ids=[0, 1, 0], pad_id=1)
    assert batch["num_loss_tokens"] == 50  # not a multiple of the chunk sizes used below
    return batch


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def loss_and_grads(model, batch, chunked, chunk_size, params):
    model.zero_grad(set_to_none=True)
    token_loss = model_token_losses(model, batch, chunked=chunked, chunk_size=chunk_size)
    n = (batch["labels"] != -100).sum()
    (token_loss.sum() / n).backward()
    return token_loss.detach(), [p.grad.detach().clone() for p in params]


def assert_close(a, b, tol=TOL):
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= tol, f"max |diff| {diff} > {tol}"


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 1024])
def test_chunked_equals_plain_losses_and_gradients(tiny_model, chunk_size):
    batch = make_batch()
    params = [tiny_model.lm_head.weight, tiny_model.model.layers[0].mlp.up_proj.weight]
    plain, plain_grads = loss_and_grads(tiny_model, batch, False, chunk_size, params)
    chunked, chunked_grads = loss_and_grads(tiny_model, batch, True, chunk_size, params)

    trained = batch["labels"] != -100
    assert (plain[~trained] == 0).all() and (chunked[~trained] == 0).all()
    assert (plain[trained] > 0).all()
    assert_close(chunked, plain)
    for g_plain, g_chunk in zip(plain_grads, chunked_grads):
        assert g_plain.abs().max() > 1e-4  # the gradient is real, so the comparison means something
        assert_close(g_chunk, g_plain)


def test_chunked_matches_hf_loss(tiny_model):
    """Independent reference: transformers' own causal-LM loss, given our already shifted labels."""
    batch = make_batch(seed=3)
    chunked = model_token_losses(tiny_model, batch, chunked=True, chunk_size=8)
    with torch.no_grad():
        out = tiny_model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=None,
            use_cache=False, labels=batch["labels"], shift_labels=batch["labels"],
        )
    mean = chunked.sum() / (batch["labels"] != -100).sum()
    assert abs(mean.item() - out.loss.item()) < 1e-6


def test_lora_wrapped_model_chunked_equals_plain(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # init_lora_weights=False: B is random too, so the adapter changes the output from the start.
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    batch = make_batch(seed=1)
    lora_params = [p for n, p in model.named_parameters() if p.requires_grad and "layers.1.self_attn.v_proj.lora_B" in n]
    lora_params += [p for n, p in model.named_parameters() if p.requires_grad and "layers.0.mlp.down_proj.lora_A" in n]
    assert len(lora_params) == 2

    plain, plain_grads = loss_and_grads(model, batch, False, 16, lora_params)
    chunked, chunked_grads = loss_and_grads(model, batch, True, 16, lora_params)
    assert_close(chunked, plain)
    for g_plain, g_chunk in zip(plain_grads, chunked_grads):
        assert g_plain.abs().max() > 1e-5
        assert_close(g_chunk, g_plain)

    with torch.no_grad(), model.disable_adapter():
        without_lora = model_token_losses(model, batch, chunked=True, chunk_size=16)
    assert (without_lora - chunked.detach()).abs().max() > 1e-2  # the chunked path really ran the LoRA layers


def test_ddp_wrapped_model_chunked_equals_plain(tiny_model_dir, tmp_path):
    """Through DistributedDataParallel (1 gloo process): the chunked path unwraps it and the grads still arrive."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    if dist.is_initialized():
        pytest.skip("a process group already exists in this test process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    model = None
    try:
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
        batch = make_batch(seed=2)
        params = [model.module.lm_head.weight, model.module.model.layers[1].self_attn.o_proj.weight]
        plain, plain_grads = loss_and_grads(model, batch, False, 16, params)
        chunked, chunked_grads = loss_and_grads(model, batch, True, 16, params)
    finally:
        # DDP's reducer holds the process group: freed after destroy_process_group, the group's destructor can
        # wait forever on its gloo threads (seen once in CI), so the wrapper goes first
        del model
        gc.collect()
        dist.destroy_process_group()
    assert_close(chunked, plain)
    for g_plain, g_chunk in zip(plain_grads, chunked_grads):
        assert_close(g_chunk, g_plain)


def test_all_masked_batch_gives_zeros_and_zero_gradients(tiny_model):
    batch = make_batch()
    batch["labels"] = torch.full_like(batch["labels"], -100)
    for chunked in (True, False):
        tiny_model.zero_grad(set_to_none=True)
        token_loss = model_token_losses(tiny_model, batch, chunked=chunked)
        assert torch.equal(token_loss, torch.zeros_like(token_loss))
        token_loss.sum().backward()  # still part of the graph
        if chunked:  # every parameter gets a finite zero gradient, as DDP expects
            for p in tiny_model.parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() == 0


def test_hidden_path_with_weight_tensor_and_biased_head():
    torch.manual_seed(0)
    B, T, H, V = 2, 11, 8, 37
    hidden = torch.randn(B, T, H, requires_grad=True)
    labels = torch.randint(0, V, (B, T))
    labels[0, :4] = -100
    head = torch.nn.Linear(H, V, bias=True)

    ref = token_losses_from_logits(head(hidden), labels)
    ref.sum().backward()
    ref_grads = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = None
    head.zero_grad(set_to_none=True)

    ours = token_losses_from_hidden(hidden, head, labels, chunk_size=5)
    ours.sum().backward()
    assert_close(ours, ref)
    for a, b in zip([hidden.grad, head.weight.grad, head.bias.grad], ref_grads):
        assert_close(a, b)

    weight_only = token_losses_from_hidden(hidden, head.weight, labels, chunk_size=3)
    assert_close(weight_only, token_losses_from_logits(F.linear(hidden, head.weight), labels))


def test_half_precision_hidden_gives_fp32_losses():
    torch.manual_seed(0)
    hidden = torch.randn(1, 6, 8).bfloat16()
    head = torch.nn.Linear(8, 20, bias=False).bfloat16()
    labels = torch.randint(0, 20, (1, 6))
    out = token_losses_from_hidden(hidden, head, labels)
    assert out.dtype == torch.float32
    assert_close(out, token_losses_from_logits(head(hidden), labels))


def test_bad_arguments_are_named():
    hidden, labels = torch.randn(1, 4, 8), torch.zeros(1, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="must be \\[B, T, H\\]"):
        token_losses_from_hidden(hidden, torch.randn(3, 8), labels)
    with pytest.raises(ValueError, match="chunk_size"):
        token_losses_from_hidden(hidden, torch.randn(3, 8), labels[:, :4], chunk_size=0)


def test_softcapped_model_is_refused_by_the_chunked_path():
    """Gemma 2 tanh-softcaps its logits: lm_head(hidden) is not its logits, so the chunked CE must not pretend."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, final_logit_softcapping=0.5,
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(cfg)
    batch = {
        "input_ids": torch.randint(0, 64, (1, 6)), "labels": torch.randint(0, 64, (1, 6)),
        "position_ids": torch.arange(6)[None],
    }
    with pytest.raises(ValueError, match="chunked=False"):
        model_token_losses(model, batch, chunked=True)
    assert torch.isfinite(model_token_losses(model, batch, chunked=False)).all()
