"""The training loop's parts on their own: the run state as data (LoopState, StopReason), the objective registry and
the SFT objective's per-task sums, and setup / train_step / validate / evaluate of mftcoder.trainer.loop on the tiny
model, checked against the independent computation of train_helpers."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mftcoder.config import ConfigError
from mftcoder.loss.cross_entropy import ForwardLosses
from mftcoder.objectives import OBJECTIVES, SFTObjective, make_objective, objective_class
from mftcoder.trainer.state import LoopState, StopReason
from train_helpers import (data_and_batches, grad_norm, hand_step_loss, initial_model, make_cfg, read_records, rel,
                           sample_losses, write_tasks)

OLD_LOOP_DICT = {"step": 4, "best_eval": 1.5, "stall": 1, "coba": None, "probe_position": 8,
                 "first_eval": {"a": 2.0}, "sampler": {"step": 4, "seed": 1}, "data_digest": "abc"}


# ---- the run state --------------------------------------------------------------------------------------------------

def test_loop_state_round_trips_through_json_and_reads_old_checkpoints():
    state = LoopState(step=7, best_eval=0.5, stall=2)
    state.request_stop(StopReason.EARLY_STOPPING, "(2 evaluations without a better validation loss)")
    saved = json.loads(json.dumps(state.to_dict()))  # plain JSON values: the enum is its string
    assert saved["stop"] == "early stopping"
    back = LoopState.from_dict(saved)
    assert back == state and back.stop is StopReason.EARLY_STOPPING
    assert back.stop_text() == "early stopping (2 evaluations without a better validation loss)"
    # a checkpoint written before `stop` existed: not stopping, every other field as saved
    old = LoopState.from_dict(dict(OLD_LOOP_DICT))
    assert old.stop is StopReason.NONE and not old.stopping
    assert (old.step, old.best_eval, old.probe_position, old.data_digest) == (4, 1.5, 8, "abc")
    assert math.isinf(LoopState.from_dict({}).best_eval)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['surprise'\]"):
        LoopState.from_dict({**OLD_LOOP_DICT, "surprise": 1})
    with pytest.raises(ValueError, match="'sometime' is not a valid StopReason"):
        LoopState.from_dict({**OLD_LOOP_DICT, "stop": "sometime"})


def test_the_first_stop_reason_wins_and_is_the_summary_text():
    state = LoopState()
    assert not state.stopping and state.stop_text() == "running"
    state.request_stop(StopReason.MAX_STEPS)
    state.request_stop(StopReason.EARLY_STOPPING, "(3 evaluations ...)")  # later in the same step: ignored
    assert state.stop is StopReason.MAX_STEPS and state.stop_text() == "max steps"
    state.stop = StopReason.INTERRUPTED  # what a signal handler may do directly
    assert state.stopping and state.stop_text() == "interrupted"


# ---- the objective interface -----------------------------------------------------------------------------------------

def test_registry_knows_sft_and_rejects_an_unknown_objective_clearly():
    assert set(OBJECTIVES) == {"sft", "pretrain", "dpo", "orpo", "reward"} and objective_class("sft") is SFTObjective
    with pytest.raises(ConfigError, match=r"^objective: 'ppo' is not a known objective; valid: dpo, orpo, pretrain, "
                                          r"reward, sft$"):
        objective_class("ppo")
    with pytest.raises(ConfigError, match="valid: dpo, orpo, pretrain, reward, sft"):
        make_objective(None, cfg=None, num_tasks=2, chunked=False)


def test_sft_counts_and_validation_sums_per_task(tiny_model_dir, tmp_path):
    cfg = make_cfg(tiny_model_dir, write_tasks(tmp_path / "data", {"a": 4, "b": 4}), tmp_path / "out")
    sft = make_objective("sft", cfg, num_tasks=2, chunked=False)
    # three rows: task 1 (two packed samples), task 0, task 1; mask 0 = prompt (not trained)
    rows = [[([1, 2, 3, 4], [0, 0, 1, 1]), ([5, 6, 7], [0, 1, 1])], [([8, 9, 10], [0, 1, 1])], [([4, 5], [1, 1])]]
    batch = sft.collate(rows, [1, 0, 1], 0, None)
    assert set(SFTObjective.batch_keys) <= set(batch)
    counts = sft.count(batch)  # trained tokens: task 1: 2 + 2 + 1, task 0: 2; samples: 3 and 1
    assert counts.task_tokens.tolist() == [2.0, 5.0] and counts.task_samples.tolist() == [1.0, 3.0]
    token_loss = torch.arange(batch["labels"].numel(), dtype=torch.float32).view(batch["labels"].shape)
    sums = sft.eval_sums(ForwardLosses(token_loss, None), batch)
    trained = batch["labels"] != -100
    expected = [float(token_loss[1][trained[1]].sum()),
                float(token_loss[0][trained[0]].sum() + token_loss[2][trained[2]].sum())]
    assert sums.loss_sum.tolist() == expected and sums.count.tolist() == [2.0, 5.0]
    assert sums.loss_sum.dtype == torch.float64


# ---- setup / train_step / validate / evaluate ------------------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_setup_then_one_train_step_and_validation_match_the_hand_computation(tiny_model_dir, tmp_path):
    from mftcoder.trainer.loop import evaluate, setup, train_step, validate

    weights = [1.0, 4.0]
    cfg = make_cfg(tiny_model_dir, write_tasks(tmp_path / "data", {"a": 12, "b": 10}), tmp_path / "out",
                   weighted_loss_mode="case3", task_weights=weights, max_train_steps=2)
    run, state = setup(cfg)
    try:
        assert isinstance(run.objective, SFTObjective) and run.total_steps == 2
        assert state == LoopState()  # a fresh run
        data, batches = data_and_batches(cfg)
        model = initial_model(tiny_model_dir)

        # validation of the untrained model: per-task token mean over every validation sample, in any grouping
        valid, metrics = validate(run, run.valid_units)
        assert metrics == {}  # SFT has no per-unit metrics
        with torch.no_grad():
            for k in range(2):
                units = [(k, i) for i in range(len(data.tasks[k].valid))]
                vs = sample_losses(model, [batches.collate_units(units, "valid")])
                assert rel(valid[k], float(sum(l.sum() for _, l in vs)) / sum(len(l) for _, l in vs)) < 1e-5
        only_b, _ = validate(run, [u for u in run.valid_units if u[0] == 1])
        assert only_b[0] is None and rel(only_b[1], valid[1]) < 1e-6
        ev = evaluate(run, 0)
        assert ev["task_loss"] == {"a": valid[0], "b": valid[1]} and rel(ev["loss"], (valid[0] + valid[1]) / 2) < 1e-9
        assert read_records(cfg.output_dir)[-1] == ev  # written to metrics.jsonl

        record = train_step(run, state)
        assert state.step == 1 and record["step"] == 1 and not state.stopping  # the step does not decide stopping
        loss, task_means = hand_step_loss(sample_losses(model, batches.micro_batches(0)), "case3", weights, 2)
        loss.backward()
        assert rel(record["loss"], float(loss.detach())) < 1e-5
        assert rel(record["grad_norm"], grad_norm(model)) < 1e-4
        for k, name in enumerate(("a", "b")):
            assert rel(record["task_loss"][name], task_means[k]) < 1e-5
        assert record["task_weight"] == pytest.approx({"a": 0.2, "b": 0.8})
        assert "router_aux_loss" not in record  # a dense model
        # the step changed the weights: validation now differs from the untrained model's
        assert validate(run, run.valid_units)[0] != valid
    finally:
        run.metrics.close()
        run.acc.end_training()
