"""torch_compile: per-decoder-layer torch.compile trains the same run as eager, and falls back when inductor cannot
build here."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mftcoder.model.compile import decoder_layers, inductor_unavailable, is_compiled
from mftcoder.trainer.loop import train
from train_helpers import make_cfg, read_records, rel, train_records, write_tasks

pytestmark = pytest.mark.usefixtures("one_thread")

needs_compiler = pytest.mark.skipif(inductor_unavailable("cpu") is not None, reason="inductor cannot build on CPU here")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("compile-tasks"), {"code": 16, "prose": 12})


def _run(model_dir, tasks, out, **overrides):
    """Per-step (loss, grad_norm) of a 3-step packed run, and dynamo's count of compiled graphs during it."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = make_cfg(model_dir, tasks, out, padding_mode="pack", max_train_steps=3, **overrides)
    train(cfg)
    steps = [(r["loss"], r["grad_norm"]) for r in train_records(read_records(cfg.output_dir))]
    return steps, counters["stats"]["unique_graphs"]


def _assert_same_run(eager, compiled):
    # fp32 on CPU: inductor may fuse and reorder the same float ops; measured over 3 optimiser steps: bit-identical
    # (full fine-tuning) and <= 6e-8 relative (LoRA + checkpointing). 1e-5 / 1e-4 leave room for other CPUs, and a
    # wrong graph (a packed sample attending to its neighbour, a lost LoRA branch) moves the loss by > 1e-2
    assert len(eager) == len(compiled) == 3
    for (la, ga), (lb, gb) in zip(eager, compiled):
        assert rel(lb, la) < 1e-5, (eager, compiled)
        assert rel(gb, ga) < 1e-4, (eager, compiled)


@pytest.mark.slow
@needs_compiler
def test_compiled_layers_train_the_same_run(tiny_model_dir, tasks, tmp_path):
    eager, graphs = _run(tiny_model_dir, tasks, tmp_path / "eager")
    assert graphs == 0
    compiled, graphs = _run(tiny_model_dir, tasks, tmp_path / "compiled", torch_compile=True)
    # the layers really ran compiled, shared by both layers: one graph for the step-0 validation (no grad), one for
    # training, and one more once the row length changes (automatic dynamic; measured 3 with TORCH_LOGS=recompiles);
    # a recompile per step, per length or per layer would show as more
    assert 1 <= graphs <= 3, graphs
    _assert_same_run(eager, compiled)


@pytest.mark.slow
@needs_compiler
def test_compiled_lora_with_checkpointing_trains_the_same_run(tiny_model_dir, tasks, tmp_path):
    # lora_dropout 0: compiled dropout draws its masks from inductor's own RNG (same distribution, other numbers)
    lora = dict(peft_type="lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0, gradient_checkpointing=True)
    eager, _ = _run(tiny_model_dir, tasks, tmp_path / "eager", **lora)
    compiled, graphs = _run(tiny_model_dir, tasks, tmp_path / "compiled", torch_compile=True, **lora)
    assert graphs >= 1
    _assert_same_run(eager, compiled)


def test_decoder_layers_are_found_through_peft(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert decoder_layers(model) is model.model.layers
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    layers = decoder_layers(peft_model)
    assert layers is model.model.layers and len(layers) == 2 and not is_compiled(layers[0])


_LOAD = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING)
from mftcoder.config import parse_config
from mftcoder.model.compile import decoder_layers, inductor_unavailable, is_compiled
from mftcoder.model.load import load_model
cfg = parse_config(json.loads(sys.argv[1]))
model, _ = load_model(cfg)
print(json.dumps({"why": inductor_unavailable("cpu"), "compiled": [is_compiled(l) for l in decoder_layers(model)]}))
"""


def _load_in_subprocess(model_dir, tmp_path, path_env):
    cfg = dict(data_paths=[str(tmp_path)], output_dir=str(tmp_path / "out"), pretrained_model_path=model_dir,
               torch_compile=True)
    env = {**os.environ, "PATH": path_env, "OMP_NUM_THREADS": "1"}
    env.pop("CXX", None)
    done = subprocess.run([sys.executable, "-c", _LOAD, json.dumps(cfg)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_without_a_cpp_compiler_it_warns_once_and_runs_uncompiled(tiny_model_dir, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    got, stderr = _load_in_subprocess(tiny_model_dir, tmp_path, str(empty))
    assert got == {"why": "no C++ compiler found (install g++ or set CXX)", "compiled": [False, False]}
    assert stderr.count("torch_compile=true but no C++ compiler found") == 1


@needs_compiler
def test_with_a_cpp_compiler_the_layers_are_compiled(tiny_model_dir, tmp_path):
    got, stderr = _load_in_subprocess(tiny_model_dir, tmp_path, os.environ["PATH"])
    assert got == {"why": None, "compiled": [True, True]}
    assert "torch_compile=true but" not in stderr
