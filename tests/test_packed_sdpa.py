"""Per-sample SDPA for packed rows equals the block-causal mask it replaces (losses and every gradient, Llama and
Qwen2, several rows with padding), is what training loads choose for sdpa, and leaves everything else to plain
sdpa: generation with a KV cache, rows of one sample, sliding-window models and torch.compile runs."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from mftcoder.config import parse_config
from mftcoder.data.collator import collate
from mftcoder.loss.cross_entropy import model_token_losses
from mftcoder.model.load import load_model
from mftcoder.model.packed_sdpa import NAME, SEGMENTS_KEY, _add_segments, use_packed_sdpa


def packed_batch(seed=0):
    rng = np.random.default_rng(seed)

    def sample(n, prompt):
        return rng.integers(5, 500, n), np.r_[np.zeros(prompt, int), np.ones(n - prompt, int)]

    # three rows: two samples, one long sample, three short ones; rows padded to the longest (dynamic padding)
    return collate([[sample(17, 4), sample(12, 3)], [sample(40, 10)], [sample(9, 2), sample(5, 1), sample(7, 3)]],
                   [0, 1, 0], pad_id=1)


def losses_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    token_loss = model_token_losses(model, batch, chunked=True)
    token_loss.sum().backward()
    return token_loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_qwen2_dir"])
def test_per_sample_attention_equals_the_block_causal_mask(fixture, request):
    path = request.getfixturevalue(fixture)
    plain = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    ours = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    use_packed_sdpa(ours, ours.get_decoder())
    assert ours.config._attn_implementation == NAME
    batch = packed_batch()
    ref_loss, ref_grads = losses_and_grads(plain, batch)
    loss, grads = losses_and_grads(ours, batch)
    assert torch.allclose(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        assert torch.allclose(grads[name], g, atol=1e-5, rtol=1e-4), name


def test_segments_come_from_the_position_ids(tiny_model_dir):
    batch = packed_batch()
    _, kwargs = _add_segments(None, (), {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]})
    T = batch["input_ids"].shape[1]  # 40: the long row; padding joins each row's last sample
    assert kwargs[SEGMENTS_KEY] == ((0, 16), (16, T), (T, 2 * T), (2 * T, 2 * T + 8), (2 * T + 8, 2 * T + 12),
                                   (2 * T + 12, 3 * T))
    one_each = collate([[(np.arange(5, 15), np.ones(10, int))], [(np.arange(5, 12), np.ones(7, int))]], [0, 0], 1)
    assert _add_segments(None, (), {"position_ids": one_each["position_ids"]}) is None  # plain causal is right
    assert _add_segments(None, (), {"position_ids": batch["position_ids"], "use_cache": True}) is None


def test_generation_with_a_cache_is_unchanged(tiny_model_dir):
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    ours = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    use_packed_sdpa(ours, ours.get_decoder())
    prompt = torch.tensor([[5, 17, 33, 40, 2, 9], [1, 1, 7, 8, 9, 10]])
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])  # a left-padded batch, as generation builds it
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=1)
    assert torch.equal(ours.generate(prompt, **kw), plain.generate(prompt, **kw))


def _cfg(path, **extra):
    return parse_config({"data_paths": ["unused"], "output_dir": "unused", "pretrained_model_path": path,
                         "attn_implementation": "sdpa", **extra})


def test_training_loads_choose_it_for_sdpa_only(tiny_model_dir, tmp_path):
    model, attn = load_model(_cfg(tiny_model_dir))
    assert attn == "sdpa" and model.config._attn_implementation == NAME
    model, _ = load_model(_cfg(tiny_model_dir, attn_implementation="eager"))
    assert model.config._attn_implementation == "eager"
    # a sliding-window model keeps sdpa's mask (per-sample causal attention would ignore the window)
    from transformers import MistralConfig, MistralForCausalLM

    MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, sliding_window=8)
                       ).save_pretrained(tmp_path / "mistral")
    from mftcoder.testing import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path / "mistral")
    model, _ = load_model(_cfg(str(tmp_path / "mistral")))
    assert model.config._attn_implementation == "sdpa"
