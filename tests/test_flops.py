"""Model FLOPs and MFU (mftcoder/trainer/flops.py): the formula pinned by hand on a small Llama config, attention per
packed sample, LoRA, MoE top-k, tied embeddings, the peak table and its override, and a real run's step records."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mftcoder.config import ConfigError
from mftcoder.data.collator import collate
from mftcoder.trainer.flops import (PEAK_ENV, model_flops, peak_tflops, table_peak, tokens_and_pairs,
                                    with_trainable_split)

# h=64, I=128, 2 layers, 4 query heads, 2 kv heads (head_dim 16), vocab 1000
SMALL = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


def llama(**overrides):
    from transformers import LlamaConfig

    return LlamaConfig(**{**SMALL, **overrides})


def row_of(*lengths: int) -> dict:
    """A packed micro-batch of one row holding samples of these input lengths (n + 1 ids each: the collator
    shifts)."""
    samples = [(np.arange(n + 1) % 7 + 3, np.ones(n + 1, dtype=np.int64)) for n in lengths]
    return collate([samples], [0], pad_id=0)


# ---- the formula -----------------------------------------------------------------------------------------------------

def test_small_llama_by_hand():
    f = model_flops(llama())
    attn_proj = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64      # q, k, v (2 kv heads x 16), o = 12288
    mlp = 3 * 64 * 128                                      # gate, up, down = 24576
    head = 64 * 1000
    assert f.base == 2 * (2 * (attn_proj + mlp) + head) == 2 * 137_728
    assert f.head == 2 * head
    assert f.attn_per_pair == 2 * 2 * 16 * 4 * 2            # (QK^T + AV) x 2 FLOPs x head_dim x heads x layers
    n = 1024
    tokens, pairs = tokens_and_pairs(row_of(n))
    assert (tokens, pairs) == (n, n * (n + 1) // 2)
    forward = 2 * 137_728 * n + 512 * (n * (n + 1) // 2)
    assert f.training(tokens, pairs) == 3 * forward == 1_652_293_632


def test_matmul_count_equals_the_models_linear_weights():
    """Independent of the formula: a dense model's per-token matmul FLOPs are 2 x its nn.Linear weights."""
    from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    for model in (LlamaForCausalLM(llama()), Qwen2ForCausalLM(Qwen2Config(**SMALL))):
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert model_flops(model.config).base == 2 * linear


def test_attention_is_counted_per_packed_sample():
    f = model_flops(llama())
    one = f.training(*tokens_and_pairs(row_of(1024)))
    two = f.training(*tokens_and_pairs(row_of(512, 512)))
    assert tokens_and_pairs(row_of(512, 512)) == (1024, 2 * (512 * 513 // 2))
    # same tokens, so the whole difference is attention: 3 x 512 FLOPs per pair x (524800 - 262656) pairs
    assert one - two == 3 * 512 * (1024 * 1025 // 2 - 512 * 513) == 402_653_184


def test_padding_and_fallbacks_give_the_same_count():
    batch = collate([[(np.arange(9), np.ones(9))], [(np.arange(5), np.ones(5)), (np.arange(4), np.ones(4))]],
                    [0, 0], pad_id=0, pad_to_multiple_of=16)  # rows: one sample of 8; samples of 4 and 3; padded
    expected = (8 + 4 + 3, (8 * 9 + 4 * 5 + 3 * 4) // 2)
    assert tokens_and_pairs(batch) == expected
    # without sample_ids, the restarting position ids split the samples (padding then counts with the last one)
    unpadded = collate([[(np.arange(9), np.ones(9))], [(np.arange(6), np.ones(6)), (np.arange(4), np.ones(4))]],
                       [0, 0], pad_id=0)  # 8; 5 and 3: both rows 8 long, no padding
    assert tokens_and_pairs({"position_ids": unpadded["position_ids"]}) == tokens_and_pairs(unpadded)
    # input_ids only (another collator): each row one sequence; with an attention mask, its ones
    ids = torch.ones(2, 6, dtype=torch.long)
    assert tokens_and_pairs({"input_ids": ids}) == (12, 2 * 21)
    assert tokens_and_pairs({"input_ids": ids, "attention_mask": torch.tensor([[1] * 6, [1] * 2 + [0] * 4])}) \
        == (8, 21 + 3)


def test_tied_and_untied_embeddings_cost_the_same():
    """The lookup is free and the head is one matmul either way; a 6 x parameters estimate would count an untied
    embedding matrix that no token multiplies."""
    from transformers import LlamaForCausalLM

    tied, untied = LlamaForCausalLM(llama(tie_word_embeddings=True)), LlamaForCausalLM(llama())
    assert model_flops(tied.config) == model_flops(untied.config)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(untied) - params(tied) == 1000 * 64


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_moe_counts_the_top_k_experts_only(arch):
    from transformers import MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

    attn_proj, head = 12288, 64 * 1000
    if arch == "mixtral":
        model = MixtralForCausalLM(MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2))
        mlp = 64 * 4 + 2 * 3 * 64 * 128                     # router + 2 of the 4 experts
    else:
        model = Qwen2MoeForCausalLM(Qwen2MoeConfig(**SMALL, num_experts=4, num_experts_per_tok=2,
                                                   moe_intermediate_size=32, shared_expert_intermediate_size=64))
        mlp = 64 * 4 + 2 * 3 * 64 * 32 + 3 * 64 * 64 + 64   # router, 2 experts, the shared expert and its gate
    assert model_flops(model.config).base == 2 * (2 * (attn_proj + mlp) + head)
    # the same from the model's own weights: every matrix but the embedding, the experts' at top-k / E = 2 / 4
    matrices = {n: p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and "embed_tokens" not in n}
    experts = sum(v for n, v in matrices.items() if ".experts." in n)
    assert model_flops(model.config).base == 2 * (sum(matrices.values()) - experts + experts * 2 / 4)


def test_lora_counts_activation_gradients_for_the_frozen_base():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    full = model_flops(llama())
    model = get_peft_model(LlamaForCausalLM(llama()), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora = with_trainable_split(full, model, model.config)
    adapters = 2 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4)     # per layer: q (64 -> 64) and v (64 -> 32), rank 4
    assert lora.adapters == 2 * adapters and lora.frozen_base and not lora.head_trained
    tokens, pairs = tokens_and_pairs(row_of(300, 200))
    expected = 2 * full.base * tokens + 3 * full.attn_per_pair * pairs + 3 * lora.adapters * tokens
    assert lora.training(tokens, pairs) == expected
    assert lora.training(tokens, pairs) < full.training(tokens, pairs)
    # a trained lm_head (modules_to_save) adds its weight gradient: one more head forward
    model = get_peft_model(LlamaForCausalLM(llama()), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                 modules_to_save=["lm_head"]))
    with_head = with_trainable_split(full, model, model.config)
    assert with_head.head_trained
    assert with_head.training(tokens, pairs) - lora.training(tokens, pairs) == 2 * 64 * 1000 * tokens
    assert with_trainable_split(full, LlamaForCausalLM(llama()), llama()) is full  # nothing frozen: full


# ---- peaks and MFU ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100-PCIE-40GB", 312.0), ("NVIDIA L40S", 362.0),
    ("NVIDIA L40", 181.0), ("NVIDIA L4", 121.0), ("NVIDIA GeForce RTX 4090", 165.0),
    ("NVIDIA H100 NVL", None), ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", None), ("NVIDIA A10G", None),
    ("NVIDIA GeForce RTX 4090 D", None), ("NVIDIA GH200 480GB", None), ("Tesla T4", None), ("", None),
])
def test_peak_table(name, peak):
    assert table_peak(name) == peak


def test_peak_needs_cuda_and_16_bit_training_and_the_override_sets_it(monkeypatch):
    monkeypatch.delenv(PEAK_ENV, raising=False)
    assert peak_tflops("cpu", "bf16") is None
    assert peak_tflops("cuda", "no") is None and peak_tflops("cuda", "fp8") is None
    monkeypatch.setenv(PEAK_ENV, "123.5")
    assert peak_tflops("cuda", "bf16") == 123.5 and peak_tflops("cuda", "fp16") == 123.5
    assert peak_tflops("cpu", "bf16") is None  # no MFU on a CPU, whatever the variable says
    for bad in ("fast", "0", "-3", "nan"):
        monkeypatch.setenv(PEAK_ENV, bad)
        with pytest.raises(ConfigError, match=PEAK_ENV):
            peak_tflops("cuda", "bf16")


def test_step_metrics():
    from mftcoder.trainer.flops import StepFlops

    f = model_flops(llama())
    assert StepFlops(f, None).metrics(2e12, 4.0) == {"tflops": 0.5}
    assert StepFlops(f, 100.0).metrics(2e12, 4.0) == {"tflops": 0.5, "mfu": 0.005}
    assert StepFlops(f, 100.0).metrics(None, 4.0) == {}
    assert StepFlops(f, None).step_flops([{"labels": torch.zeros(2)}]) is None  # unreadable batch: logged, no crash


# ---- a real run ------------------------------------------------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_training_records_tflops_of_the_step(tiny_model_dir, tmp_path):
    from transformers import AutoConfig

    from mftcoder.trainer.loop import train
    from train_helpers import data_and_batches, make_cfg, read_records, train_records, write_tasks

    tasks = write_tasks(tmp_path / "data", {"a": 16, "b": 12})
    cfg = make_cfg(tiny_model_dir, tasks, tmp_path / "out", padding_mode="pack", max_train_steps=2)
    train(cfg)
    steps = train_records(read_records(cfg.output_dir))
    assert len(steps) == 2 and all("mfu" not in r for r in steps)  # CPU: no peak
    _, batches = data_and_batches(cfg)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    d, layers = config.hidden_size // config.num_attention_heads, config.num_hidden_layers
    per_token = 2 * sum(m.weight.numel() for m in _linears(tiny_model_dir))
    for step, r in enumerate(steps):
        expected = 0.0
        for mb in batches.micro_batches(step):  # by hand: every sample's length from its sample ids
            for n in torch.bincount(mb["sample_ids"][mb["sample_ids"] >= 0]).tolist():
                expected += 3 * (per_token * n + 4 * d * config.num_attention_heads * layers * n * (n + 1) / 2)
        assert r["tflops"] > 0
        # tflops and tokens_per_s share the step's time: tflops x time is the step's FLOPs
        assert r["tflops"] * 1e12 * r["tokens"] / r["tokens_per_s"] == pytest.approx(expected, rel=1e-9)


def _linears(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
