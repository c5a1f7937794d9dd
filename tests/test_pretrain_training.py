"""Continued pretraining in the training loop: document-isolated blocks equal the documents run alone, the step loss
and the per-task validation loss / perplexity are the formulas over the blocks, a resumed run equals the uninterrupted
one, and two processes (DDP, FSDP2) train what one process trains."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kill_helpers import assert_same_metrics as assert_same_records
from launch_helpers import launch, read_metrics, single
from launch_helpers import assert_same_metrics as assert_same_losses
from train_helpers import grad_norm, hand_step_loss, initial_model, read_records, rel, sample_losses, \
    train_records, valid_records

from mftcoder.config import parse_config
from mftcoder.trainer.loop import train


def _code_doc(i: int) -> str:
    body = "".join(f"    total = total + {j} * x\n" for j in range(i % 9))
    return f"def f_{i}(x):\n    total = 0\n{body}    return total\n"


def _prose_doc(i: int) -> str:
    return " ".join(["the quick brown fox jumps over the lazy dog"] * (1 + i % 6)) + f" {i}."


def write_corpus(root) -> list[str]:
    """Two tasks of documents of very different lengths (some far longer than a block)."""
    paths = []
    for name, make, n in (("code", _code_doc, 60), ("prose", _prose_doc, 30)):
        folder = os.path.join(str(root), name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "docs.jsonl"), "w") as f:
            for i in range(n):
                f.write(json.dumps({"text": make(i)}) + "\n")
        paths.append(folder)
    with open(os.path.join(paths[1], "book.txt"), "w") as f:  # one long plain-text document
        f.write("".join(_prose_doc(i) + "\n" for i in range(40)))
    return paths


def pretrain_cfg(model_dir, data, out, **overrides):
    base = dict(data_paths=data, output_dir=str(out), pretrained_model_path=model_dir, objective="pretrain",
                seq_length=64, per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=3e-3,
                min_lr=1e-4, num_train_epochs=1, data_split="80,20,0", evaluation_steps=None,
                checkpointing_steps=None, num_warmup_steps=0, weighted_loss_mode="case3", task_weights=[1, 3])
    base.update(overrides)
    return parse_config(base)


def blocks_of(cfg):
    from mftcoder.data.prepare import prepare_data
    from mftcoder.model.tokenizer import load_tokenizer
    from mftcoder.trainer.batches import TrainBatches

    tok = load_tokenizer(cfg.pretrained_model_path)
    data = prepare_data(cfg, tok, progress=False, verbose=False)
    return data, TrainBatches(data, cfg, 0, 1, tok.pad_token_id, layout="blocks")


def _alone(model, ids: torch.Tensor) -> torch.Tensor:
    """Per-token CE of one token sequence run by itself, default positions."""
    logits = model(input_ids=ids[None, :-1], use_cache=False).logits[0]
    return F.cross_entropy(logits.float(), ids[1:], reduction="none")


@torch.no_grad()
def test_document_isolated_blocks_equal_the_documents_run_alone(tiny_model_dir, tmp_path, one_thread):
    data_paths = write_corpus(tmp_path / "data")
    model = initial_model(tiny_model_dir)
    rows = {}
    for reset in (True, False):
        cfg = pretrain_cfg(tiny_model_dir, data_paths, tmp_path / "out", reset_position_ids=reset)
        data, batches = blocks_of(cfg)
        store = data.tasks[0].train
        # blocks with several documents, the first starting inside a document split from the previous block
        chosen = [u for u, b in enumerate(batches.units[0]) if len(b) >= 3][:4]
        assert chosen
        mb = batches.collate_units([(0, u) for u in chosen], "train")
        got = [l for _, l in sample_losses(model, [mb])]
        pieces = [store[d][0][a:b] for u in chosen for d, a, b in batches.units[0][u]]
        if reset:
            want = [_alone(model, torch.from_numpy(np.asarray(p, dtype=np.int64))) for p in pieces if len(p) >= 2]
        else:  # one sample a block: the pieces joined, attending across documents
            joined = [torch.cat([torch.from_numpy(np.asarray(store[d][0][a:b], dtype=np.int64)) for d, a, b in
                                 batches.units[0][u]]) for u in chosen]
            want = [_alone(model, j) for j in joined]
            assert all(len(j) == cfg.seq_length + 1 for j in joined)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=2e-5), (g - w).abs().max()
        rows[reset] = torch.cat(got)
    # the option matters: a token after a document boundary sees different context
    assert len(rows[True]) < len(rows[False])


def test_first_step_loss_validation_and_perplexity_are_the_formulas(tiny_model_dir, tmp_path, one_thread):
    data_paths = write_corpus(tmp_path / "data")
    cfg = pretrain_cfg(tiny_model_dir, data_paths, tmp_path / "out", max_train_steps=1, max_grad_norm=None)
    train(cfg)
    records = read_records(cfg.output_dir)
    step1 = train_records(records)[0]
    data, batches = blocks_of(cfg)
    stats = json.load(open(os.path.join(cfg.output_dir, "data_stats.json")))["tasks"]
    assert stats["prose"]["unit"] == "document" and stats["prose"]["files"][-1].endswith("docs.jsonl")

    model = initial_model(tiny_model_dir)
    micro = batches.micro_batches(0)
    loss, task_means = hand_step_loss(sample_losses(model, micro), "case3", [1.0, 3.0], 2)
    loss.backward()
    assert rel(step1["loss"], float(loss.detach())) < 1e-5
    assert rel(step1["grad_norm"], grad_norm(model)) < 1e-4
    assert step1["tokens"] == sum(int((mb["sample_ids"] >= 0).sum()) for mb in micro)
    for k, name in enumerate(data.task_names):
        if task_means[k] is not None:
            assert rel(step1["task_loss"][name], task_means[k]) < 1e-5

    v0 = valid_records(records)[0]
    assert set(v0["task_perplexity"]) == set(data.task_names)
    with torch.no_grad():
        model = initial_model(tiny_model_dir)
        for k, name in enumerate(data.task_names):
            units = [(k, i) for i in range(len(batches.valid[k]))]
            assert len(units) == stats[name]["blocks"]["valid"] > 0
            vs = sample_losses(model, [batches.collate_units(units, "valid")])
            hand = float(sum(l.sum() for _, l in vs)) / sum(len(l) for _, l in vs)
            assert rel(v0["task_loss"][name], hand) < 1e-5
            assert v0["task_perplexity"][name] == pytest.approx(math.exp(v0["task_loss"][name]), rel=1e-12)


def test_resume_from_a_checkpoint_replays_the_run_exactly(tiny_model_dir, tmp_path, one_thread):
    data_paths = write_corpus(tmp_path / "data")
    over = dict(num_train_epochs=2, checkpointing_steps=3, evaluation_steps=2, reset_position_ids=False)
    cfg = pretrain_cfg(tiny_model_dir, data_paths, tmp_path / "out", **over)
    train(cfg)
    reference = read_records(cfg.output_dir)
    assert len(train_records(reference)) > 6
    train(pretrain_cfg(tiny_model_dir, data_paths, tmp_path / "out", **over,
                       resume_from_checkpoint=os.path.join(cfg.output_dir, "checkpoint-3")))
    assert_same_records(read_records(cfg.output_dir), reference)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["ddp.sh", "fsdp.sh"])
def test_two_processes_train_what_one_process_trains(tiny_model_dir, tmp_path, launcher):
    """A global batch of 8 blocks: one process micro 4 x accumulation 2, two processes micro 2 x accumulation 2."""
    data_paths = write_corpus(tmp_path / "data")
    common = dict(data_paths=data_paths, output_dir=str(tmp_path / "unused"), pretrained_model_path=tiny_model_dir,
                  objective="pretrain", seq_length=64, learning_rate=3e-3, min_lr=1e-4, num_warmup_steps=0,
                  num_train_epochs=1, max_train_steps=6, evaluation_steps=3, checkpointing_steps=None,
                  early_stopping=False, data_split="80,20,0", weighted_loss_mode="case3", task_weights=[1, 3],
                  init_timeout_seconds=300, per_device_eval_batch_size=4)
    configs = {}
    for name, micro in (("one", 4), ("two", 2)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**common, "per_device_train_batch_size": micro,
                                    "gradient_accumulation_steps": 2}))
        configs[name] = path
    ref = read_metrics(single(configs["one"], tmp_path / "one", micro=4))
    got = read_metrics(launch(launcher, configs["two"], tmp_path / "two"))
    assert any("task_perplexity" in r for r in ref)
    assert_same_losses(ref, got, label=f"pretrain {launcher}")
