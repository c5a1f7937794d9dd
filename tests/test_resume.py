"""Exact resume: a real training process is SIGKILLed (at a random moment after its first checkpoint, or while a
checkpoint is being written), restarted with resume_from_checkpoint "latest", and its metrics.jsonl then equals the
uninterrupted run's step for step (fp32, 1e-6 relative), for case3 + LoRA with dropout (RNG states restored) and for
CoBa (its state restored)."""
from __future__ import annotations

import os
import random

import pytest

from mftcoder.config import ConfigError
from mftcoder.trainer.loop import train
from kill_helpers import (_complete_checkpoints, _same_weights, _temporary_checkpoints, _train_steps_written, _write_json,
                          assert_same_metrics, kill_at_random_step, kill_during_save, resume_to_end)
from train_helpers import make_cfg, read_records, train_records, valid_records, write_tasks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each, restored after


def _config(tiny_model_dir, data, out, **overrides):
    settings = dict(num_train_epochs=3, evaluation_steps=3, checkpointing_steps=2, per_device_train_batch_size=2,
                    gradient_accumulation_steps=2)
    return make_cfg(tiny_model_dir, data, out, **{**settings, **overrides})


def test_sigkill_at_random_moment_and_during_a_save_then_resume_case3_lora(tiny_model_dir, tmp_path):
    data = write_tasks(tmp_path / "data", {"a": 24, "b": 12, "c": 10})
    extra = dict(weighted_loss_mode="case3", task_weights=[1, 2, 3], peft_type="lora", lora_rank=8, lora_alpha=16,
                 lora_dropout=0.1)
    reference = _config(tiny_model_dir, data, tmp_path / "reference", **extra)
    train(reference)
    ref = read_records(reference.output_dir)
    total = len(train_records(ref))

    cfg = _config(tiny_model_dir, data, tmp_path / "killed", **extra)
    cfg_path, out, log = _write_json(cfg, tmp_path / "cfg.json"), cfg.output_dir, tmp_path / "run.log"
    target = kill_at_random_step(cfg_path, out, log, total, random.Random())
    assert not os.path.exists(os.path.join(out, "adapter_model.safetensors")), "the run finished before the kill"
    assert _train_steps_written(out) < total
    # the resumed run is killed again, this time while it writes a checkpoint, and resumed once more
    half = kill_during_save(cfg_path, out, log, "--resume_from_checkpoint", "latest")
    assert not os.path.isfile(os.path.join(out, half, "trainer_state.json"))
    resume_to_end(cfg_path, log)

    resumed = read_records(out)
    assert_same_metrics(resumed, ref)
    assert "resumed from" in open(log).read(), f"killed after step {target} but the second run did not resume"
    _same_weights(os.path.join(out, "adapter_model.safetensors"),
                  os.path.join(reference.output_dir, "adapter_model.safetensors"))

    # TensorBoard: the killed run's steps after its checkpoint are purged, so each step shows once, as resumed
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(os.path.join(out, "tensorboard"), size_guidance={"scalars": 0})
    tb.Reload()
    events = tb.Scalars("train/loss")
    assert [e.step for e in events] == [r["step"] for r in train_records(resumed)]
    for e, r in zip(events, train_records(resumed)):
        assert e.value == pytest.approx(r["loss"], rel=1e-6)


def test_sigkill_during_checkpoint_save_then_resume_coba(tiny_model_dir, tmp_path):
    data = write_tasks(tmp_path / "data", {"a": 24, "b": 12, "c": 10})
    extra = dict(weighted_loss_mode="coba", coba_warmup_steps=2, coba_history_length=4, coba_update_interval=1,
                 checkpointing_steps=1, saving_limit=3)
    reference = _config(tiny_model_dir, data, tmp_path / "reference", **extra)
    train(reference)
    ref = read_records(reference.output_dir)
    # CoBa moved the weights before the kill can land, so a resume that lost its state would differ
    assert len({tuple(r["task_weight"].values()) for r in train_records(ref)[2:]}) > 1

    cfg = _config(tiny_model_dir, data, tmp_path / "killed", **extra)
    cfg_path, out, log = _write_json(cfg, tmp_path / "cfg.json"), cfg.output_dir, tmp_path / "run.log"
    half = kill_during_save(cfg_path, out, log)
    assert not os.path.isfile(os.path.join(out, half, "trainer_state.json"))  # really cut during the save
    resume_to_end(cfg_path, log)

    assert_same_metrics(read_records(out), ref)
    assert not _temporary_checkpoints(out)  # the half-written checkpoint did not survive
    assert len(_complete_checkpoints(out)) == 3  # saving_limit
    _same_weights(os.path.join(out, "model.safetensors"), os.path.join(reference.output_dir, "model.safetensors"))


def test_resume_from_the_last_step_finishes_cleanly(tiny_model_dir, tmp_path):
    """A run killed after its last checkpoint (e.g. while writing the final model) resumes with nothing left to
    train: it still writes the final model and a summary."""
    data = write_tasks(tmp_path / "data", {"a": 12, "b": 8})
    cfg = make_cfg(tiny_model_dir, data, tmp_path / "out", checkpointing_steps=1, evaluation_steps=2)
    first = train(cfg)
    os.remove(os.path.join(cfg.output_dir, "model.safetensors"))
    before = read_records(cfg.output_dir)
    again = train(make_cfg(tiny_model_dir, data, tmp_path / "out", checkpointing_steps=1, evaluation_steps=2,
                           resume_from_checkpoint="latest"))
    assert again["steps"] == first["steps"]
    assert os.path.isfile(os.path.join(cfg.output_dir, "model.safetensors"))
    after = read_records(cfg.output_dir)
    assert [r["step"] for r in train_records(after)] == [r["step"] for r in train_records(before)]
    assert len(valid_records(after)) >= len(valid_records(before))


def test_resume_latest_without_checkpoint_starts_fresh_and_bad_path_fails(tiny_model_dir, tmp_path):
    data = write_tasks(tmp_path / "data", {"a": 12, "b": 8})
    cfg = make_cfg(tiny_model_dir, data, tmp_path / "out", max_train_steps=2, resume_from_checkpoint="latest")
    assert train(cfg)["steps"] == 2
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        train(make_cfg(tiny_model_dir, data, tmp_path / "out2", resume_from_checkpoint=str(tmp_path / "nope")))


@pytest.mark.parametrize("peft_type", [None, "qlora"])
def test_resume_from_an_explicit_older_checkpoint_in_process(tiny_model_dir, tmp_path, peft_type):
    """Resuming from checkpoint-2 of a finished run (a path, not "latest") replays steps 3.. exactly: for full
    fine-tuning and for QLoRA with dropout, whose checkpoint holds only the adapter."""
    data = write_tasks(tmp_path / "data", {"a": 16, "b": 10})
    extra = dict(peft_type="qlora", lora_rank=4, lora_alpha=8, lora_dropout=0.1) if peft_type else {}
    cfg = _config(tiny_model_dir, data, tmp_path / "out", num_train_epochs=2, **extra)
    train(cfg)
    reference = read_records(cfg.output_dir)
    weights = "adapter_model.safetensors" if peft_type else "model.safetensors"
    os.rename(os.path.join(cfg.output_dir, weights), tmp_path / weights)
    train(_config(tiny_model_dir, data, tmp_path / "out", num_train_epochs=2,
                  resume_from_checkpoint=os.path.join(cfg.output_dir, "checkpoint-2"), **extra))
    assert_same_metrics(read_records(cfg.output_dir), reference)
    _same_weights(os.path.join(cfg.output_dir, weights), str(tmp_path / weights))


def test_resume_with_a_different_global_batch_or_seed_is_refused(tiny_model_dir, tmp_path):
    paths = write_tasks(tmp_path / "data", {"a": 40, "b": 24})
    out = tmp_path / "run"
    train(make_cfg(tiny_model_dir, paths, out, checkpointing_steps=2, max_train_steps=2))
    with pytest.raises(ConfigError, match="global_batch_size"):
        train(make_cfg(tiny_model_dir, paths, out, per_device_train_batch_size=2, resume_from_checkpoint="latest"))
    with pytest.raises(ConfigError, match="seed"):
        train(make_cfg(tiny_model_dir, paths, out, seed=7, resume_from_checkpoint="latest"))
    # the same global batch split differently is the same run: accepted
    summary = train(make_cfg(tiny_model_dir, paths, out, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                             max_train_steps=3, resume_from_checkpoint="latest"))
    assert summary["steps"] == 3


def test_resume_on_edited_data_is_refused_but_moved_data_is_accepted(tiny_model_dir, tmp_path):
    import shutil

    paths = write_tasks(tmp_path / "data", {"a": 40, "b": 24})
    out = tmp_path / "run"
    train(make_cfg(tiny_model_dir, paths, out, checkpointing_steps=2, max_train_steps=2))
    # the same data under another root (copied, new mtimes): the same tokens, so the resume goes on
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "data", moved)
    moved_paths = [str(moved / os.path.basename(p)) for p in paths]
    summary = train(make_cfg(tiny_model_dir, moved_paths, out, checkpointing_steps=2, max_train_steps=3,
                             resume_from_checkpoint=os.path.join(out, "checkpoint-2")))
    assert summary["steps"] == 3
    # one character edited: the same line and sample counts (the sampler cannot tell), other tokens: refused
    target = os.path.join(moved_paths[1], "train.jsonl")
    text = open(target).read()
    index = text.index('"bot"') + len('"bot", "content": "') + 2
    with open(target, "w") as f:
        f.write(text[:index] + ("Z" if text[index] != "Z" else "Y") + text[index + 1:])
    with pytest.raises(ConfigError, match="training data changed"):
        train(make_cfg(tiny_model_dir, moved_paths, out, max_train_steps=4,
                      resume_from_checkpoint=os.path.join(out, "checkpoint-2")))
