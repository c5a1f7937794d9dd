"""DPO in real processes: the per-task weighted preference loss does not depend on the geometry of the global batch,
and a SIGKILLed run resumes exactly, reference log-probs included.

Invariance: two tasks of pairs (different sizes and lengths), case3 weighting with task weights 1 and 3, a global
batch of 8 pairs per step in every run: one process with micro 8 x accumulation 1 (the reference), one process with
micro 2 x accumulation 4, and 2 processes x micro 1 x accumulation 4 through the shipped launchers (DDP, FSDP2, DeepSpeed
ZeRO-3). LoRA (the reference is the base with the adapter disabled) under all of them; full fine-tuning with
`precompute_reference` (the sharded reference pass of trainer/precompute.py) under ZeRO-3. The tolerances are
test_distributed.py's (fp32, the runs differ only in summation order), plus the DPO step metrics: the mean log-probs
(-60 to -120 nats per answer) to LOGP_RTOL relative, the margins to LOSS_TOL absolute, the reward accuracies exactly.
MEASURED (2-core CPU): losses within 4e-7, margins within 3e-6 (full fine-tuning, margins up to 4), log-probs within
2e-7 relative. A fault moves them far more: per-task means taken per micro-batch instead of over the global batch
make the 2 x 4 run's step-1 loss 2.77 instead of ln 2.

Resume: full fine-tuning DPO with precomputed reference log-probs, killed at a random moment after its first
checkpoint, its cache's precomputed file deleted, resumed with "latest": the metrics equal the uninterrupted run's
(the values come from the checkpoint's precomputed.npy). Without either copy the resume is refused.
"""
from __future__ import annotations

import glob
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from kill_helpers import _same_weights, kill_at_random_step, resume_to_end
from kill_helpers import assert_same_metrics as assert_same_records
from launch_helpers import LOSS_TOL, launch, read_metrics, single, write_task
from launch_helpers import assert_same_metrics as assert_same_losses

pytestmark = pytest.mark.slow

STEPS = 10
LOGP_RTOL = 1e-5  # relative, on the mean log-probs of an answer (-60 to -120 nats)
DPO_KEYS = ("reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp")
VALID_KEYS = ("task_reward_accuracy", "task_reward_margin", "task_chosen_logp", "task_rejected_logp")
LORA = {"peft_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0}
FULL_PRECOMPUTED = {"precompute_reference": True}
MEASURED_GAPS: dict = {}


# ---- data, configs and runs ------------------------------------------------------------------------------------------

def _pair(task: int, i: int) -> dict:
    if task == 0:  # short code answers against prose of three lengths
        return {"prompt": f"add {i} to x", "chosen": f"def add_{i}(x):\n    return x + {i}",
                "rejected": "The quick brown fox " * (1 + i % 3)}
    # the chat_rounds shape, longer answers of four lengths
    return {"chat_rounds": [{"role": "human", "content": f"The quick brown fox number {i}"}],
            "chosen": "jumps over the lazy dog. " * (1 + i % 4), "rejected": f"assert f({i}) == {2 * i}"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir):
    """Workspace: 48 + 24 pairs, and a config writer (DPO, case3 with unequal task weights, clipping active)."""
    root = tmp_path_factory.mktemp("dpo-dist")
    data = [write_task(root / "data" / "code", [_pair(0, i) for i in range(48)]),
            write_task(root / "data" / "text", [_pair(1, i) for i in range(24)])]

    def config(name: str, micro: int, accumulation: int, **over) -> Path:
        cfg = dict(data_paths=data, output_dir=str(root / "unused"), pretrained_model_path=tiny_model_dir,
                   objective="dpo", dpo_beta=0.1, seq_length=64, per_device_train_batch_size=micro,
                   per_device_eval_batch_size=micro, gradient_accumulation_steps=accumulation, learning_rate=3e-3,
                   min_lr=1e-4, num_warmup_steps=0, num_train_epochs=10, max_train_steps=STEPS, evaluation_steps=3,
                   checkpointing_steps=None, early_stopping=False, data_split="80,20,0", weighted_loss_mode="case3",
                   task_weights=[1, 3], max_grad_norm=0.3, init_timeout_seconds=300)
        cfg.update(over)
        path = root / f"{name}.json"
        path.write_text(json.dumps(cfg))
        return path

    return {"root": root, "config": config, "model": tiny_model_dir, "data": data}


# kind -> (micro batch, accumulation, launcher or None); every kind has a global batch of 8 pairs
GEOMETRY = {"single-8x1": (8, 1, None), "single-2x4": (2, 4, None),
            "ddp": (1, 4, "ddp.sh"), "ds_zero3": (1, 4, "ds_zero3.sh"), "fsdp2": (1, 4, "fsdp.sh")}
MODES = {"lora": LORA, "full-precomputed": {**FULL_PRECOMPUTED, "checkpointing_steps": 2}}


@pytest.fixture(scope="module")
def runs(ws):
    """Runs made on first use, shared by the tests: runs(kind, mode) -> output dir."""
    done: dict = {}

    def get(kind: str, mode: str) -> Path:
        if (kind, mode) not in done:
            micro, accumulation, launcher = GEOMETRY[kind]
            cfg = ws["config"](f"{kind}-{mode}", micro, accumulation, **MODES[mode])
            out = ws["root"] / f"{kind}-{mode}"
            done[kind, mode] = single(cfg, out, micro=micro) if launcher is None else launch(launcher, cfg, out)
        return done[kind, mode]

    return get


# ---- comparisons -----------------------------------------------------------------------------------------------------

def assert_same_dpo_metrics(ref: list[dict], got: list[dict], label: str) -> None:
    """test_distributed's comparison (losses, per-task losses, weights, lr, tokens, grad norms) and the DPO metrics of
    the step records and of the per-task validation records."""
    assert_same_losses(ref, got, label=label)
    gaps = {"logp_rel": 0.0, "margin": 0.0}
    for a, b in zip(ref, got):
        where = f"{label} step {a['step']} {a.get('split', 'train')}"
        if a.get("split") is None:
            assert b["reward_accuracy"] == a["reward_accuracy"], where
            pairs = [(a["reward_margin"], b["reward_margin"], "margin")]
            pairs += [(a[k], b[k], "logp_rel") for k in ("chosen_logp", "rejected_logp")]
        else:
            assert b["task_reward_accuracy"] == a["task_reward_accuracy"], where
            pairs = [(v, b["task_reward_margin"][t], "margin") for t, v in a["task_reward_margin"].items()]
            pairs += [(v, b[k][t], "logp_rel") for k in VALID_KEYS[2:] for t, v in a[k].items()]
        for x, y, kind in pairs:
            gap = abs(y - x) / abs(x) if kind == "logp_rel" else abs(y - x)
            assert gap <= (LOGP_RTOL if kind == "logp_rel" else LOSS_TOL), (where, kind, x, y)
            gaps[kind] = max(gaps[kind], gap)
    MEASURED_GAPS[label] = gaps
    print(f"max DPO metric gaps {label}: {gaps}")


def _dpo_trained(records: list[dict]) -> None:
    """The run is a DPO run that learned: ln 2 before the first update, then margins and accuracy up."""
    train = [r for r in records if r.get("split") is None]
    assert len(train) == STEPS and all(k in train[0] for k in DPO_KEYS)
    assert train[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert train[-1]["reward_margin"] > 0.05 and train[-1]["reward_accuracy"] >= 0.75
    assert max(r["grad_norm"] for r in train) > 0.3, "clipping must be active for the comparison to cover it"
    assert train[0]["task_weight"] == pytest.approx({"code": 0.25, "text": 0.75})
    valid = [r for r in records if r.get("split") == "valid"]
    assert valid and all(set(valid[-1][k]) == {"code", "text"} for k in VALID_KEYS)


# ---- invariance ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["single-2x4", "ddp", "ds_zero3", "fsdp2"])
def test_lora_dpo_global_batch_geometry_changes_nothing(runs, ws, kind):
    ref, got = read_metrics(runs("single-8x1", "lora")), read_metrics(runs(kind, "lora"))
    _dpo_trained(ref)
    assert_same_dpo_metrics(ref, got, label=f"{kind}-lora")
    if kind != "single-2x4":
        log = (ws["root"] / f"{kind}-lora.log").read_text(errors="replace")
        assert "global batch 8 pairs = 1 micro x 4 accumulation x 2 processes" in log


def test_full_dpo_precomputed_reference_under_zero3(runs):
    ref_dir, got_dir = runs("single-8x1", "full-precomputed"), runs("ds_zero3", "full-precomputed")
    ref, got = read_metrics(ref_dir), read_metrics(got_dir)
    _dpo_trained(ref)
    assert_same_dpo_metrics(ref, got, label="ds_zero3-full-precomputed")
    # the sharded reference pass (each rank half the items, summed) wrote what the single process computed
    a, b = np.load(ref_dir / "checkpoint-2" / "precomputed.npy"), np.load(got_dir / "checkpoint-2" / "precomputed.npy")
    assert a.shape == b.shape and (a != 0).all()
    assert np.abs(a - b).max() <= LOGP_RTOL * np.abs(a).max()
    MEASURED_GAPS["ds_zero3-precomputed.npy"] = float(np.abs(a - b).max())
    print(f"max |difference| of the precomputed reference log-probs: {MEASURED_GAPS['ds_zero3-precomputed.npy']:.2e}")


# ---- resume ----------------------------------------------------------------------------------------------------------

def _precomputed_in_cache(out) -> list[str]:
    return glob.glob(os.path.join(str(out), "cache", "**", "precomputed-*.npy"), recursive=True)


def test_sigkill_then_resume_with_the_checkpoint_reference_logps(runs, ws):
    full_dir = runs("single-8x1", "full-precomputed")
    reference = read_metrics(full_dir)
    out, log = ws["root"] / "killed", ws["root"] / "killed.log"
    cfg_path = str(ws["config"]("killed", 8, 1, output_dir=str(out), **MODES["full-precomputed"]))
    target = kill_at_random_step(cfg_path, str(out), log, STEPS, random.Random())
    assert not (out / "model.safetensors").exists(), "the run finished before the kill"

    checkpoints = sorted(out.glob("checkpoint-*/trainer_state.json"))
    assert checkpoints and all((c.parent / "precomputed.npy").is_file() for c in checkpoints)
    cached = _precomputed_in_cache(out)
    assert len(cached) == 1
    assert np.array_equal(np.load(cached[0]), np.load(checkpoints[0].parent / "precomputed.npy"))
    os.remove(cached[0])  # the resume must take the values from the checkpoint

    resume_to_end(cfg_path, log)
    assert "resumed from" in log.read_text(errors="replace"), f"killed after step {target} but did not resume"
    assert not _precomputed_in_cache(out), "the resume computed the reference again instead of reading it"
    assert_same_records(read_metrics(out), reference)
    _same_weights(str(out / "model.safetensors"), str(full_dir / "model.safetensors"))


def test_resume_without_any_precomputed_copy_is_refused(tiny_model_dir, tmp_path, one_thread):
    from mftcoder.config import ConfigError
    from mftcoder.trainer.loop import train
    from train_helpers import make_cfg

    data = [write_task(tmp_path / "data" / "code", [_pair(0, i) for i in range(16)]),
            write_task(tmp_path / "data" / "text", [_pair(1, i) for i in range(8)])]
    settings = dict(objective="dpo", precompute_reference=True, per_device_train_batch_size=2,
                    gradient_accumulation_steps=1, checkpointing_steps=1)
    out = tmp_path / "out"
    train(make_cfg(tiny_model_dir, data, out, max_train_steps=2, **settings))
    os.remove(out / "checkpoint-2" / "precomputed.npy")
    for path in _precomputed_in_cache(out):
        os.remove(path)
    with pytest.raises(ConfigError, match=r"checkpoint .*checkpoint-2.* holds no precomputed\.npy and the cache has "
                                          r"none; the policy has trained 2 steps"):
        train(make_cfg(tiny_model_dir, data, out, max_train_steps=3, resume_from_checkpoint="latest", **settings))
