"""What the training tests share: task folders of chat_rounds jsonl, a tiny-model train_config, metrics.jsonl readers,
and the independent per-sample loss computation the pinned-number tests compare the loop against."""
from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F

from mftcoder.config import parse_config


# ---- data and configs ------------------------------------------------------------------------------------------------

def _line(style: int, i: int) -> dict:
    if style == 0:
        rounds = [{"role": "human", "content": f"add {i} to x"},
                  {"role": "bot", "content": f"def add_{i}(x):\n    return x + {i}"}]
    elif style == 1:
        rounds = [{"role": "human", "content": f"The quick brown fox number {i}"},
                  {"role": "bot", "content": "jumps over the lazy dog. " * (1 + i % 4)}]
    else:
        rounds = [{"role": "human", "content": f"Write a function {i}."},
                  {"role": "bot", "content": f"assert f({i}) == {2 * i}"},
                  {"role": "human", "content": "again"},
                  {"role": "bot", "content": f"def add_{i}(a, b):\n    return a + b + {i}"}]
    return {"chat_rounds": rounds}


def write_tasks(root, sizes: dict[str, int]) -> list[str]:
    """One folder of chat_rounds jsonl per task; task k uses line style k % 3 (different lengths per task)."""
    paths = []
    for k, (name, n) in enumerate(sizes.items()):
        folder = os.path.join(str(root), name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "train.jsonl"), "w") as f:
            for i in range(n):
                f.write(json.dumps(_line(k % 3, i)) + "\n")
        paths.append(folder)
    return paths


def make_cfg(model_dir, data_paths, output_dir, **overrides):
    base = dict(data_paths=data_paths, output_dir=str(output_dir), pretrained_model_path=model_dir, seq_length=64,
                per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=3e-3, min_lr=1e-4,
                num_train_epochs=1, data_split="80,20,0", evaluation_steps=None, checkpointing_steps=None,
                num_warmup_steps=0)
    base.update(overrides)
    return parse_config(base)


def read_records(output_dir) -> list[dict]:
    with open(os.path.join(str(output_dir), "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_records(records):
    return [r for r in records if r.get("split") is None]


def valid_records(records):
    return [r for r in records if r.get("split") == "valid"]


# ---- the independent computation -----------------------------------------------------------------------------------

def data_and_batches(cfg):
    """The tokenised data and the micro-batches of step 0, built the way the loop builds them."""
    from mftcoder.data.prepare import prepare_data
    from mftcoder.data.template import attach_chat_template, get_template
    from mftcoder.model.tokenizer import load_tokenizer
    from mftcoder.trainer.batches import TrainBatches

    tok = load_tokenizer(cfg.pretrained_model_path)
    attach_chat_template(tok, get_template(cfg.template, tok, cfg.role_markers))
    data = prepare_data(cfg, tok, progress=False, verbose=False)
    return data, TrainBatches(data, cfg, 0, 1, tok.pad_token_id)


def sample_losses(model, micro_batches) -> list[tuple[int, torch.Tensor]]:
    """(task, per-token CE of its trained tokens) for every sample, from the model's full logits."""
    out = []
    for mb in micro_batches:
        logits = model(input_ids=mb["input_ids"], position_ids=mb["position_ids"], attention_mask=None,
                       use_cache=False).logits
        out += sample_losses_from_logits(logits, mb)
    return out


def sample_losses_from_logits(logits: torch.Tensor, mb: dict) -> list[tuple[int, torch.Tensor]]:
    """(task, per-token CE of its trained tokens) for every sample of micro-batch `mb`, given its logits."""
    tl = F.cross_entropy(logits.flatten(0, 1).float(), mb["labels"].flatten(), ignore_index=-100,
                         reduction="none").view(mb["labels"].shape)
    out = []
    for s, task in enumerate(mb["sample_task_ids"].tolist()):
        trained = (mb["sample_ids"] == s) & (mb["labels"] != -100)
        if trained.any():
            out.append((task, tl[trained]))
    return out


def hand_step_loss(samples, mode: str, weights: list[float], K: int):
    """The formulas of the README, written out over samples; returns (loss tensor, per-task token means)."""
    tok_sum = [sum((l.sum() for t, l in samples if t == k), torch.zeros(())) for k in range(K)]
    tok_n = [sum(len(l) for t, l in samples if t == k) for k in range(K)]
    mean_sum = [sum((l.mean() for t, l in samples if t == k), torch.zeros(())) for k in range(K)]
    n_samples = [sum(1 for t, _ in samples if t == k) for k in range(K)]
    present = [k for k in range(K) if tok_n[k] > 0]
    if mode == "case1":
        loss = sum(tok_sum) / sum(tok_n)
    elif mode == "case2":
        loss = sum(mean_sum) / sum(n_samples)
    elif mode in ("case3", "coba"):
        loss = sum(weights[k] * tok_sum[k] / tok_n[k] for k in present) / sum(weights[k] for k in present)
    else:
        loss = sum(weights[k] * mean_sum[k] / n_samples[k] for k in present) / sum(weights[k] for k in present)
    task_means = [float(tok_sum[k].detach()) / tok_n[k] if tok_n[k] else None for k in range(K)]
    return loss, task_means


def initial_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def grad_norm(model) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))


def rel(a, b) -> float:
    return abs(a - b) / max(abs(b), 1e-12)
