"""LoRA / QLoRA specifics of a real run on the tiny model: what is trained, what is saved, what stays frozen."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from mftcoder.trainer.loop import train
from train_helpers import make_cfg, read_records, rel, train_records, write_tasks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each, restored after

ALL_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("peft-tasks"), {"code": 16, "prose": 12})


def _module_of(key: str) -> str:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' -> 'q_proj'."""
    parts = key.split(".")
    for marker in ("lora_A", "lora_B", "modules_to_save"):
        if marker in parts:
            return parts[parts.index(marker) - 1]
    return parts[-2]


def test_lora_trains_only_the_adapter_and_saves_only_it(tiny_model_dir, tasks, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(tiny_model_dir, tasks, tmp_path / "out", peft_type="lora", lora_rank=4, lora_alpha=8,
                   lora_dropout=0.05, max_train_steps=3, checkpointing_steps=3)
    train(cfg)
    with open(os.path.join(cfg.output_dir, "adapter_config.json")) as f:
        adapter = json.load(f)
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and adapter["lora_dropout"] == 0.05
    saved = load_file(os.path.join(cfg.output_dir, "adapter_model.safetensors"))
    assert all("lora_A" in k or "lora_B" in k for k in saved), sorted(saved)
    assert {_module_of(k) for k in saved} == ALL_LINEAR  # default target: every linear layer but the head
    assert any(float(v.abs().max()) > 0 for k, v in saved.items() if "lora_B" in k)  # B starts at 0: it trained

    # the base stays exactly the base: loading the adapter on it is the whole trained model
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, cfg.output_dir)
    merged = peft_model.merge_and_unload()
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, original[k])]
    assert changed and all(_module_of(k) in ALL_LINEAR for k in changed)

    # the checkpoint holds the adapter (and optimizer state for it), not a copy of the frozen base
    ckpt = os.path.join(cfg.output_dir, "checkpoint-3")
    weights = load_file(os.path.join(ckpt, "model.safetensors"))
    assert weights and all("lora_" in k for k in weights), [k for k in weights if "lora_" not in k][:5]


def test_lora_target_modules_and_modules_to_save(tiny_model_dir, tasks, tmp_path):
    cfg = make_cfg(tiny_model_dir, tasks, tmp_path / "out", peft_type="lora", lora_rank=4, lora_alpha=8,
                   target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"], max_train_steps=2)
    train(cfg)
    saved = load_file(os.path.join(cfg.output_dir, "adapter_model.safetensors"))
    lora = {_module_of(k) for k in saved if "lora_" in k}
    assert lora == {"q_proj", "v_proj"}
    head = [k for k in saved if "lm_head" in k]
    assert head, sorted(saved)
    original = load_file(os.path.join(tiny_model_dir, "model.safetensors"))["lm_head.weight"]
    assert not torch.equal(saved[head[0]], original)  # the fully trained head moved


def test_qlora_base_is_nf4_double_quant(tiny_model_dir, tasks, tmp_path):
    """The model the loop trains for qlora: bitsandbytes 4-bit nf4 with double quantisation under the adapters."""
    import bitsandbytes as bnb

    from mftcoder.model.load import load_model

    cfg = make_cfg(tiny_model_dir, tasks, tmp_path / "out", peft_type="qlora", lora_rank=4, lora_alpha=8)
    model, _ = load_model(cfg)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * len(ALL_LINEAR)  # every linear layer of the 2 blocks
    for m in four_bit:
        assert m.weight.quant_state.quant_type == "nf4"
        assert m.weight.quant_state.nested  # double quantisation
        assert not m.weight.requires_grad
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", [dict(quantization="8bit"), dict(optimizer="adamw_8bit")])
def test_qlora_8bit_base_and_8bit_adam_train(tiny_model_dir, tasks, tmp_path, variant):
    cfg = make_cfg(tiny_model_dir, tasks, tmp_path / "out", peft_type="qlora", lora_rank=4, lora_alpha=8,
                   learning_rate=1e-2, num_train_epochs=2, **variant)
    train(cfg)
    steps = train_records(read_records(cfg.output_dir))
    assert len(steps) >= 4 and all(r["loss"] == r["loss"] for r in steps)  # finite
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert os.path.isfile(os.path.join(cfg.output_dir, "adapter_model.safetensors"))


@pytest.mark.parametrize("peft_type", [None, "lora"])
def test_gradient_checkpointing_does_not_change_the_run(tiny_model_dir, tasks, tmp_path, peft_type):
    """Recomputing activations in backward gives the same trajectory, LoRA dropout included (its RNG is replayed)."""
    extra = dict(peft_type="lora", lora_rank=4, lora_alpha=8, lora_dropout=0.1) if peft_type else {}
    runs = []
    for gc in (False, True):
        cfg = make_cfg(tiny_model_dir, tasks, tmp_path / f"gc{gc}", gradient_checkpointing=gc, max_train_steps=3,
                       **extra)
        train(cfg)
        runs.append(train_records(read_records(cfg.output_dir)))
    for a, b in zip(*runs):
        assert rel(a["loss"], b["loss"]) < 1e-5 and rel(a["grad_norm"], b["grad_norm"]) < 1e-4
