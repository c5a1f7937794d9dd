"""Full fine-tuning, LoRA and QLoRA (bitsandbytes nf4 on CPU) each train, and each output directory is a model any
HF user loads with from_pretrained (peft for adapters): it reproduces the run's last validation losses, and its
tokenizer's chat_template renders the training token ids. The same on SmolLM2-135M-Instruct (slow)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from mftcoder.trainer.loop import train
from train_helpers import (data_and_batches, make_cfg, read_records, rel, sample_losses, train_records, valid_records,
                           write_tasks)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each, restored after

LORA = dict(lora_rank=8, lora_alpha=16, lora_dropout=0.0)


def load_output(output_dir: str, base_dir: str, peft_type):
    """The trained model the way a user loads it: from_pretrained, or base + PeftModel.from_pretrained."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if peft_type is None:
        return AutoModelForCausalLM.from_pretrained(output_dir, dtype=torch.float32)
    from peft import PeftModel

    kwargs = {}
    if peft_type == "qlora":
        kwargs = dict(quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.float32), device_map={"": "cpu"})
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, **kwargs)
    return PeftModel.from_pretrained(base, output_dir)


def per_task_valid_loss(model, data, batches) -> dict[str, float]:
    out = {}
    with torch.no_grad():
        for k, task in enumerate(data.tasks):
            units = [(k, i) for i in range(len(task.valid))]
            losses = sample_losses(model, [batches.collate_units(units[i:i + 8], "valid")
                                           for i in range(0, len(units), 8)])
            out[task.task.name] = float(sum(l.sum() for _, l in losses)) / sum(len(l) for _, l in losses)
    return out


def check_chat_template(output_dir: str, data_paths: list[str], data) -> None:
    """Every training sample's token ids are the saved tokenizer's chat_template rendering of some input line."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(output_dir)
    assert tok.chat_template
    role = {"human": "user", "bot": "assistant"}
    rendered = set()
    for path in data_paths:
        for name in os.listdir(path):
            with open(os.path.join(path, name)) as f:
                for line in f:
                    msgs = [{"role": role.get(m["role"], m["role"]), "content": m["content"]}
                            for m in json.loads(line)["chat_rounds"]]
                    ids = tok.apply_chat_template(msgs, tokenize=True)
                    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
                    rendered.add(tuple(int(i) for i in ids))
    checked = 0
    for task in data.tasks:
        for i in range(len(task.train)):
            ids, _ = task.train[i]
            assert tuple(int(x) for x in ids) in rendered, f"{task.task.name} sample {i} is not a template rendering"
            checked += 1
    assert checked > 0


def check_run(cfg, data_paths, base_dir, peft_type, *, tol: float) -> None:
    records = read_records(cfg.output_dir)
    steps = train_records(records)
    evals = valid_records(records)
    assert steps[-1]["loss"] < steps[0]["loss"]
    for name, first in evals[0]["task_loss"].items():
        assert evals[-1]["task_loss"][name] < first, (name, evals[0], evals[-1])  # every task learned

    files = set(os.listdir(cfg.output_dir))
    if peft_type is None:
        assert "model.safetensors" in files and "adapter_config.json" not in files
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    data, batches = data_and_batches(cfg)
    model = load_output(cfg.output_dir, base_dir, peft_type)
    if peft_type == "qlora":
        from mftcoder.trainer.backend import keep_4bit_weights_unpacked

        # as in training: bitsandbytes' CPU inference repacking (bf16 numerics) off, so the numbers compare at fp32
        keep_4bit_weights_unpacked(model)
    loaded = per_task_valid_loss(model, data, batches)
    for name, v in evals[-1]["task_loss"].items():
        assert rel(loaded[name], v) < tol, (name, loaded[name], v)  # the saved model is the trained one
    check_chat_template(cfg.output_dir, data_paths, data)


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks2"), {"code": 24, "prose": 16})


@pytest.mark.parametrize("peft_type", [None, "lora", "qlora"])
def test_tiny_model_trains_and_saves_a_loadable_model(tiny_model_dir, two_tasks, tmp_path, peft_type):
    extra = LORA if peft_type else {}
    cfg = make_cfg(tiny_model_dir, two_tasks, tmp_path / "out", peft_type=peft_type, num_train_epochs=2,
                   learning_rate=5e-3, evaluation_steps=4, **extra)
    summary = train(cfg)
    assert summary["steps"] == len(train_records(read_records(cfg.output_dir)))
    check_run(cfg, two_tasks, tiny_model_dir, peft_type, tol=1e-5)


# ---- SmolLM2-135M-Instruct -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_dir():
    from mftcoder.model.smollm2 import smollm2_path

    try:
        return smollm2_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.mark.slow
@pytest.mark.parametrize("peft_type", [None, "lora", "qlora"])
def test_smollm2_trains_a_few_steps(smollm2_dir, tmp_path, peft_type):
    paths = write_tasks(tmp_path / "data", {"code": 10, "prose": 8})
    extra = dict(lora_rank=8, lora_alpha=16, lora_dropout=0.0) if peft_type else {}
    cfg = make_cfg(smollm2_dir, paths, tmp_path / "out", peft_type=peft_type, seq_length=128,
                   per_device_train_batch_size=1, gradient_accumulation_steps=1, per_device_eval_batch_size=4,
                   max_train_steps=3, learning_rate=1e-4 if peft_type is None else 1e-3, min_lr=0.0, **extra)
    train(cfg)
    # 3 steps at batch 1: the run's own validation loss falls for every task, and the saved model reproduces it
    check_run(cfg, paths, smollm2_dir, peft_type, tol=1e-4)
