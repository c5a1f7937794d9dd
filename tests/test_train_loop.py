"""The training loop end to end on the tiny model (in process, `mftcoder.trainer.loop.train`).

- Pinned numbers: the first step's loss, per-task losses and grad norm of a real run equal values computed here
  independently (the initial model's forward on the same global batch, plain cross entropy, the formula of each
  weighted_loss_mode by hand); the step-0 validation losses equal a hand pass over every validation sample.
- case3 with single-task micro-batches (group_by_task) still applies task_weights.
- Invariance: micro batch 8 x accumulation 1 == 2 x 4 == 1 x 8 give the same trajectory.
- metrics.jsonl keys and values, TensorBoard scalars, checkpoint pruning, early stopping.
"""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from mftcoder.trainer.loop import train
from train_helpers import (data_and_batches, grad_norm, hand_step_loss, initial_model, make_cfg, read_records, rel,
                           sample_losses, train_records, valid_records, write_tasks)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each, restored after

TRAIN_KEYS = {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "tflops", "task_loss",
              "task_weight"}  # no "mfu" on CPU


# ---- data and configs ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks3"), {"a": 24, "b": 12, "c": 10})


# ---- pinned numbers -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,padding_mode", [
    ("case1", "padding"), ("case2", "padding"), ("case3", "padding"), ("case4", "padding"), ("coba", "padding"),
    ("case2", "pack"), ("case3", "pack"),
])
def test_first_step_matches_hand_computation(tiny_model_dir, three_tasks, tmp_path, mode, padding_mode):
    weights = [1.0, 2.0, 5.0] if mode in ("case3", "case4") else None  # the config refuses task weights elsewhere
    cfg = make_cfg(tiny_model_dir, three_tasks, tmp_path / "out", weighted_loss_mode=mode, task_weights=weights,
                   padding_mode=padding_mode, per_device_train_batch_size=4, gradient_accumulation_steps=4,
                   max_train_steps=1)
    train(cfg)
    records = read_records(cfg.output_dir)
    step1 = train_records(records)[0]

    data, batches = data_and_batches(cfg)
    micro = batches.micro_batches(0)
    model = initial_model(tiny_model_dir)
    samples = sample_losses(model, micro)
    K = 3
    present = sorted({t for t, _ in samples})
    assert len(present) >= 2, "the step must mix tasks for the weights to matter"
    w = weights or [1.0 / K] * K  # CoBa starts uniform
    loss, task_means = hand_step_loss(samples, mode, w, K)
    loss.backward()

    assert rel(step1["loss"], float(loss.detach())) < 1e-5
    assert rel(step1["grad_norm"], grad_norm(model)) < 1e-4  # the gradient, not only the value, is the formula's
    names = data.task_names
    for k, n in enumerate(names):
        if task_means[k] is None:
            assert step1["task_loss"][n] is None and step1["task_weight"][n] == 0.0
        else:
            assert rel(step1["task_loss"][n], task_means[k]) < 1e-5
    if mode in ("case3", "case4", "coba"):
        total = sum(w[k] for k in present)
        for k, n in enumerate(names):
            expected = w[k] / total if k in present else 0.0
            assert step1["task_weight"][n] == pytest.approx(expected, rel=1e-9)
    # non-pad tokens of the whole global batch
    assert step1["tokens"] == sum(int((mb["sample_ids"] >= 0).sum()) for mb in micro)
    # a different weighting gives a different loss (the pin would catch a mode that is silently ignored)
    if mode == "case3":
        other, _ = hand_step_loss(samples, "case1", w, K)
        assert rel(float(other.detach()), float(loss.detach())) > 1e-4

    # step 0 validation: every validation sample once, per-task token mean, with the initial model
    v0 = valid_records(records)[0]
    assert v0["step"] == 0
    with torch.no_grad():
        for k, n in enumerate(names):
            store = data.tasks[k].valid
            if len(store) == 0:
                assert v0["task_loss"][n] is None
                continue
            units = [(k, i) for i in range(len(store))]
            vs = sample_losses(model, [batches.collate_units(units, "valid")])
            hand = float(sum(l.sum() for _, l in vs)) / sum(len(l) for _, l in vs)
            assert rel(v0["task_loss"][n], hand) < 1e-5


def test_case3_weights_apply_with_single_task_micro_batches(tiny_model_dir, tmp_path):
    """MFTCoder's fault: a micro-batch holding one task gives that task's mean whatever its weight, so weights
    cancel. Here the means are over the whole step, so [1, 3] weighs task b three times task a."""
    paths = write_tasks(tmp_path / "data", {"a": 20, "b": 20})
    losses = {}
    for weights in ([1.0, 1.0], [1.0, 3.0]):
        cfg = make_cfg(tiny_model_dir, paths, tmp_path / f"out{weights[1]}", weighted_loss_mode="case3",
                       task_weights=weights, group_by_task=True, per_device_train_batch_size=2,
                       gradient_accumulation_steps=4, max_train_steps=1)
        train(cfg)
        losses[weights[1]] = train_records(read_records(cfg.output_dir))[0]

    _, batches = data_and_batches(cfg)
    micro = batches.micro_batches(0)
    tasks_per_micro = [set(mb["sample_task_ids"].tolist()) for mb in micro]
    assert all(len(t) == 1 for t in tasks_per_micro), tasks_per_micro  # every micro-batch holds one task
    assert {next(iter(t)) for t in tasks_per_micro} == {0, 1}

    grad_norms = {}
    for w_b in (1.0, 3.0):
        model = initial_model(tiny_model_dir)
        loss, (la, lb) = hand_step_loss(sample_losses(model, micro), "case3", [1.0, w_b], 2)
        assert rel(losses[w_b]["loss"], (la + w_b * lb) / (1 + w_b)) < 1e-5
        assert rel(losses[w_b]["loss"], float(loss.detach())) < 1e-5
        loss.backward()
        grad_norms[w_b] = grad_norm(model)
        assert rel(losses[w_b]["grad_norm"], grad_norms[w_b]) < 1e-4
    # the two tasks start with nearly equal losses, so the weights show in the gradient (and the later steps)
    assert rel(grad_norms[3.0], grad_norms[1.0]) > 1e-2
    assert losses[3.0]["task_weight"] == {"a": 0.25, "b": 0.75}


# ---- invariance to the batch geometry --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["case1", "case2", "case3", "case4", "coba"])
def test_micro_batch_times_accumulation_gives_the_same_run(tiny_model_dir, three_tasks, tmp_path, mode):
    extra = (dict(coba_warmup_steps=1, coba_history_length=3) if mode == "coba" else
             dict(task_weights=[1, 2, 5]) if mode in ("case3", "case4") else {})
    runs = {}
    for micro, accum in ((8, 1), (2, 4), (1, 8)):
        cfg = make_cfg(tiny_model_dir, three_tasks, tmp_path / f"{micro}x{accum}", weighted_loss_mode=mode,
                       per_device_train_batch_size=micro, gradient_accumulation_steps=accum, max_train_steps=4,
                       per_device_eval_batch_size=4, **extra)
        train(cfg)
        runs[(micro, accum)] = train_records(read_records(cfg.output_dir))
    ref = runs[(8, 1)]
    assert len(ref) == 4
    assert ref[-1]["loss"] < ref[0]["loss"]
    if mode == "coba":
        assert any(len(set(r["task_weight"].values())) > 1 for r in ref)  # CoBa moved the weights off uniform
    if mode in ("case1", "case3", "coba"):
        # these modes are sum_k w_k L_k with the logged (normalised) weights and token means: the weights logged are
        # the weights applied, at every step (CoBa's included)
        for r in ref:
            applied = sum(w * r["task_loss"][n] for n, w in r["task_weight"].items() if w > 0)
            assert rel(r["loss"], applied) < 1e-6, r
    for geometry, recs in runs.items():
        assert [r["step"] for r in recs] == [r["step"] for r in ref]
        for a, b in zip(recs, ref):
            assert a["tokens"] == b["tokens"] and a["lr"] == b["lr"], geometry
            assert rel(a["loss"], b["loss"]) < 1e-5, (geometry, a["step"])
            assert rel(a["grad_norm"], b["grad_norm"]) < 1e-4, (geometry, a["step"])
            for n, v in b["task_loss"].items():
                assert (a["task_loss"][n] is None) == (v is None)
                if v is not None:
                    assert rel(a["task_loss"][n], v) < 1e-5
            for n, v in b["task_weight"].items():
                assert a["task_weight"][n] == pytest.approx(v, rel=1e-5, abs=1e-9)


# ---- metrics.jsonl, TensorBoard, checkpoints --------------------------------------------------------------------------

def test_metrics_tensorboard_and_checkpoint_pruning(tiny_model_dir, three_tasks, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg(tiny_model_dir, three_tasks, tmp_path / "out", evaluation_steps=2, checkpointing_steps=2,
                   saving_limit=2, num_train_epochs=2, tb_dir=str(tmp_path / "tb"))
    summary = train(cfg)
    records = read_records(cfg.output_dir)
    steps = train_records(records)
    _, batches = data_and_batches(cfg)
    per_epoch = batches.steps_per_epoch()
    total = 2 * per_epoch
    assert summary["steps"] == total and summary["stop_reason"] == "epochs"
    assert [r["step"] for r in steps] == list(range(1, total + 1))
    names = ["a", "b", "c"]
    for r in steps:
        assert set(r) == TRAIN_KEYS
        assert r["epoch"] == pytest.approx(r["step"] / per_epoch)
        assert set(r["task_loss"]) == set(names) and set(r["task_weight"]) == set(names)
        assert sum(r["task_weight"].values()) == pytest.approx(1.0)
        assert r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["grad_norm"] > 0
    evals = valid_records(records)
    expected_evals = list(range(0, total + 1, 2)) + ([total] if total % 2 else [])
    assert [r["step"] for r in evals] == expected_evals
    for r in evals:
        assert set(r) == {"step", "split", "task_loss", "loss"}
        present = [v for v in r["task_loss"].values() if v is not None]
        assert r["loss"] == pytest.approx(sum(present) / len(present))
    assert evals[-1]["loss"] < evals[0]["loss"]

    # saving_limit=2 keeps the two newest checkpoints, complete, and no temporary directory
    last = total - total % 2
    kept = sorted(n for n in os.listdir(cfg.output_dir) if n.startswith("checkpoint-"))
    assert kept == sorted([f"checkpoint-{last - 2}", f"checkpoint-{last}"])
    assert not [n for n in os.listdir(cfg.output_dir) if n.startswith(".tmp")]
    for n in kept:
        assert os.path.isfile(os.path.join(cfg.output_dir, n, "trainer_state.json"))

    # TensorBoard holds the same scalars as metrics.jsonl
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/tokens", "train/tokens_per_s", "valid/loss",
                *(f"train/task_loss/{n}" for n in names), *(f"train/task_weight/{n}" for n in names),
                *(f"valid/task_loss/{n}" for n in names)):
        assert tag in tags, (tag, sorted(tags))
    tb_loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(tb_loss) == [r["step"] for r in steps]
    for r in steps:
        assert tb_loss[r["step"]] == pytest.approx(r["loss"], rel=1e-6)
    tb_valid = {e.step: e.value for e in acc.Scalars("valid/task_loss/a")}
    assert sorted(tb_valid) == [r["step"] for r in evals]


def test_early_stopping_when_validation_loss_rises(tiny_model_dir, three_tasks, tmp_path):
    """A learning rate far too high makes the validation loss rise; the run stops after `early_stopping_stall_num`
    evaluations without a new best, and the stop step follows from the recorded validation losses."""
    cfg = make_cfg(tiny_model_dir, three_tasks, tmp_path / "out", learning_rate=0.3, min_lr=0.0, max_grad_norm=None,
                   lr_scheduler_type="constant", evaluation_steps=1, early_stopping_stall_num=2,
                   per_device_train_batch_size=2, gradient_accumulation_steps=1)
    summary = train(cfg)
    records = read_records(cfg.output_dir)
    evals = [r for r in valid_records(records) if r["step"] > 0]
    best, stall, expected_stop = math.inf, 0, None
    for r in evals:
        if r["loss"] < best:
            best, stall = r["loss"], 0
        else:
            stall += 1
        if stall >= 2:
            expected_stop = r["step"]
            break
    assert expected_stop is not None, [r["loss"] for r in evals]
    _, batches = data_and_batches(cfg)
    assert expected_stop < batches.steps_per_epoch()  # it did stop before the end
    assert summary["steps"] == expected_stop
    assert summary["stop_reason"].startswith("early stopping")
    assert train_records(records)[-1]["step"] == expected_stop
    assert os.path.isfile(os.path.join(cfg.output_dir, "model.safetensors"))  # the final model is still written

    # killed after the early-stop checkpoint (while writing the final model): the resumed run stops there too
    settings = dict(learning_rate=0.3, min_lr=0.0, max_grad_norm=None, lr_scheduler_type="constant",
                    evaluation_steps=1, early_stopping_stall_num=2, per_device_train_batch_size=2,
                    gradient_accumulation_steps=1)
    stopped = make_cfg(tiny_model_dir, three_tasks, tmp_path / "out3", checkpointing_steps=1, **settings)
    assert train(stopped)["steps"] == expected_stop
    os.remove(os.path.join(stopped.output_dir, "model.safetensors"))
    resumed = train(make_cfg(tiny_model_dir, three_tasks, tmp_path / "out3", checkpointing_steps=1,
                             resume_from_checkpoint="latest", **settings))
    assert resumed["steps"] == expected_stop and resumed["stop_reason"].startswith("early stopping")
    assert train_records(read_records(stopped.output_dir))[-1]["step"] == expected_stop
    assert os.path.isfile(os.path.join(stopped.output_dir, "model.safetensors"))

    cfg2 = make_cfg(tiny_model_dir, three_tasks, tmp_path / "out2", early_stopping=False, **settings)
    assert train(cfg2)["steps"] == batches.steps_per_epoch()


def test_epoch_checkpointing_saves_at_each_epoch_end(tiny_model_dir, three_tasks, tmp_path):
    cfg = make_cfg(tiny_model_dir, three_tasks, tmp_path / "out", epoch_checkpointing=True, checkpointing_steps=None,
                   num_train_epochs=2)
    summary = train(cfg)
    per_epoch = summary["steps"] // 2
    kept = sorted((n for n in os.listdir(cfg.output_dir) if n.startswith("checkpoint-")), key=lambda n: int(n[11:]))
    assert kept == [f"checkpoint-{per_epoch}", f"checkpoint-{2 * per_epoch}"]
    with open(os.path.join(cfg.output_dir, kept[0], "train_config.json")) as f:
        assert json.load(f)["epoch_checkpointing"] is True  # the resolved config travels with the checkpoint
