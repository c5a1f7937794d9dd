"""Two real processes per backend (DDP, DeepSpeed ZeRO-2, ZeRO-3, FSDP2; gloo on CPU) against one process.

Every distributed run goes through the shipped launcher (`launchers/*.sh`) with 2 processes, micro batch 2 and
accumulation 2; the reference is `python mftcoder/train.py` with micro batch 4 and accumulation 2: the same global
batch of 8 rows per step, the same 12 optimizer steps (clipping active: the step-1 grad norm is above 1.0).

Tolerance. The runs are fp32 and see the same rows; they differ only in summation order (a micro-batch of 2 rows vs 4,
gradients all-reduced over 2 ranks, ZeRO-3/FSDP2 computing full logits where the single process uses the chunked
cross entropy). fp32 rounding is ~1e-7 relative; over 12 Adam steps the measured gaps stay below 1e-5 (see
MEASURED below). LOSS_TOL = 2e-4 is 20x above that and still far below what a real fault makes: a lost averaging
over ranks or accumulation doubles the gradient (the step-1 grad norm moves by 100%), a task weighting computed per
rank moves the per-task losses by >1e-2 within a few steps, a data shard seen twice changes the losses at step 1.

Also here: kill -9 and resume under ZeRO-3 and FSDP2 reproduce the uninterrupted metrics; a LoRA adapter saved under
ZeRO-3 and QLoRA adapters under ZeRO-3 and FSDP2 hold the same weights as the single-process ones; a validation split
of one sample (so one rank has none) does not hang ZeRO-3 with CoBa; an MoE model's router loss under DDP, ZeRO-3 and
FSDP2 equals the single process's.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from launch_helpers import (BACKENDS, LAUNCHER, LOGIT_TOL, LOSS_TOL, REPO, RUN_TIMEOUT, _fail, assert_same_metrics, launch,
                            read_metrics, run_env, single, write_task)

pytestmark = pytest.mark.slow

STEPS = 12


# ---- data, configs and runs ------------------------------------------------------------------------------------------

def _line(task: int, i: int) -> dict:
    if task == 0:
        rounds = [{"role": "human", "content": f"add {i} to x"},
                  {"role": "bot", "content": f"def add_{i}(x):\n    return x + {i}"}]
    else:
        rounds = [{"role": "human", "content": f"The quick brown fox number {i}"},
                  {"role": "bot", "content": "jumps over the lazy dog. " * (1 + i % 4)}]
    return {"chat_rounds": rounds}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir):
    """Workspace: two tasks of different sizes and lengths, and a config writer."""
    root = tmp_path_factory.mktemp("dist")
    data = [write_task(root / "data" / "code", [_line(0, i) for i in range(48)]),
            write_task(root / "data" / "text", [_line(1, i) for i in range(24)])]

    def config(name: str, **over) -> Path:
        cfg = dict(data_paths=data, output_dir=str(root / "unused"), pretrained_model_path=tiny_model_dir,
                   seq_length=64, per_device_train_batch_size=2, per_device_eval_batch_size=2,
                   gradient_accumulation_steps=2, learning_rate=3e-3, min_lr=1e-4, num_warmup_steps=0,
                   num_train_epochs=10, max_train_steps=STEPS, evaluation_steps=3, checkpointing_steps=3,
                   early_stopping=False, data_split="80,20,0", weighted_loss_mode="case3", max_grad_norm=1.0,
                   init_timeout_seconds=300)
        cfg.update(over)
        path = root / f"{name}.json"
        path.write_text(json.dumps(cfg))
        return path

    return {"root": root, "config": config, "model": tiny_model_dir, "data": data}


MODES = {
    "case3": {"weighted_loss_mode": "case3"},
    # CoBa moves the weights from step 2 on, from a validation probe every step
    "coba": {"weighted_loss_mode": "coba", "coba_warmup_steps": 2, "coba_history_length": 3,
             "coba_update_interval": 1, "coba_sample_valid_num": 1},
    "lora": {"peft_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0},
    "qlora": {"peft_type": "qlora", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0},
}


@pytest.fixture(scope="module")
def runs(ws):
    """Runs made on first use and shared by the tests of this module: runs(kind, mode) -> output dir."""
    done: dict = {}

    def get(kind: str, mode: str) -> Path:
        key = (kind, mode)
        if key not in done:
            cfg = ws["config"](mode, **MODES[mode])
            out = ws["root"] / f"{kind}-{mode}"
            done[key] = single(cfg, out) if kind == "single" else launch(LAUNCHER[kind], cfg, out)
        return done[key]

    return get


# ---- comparisons -----------------------------------------------------------------------------------------------------


def probe_ids(tokenizer_dir: str) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = "<s>human\nadd 7 to x\n<s>bot\ndef add_7(x):\n    return x + 7 The quick brown fox"
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


@torch.no_grad()
def final_logits(out: Path, base_dir: str, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the saved final model (full weights, or base + adapter), loaded in this process."""
    from transformers import AutoModelForCausalLM

    if (out / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(out))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(out))
    return model.eval()(input_ids=ids, use_cache=False).logits.float()


def assert_full_model_saved(out: Path, base_dir: str) -> None:
    """Every tensor of the base model, full shape (not a ZeRO-3/FSDP2 shard), trained (not the initial weights)."""
    from safetensors.torch import load_file

    base, saved = load_file(os.path.join(base_dir, "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert saved.keys() == base.keys()
    for k in base:
        assert saved[k].shape == base[k].shape, k
        assert saved[k].dtype == torch.float32, k
    moved = max(float((saved[k] - base[k]).abs().max()) for k in base)
    assert moved > 1e-3, "the saved weights are the initial ones"


# ---- tests -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["case3", "coba"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_match_one(runs, ws, backend, mode):
    ref_dir, got_dir = runs("single", mode), runs(backend, mode)
    ref, got = read_metrics(ref_dir), read_metrics(got_dir)
    assert sum(r.get("split") is None for r in ref) == STEPS
    assert ref[1]["grad_norm"] > 1.0, "clipping must be active for this test to cover it"
    assert_same_metrics(ref, got, label=f"{backend}-{mode}")
    if mode == "coba":  # the weights really moved, the same way on both sides
        last = [r for r in got if r.get("split") is None][-1]["task_weight"]
        assert abs(last["code"] - 0.5) > 1e-3
    log = (got_dir.parent / f"{got_dir.name}.log").read_text(errors="replace")
    assert "x2 |" in log and "global batch 8 rows = 2 micro x 2 accumulation x 2 processes" in log
    expected_type = {"ddp": "MULTI_CPU", "ds_zero2": "DEEPSPEED", "ds_zero3": "DEEPSPEED", "fsdp2": "FSDP"}[backend]
    assert f"DistributedType.{expected_type} x2" in log
    if backend == "fsdp2":
        assert "FSDP2 wraps ['LlamaDecoderLayer']" in log

    assert_full_model_saved(got_dir, ws["model"])
    ids = probe_ids(str(ref_dir))
    a, b = final_logits(ref_dir, ws["model"], ids), final_logits(got_dir, ws["model"], ids)
    assert float((a - b).abs().max()) < LOGIT_TOL


def _process_tree(pid: int) -> list[int]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid] + [c.pid for c in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("backend", ["ds_zero3", "fsdp2"])
def test_kill_and_resume_reproduces_the_uninterrupted_run(runs, ws, backend):
    full = read_metrics(runs(backend, "case3"))
    cfg = ws["config"]("case3", **MODES["case3"])
    out = ws["root"] / f"{backend}-killed"
    log_file = ws["root"] / f"{backend}-killed.log"
    cmd = ["bash", str(REPO / "launchers" / LAUNCHER[backend]), str(cfg), "2", "--output_dir", str(out)]
    proc = subprocess.Popen(cmd, env=run_env(log_file), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = out / "checkpoint-3" / "trainer_state.json"
    deadline = time.time() + RUN_TIMEOUT
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    # kill -9 the launcher, the torch agent and the workers (they run in sessions of their own)
    tree = _process_tree(proc.pid)
    for pid in reversed(tree):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    if not marker.exists():
        _fail(f"{backend} run to kill", log_file, proc.returncode)
    killed_at = max(r["step"] for r in read_metrics(out))
    assert killed_at < STEPS and not (out / "model.safetensors").exists(), "the run finished before the kill"

    launch(LAUNCHER[backend], cfg, out, extra_args=["--resume_from_checkpoint", "latest"])
    log = Path(f"{out}.log").read_text(errors="replace")
    assert "resumed from" in log
    resumed = read_metrics(out)
    # the same records once each, the same values (up to the last bits of the reductions)
    assert_same_metrics(full, resumed, loss_tol=1e-6, norm_rtol=1e-5, label=f"{backend}-resume")
    ids = probe_ids(str(out))
    a, b = final_logits(runs(backend, "case3"), ws["model"], ids), final_logits(out, ws["model"], ids)
    assert float((a - b).abs().max()) < 1e-5


@pytest.mark.parametrize("backend", ["ddp", "ds_zero2"])
def test_resume_from_a_checkpoint_reproduces_the_run(runs, ws, backend):
    """The other backends' checkpoints: a new output_dir holding only checkpoint-6 and metrics with wrong records past
    step 6 (what a crash leaves) resumes to the same metrics and final model as the uninterrupted run."""
    import shutil

    full_dir = runs(backend, "case3")
    full = read_metrics(full_dir)
    out = ws["root"] / f"{backend}-resumed"
    out.mkdir()
    shutil.copytree(full_dir / "checkpoint-6", out / "checkpoint-6")
    with open(out / "metrics.jsonl", "w") as f:  # records past the checkpoint, as a crash leaves them, made wrong
        for r in full:
            late = r["step"] > 6
            f.write(json.dumps(dict(r, loss=999.0) if late else r) + "\n")
    cfg = ws["config"]("case3", **MODES["case3"])
    launch(LAUNCHER[backend], cfg, out, extra_args=["--resume_from_checkpoint", str(out / "checkpoint-6")])
    assert "resumed from" in Path(f"{out}.log").read_text(errors="replace")
    assert_same_metrics(full, read_metrics(out), loss_tol=1e-6, norm_rtol=1e-5, label=f"{backend}-resume")
    ids = probe_ids(str(out))
    assert float((final_logits(full_dir, ws["model"], ids) - final_logits(out, ws["model"], ids)).abs().max()) < 1e-5


def _adapter_matches(ref_dir: Path, got_dir: Path, rank: int) -> None:
    from safetensors.torch import load_file

    ref = load_file(str(ref_dir / "adapter_model.safetensors"))
    got = load_file(str(got_dir / "adapter_model.safetensors"))
    assert got.keys() == ref.keys() and len(got) > 0
    for k, v in got.items():
        assert v.numel() > 0 and v.shape == ref[k].shape and rank in v.shape, k  # whole matrices, not shards
        assert float((v - ref[k]).abs().max()) < 1e-4, k
    assert max(float(v.abs().max()) for k, v in got.items() if "lora_B" in k) > 1e-3, "lora_B never trained"


def test_lora_adapter_saved_under_zero3(runs, ws):
    ref_dir, got_dir = runs("single", "lora"), runs("ds_zero3", "lora")
    assert_same_metrics(read_metrics(ref_dir), read_metrics(got_dir), label="ds_zero3-lora")
    _adapter_matches(ref_dir, got_dir, rank=8)
    ids = probe_ids(str(ref_dir))
    base = final_logits(Path(ws["model"]), ws["model"], ids)
    a, b = final_logits(ref_dir, ws["model"], ids), final_logits(got_dir, ws["model"], ids)
    assert float((a - b).abs().max()) < LOGIT_TOL
    assert float((b - base).abs().max()) > 1e-2  # the adapter changes the model


@pytest.mark.parametrize("backend", ["ds_zero3", "fsdp2"])
def test_qlora_under_sharding(runs, ws, backend):
    pytest.importorskip("bitsandbytes")
    ref_dir, got_dir = runs("single", "qlora"), runs(backend, "qlora")
    assert_same_metrics(read_metrics(ref_dir), read_metrics(got_dir), label=f"{backend}-qlora")
    _adapter_matches(ref_dir, got_dir, rank=8)


def test_one_validation_sample_does_not_hang_zero3(ws):
    """One validation sample in all: rank 1 has none, runs dummy forwards in evaluation and in CoBa's probe."""
    from mftcoder.data.tasks import split_of

    fractions = (0.8, 0.2, 0.0)
    train_lines, valid_line = [], None
    for i in range(400):
        line = _line(i % 2, i)
        side = split_of(json.dumps(line), fractions)
        if side == "train" and len(train_lines) < 40:
            train_lines.append(line)
        elif side == "valid" and valid_line is None and i % 2 == 1:
            valid_line = line
    root = ws["root"] / "tiny-valid"
    data = [write_task(root / "code", [x for x in train_lines if "add" in x["chat_rounds"][0]["content"]]),
            write_task(root / "text", [x for x in train_lines if "fox" in x["chat_rounds"][0]["content"]]
                       + [valid_line])]
    cfg = ws["config"]("tiny-valid", data_paths=data, max_train_steps=4, evaluation_steps=2, checkpointing_steps=None,
                       init_timeout_seconds=120, **MODES["coba"])
    out = launch(LAUNCHER["ds_zero3"], cfg, root / "out")
    stats = json.loads((out / "data_stats.json").read_text())["tasks"]
    assert {name: t["valid_samples"] for name, t in stats.items()} == {"code": 0, "text": 1}
    records = read_metrics(out)
    evals = [r for r in records if r.get("split") == "valid"]
    assert [r["step"] for r in evals] == [0, 2, 4]
    for r in evals:  # the task without validation data is reported as missing, the other one measured
        assert r["task_loss"]["code"] is None and r["task_loss"]["text"] is not None


@pytest.fixture(scope="module")
def moe(ws):
    """A tiny Mixtral, its config (micro 2 x accumulation 2 per process) and the single-process reference run with the
    same micro-batches (micro 2 x accumulation 4: the router loss is a per-micro-batch quantity)."""
    from mftcoder.testing import build_tiny_model

    model = build_tiny_model(str(ws["root"] / "tiny-mixtral"), arch="mixtral")
    cfg = ws["config"]("moe", pretrained_model_path=model)
    ref_cfg = ws["config"]("moe-single", pretrained_model_path=model, gradient_accumulation_steps=4)
    return {"model": model, "cfg": cfg, "ref": single(ref_cfg, ws["root"] / "single-moe", micro=2)}


@pytest.mark.parametrize("backend", ["ddp", "ds_zero3", "fsdp2"])
def test_moe_router_loss_two_processes_match_one(moe, ws, backend):
    got_dir = launch(LAUNCHER[backend], moe["cfg"], ws["root"] / f"{backend}-moe")
    ref, got = read_metrics(moe["ref"]), read_metrics(got_dir)
    assert_same_metrics(ref, got, label=f"{backend}-moe")  # grad norms too: the router loss's gradient is the same
    ref_aux = [r["router_aux_loss"] for r in ref if r.get("split") is None]
    got_aux = [r["router_aux_loss"] for r in got if r.get("split") is None]
    assert len(got_aux) == STEPS and got_aux == pytest.approx(ref_aux, abs=LOSS_TOL)
    if backend == "fsdp2":
        assert "FSDP2 wraps ['MixtralDecoderLayer']" in (ws["root"] / f"{backend}-moe.log").read_text(errors="replace")
    ids = probe_ids(str(moe["ref"]))
    a, b = final_logits(moe["ref"], moe["model"], ids), final_logits(got_dir, moe["model"], ids)
    assert float((a - b).abs().max()) < LOGIT_TOL
