"""Packed rows under flash_attention_2: the decoder pre-hook hands flash-attn each row's sample boundaries.

SDPA packed rows equal per-sample forwards: tests/test_packing.py::test_packed_forward_equals_per_sample_forward.
Here: the boundaries themselves, the hook end to end on CPU through a reference varlen attention registered with
transformers, and (CUDA + flash-attn only) the real kernel."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mftcoder.data.collator import collate
from mftcoder.model.flash_varlen import install_varlen_hook, varlen_kwargs

LENGTHS = [[23, 9, 31], [14, 6]]  # row 0: three packed samples; row 1: two, right-padded to row 0's length


def _batch(vocab: int, pad_id: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = [[(rng.integers(4, vocab, n).astype(np.int64), np.ones(n, dtype=np.uint8)) for n in row] for row in LENGTHS]
    return rows, collate(rows, task_ids=[0, 0], pad_id=pad_id)


def test_boundaries_of_packed_rows_put_row_padding_with_the_last_sample():
    _, batch = _batch(100, 1)
    T = batch["input_ids"].shape[1]
    assert T == 22 + 8 + 30
    got = varlen_kwargs(batch["position_ids"])
    # row 0: samples of 22, 8, 30 inputs; row 1 starts at T: 13, then 5 + the 42 pad positions that continue it
    assert got["cu_seq_lens_q"].tolist() == [0, 22, 30, T, T + 13, 2 * T]
    assert got["cu_seq_lens_q"].dtype == torch.int32 and got["cu_seq_lens_k"] is got["cu_seq_lens_q"]
    assert got["max_length_q"] == got["max_length_k"] == 47
    padded = collate([[r[0]] for r in _batch(100, 1)[0]], task_ids=[0, 0], pad_id=1)  # one sample per row
    assert varlen_kwargs(padded["position_ids"]) is None  # plain causal flash is already right there


def _reference_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """What flash_attn_varlen_func computes, in plain torch: causal attention inside each cu_seqlens segment of the
    flattened batch; without boundaries, causal over each row (as transformers' flash path does then)."""
    B, H, T, D = query.shape
    key = key.repeat_interleave(H // key.shape[1], dim=1)
    value = value.repeat_interleave(H // value.shape[1], dim=1)
    cu = kwargs.get("cu_seq_lens_q")
    cu = cu.tolist() if cu is not None else list(range(0, B * T + 1, T))
    flat = [x.transpose(1, 2).reshape(B * T, H, D) for x in (query, key, value)]
    out = torch.empty_like(flat[0])
    for a, b in zip(cu[:-1], cu[1:]):
        q, k, v = (x[a:b].transpose(0, 1) for x in flat)
        out[a:b] = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling).transpose(0, 1)
    return out.view(B, T, H, D), None


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=None,
                     use_cache=False).logits.float()


def test_hook_isolates_packed_samples_through_a_varlen_attention(tiny_model_dir):
    from transformers import AttentionInterface, AutoModelForCausalLM

    AttentionInterface.register("mftcoder_varlen_reference", _reference_varlen_attention)
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    varlen = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                  attn_implementation="mftcoder_varlen_reference")
    _, batch = _batch(sdpa.config.vocab_size, sdpa.config.pad_token_id)
    real = batch["sample_ids"] >= 0
    block_causal = _logits(sdpa, batch)  # equals each sample alone (test_packing.py)
    leaky = _logits(varlen, batch)  # no hook: causal over whole rows, as transformers' flash path at batch > 1
    assert (leaky[real] - block_causal[real]).abs().max() > 1e-2
    install_varlen_hook(varlen.get_decoder())
    torch.testing.assert_close(_logits(varlen, batch)[real], block_causal[real], atol=1e-5, rtol=1e-5)


def _flash_unavailable():
    from mftcoder.model.load import flash_attention_unavailable

    return flash_attention_unavailable()


@pytest.mark.skipif(_flash_unavailable() is not None, reason="needs CUDA and flash-attn")
def test_flash_packed_rows_equal_each_sample_alone_and_sdpa(tiny_model_dir, tmp_path):
    from mftcoder.config import parse_config
    from mftcoder.model.load import load_model

    def load(attn):
        cfg = parse_config(dict(data_paths=[str(tmp_path)], output_dir=str(tmp_path / attn), attn_implementation=attn,
                                pretrained_model_path=tiny_model_dir))
        model, got = load_model(cfg, mixed_precision="bf16", device=torch.device("cuda"))
        assert got == attn
        return model.cuda().eval()

    flash, sdpa = load("flash_attention_2"), load("sdpa")
    rows, batch = _batch(flash.config.vocab_size, flash.config.pad_token_id)
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    real = batch["sample_ids"] >= 0
    with torch.autocast("cuda", dtype=torch.bfloat16):
        packed_flash, packed_sdpa = _logits(flash, batch), _logits(sdpa, batch)
        # bf16 activations: the two kernels (and a row vs a sample alone) round differently, ~1e-2 on logits of
        # size ~1; a leak across samples moves them by ~0.5
        torch.testing.assert_close(packed_flash[real], packed_sdpa[real], atol=3e-2, rtol=3e-2)
        samples = [s for row in rows for s in row]
        for s, (ids, _) in enumerate(samples):
            ids = torch.from_numpy(ids).cuda()[None, :-1]
            with torch.no_grad():
                alone = flash(input_ids=ids, use_cache=False).logits.float()[0]
            where = batch["sample_ids"] == s
            torch.testing.assert_close(packed_flash[where], alone, atol=3e-2, rtol=3e-2)
            losses = [F.cross_entropy(x, batch["labels"][where]) for x in (packed_flash[where], alone)]
            assert abs(float(losses[0] - losses[1])) < 1e-2 * float(losses[1])
