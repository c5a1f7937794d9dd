"""Training-path benchmarks: each measurement is "baseline vs ours, ratio", printed side by side.

    python benchmarks/bench_training.py [--model tiny|smollm2] [--quick] [--threads N] [--json out.json]

1. tokenisation   cold build of the token cache of examples/data/ (baseline) vs a warm load of it (ours)
2. packing        padding_mode=padding (baseline) vs pack (ours) at seq_length 512 (tiny model: 1024, see
                  DEFAULT_SEQ_LENGTH; --seq-length to choose): pad waste of the rows the trainer builds in one
                  epoch, rows per epoch, and forward+backward throughput (non-pad tokens/s) over the same training
                  samples in both modes
3. cross_entropy  full [B, T, V] logits (baseline) vs the chunked loss (ours) at micro batch 4 x seq 1024 and vocab
                  49,152: peak RSS increase (each variant in a fresh subprocess), forward+backward time, and the max
                  |difference| of per-token losses and of the hidden-state gradients

Everything runs through the project's own code (load_or_build, TrainBatches, collate, model_token_losses,
token_losses_from_logits / token_losses_from_hidden). Timings are the median of repeated runs; they are for
comparing the two columns of one run, not runs on different machines. Correctness invariants (identical data,
waste, loss equality) are asserted by tests/test_benchmarks.py from the --json output, never speed.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

EXAMPLE_TASKS = ["code_completion", "text_to_code", "unit_tests", "code_explain"]
SECTIONS = ("tokenisation", "packing", "cross_entropy")
SMOLLM2_VOCAB, SMOLLM2_HIDDEN = 49152, 576
# The tiny model's 512-token BPE vocabulary turns the same examples into ~2.6x more tokens than SmolLM2's (mean 441
# vs 167 tokens a sample, longest 877 vs 334), so at 512 a tenth of them would be truncated and few pairs fit in a
# row. 1024 keeps the tiny model's rows holding about as many samples as SmolLM2's rows of 512 do.
DEFAULT_SEQ_LENGTH = {"tiny": 1024, "smollm2": 512}


# ---------------------------------------------------------------------------------------------------------------------
# settings


def settings(args) -> dict:
    """Sizes of every section; --quick shrinks them to seconds."""
    seq_length = args.seq_length or DEFAULT_SEQ_LENGTH[args.model]
    if args.quick:
        return dict(token_cold_reps=2, token_warm_reps=3, seq_length=seq_length, micro_batch=4,
                    train_tokens=args.train_tokens or 16384,
                    ce_batch=2, ce_seq=256, ce_vocab=SMOLLM2_VOCAB, ce_hidden=64, ce_chunk=128, ce_reps=1)
    default_tokens = None if args.model == "tiny" else 12288  # tiny: the whole training set; SmolLM2: ~25 rows of 512
    return dict(token_cold_reps=3, token_warm_reps=10, seq_length=seq_length, micro_batch=4,
                train_tokens=args.train_tokens or default_tokens,
                ce_batch=4, ce_seq=1024, ce_vocab=SMOLLM2_VOCAB, ce_hidden=SMOLLM2_HIDDEN, ce_chunk=1024, ce_reps=3)


def set_threads(n: int) -> None:
    # before torch / tokenizers are imported, so their thread pools start at this size
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def model_dir(name: str, workdir: str) -> str:
    if name == "tiny":
        from mftcoder.testing import build_tiny_model

        return build_tiny_model(os.path.join(workdir, "tiny-llama"), arch="llama")
    from mftcoder.model.smollm2 import smollm2_path

    return smollm2_path()


def make_config(model_path: str, workdir: str, **kw):
    from mftcoder.config import parse_config

    data = {"data_paths": [os.path.join(REPO, "examples", "data", t) for t in EXAMPLE_TASKS],
            "pretrained_model_path": model_path, "output_dir": os.path.join(workdir, "out"), **kw}
    return parse_config(data, source="bench_training")


def ratio(ours: float, baseline: float) -> float | None:
    return ours / baseline if baseline else None


def median_time(fn, reps: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


# ---------------------------------------------------------------------------------------------------------------------
# 1. tokenisation: cold build vs warm load


def same_data(a, b) -> bool:
    """Every task's train and valid samples (ids and loss masks) and the statistics are identical."""
    import numpy as np

    if a.task_names != b.task_names or json.dumps(a.stats, sort_keys=True) != json.dumps(b.stats, sort_keys=True):
        return False
    for ta, tb in zip(a.tasks, b.tasks):
        for split in ("train", "valid"):
            sa, sb = getattr(ta, split), getattr(tb, split)
            if len(sa) != len(sb) or not np.array_equal(sa.lengths, sb.lengths):
                return False
            for i in range(len(sa)):
                (ia, ma), (ib, mb) = sa[i], sb[i]
                if not (np.array_equal(ia, ib) and np.array_equal(ma, mb)):
                    return False
    return True


def bench_tokenisation(mpath: str, tokenizer, workdir: str, s: dict, threads: int) -> dict:
    from mftcoder.data.cache import load_or_build

    root = os.path.join(workdir, "token-cache")
    cold_times, builds = [], []
    for rep in range(s["token_cold_reps"]):
        cache = os.path.join(root, f"cold-{rep}")  # a fresh, empty cache folder each time
        cfg = make_config(mpath, workdir, seq_length=s["seq_length"], cache_dir=cache,
                          preprocessing_num_workers=threads)
        start = time.perf_counter()
        data = load_or_build(cfg, tokenizer, num_workers=threads, progress=False)
        cold_times.append(time.perf_counter() - start)
        if data.from_cache:
            raise RuntimeError(f"{cache} was not empty: the cold build was a warm load")
        builds.append((cfg, data))
    cfg = builds[0][0]  # the warm loads read the first build's cache ...
    warm: list = []
    warm_s, warm_times = median_time(lambda: warm.append(load_or_build(cfg, tokenizer, progress=False)),
                                     s["token_warm_reps"])
    # ... and are compared with every build, the later ones tokenised independently into caches of their own
    identical = all(same_data(data, d) for _, data in builds for d in warm)
    stats = builds[0][1].stats["tasks"].values()
    cold_s = statistics.median(cold_times)
    return {
        "baseline": "cold build (tokenise + write the cache)", "ours": "warm load (fingerprint + memory-map)",
        "cold_s": cold_s, "warm_s": warm_s, "speedup": cold_s / warm_s,
        "cold_times_s": cold_times, "warm_times_s": warm_times, "workers": threads,
        "lines": sum(t["lines"] for t in stats), "samples": sum(t["train_samples"] + t["valid_samples"]
                                                                + t["test_samples"] for t in stats),
        "tokens": sum(t["tokens"] for t in stats), "truncated": sum(t["truncated"] for t in stats),
        "warm_from_cache": all(d.from_cache for d in warm),
        "identical": identical, "independent_builds": len(builds),
    }


# ---------------------------------------------------------------------------------------------------------------------
# 2. padding vs packing


def epoch_rows(data, cfg, pad_id: int) -> dict:
    """Pad waste and row counts over one epoch of the exact micro-batches the trainer builds (rank 0 of 1)."""
    from mftcoder.trainer.batches import TrainBatches

    tb = TrainBatches(data, cfg, rank=0, world_size=1, pad_id=pad_id)
    positions = pads = rows = 0
    for step in range(tb.steps_per_epoch()):
        for mb in tb.micro_batches(step):
            positions += mb["sample_ids"].numel()
            pads += int((mb["sample_ids"] < 0).sum())
            rows += mb["sample_ids"].shape[0]
    return {"rows_per_epoch": sum(len(u) for u in tb.units), "rows_built": rows,
            "steps_per_epoch": tb.steps_per_epoch(), "positions": positions, "pad_positions": pads,
            "pad_waste": pads / positions}


def sample_store(pairs: list):
    """An in-memory SampleStore holding copies of the given (ids, mask) samples."""
    import numpy as np

    from mftcoder.data.cache import SampleStore

    lengths = np.asarray([len(ids) for ids, _ in pairs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if pairs else np.zeros(0, np.int64)
    ids = np.concatenate([ids for ids, _ in pairs]) if pairs else np.zeros(0, np.int32)
    mask = np.concatenate([m for _, m in pairs]) if pairs else np.zeros(0, np.uint8)
    return SampleStore(ids, mask, offsets, lengths)


def subset(data, fraction: float):
    """The first `fraction` (rounded, at least one) of every task's training samples, as a TokenizedData."""
    from mftcoder.data.cache import TaskData, TokenizedData

    tasks = []
    for t in data.tasks:
        k = min(len(t.train), max(1, round(fraction * len(t.train))))
        tasks.append(TaskData(t.task, sample_store([t.train[i] for i in range(k)]), sample_store([])))
    return TokenizedData(tasks, data.stats, data.cache_path, data.from_cache)


def epoch_micro_batches(data, cfg, pad_id: int) -> list[dict]:
    """One epoch in the trainer's order, without the units repeated to fill the last step (so both modes see
    exactly the same samples once)."""
    from mftcoder.trainer.batches import TrainBatches

    tb = TrainBatches(data, cfg, rank=0, world_size=1, pad_id=pad_id)
    units = [u for batch in tb.sampler.epoch_plan(0) for u in batch]
    units = units[: len(units) - tb.sampler.padded_units()]
    m = cfg.per_device_train_batch_size
    return [tb.collate_units(units[i:i + m], split="train") for i in range(0, len(units), m)]


def train_throughput(model, batches: list[dict], cfg) -> dict:
    """Forward + backward (the trainer's loss call, no optimizer step) over `batches`; non-pad tokens per second."""
    from mftcoder.loss.cross_entropy import model_token_losses

    def step(mb):
        token_loss = model_token_losses(model, mb, chunked=cfg.chunked_ce, chunk_size=cfg.ce_chunk_size)
        (token_loss.sum() / max(mb["num_loss_tokens"], 1)).backward()

    step(batches[0])  # warm-up (first-call allocations, the chunked-loss head check): not timed
    model.zero_grad(set_to_none=True)
    elapsed = 0.0
    for mb in batches:
        start = time.perf_counter()
        step(mb)
        elapsed += time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    tokens = sum(int((mb["sample_ids"] >= 0).sum()) for mb in batches)
    positions = sum(mb["sample_ids"].numel() for mb in batches)
    samples = sum(int(mb["sample_task_ids"].numel()) for mb in batches)
    return {"micro_batches": len(batches), "samples": samples, "tokens": tokens, "positions": positions,
            "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def bench_packing(mpath: str, tokenizer, workdir: str, s: dict, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from mftcoder.data.cache import load_or_build

    common = dict(seq_length=s["seq_length"], cache_dir=os.path.join(workdir, "token-cache", "packing"),
                  preprocessing_num_workers=threads, per_device_train_batch_size=s["micro_batch"],
                  gradient_accumulation_steps=1)
    cfgs = {mode: make_config(mpath, workdir, padding_mode=mode, **common) for mode in ("padding", "pack")}
    data = load_or_build(cfgs["padding"], tokenizer, num_workers=threads, progress=False)
    pad_id = tokenizer.pad_token_id
    out: dict = {"baseline": "padding_mode=padding", "ours": "padding_mode=pack", "seq_length": s["seq_length"],
                 "micro_batch": s["micro_batch"],
                 "train_samples": sum(len(t.train) for t in data.tasks)}
    for mode, cfg in cfgs.items():
        out[mode] = epoch_rows(data, cfg, pad_id)

    total = sum(int(t.train.lengths.sum()) - len(t.train) for t in data.tasks)  # input positions of all samples
    fraction = 1.0 if not s["train_tokens"] else min(1.0, s["train_tokens"] / total)
    sub = subset(data, fraction)
    model = AutoModelForCausalLM.from_pretrained(mpath, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    model.train()
    out["throughput_subset_fraction"] = fraction
    for mode, cfg in cfgs.items():
        out[mode]["train"] = train_throughput(model, epoch_micro_batches(sub, cfg, pad_id), cfg)
    assert out["padding"]["train"]["tokens"] == out["pack"]["train"]["tokens"], "both modes must see the same tokens"
    return out


# ---------------------------------------------------------------------------------------------------------------------
# 3. cross entropy: full logits vs chunked, each variant in a fresh process


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def lm_head_weight(model: str, vocab: int, hidden: int):
    """SmolLM2's real (tied) output embedding, or a random one of the same shape (std 0.02, like its init)."""
    import torch

    if model == "smollm2":
        from safetensors import safe_open

        from mftcoder.model.smollm2 import smollm2_path

        with safe_open(os.path.join(smollm2_path(), "model.safetensors"), "pt") as f:
            key = "lm_head.weight" if "lm_head.weight" in f.keys() else "model.embed_tokens.weight"
            w = f.get_tensor(key).float().contiguous()
        if w.shape[0] != vocab:
            raise ValueError(f"SmolLM2's lm_head has vocab {w.shape[0]}, expected {vocab}")
        return w[:, :hidden].contiguous()
    g = torch.Generator().manual_seed(1)
    return torch.randn(vocab, hidden, generator=g) * 0.02


def ce_worker(variant: str, model: str, batch: int, seq: int, vocab: int, hidden: int, chunk: int, reps: int,
              threads: int, out_dir: str) -> dict:
    """One variant's forward + backward of lm_head + cross entropy, in this (fresh) process."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from mftcoder.loss.cross_entropy import token_losses_from_hidden, token_losses_from_logits

    torch.set_num_threads(threads)
    weight = lm_head_weight(model, vocab, hidden).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    # unit-variance hidden states, like a final RMSNorm's output; every position trained (the chunked path's worst
    # case: it projects only trained positions, so masked prompts would make it cheaper still)
    h = torch.randn(batch, seq, hidden, generator=g).requires_grad_(True)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)

    def run(h=h, labels=labels):
        h.grad = weight.grad = None
        if variant == "full":
            losses = token_losses_from_logits(F.linear(h, weight), labels)
        elif variant == "fused":  # what SFT training runs: gradients formed in the forward, nothing recomputed
            from mftcoder.loss.fused_linear_ce import fused_linear_cross_entropy

            coef = torch.full((labels.numel(),), 1.0 / labels.numel(), dtype=torch.float64)
            loss, flat = fused_linear_cross_entropy(h.reshape(-1, h.shape[-1]), weight, None, labels.reshape(-1), coef,
                                                    chunk)
            loss.backward()
            return flat.view(labels.shape)
        else:
            losses = token_losses_from_hidden(h, weight, labels, chunk_size=chunk)
        (losses.sum() / labels.numel()).backward()
        return losses.detach()

    # a small warm-up through the same path first, so lazy initialisation (autograd, checkpoint, thread pools) is
    # not counted as the loss's memory or time
    run(h.detach()[:1, :8].clone().requires_grad_(True), labels[:1, :8])
    gc.collect()
    rss_before = _status_kib("VmRSS")
    exact = _reset_peak_rss() and rss_before is not None
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    losses = run()
    first_s = time.perf_counter() - start
    if exact:
        peak_kib = _status_kib("VmHWM") - rss_before
    else:  # the high-water mark of the whole process: underestimates when setup peaked higher than the run
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
    np.save(os.path.join(out_dir, f"{variant}_losses.npy"), losses.numpy())
    np.save(os.path.join(out_dir, f"{variant}_grad_hidden.npy"), h.grad.numpy())
    times = [first_s]
    if reps > 1:
        times = median_time(run, reps)[1]
    return {"variant": variant, "peak_rss_increase_mib": peak_kib / 1024, "peak_measure": "VmHWM" if exact else
            "ru_maxrss", "seconds": statistics.median(times), "times_s": times, "first_run_s": first_s,
            "loss": float(losses.mean())}


def bench_cross_entropy(model: str, s: dict, threads: int, workdir: str) -> dict:
    import numpy as np

    out_dir = os.path.join(workdir, "ce")
    os.makedirs(out_dir, exist_ok=True)
    shape = dict(batch=s["ce_batch"], seq=s["ce_seq"], vocab=s["ce_vocab"], hidden=s["ce_hidden"],
                 chunk=s["ce_chunk"], reps=s["ce_reps"])
    results = {}
    for variant in ("full", "chunked", "fused"):
        cmd = [sys.executable, os.path.abspath(__file__), "--ce-worker", variant, "--model", model,
               "--threads", str(threads), "--ce-out", out_dir, "--ce-shape", json.dumps(shape)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            raise RuntimeError(f"cross-entropy worker {variant!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    load = lambda name: np.load(os.path.join(out_dir, name))  # noqa: E731
    loss_diff = float(np.abs(load("full_losses.npy") - load("chunked_losses.npy")).max())
    grad_diff = float(np.abs(load("full_grad_hidden.npy") - load("chunked_grad_hidden.npy")).max())
    grad_scale = float(np.abs(load("full_grad_hidden.npy")).max())
    fused_loss_diff = float(np.abs(load("full_losses.npy") - load("fused_losses.npy")).max())
    fused_grad_diff = float(np.abs(load("full_grad_hidden.npy") - load("fused_grad_hidden.npy")).max())
    return {"baseline": "full logits (token_losses_from_logits)",
            "ours": f"chunked (token_losses_from_hidden, chunk {s['ce_chunk']})",
            "weights": "SmolLM2 lm_head" if model == "smollm2" else "random (std 0.02)", **shape,
            "full": results["full"], "chunked": results["chunked"], "fused": results["fused"],
            "fused_max_abs_loss_diff": fused_loss_diff, "fused_max_abs_grad_hidden_diff": fused_grad_diff,
            "max_abs_loss_diff": loss_diff, "max_abs_grad_hidden_diff": grad_diff, "max_abs_grad_hidden": grad_scale}


# ---------------------------------------------------------------------------------------------------------------------
# output


def table(title: str, rows: list[tuple]) -> str:
    """rows: (metric, baseline, ours, ratio, better) -> an aligned text table."""
    head = ("metric", "baseline", "ours", "ours/baseline", "better")
    cells = [head] + [tuple(_fmt(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa
    return "\n".join([f"== {title}", line(head), "-" * (sum(widths) + 2 * (len(head) - 1))] + [line(r) for r in cells[1:]])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}" if v else "0"


def report(results: dict) -> str:
    parts = []
    t = results.get("tokenisation")
    if t:
        parts.append(table(f"1. tokenisation of examples/data ({t['lines']} lines, {t['tokens']:,} tokens; "
                           f"baseline: {t['baseline']}, ours: {t['ours']})", [
            ("seconds (median)", t["cold_s"], t["warm_s"], ratio(t["warm_s"], t["cold_s"]), "lower"),
            ("identical data", True, t["identical"], None, "-"),
        ]))
    p = results.get("packing")
    if p:
        a, b = p["padding"], p["pack"]
        ta, tb = a["train"], b["train"]
        parts.append(table(f"2. padding vs packing, seq_length {p['seq_length']}, micro batch {p['micro_batch']} "
                           f"({p['train_samples']} training samples)", [
            ("pad waste (fraction of positions)", a["pad_waste"], b["pad_waste"],
             ratio(b["pad_waste"], a["pad_waste"]), "lower"),
            ("rows per epoch", a["rows_per_epoch"], b["rows_per_epoch"],
             ratio(b["rows_per_epoch"], a["rows_per_epoch"]), "lower"),
            ("optimizer steps per epoch", a["steps_per_epoch"], b["steps_per_epoch"],
             ratio(b["steps_per_epoch"], a["steps_per_epoch"]), "lower"),
            ("fwd+bwd: samples / non-pad tokens", f"{ta['samples']} / {ta['tokens']:,}",
             f"{tb['samples']} / {tb['tokens']:,}", None, "same"),
            ("fwd+bwd: positions computed", ta["positions"], tb["positions"],
             ratio(tb["positions"], ta["positions"]), "lower"),
            ("fwd+bwd: seconds", ta["seconds"], tb["seconds"], ratio(tb["seconds"], ta["seconds"]), "lower"),
            ("fwd+bwd: non-pad tokens/s", ta["tokens_per_s"], tb["tokens_per_s"],
             ratio(tb["tokens_per_s"], ta["tokens_per_s"]), "higher"),
        ]))
    c = results.get("cross_entropy")
    if c:
        f, k = c["full"], c["chunked"]
        parts.append(table(f"3. cross entropy fwd+bwd, {c['batch']} x {c['seq']} positions, vocab {c['vocab']:,}, "
                           f"hidden {c['hidden']} ({c['weights']}); ours: chunks of {c['chunk']}", [
            ("peak RSS increase (MiB)", f["peak_rss_increase_mib"], k["peak_rss_increase_mib"],
             ratio(k["peak_rss_increase_mib"], f["peak_rss_increase_mib"]), "lower"),
            ("seconds (median)", f["seconds"], k["seconds"], ratio(k["seconds"], f["seconds"]), "lower"),
            ("max |loss diff| per token", None, c["max_abs_loss_diff"], None, "~0"),
            (f"max |grad diff| hidden (max |grad| {c['max_abs_grad_hidden']:.2g})", None,
             c["max_abs_grad_hidden_diff"], None, "~0"),
        ]))
        u = c["fused"]  # the fused lm_head + CE that SFT training runs (mftcoder/loss/fused_linear_ce.py)
        parts.append(table("3b. the same, fused lm_head + cross entropy (gradients in the forward) as ours", [
            ("peak RSS increase (MiB)", f["peak_rss_increase_mib"], u["peak_rss_increase_mib"],
             ratio(u["peak_rss_increase_mib"], f["peak_rss_increase_mib"]), "lower"),
            ("seconds (median)", f["seconds"], u["seconds"], ratio(u["seconds"], f["seconds"]), "lower"),
            ("max |loss diff| per token", None, c["fused_max_abs_loss_diff"], None, "~0"),
            ("max |grad diff| hidden", None, c["fused_max_abs_grad_hidden_diff"], None, "~0"),
        ]))
    return "\n\n".join(parts)


def host() -> dict:
    """The machine a benchmark ran on (every benchmark's JSON records it)."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def machine(args) -> dict:
    import torch
    import transformers

    return host() | {"threads": args.threads, "torch": torch.__version__, "transformers": transformers.__version__}


# ---------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="tiny",
                    help="tiny: a ~140k-parameter Llama built on the fly; smollm2: SmolLM2-135M-Instruct")
    ap.add_argument("--quick", action="store_true", help="small sizes, a few seconds (used by the tests)")
    ap.add_argument("--threads", type=int, default=1, help="torch / tokeniser threads (default 1: shared machine)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {', '.join(SECTIONS)} (also: tok, pack, ce)")
    ap.add_argument("--seq-length", type=int, default=None,
                    help="seq_length of sections 1-2 (default: tiny 1024, smollm2 512; see DEFAULT_SEQ_LENGTH)")
    ap.add_argument("--train-tokens", type=int, default=None,
                    help="non-pad tokens of the fwd+bwd throughput run (default: tiny all, smollm2 12288, quick 16384)")
    ap.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    ap.add_argument("--ce-worker", choices=("full", "chunked", "fused"), help=argparse.SUPPRESS)
    ap.add_argument("--ce-out", help=argparse.SUPPRESS)
    ap.add_argument("--ce-shape", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    aliases = {"tok": "tokenisation", "pack": "packing", "ce": "cross_entropy"}
    chosen = [aliases.get(x.strip(), x.strip()) for x in args.sections.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in SECTIONS]
    if unknown or not chosen:
        ap.error(f"--sections: unknown {unknown or args.sections!r}; valid: {', '.join(SECTIONS)} (or tok, pack, ce)")
    args.sections = [x for x in SECTIONS if x in chosen]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.ce_worker:
        shape = json.loads(args.ce_shape)
        print(json.dumps(ce_worker(args.ce_worker, args.model, threads=args.threads, out_dir=args.ce_out, **shape)))
        return 0

    import torch

    torch.set_num_threads(args.threads)
    s = settings(args)
    workdir = tempfile.mkdtemp(prefix="mftcoder-bench-")
    results: dict = {"command": " ".join(["python", "benchmarks/bench_training.py"] + (argv or sys.argv[1:])),
                     "model": args.model, "quick": args.quick, "settings": s, "machine": machine(args)}
    try:
        if "tokenisation" in args.sections or "packing" in args.sections:
            from mftcoder.model.tokenizer import load_tokenizer

            mpath = model_dir(args.model, workdir)
            tokenizer = load_tokenizer(mpath)
            results["model_path"] = mpath
            if "tokenisation" in args.sections:
                results["tokenisation"] = bench_tokenisation(mpath, tokenizer, workdir, s, args.threads)
            if "packing" in args.sections:
                results["packing"] = bench_packing(mpath, tokenizer, workdir, s, args.threads)
        if "cross_entropy" in args.sections:
            results["cross_entropy"] = bench_cross_entropy(args.model, s, args.threads, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"model {args.model}, {args.threads} thread(s), {os.cpu_count()} CPUs, torch {results['machine']['torch']}"
          f"{', quick' if args.quick else ''}\n")
    print(report(results))
    write_results(results, args.json)
    return 0


def write_results(results: dict, path) -> None:
    """The results as JSON at `path` (--json), if one was given."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main())
