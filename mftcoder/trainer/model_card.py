"""The model card (output_dir/README.md) of a finished run: what was trained on which tasks, how, the per-task
validation losses, how to load it and how to train it again.

`model_card(summary, cfg, stats, command)` is a pure function of the summary `finish` builds, the resolved config,
data_stats.json and the launching command line; the loop writes its text after the final model is saved (an
interrupted run saves no final model and gets no card).
"""
from __future__ import annotations

import json
import os
import shlex
from typing import Optional

from mftcoder.config import TrainConfig

CARD_FILE = "README.md"


def model_card(summary: dict, cfg: TrainConfig, stats: dict, command: Optional[list[str]] = None) -> str:
    tasks = list((stats or {}).get("tasks", {})) or list(summary.get("last_valid") or {})
    sections = [_front_matter(cfg), f"# {os.path.basename(os.path.normpath(cfg.output_dir))}", _what(cfg, tasks),
                _tasks_table(stats, tasks), _setup(summary, cfg), _losses(summary, tasks), _loading(cfg),
                _reproduce(cfg, command)]
    return "\n\n".join(sections) + "\n"


def write_model_card(output_dir: str, text: str) -> str:
    """Write README.md (replacing PEFT's empty template) through a temporary file: never half a card."""
    path = os.path.join(output_dir, CARD_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path


def _front_matter(cfg: TrainConfig) -> str:
    tags = ["mftcoder", "code", "multi-task"] + (["lora"] if cfg.peft_type else [])
    lines = ["---", f"base_model: {json.dumps(cfg.pretrained_model_path)}",  # a JSON string is a YAML string
             f"library_name: {'peft' if cfg.peft_type else 'mftcoder'}", "tags:", *(f"- {t}" for t in tags),
             "pipeline_tag: text-generation", "---"]
    return "\n".join(lines)


def _what(cfg: TrainConfig, tasks: list[str]) -> str:
    base = f"`{cfg.pretrained_model_path}`"
    lora = (f"rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g}, dropout {cfg.lora_dropout:g}, target modules "
            f"{_text(cfg.target_modules or 'all-linear')}")
    kind = {None: f"A full fine-tune of {base}",
            "lora": f"A LoRA adapter ({lora}) for {base}",
            "qlora": f"A QLoRA adapter ({lora}; base quantized to {cfg.quantization}) for {base}"}[cfg.peft_type]
    return (f"{kind}, trained with mftcoder's `{cfg.objective}` objective on {len(tasks)} task(s) at once: "
            f"{', '.join(tasks)}.")


def _tasks_table(stats: dict, tasks: list[str]) -> str:
    cols = ("train_samples", "valid_samples", "tokens", "truncated", "dropped", "rejected")
    rows = ["## Tasks", "", "| task | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
            "|---|" + "---:|" * len(cols)]
    for name in tasks:
        st = (stats or {}).get("tasks", {}).get(name, {})
        rows.append(f"| {name} | " + " | ".join(str(st.get(c, "-")) for c in cols) + " |")
    return "\n".join(rows + ["", "Counts from `data_stats.json` (tokens: the task's whole data before the split)."])


def _setup(summary: dict, cfg: TrainConfig) -> str:
    sampling = cfg.task_sampling + (f" (T={cfg.sampling_temperature:g})" if cfg.task_sampling == "temperature" else "")
    batch = summary.get("global_batch_size")
    batch_text = (f"{batch} = {cfg.per_device_train_batch_size} per device x {cfg.gradient_accumulation_steps} "
                  f"accumulation x {summary.get('processes', 1)} process(es)" if batch else "-")
    epochs = summary.get("epochs")
    items = [("weighted_loss_mode", cfg.weighted_loss_mode), ("task_sampling", sampling),
             ("padding_mode", cfg.padding_mode), ("seq_length", cfg.seq_length), ("global batch", batch_text),
             ("steps", summary.get("steps")),
             ("epochs", f"{epochs:.2f} of num_train_epochs={cfg.num_train_epochs}" if epochs is not None else "-"),
             ("learning rate", f"{cfg.learning_rate:g} ({cfg.lr_scheduler_type}, warmup {cfg.num_warmup_steps:g}, "
                               f"min_lr {cfg.min_lr:g})"),
             ("stop reason", summary.get("stop_reason"))]
    return "\n".join(["## Training", ""] + [f"- {k}: {v}" for k, v in items])


def _losses(summary: dict, tasks: list[str]) -> str:
    first, last = summary.get("first_valid") or {}, summary.get("last_valid") or {}
    if not last:
        return "## Validation loss\n\nNo validation split (data_split gave no task a validation sample)."
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    rows = ["## Validation loss", "", "| task | first | last | change |", "|---|---:|---:|---:|"]
    for name in tasks:
        f, l_ = first.get(name), last.get(name)
        change = "-" if f is None or l_ is None or f == 0 else f"{(l_ - f) / f * 100:+.1f}%"
        rows.append(f"| {name} | {fmt(f)} | {fmt(l_)} | {change} |")
    return "\n".join(rows + ["", "Per-task loss on the validation split before training and after the last step "
                                 "(every step is in `metrics.jsonl`)."])


def _loading(cfg: TrainConfig) -> str:
    out, base = cfg.output_dir, cfg.pretrained_model_path
    if cfg.peft_type:
        python = ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                  f"model = AutoPeftModelForCausalLM.from_pretrained({out!r})  # loads the base named in "
                  f"adapter_config.json\ntokenizer = AutoTokenizer.from_pretrained({out!r})")
        flags = f"--model {shlex.quote(base)} --adapter {shlex.quote(out)}"
        extra = [f"mftcoder merge --base {shlex.quote(base)} --adapter {shlex.quote(out)} "
                 f"--output {shlex.quote(out.rstrip('/') + '-merged')}"]
    else:
        python = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                  f"model = AutoModelForCausalLM.from_pretrained({out!r})\n"
                  f"tokenizer = AutoTokenizer.from_pretrained({out!r})  # with the chat template used in training")
        flags, extra = f"--model {shlex.quote(out)}", []
    shell = [f"mftcoder chat {flags}",
             f"mftcoder generate {flags} --input prompts.jsonl --output answers.jsonl --max_new_tokens 256", *extra]
    return "\n".join(["## Use", "", "```python", python, "```", "", "```bash", *shell, "```"])


def _reproduce(cfg: TrainConfig, command: Optional[list[str]]) -> str:
    config = os.path.join(cfg.output_dir, "train_config.json")
    lines = ["## Reproduce", ""]
    if command:
        lines += ["The command that started this run:", "", "```bash", shlex.join(command), "```", ""]
    else:
        lines += ["This run was started from Python (`mftcoder.trainer.loop.train`).", ""]
    lines += [f"The resolved config (every key, defaults included) is `{config}`; to train again into a new folder:",
              "", "```bash", f"mftcoder train --train_config {shlex.quote(config)} --output_dir <new_output_dir>",
              "```"]
    return "\n".join(lines)


def _text(value) -> str:
    return value if isinstance(value, str) else ", ".join(value)
