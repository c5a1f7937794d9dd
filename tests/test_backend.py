"""mftcoder/trainer/backend.py in one process: the CPU quirks, the batch-geometry rules and the FSDP2 wrap class.

The multi-process behaviour (gloo DeepSpeed/FSDP2, clipping, sharded saves) is proven in test_distributed.py.
"""
from __future__ import annotations

import datetime
import logging
import os

import pytest
import torch

from mftcoder.config import parse_config
from mftcoder.trainer import backend


def cfg_for(model_dir="/nonexistent", **over):
    base = dict(data_paths=["/nonexistent"], output_dir="/tmp/unused", pretrained_model_path=model_dir,
                per_device_train_batch_size=3, gradient_accumulation_steps=4, max_grad_norm=0.5)
    base.update(over)
    return parse_config(base)


@pytest.mark.parametrize("env,expected", [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "2"}, "deepspeed"),
    ({"ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "2"}, "fsdp"),
    ({"WORLD_SIZE": "2"}, "ddp"),
    ({}, "single"),
])
def test_launched_backend(monkeypatch, env, expected):
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert backend.launched_backend() == expected


def test_thread_count():
    assert backend.thread_count({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "8"}, cpu_count=16) == 3
    assert backend.thread_count({"LOCAL_WORLD_SIZE": "4"}, cpu_count=16) == 4  # cores shared by this node's processes
    assert backend.thread_count({"LOCAL_WORLD_SIZE": "8"}, cpu_count=2) == 1  # never 0
    assert backend.thread_count({}, cpu_count=6) == 6


def test_deepspeed_geometry_comes_from_the_train_config(caplog):
    cfg = cfg_for()
    ds = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 1, "train_batch_size": 24,
          "gradient_clipping": 0.5, "zero_optimization": {"stage": 3}}
    with caplog.at_level(logging.WARNING, logger="mftcoder.trainer.backend"):
        out = backend.reconcile_deepspeed_config(ds, cfg, num_processes=2, source="DeepSpeed config ds.json")
    assert out is ds
    assert ds == {"train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 4, "train_batch_size": 24,
                  "gradient_clipping": 0.5, "zero_optimization": {"stage": 3}}
    # "auto" and equal values are filled silently; a value that disagrees is overridden loudly
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["DeepSpeed config ds.json gradient_accumulation_steps=1 overridden by the train_config: 4"]


def test_no_clipping_maps_to_zero():
    assert backend.deepspeed_geometry(cfg_for(max_grad_norm=None), 8)["gradient_clipping"] == 0.0
    assert backend.deepspeed_geometry(cfg_for(), 8)["train_batch_size"] == 3 * 4 * 8


@pytest.mark.parametrize("block,keys", [("optimizer", "learning_rate"), ("scheduler", "lr_scheduler_type")])
def test_deepspeed_optimizer_or_scheduler_block_is_rejected(block, keys):
    with pytest.raises(ValueError, match=rf"DeepSpeed config x.json defines '{block}'.*\({keys}.*remove the '{block}'"):
        backend.reconcile_deepspeed_config({block: {"type": "AdamW"}}, cfg_for(), 2, source="DeepSpeed config x.json")


def test_accumulation_from_the_accelerate_config_is_replaced(monkeypatch, caplog):
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    with caplog.at_level(logging.WARNING, logger="mftcoder.trainer.backend"):
        backend._check_accumulation_env(cfg_for())
    assert os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] == "4"  # what accelerate and DeepSpeed will read
    assert "gradient_accumulation_steps=1; using the train_config's 4" in caplog.text


def test_deepspeed_on_cpu_uses_gloo_and_drops_accelerate_use_cpu(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    timeout = datetime.timedelta(seconds=77)
    # accelerate passes on only the fields that differ from the handler's defaults
    (kw,) = backend.process_group_kwargs("deepspeed", cuda=False, timeout=timeout)
    assert kw.to_kwargs() == {"backend": "gloo", "timeout": timeout}
    assert "ACCELERATE_USE_CPU" not in os.environ and os.environ["DS_ACCELERATOR"] == "cpu"
    (kw,) = backend.process_group_kwargs("deepspeed", cuda=True, timeout=timeout)
    assert kw.to_kwargs() == {"timeout": timeout}  # NCCL, accelerate's default
    (kw,) = backend.process_group_kwargs("ddp", cuda=False, timeout=timeout)
    assert kw.to_kwargs() == {"timeout": timeout}  # accelerate picks gloo for MULTI_CPU itself


@pytest.mark.parametrize("arch,layer", [("llama", "LlamaDecoderLayer"), ("qwen2", "Qwen2DecoderLayer")])
def test_fsdp_wrap_class_is_read_from_the_model(tiny_model_dir, tiny_qwen2_dir, arch, layer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir if arch == "llama" else tiny_qwen2_dir)
    assert backend.fsdp_wrap_class_names(model) == [layer]
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    assert backend.fsdp_wrap_class_names(peft_model) == [layer]
    assert backend.fsdp_wrap_class_names(model, [layer]) == [layer]
    with pytest.raises(ValueError, match=r"\['GPT2Block'\] not found in .*ForCausalLM; remove it"):
        backend.fsdp_wrap_class_names(model, ["GPT2Block"])


def test_fsdp_wrap_class_missing_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="cannot find the decoder-layer class of Sequential.*fsdp_transformer_layer"):
        backend.fsdp_wrap_class_names(model)


def test_single_process_accelerator_keeps_chunked_ce(tiny_model_dir, monkeypatch):
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    from accelerate.state import AcceleratorState

    acc = backend.make_accelerator(cfg_for(tiny_model_dir))
    try:
        assert acc.num_processes == 1 and not backend.is_sharded(acc) and acc.gradient_accumulation_steps == 4
        assert backend.chunked_ce(acc, cfg_for(tiny_model_dir)) is True
        assert backend.chunked_ce(acc, cfg_for(tiny_model_dir, chunked_ce=False)) is False
    finally:
        AcceleratorState._reset_state(True)  # leave no shared accelerate state to later tests


def _qlora_grad_norm(cfg, evaluate_first: bool, unpacked: bool) -> float:
    from mftcoder.model.load import load_model

    torch.manual_seed(0)
    model, _ = load_model(cfg)
    if unpacked:
        assert backend.keep_4bit_weights_unpacked(model) in (0, 14)  # 7 Linear4bit per layer x 2, on avx512_bf16
    ids = torch.randint(5, 500, (2, 16), generator=torch.Generator().manual_seed(1))
    if evaluate_first:
        model.eval()
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        model.train()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)))


def test_qlora_gradients_do_not_change_after_an_evaluation(tiny_model_dir):
    """bitsandbytes repacks 4-bit weights for inference at a no-grad forward on avx512_bf16 CPUs, and its backward
    through the repacked weights is wrong; `keep_4bit_weights_unpacked` (applied by `backend.prepare`) prevents it."""
    pytest.importorskip("bitsandbytes")
    cfg = cfg_for(tiny_model_dir, peft_type="qlora", lora_rank=8, lora_alpha=16, lora_dropout=0.0)
    fresh = _qlora_grad_norm(cfg, evaluate_first=False, unpacked=True)
    assert _qlora_grad_norm(cfg, evaluate_first=True, unpacked=True) == pytest.approx(fresh, rel=1e-6)
    from bitsandbytes.functional import has_avx512bf16

    if has_avx512bf16():  # the bitsandbytes 0.50 fault this guards against, where it exists
        assert _qlora_grad_norm(cfg, evaluate_first=True, unpacked=False) != pytest.approx(fresh, rel=1e-2)
