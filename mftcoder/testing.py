"""Tiny models with an in-process trained tokenizer, for tests and benchmarks (no hub access)."""
from __future__ import annotations

import os

CORPUS = (
    [f"def add_{i}(a, b):\n    return a + b + {i}\n" for i in range(600)]
    + [f"The quick brown fox number {i} jumps over the lazy dog." for i in range(600)]
    + [f"<s>human\nWrite a function.\n<s>bot\nassert f({i}) == {i * 2}\n" for i in range(200)]
)


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        unk_token=None,
    )


def build_tiny_model(out_dir: str, arch: str = "llama", seed: int = 0, tied: bool = False) -> str:
    """Write a ~140k-parameter Llama or Qwen2 model (or a Mixtral / Qwen2-MoE one with 4 experts, top-2) plus tokenizer
    to `out_dir` and return it. `tied`: lm_head shares the input embedding matrix (tie_word_embeddings)."""
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM)

    if os.path.exists(os.path.join(out_dir, "config.json")):
        return out_dir
    tok = build_tokenizer()
    tok.save_pretrained(out_dir)
    common = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "mixtral":
        model = MixtralForCausalLM(MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2,
                                                 router_aux_loss_coef=0.02))
    elif arch == "qwen2_moe":
        model = Qwen2MoeForCausalLM(Qwen2MoeConfig(**common, num_experts=4, num_experts_per_tok=2,
                                                   moe_intermediate_size=32, shared_expert_intermediate_size=64,
                                                   router_aux_loss_coef=0.02))
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; expected 'llama', 'qwen2', 'mixtral' or 'qwen2_moe'")
    model.save_pretrained(out_dir)
    return out_dir
