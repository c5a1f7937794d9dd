"""Optimizer and learning-rate schedule: warmup in steps or as a fraction, cosine down to min_lr, min_lr as a floor
for the other schedules, all sized in optimizer steps taken from the sampler's global batches; gradient clipping."""
from __future__ import annotations

import math
import os

import pytest
import torch

from mftcoder.config import ConfigError, parse_config
from mftcoder.trainer.loop import train
from mftcoder.trainer.optim import check_scheduler, make_optimizer, make_scheduler, warmup_steps
from train_helpers import make_cfg, read_records, train_records, write_tasks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each, restored after

LR, MIN_LR = 1e-3, 1e-4


def _cfg(**overrides):
    base = dict(data_paths=["unused"], output_dir="unused", pretrained_model_path="unused", learning_rate=LR,
                min_lr=MIN_LR)
    base.update(overrides)
    return parse_config(base)


def schedule(cfg, total: int) -> list[float]:
    """The learning rate of optimizer steps 1..total (what metrics.jsonl logs)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    sched = make_scheduler(opt, cfg, total)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def hand_cosine(step: int, warmup: int, total: int, lr: float, min_lr: float) -> float:
    """Step s = 0..total-1: linear warmup from 0, then half a cosine from lr down to min_lr at s = total."""
    if step < warmup:
        return lr * step / warmup
    progress = (step - warmup) / (total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def hand_linear(step: int, warmup: int, total: int, lr: float, min_lr: float) -> float:
    if step < warmup:
        return lr * step / warmup
    return max(lr * (total - step) / (total - warmup), min_lr)


@pytest.mark.parametrize("warmup,expected", [(5, 5), (0, 0), (0.1, 4), (0.05, 2), (0.01, 0)])
def test_warmup_in_steps_or_as_a_fraction(warmup, expected):
    cfg = _cfg(num_warmup_steps=warmup)
    assert warmup_steps(cfg, 40) == expected
    lrs = schedule(cfg, 40)
    assert lrs[:expected] == pytest.approx([LR * s / expected for s in range(expected)])
    assert lrs[expected] == pytest.approx(LR)  # the peak right after warmup
    assert max(lrs) == pytest.approx(LR)


def test_cosine_decays_to_min_lr():
    total, warmup = 30, 3
    lrs = schedule(_cfg(num_warmup_steps=warmup, lr_scheduler_type="cosine"), total)
    assert lrs == pytest.approx([hand_cosine(s, warmup, total, LR, MIN_LR) for s in range(total)], rel=1e-9)
    assert all(x >= MIN_LR for x in lrs[warmup:])
    assert lrs[-1] == pytest.approx(MIN_LR, rel=0.05)  # one step short of the end of the half cosine
    assert schedule(_cfg(num_warmup_steps=0, min_lr=0.0), total)[-1] < MIN_LR / 10  # no floor without min_lr


@pytest.mark.parametrize("kind", ["linear", "polynomial", "cosine_with_restarts", "inverse_sqrt"])
def test_min_lr_floors_the_other_schedules(kind):
    total, warmup = 20, 2
    lrs = schedule(_cfg(num_warmup_steps=warmup, lr_scheduler_type=kind), total)
    assert lrs[:warmup] == pytest.approx([LR * s / warmup for s in range(warmup)])
    assert min(lrs[warmup:]) == pytest.approx(MIN_LR) if kind != "inverse_sqrt" else min(lrs[warmup:]) >= MIN_LR
    if kind == "linear":
        assert lrs == pytest.approx([hand_linear(s, warmup, total, LR, MIN_LR) for s in range(total)], rel=1e-9)


def test_constant_schedule_still_warms_up():
    lrs = schedule(_cfg(num_warmup_steps=4, lr_scheduler_type="constant"), 10)
    assert lrs == pytest.approx([0, LR / 4, LR / 2, 3 * LR / 4] + [LR] * 6)


@pytest.mark.parametrize("name", ["cosinee", "reduce_lr_on_plateau", "warmup_stable_decay"])
def test_unusable_scheduler_is_a_config_error(name):
    with pytest.raises(ConfigError, match=rf"lr_scheduler_type='{name}'.*valid: linear, cosine"):
        check_scheduler(_cfg(lr_scheduler_type=name), 10)
    check_scheduler(_cfg(lr_scheduler_type="cosine_with_min_lr"), 10)  # needs min_lr, which it gets


def test_weight_decay_skips_biases_and_norms(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    opt = make_optimizer(model, _cfg(weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert plain and all("norm" in n for n in plain)
    assert decayed and all(model.get_parameter(n).ndim == 2 for n in decayed)
    assert decayed | plain == set(names.values())
    assert all(g["betas"] == (0.8, 0.95) and g["lr"] == LR for g in opt.param_groups)


# ---- in a real run -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("optim-tasks"), {"a": 30, "b": 14})


def test_run_schedule_is_sized_from_the_sampler(tiny_model_dir, tasks, tmp_path):
    """Total steps = ceil(train samples / global batch) x epochs, whatever micro x accumulation; the logged lr of
    step n is the hand cosine at n - 1."""
    import json

    runs = []
    for micro, accum in ((4, 1), (1, 4)):
        cfg = make_cfg(tiny_model_dir, tasks, tmp_path / f"{micro}x{accum}", per_device_train_batch_size=micro,
                       gradient_accumulation_steps=accum, num_train_epochs=2, num_warmup_steps=0.1, learning_rate=LR,
                       min_lr=MIN_LR)
        train(cfg)
        runs.append(train_records(read_records(cfg.output_dir)))
    with open(os.path.join(cfg.output_dir, "data_stats.json")) as f:
        samples = sum(t["train_samples"] for t in json.load(f)["tasks"].values())
    total = 2 * math.ceil(samples / 4)
    warmup = round(0.1 * total)
    for recs in runs:
        assert len(recs) == total
        assert [r["lr"] for r in recs] == pytest.approx(
            [hand_cosine(n - 1, warmup, total, LR, MIN_LR) for n in range(1, total + 1)], rel=1e-9)

    capped = make_cfg(tiny_model_dir, tasks, tmp_path / "capped", per_device_train_batch_size=4,
                      gradient_accumulation_steps=1, num_train_epochs=2, max_train_steps=5, num_warmup_steps=0,
                      learning_rate=LR, min_lr=MIN_LR)
    train(capped)
    recs = train_records(read_records(capped.output_dir))
    assert [r["lr"] for r in recs] == pytest.approx([hand_cosine(n, 0, 5, LR, MIN_LR) for n in range(5)], rel=1e-9)


@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_gradient_clipping_reaches_the_optimizer(tiny_model_dir, tasks, tmp_path, max_grad_norm):
    """After step 1, AdamW's first moment is (1 - beta1) x the gradient it got: its norm is (1 - beta1) x
    min(grad_norm, max_grad_norm), with grad_norm the logged (pre-clip) norm."""
    cfg = make_cfg(tiny_model_dir, tasks, tmp_path / "out", max_grad_norm=max_grad_norm, max_train_steps=2,
                   checkpointing_steps=1)
    train(cfg)
    step1 = train_records(read_records(cfg.output_dir))[0]
    state = torch.load(os.path.join(cfg.output_dir, "checkpoint-1", "optimizer.bin"), weights_only=False)["state"]
    first_moment = math.sqrt(sum(float(s["exp_avg"].double().pow(2).sum()) for s in state.values()))
    applied = min(step1["grad_norm"], max_grad_norm or math.inf)
    assert first_moment == pytest.approx((1 - cfg.adam_beta1) * applied, rel=1e-5)
    if max_grad_norm:
        assert step1["grad_norm"] > 2 * max_grad_norm  # the clip was active


def test_adamw_is_fused_for_one_process_and_ddp_only(monkeypatch):
    """Fused AdamW (one kernel) where torch steps ordinary parameters itself; DeepSpeed and FSDP2 keep the default,
    and the fused step equals the default one."""
    def build(backend_env):
        for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "WORLD_SIZE"):
            monkeypatch.delenv(key, raising=False)
        for key, value in backend_env.items():
            monkeypatch.setenv(key, value)
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        return model, make_optimizer(model, _cfg(weight_decay=0.1))

    for env, fused in (({}, True), ({"WORLD_SIZE": "2"}, True), ({"ACCELERATE_USE_DEEPSPEED": "true"}, False),
                       ({"ACCELERATE_USE_FSDP": "true"}, False)):
        assert bool(build(env)[1].defaults["fused"]) is fused, env
    params = []
    for env in ({}, {"ACCELERATE_USE_FSDP": "true"}):
        model, opt = build(env)
        for _ in range(3):
            model(torch.ones(2, 4)).square().sum().backward()
            opt.step()
            opt.zero_grad()
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(params[0], params[1], atol=1e-7, rtol=1e-6)
