"""The rows of bench_vs_peers: what each tool runs in its own process, and one clock that measures them all alike.

The clock counts the positions every training forward computes (a forward pre-hook on the input embedding) and the
real tokens of every micro-batch (the tool's collator, wrapped: non-pad positions), and stamps the end of every
optimizer step (torch's global optimizer step hook). Throughput is real tokens over the time between the end of the
first step and the end of the last, so model loading, data preparation and the first step's one-time costs count
only in the time to first step.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from collections import OrderedDict

RESULT_PREFIX = "BENCH_RESULT "
SEED = 1234
LEARNING_RATE = 1e-5
MICRO_BATCH_ROWS, ACCUMULATION = 1, 2  # packed rows per micro-batch, micro-batches per optimizer step


def malloc_settings() -> dict:
    """The glibc allocator settings of mftcoder's CPU launchers (launchers/_common.sh reads the same file)."""
    settings = {}
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launchers", "malloc.env")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                key, value = line.split("=", 1)
                settings[key.strip()] = value.strip()
    return settings


# --- preparation (the parent process) ---------------------------------------------------------------------------------


def prepare(workdir: str, args) -> dict:
    """Model, generated data (several task folders, and the same samples as one task), the mftcoder caches built, and
    the tokenised samples the peers read. Returns the spec every worker gets."""
    import torch
    from transformers import AutoTokenizer

    import peer_data
    from mftcoder.data.packing import build_units
    from mftcoder.runtime import bf16_supported

    if args.model == "tiny":
        from mftcoder.testing import build_tiny_model

        model_path = build_tiny_model(os.path.join(workdir, "tiny_model"))
    elif args.model == "llama1b":
        model_path = build_llama_1b(os.path.join(workdir, "llama1b"))
    else:
        from mftcoder.model.smollm2 import smollm2_path

        model_path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    multi = peer_data.generate(os.path.join(workdir, "data"), tokenizer, args.samples, args.tasks, args.seq_length)
    one = os.path.join(workdir, "data_one_task", "all")
    os.makedirs(one, exist_ok=True)
    with open(os.path.join(one, "train.jsonl"), "w") as out:
        for folder in multi:
            with open(os.path.join(folder, "train.jsonl")) as f:
                shutil.copyfileobj(f, out)
    spec = {"model_path": model_path, "data_multi": multi, "data_one": [one], "seq_length": args.seq_length,
            "cache_dir": os.path.join(workdir, "cache"), "workdir": workdir, "threads": args.threads,
            "mixed_precision": "bf16" if bf16_supported() else "no", "torch": torch.__version__,
            "device": _device_name()}
    lengths = _write_samples(spec, tokenizer)
    rows = len(build_units(lengths, args.seq_length, "pack"))
    spec.update(num_samples=len(lengths), tokens_per_step=args.seq_length * MICRO_BATCH_ROWS * ACCUMULATION,
                pad_batch=max(1, round(len(lengths) / rows)),  # samples per padded micro-batch: a packed row's worth
                data={"real_tokens": int(sum(lengths)), "min_len": int(min(lengths)), "max_len": int(max(lengths)),
                      "mean_len": sum(lengths) / len(lengths), "samples_per_packed_row": len(lengths) / rows})
    return spec


def build_llama_1b(out_dir: str) -> str:
    """A 1.1B-parameter Llama (TinyLlama's shape: 22 layers, hidden 2048, MLP 5632, 32 query / 4 key-value heads)
    with SmolLM2's tokenizer and random weights: a 1B-class model for GPU measurements, built from a config offline."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mftcoder.model.smollm2 import smollm2_path

    if os.path.exists(os.path.join(out_dir, "config.json")):
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=8192,
                         rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return "cuda: " + torch.cuda.get_device_name(0)
    return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


def _write_samples(spec: dict, tokenizer) -> list[int]:
    """Builds mftcoder's caches (multi-task and one-task) and writes the one-task samples as input_ids + labels
    (-100 off the loss mask) for the peers; returns the sample lengths."""
    from mftcoder.data.prepare import prepare_data

    for data in ("data_multi", "data_one"):
        cfg = mftcoder_config(spec, data, "pack", "case3", os.path.join(spec["workdir"], "probe"))
        prepared = prepare_data(cfg, tokenizer, progress=False, verbose=False, writes_stats=False)
    lengths = []
    with open(os.path.join(spec["workdir"], "samples.jsonl"), "w") as f:
        for task in prepared.tasks:
            for i in range(len(task.train)):
                ids, mask = task.train[i]
                labels = [int(t) if m else -100 for t, m in zip(ids, mask)]
                f.write(json.dumps({"input_ids": [int(t) for t in ids], "labels": labels}) + "\n")
                lengths.append(len(ids))
    return lengths


def mftcoder_config(spec: dict, data: str, padding_mode: str, mode: str, output_dir: str):
    from mftcoder.config import parse_config

    batch = MICRO_BATCH_ROWS if padding_mode == "pack" else spec.get("pad_batch", 1)
    return parse_config({
        "data_paths": spec[data], "data_split": "100,0,0", "cache_dir": spec["cache_dir"],
        "pretrained_model_path": spec["model_path"], "output_dir": output_dir, "overwrite_output_dir": True,
        "weighted_loss_mode": mode, "task_sampling": "uniform", "padding_mode": padding_mode,
        "seq_length": spec["seq_length"], "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": ACCUMULATION, "learning_rate": LEARNING_RATE, "min_lr": 0.0,
        "lr_scheduler_type": "constant", "num_warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
        "max_train_steps": spec.get("steps", 1), "evaluation_steps": None, "checkpointing_steps": None,
        "epoch_checkpointing": False, "attn_implementation": "sdpa", "seed": SEED,
    }, source="bench_vs_peers")


# --- the clock (in every worker) ----------------------------------------------------------------------------------------


class Clock:
    """Real tokens and computed positions per optimizer step, and when each step ended."""

    def __init__(self, spec: dict):
        import torch
        from transformers import AutoConfig

        from mftcoder.trainer.flops import model_flops, peak_tflops

        config = AutoConfig.from_pretrained(spec["model_path"])
        self.vocab_size = config.vocab_size
        self.flops = model_flops(config)  # full fine-tuning, PaLM's model FLOPs (docs/performance.md)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.peak_tflops = peak_tflops(device, spec["mixed_precision"])
        self.batch_real: list[int] = []  # real tokens of each micro-batch, in collation order
        self.batch_flops: list[float] = []  # their model FLOPs (attention per sample)
        self.forwards = 0
        self.positions = 0
        self.steps: list[tuple] = []  # (perf_counter, wall time, real tokens, positions, model FLOPs) so far
        torch.nn.modules.module.register_module_forward_pre_hook(self._forward)
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(self._step)

    def _forward(self, module, inputs):
        import torch

        if (isinstance(module, torch.nn.Embedding) and module.training and module.num_embeddings >= self.vocab_size
                and inputs and torch.is_tensor(inputs[0])):
            self.forwards += 1
            self.positions += int(inputs[0].numel())

    def _step(self, optimizer, args, kwargs):
        if sum(p.numel() for g in optimizer.param_groups for p in g["params"]) < 10_000:
            return  # a throwaway optimizer (e.g. a scheduler check), not the model's
        real, flops = sum(self.batch_real[:self.forwards]), sum(self.batch_flops[:self.forwards])
        self.steps.append((time.perf_counter(), time.time(), real, self.positions, flops))
        self.peak = _peak_memory()  # while training: a final save or teardown afterwards does not count

    def count_batch(self, batch: dict) -> dict:
        """Records a collated micro-batch's real tokens: sample_ids >= 0 (mftcoder), the attention mask, or every
        position (a padding-free batch has no padding)."""
        if "sample_ids" in batch:
            real = int((batch["sample_ids"] >= 0).sum())
        elif batch.get("attention_mask") is not None:
            real = int(batch["attention_mask"].sum())
        else:
            real = int(batch["input_ids"].numel())
        from mftcoder.trainer.flops import tokens_and_pairs

        self.batch_real.append(real)
        self.batch_flops.append(self.flops.training(*tokens_and_pairs(batch)))
        return batch

    def wrap(self, collate):
        return lambda *a, **k: self.count_batch(collate(*a, **k))

    def result(self, row: str) -> dict:
        import torch

        if len(self.steps) < 2:
            raise RuntimeError(f"{row}: {len(self.steps)} optimizer steps recorded; need at least 2")
        (t0, wall0, real0, pos0, flops0), (t1, _, real1, pos1, flops1) = self.steps[0], self.steps[-1]
        tflops = (flops1 - flops0) / (t1 - t0) / 1e12
        cuda = torch.cuda.is_available()
        peak = self.peak
        return {"row": row, "steps": len(self.steps), "timed_steps": len(self.steps) - 1, "seconds": t1 - t0,
                "real_tokens": real1 - real0, "positions": pos1 - pos0,
                "real_tokens_per_s": (real1 - real0) / (t1 - t0), "pad_fraction": 1 - (real1 - real0) / (pos1 - pos0),
                "model_tflops": tflops, "mfu": tflops / self.peak_tflops if self.peak_tflops else None,
                "peak_memory_bytes": int(peak), "peak_memory_kind": "cuda max allocated" if cuda else "RSS",
                "first_step_at": wall0,
                "step_seconds": [b[0] - a[0] for a, b in zip(self.steps, self.steps[1:])]}


def _peak_memory() -> int:
    """Peak memory so far: max allocated on CUDA, else the process's peak RSS (VmHWM)."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the rows -----------------------------------------------------------------------------------------------------------


def _load_model(spec: dict):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=torch.float32, attn_implementation="sdpa")


def _samples(spec: dict):
    from datasets import load_dataset

    return load_dataset("json", data_files=os.path.join(spec["workdir"], "samples.jsonl"), split="train")


def row_mftcoder(spec: dict, data: str = "data_multi", padding_mode: str = "pack") -> Clock:
    """mftcoder's own loop (`mftcoder.trainer.loop.train`, as `mftcoder train` runs it), case3 + the balanced
    sampler; the cache is warm (built by `prepare`)."""
    os.environ["ACCELERATE_MIXED_PRECISION"] = spec["mixed_precision"]
    from mftcoder.objectives.sft import SFTObjective
    from mftcoder.trainer.loop import train

    clock = Clock(spec)
    original = SFTObjective.collate
    SFTObjective.collate = lambda self, *a, **k: clock.count_batch(original(self, *a, **k))
    cfg = mftcoder_config(spec, data, padding_mode, "case3", os.path.join(spec["workdir"], "out", spec["row"]))
    train(cfg)
    return clock


def _training_args(spec: dict, cls, **extra):
    import torch

    return cls(output_dir=os.path.join(spec["workdir"], "out", spec["row"]), max_steps=spec["steps"],
               gradient_accumulation_steps=ACCUMULATION, learning_rate=LEARNING_RATE, lr_scheduler_type="constant",
               warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=spec["mixed_precision"] == "bf16",
               logging_steps=10_000, save_strategy="no", report_to="none", dataloader_num_workers=0, seed=SEED,
               use_cpu=not torch.cuda.is_available(), disable_tqdm=True, **extra)


def row_trl(spec: dict, packing: bool) -> Clock:
    """TRL's SFTTrainer on the pre-tokenised samples: packing=True (BFD, padding-free, position_ids), or its defaults
    (padded batches of `pad_batch` samples)."""
    from trl import SFTConfig, SFTTrainer
    from transformers import AutoTokenizer

    clock = Clock(spec)
    args = _training_args(spec, SFTConfig, packing=packing, max_length=spec["seq_length"],
                          per_device_train_batch_size=MICRO_BATCH_ROWS if packing else spec["pad_batch"])
    trainer = SFTTrainer(model=_load_model(spec), args=args, train_dataset=_samples(spec),
                         processing_class=AutoTokenizer.from_pretrained(spec["model_path"]))
    trainer.data_collator = clock.wrap(trainer.data_collator)
    trainer.train()
    return clock


def row_hf_trainer(spec: dict) -> Clock:
    """transformers' Trainer with dynamic padding (each batch padded to its longest sample)."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    clock = Clock(spec)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    args = _training_args(spec, TrainingArguments, per_device_train_batch_size=spec["pad_batch"],
                          remove_unused_columns=False)
    trainer = Trainer(model=_load_model(spec), args=args, train_dataset=_samples(spec),
                      data_collator=clock.wrap(collator))
    trainer.train()
    return clock


def row_bare(spec: dict) -> Clock:
    """A hand-written packed loop: best-fit rows, restarting position_ids and no attention mask, the model's own
    full-logits loss, fused AdamW. The practical ceiling of this stack."""
    import random

    import torch

    from mftcoder.data.packing import build_units

    torch.manual_seed(SEED)
    clock = Clock(spec)
    model = _load_model(spec)
    model.train()
    with open(os.path.join(spec["workdir"], "samples.jsonl")) as f:
        samples = [json.loads(line) for line in f]
    rows = build_units([len(s["input_ids"]) + 1 for s in samples], spec["seq_length"], "pack")  # n positions each
    random.Random(SEED).shuffle(rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0, fused=True)
    autocast = torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16,
                              enabled=spec["mixed_precision"] == "bf16")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    for step in range(spec["steps"]):
        for micro in range(ACCUMULATION):
            row = [samples[i] for i in rows[(step * ACCUMULATION + micro) % len(rows)]]
            ids = torch.tensor([[t for s in row for t in s["input_ids"]]], device=device)
            labels = torch.tensor([[t for s in row for t in s["labels"]]], device=device)
            positions = torch.cat([torch.arange(len(s["input_ids"])) for s in row]).unsqueeze(0).to(device)
            clock.count_batch({"input_ids": ids, "position_ids": positions})
            with autocast:
                loss = model(input_ids=ids, position_ids=positions, labels=labels, use_cache=False).loss
            (loss / ACCUMULATION).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return clock


ROWS = OrderedDict([  # name -> (what it is, the worker); the first is the reference of the ratios
    ("mftcoder_pack", ("mftcoder, all tasks, packed, case3 + balanced sampler", lambda s: row_mftcoder(s))),
    ("mftcoder_pack_1task", ("mftcoder, the same samples as one task, packed", lambda s: row_mftcoder(s, "data_one"))),
    ("mftcoder_padding", ("mftcoder, all tasks, padded (one sample a row)",
                          lambda s: row_mftcoder(s, padding_mode="padding"))),
    ("trl_packed", ("TRL SFTTrainer, packing=True (BFD, padding-free)", lambda s: row_trl(s, packing=True))),
    ("trl_default", ("TRL SFTTrainer, defaults (padded batches)", lambda s: row_trl(s, packing=False))),
    ("hf_trainer", ("transformers Trainer, dynamic padding", row_hf_trainer)),
    ("bare_loop", ("bare packed loop (position_ids, no mask, fused AdamW)", row_bare)),
])


def run_row(row: str, spec: dict) -> int:
    """The worker: train one row, print its result line."""
    import torch

    torch.set_num_threads(spec["threads"])
    spec = dict(spec, row=f"{row}_r{spec['round']}")
    clock = ROWS[row][1](spec)
    result = clock.result(row)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    sys.stdout.flush()
    return 0
