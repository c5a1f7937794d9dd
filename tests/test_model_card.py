"""The model card (output_dir/README.md): a pure function of the run's summary, config, data stats and command,
and what a real tiny run writes (every task named, the final losses those of metrics.jsonl)."""
from __future__ import annotations

import json
import os

import pytest
import yaml

from mftcoder.config import parse_config
from mftcoder.trainer.loop import train
from mftcoder.trainer.model_card import model_card
from train_helpers import make_cfg, read_records, valid_records, write_tasks

STATS = {"tasks": {"python": {"train_samples": 90, "valid_samples": 10, "tokens": 12345, "truncated": 3, "dropped": 1,
                              "rejected": 2},
                   "sql": {"train_samples": 40, "valid_samples": 5, "tokens": 6789, "truncated": 0, "dropped": 0,
                           "rejected": 0}}}
SUMMARY = {"steps": 120, "stop_reason": "early stopping (5 evaluations without a better validation loss)",
           "first_valid": {"python": 2.0, "sql": 3.0}, "last_valid": {"python": 1.5, "sql": 2.7},
           "task_weight": {"python": 0.5, "sql": 0.5}, "output_dir": "runs/demo", "epochs": 2.5,
           "global_batch_size": 32, "processes": 2}


def _cfg(**overrides):
    return parse_config({"data_paths": ["data/python", "data/sql"], "pretrained_model_path": "models/base",
                         "output_dir": "runs/demo", "seq_length": 2048, "per_device_train_batch_size": 4,
                         "gradient_accumulation_steps": 4, "learning_rate": 2e-4, "num_train_epochs": 3,
                         **overrides})


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_lora_card():
    cfg = _cfg(peft_type="lora", lora_rank=16, lora_alpha=32, weighted_loss_mode="case3",
               task_sampling="temperature", sampling_temperature=3)
    card = model_card(SUMMARY, cfg, STATS, ["mftcoder", "train", "--train_config", "my cfg.json"])
    assert _front_matter(card) == {"base_model": "models/base", "library_name": "peft", "pipeline_tag":
                                   "text-generation", "tags": ["mftcoder", "code", "multi-task", "lora"]}
    assert "# demo" in card
    assert "A LoRA adapter (rank 16, alpha 32, dropout 0.05, target modules all-linear) for `models/base`" in card
    assert "on 2 task(s) at once: python, sql." in card
    assert "| python | 90 | 10 | 12345 | 3 | 1 | 2 |" in card and "| sql | 40 | 5 | 6789 | 0 | 0 | 0 |" in card
    for line in ("- weighted_loss_mode: case3", "- task_sampling: temperature (T=3)", "- padding_mode: padding",
                 "- seq_length: 2048", "- global batch: 32 = 4 per device x 4 accumulation x 2 process(es)",
                 "- steps: 120", "- epochs: 2.50 of num_train_epochs=3",
                 "- learning rate: 0.0002 (cosine, warmup 0.05, min_lr 5e-06)",
                 "- stop reason: early stopping (5 evaluations without a better validation loss)"):
        assert line + "\n" in card, line
    assert "| python | 2.0000 | 1.5000 | -25.0% |" in card and "| sql | 3.0000 | 2.7000 | -10.0% |" in card
    assert "AutoPeftModelForCausalLM.from_pretrained('runs/demo')" in card
    assert "mftcoder chat --model models/base --adapter runs/demo\n" in card
    assert "mftcoder generate --model models/base --adapter runs/demo --input prompts.jsonl" in card
    assert "mftcoder merge --base models/base --adapter runs/demo --output runs/demo-merged" in card
    assert "mftcoder train --train_config 'my cfg.json'\n" in card  # the exact command, quoted for a shell
    assert "mftcoder train --train_config runs/demo/train_config.json --output_dir <new_output_dir>" in card


def test_full_and_qlora_cards():
    full = model_card(SUMMARY, _cfg(), STATS, None)
    assert _front_matter(full)["library_name"] == "mftcoder" and "lora" not in _front_matter(full)["tags"]
    assert "A full fine-tune of `models/base`" in full
    assert "AutoModelForCausalLM.from_pretrained('runs/demo')" in full and "--adapter" not in full
    assert "mftcoder chat --model runs/demo\n" in full and "mftcoder merge" not in full
    assert "started from Python" in full
    qlora = model_card(SUMMARY, _cfg(peft_type="qlora", lora_rank=8, lora_alpha=16), STATS, None)
    assert "A QLoRA adapter (rank 8, alpha 16, dropout 0.05, target modules all-linear; base quantized to 4bit)" in qlora
    no_valid = model_card({**SUMMARY, "first_valid": None, "last_valid": None}, _cfg(), STATS, None)
    assert "No validation split" in no_valid and "| python | 90 |" in no_valid


@pytest.mark.usefixtures("one_thread")
def test_a_real_run_writes_its_card_and_resolved_config(tiny_model_dir, tmp_path):
    tasks = write_tasks(tmp_path / "data", {"alpha": 12, "beta": 10, "gamma": 9})
    cfg = make_cfg(tiny_model_dir, tasks, tmp_path / "run", max_train_steps=3, num_train_epochs=2,
                   evaluation_steps=2, peft_type="lora", lora_rank=4, lora_alpha=8)
    summary = train(cfg)
    card = open(os.path.join(cfg.output_dir, "README.md")).read()
    assert card.startswith("---\nbase_model:") and "A LoRA adapter (rank 4, alpha 8" in card
    last = valid_records(read_records(cfg.output_dir))[-1]
    assert last["step"] == summary["steps"] == 3
    for name in ("alpha", "beta", "gamma"):
        assert f"| {name} | {summary['first_valid'][name]:.4f} | {last['task_loss'][name]:.4f} |" in card
    with open(os.path.join(cfg.output_dir, "train_config.json")) as f:
        assert parse_config(json.load(f)) == cfg  # the resolved config, every key
