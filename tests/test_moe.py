"""Mixture-of-Experts models: the router load-balancing loss joins the step loss, without padding, and packing does not
change it. The references are transformers' own aux loss, computed by the model itself on inputs where it is right
(no padding, or an attention mask it can use)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from mftcoder.config import ConfigError
from mftcoder.loss.router import model_router_loss, resolve_router_loss
from mftcoder.testing import build_tiny_model
from mftcoder.trainer.loop import train
from train_helpers import (data_and_batches, grad_norm, hand_step_loss, initial_model, make_cfg, read_records, rel,
                           sample_losses_from_logits, train_records, write_tasks)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each, restored after

ARCHS = ["mixtral", "qwen2_moe"]


@pytest.fixture(scope="module", params=ARCHS)
def moe_model_dir(request, tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.mktemp(request.param)), arch=request.param)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("moe-tasks"), {"a": 20, "b": 12})


def test_router_loss_excludes_padding_and_packing_does_not_change_it(moe_model_dir):
    model = initial_model(moe_model_dir)
    router = model_router_loss(model)
    assert router is not None and router.num_experts == 4 and router.top_k == 2 and router.coef == 0.02
    torch.manual_seed(0)
    s1, s2 = torch.randint(3, 200, (7,)), torch.randint(3, 200, (11,))
    with torch.no_grad():
        # padding excluded: s1 right-padded to 16 gives the model's own aux loss of s1 alone
        alone = model(input_ids=s1[None], output_router_logits=True, use_cache=False).aux_loss
        padded = torch.cat([s1, torch.zeros(9, dtype=torch.long)])[None]
        out = model(input_ids=padded, output_router_logits=True, use_cache=False)
        real = torch.arange(16)[None] < 7
        assert rel(float(router(out.router_logits, real)), float(alone)) < 1e-5
        assert rel(float(out.aux_loss), float(alone)) > 1e-3  # the model's own value counts the padding

        # packing: s1 and s2 in one row (positions restart) == the two as padded rows with a mask
        positions = torch.cat([torch.arange(7), torch.arange(11)])[None]
        packed = model(input_ids=torch.cat([s1, s2])[None], position_ids=positions, output_router_logits=True,
                       use_cache=False)
        rows = torch.zeros(2, 11, dtype=torch.long)
        rows[0, :7], rows[1] = s1, s2
        mask = torch.arange(11)[None] < torch.tensor([[7], [11]])
        unpacked = model(input_ids=rows, attention_mask=mask.long(), output_router_logits=True, use_cache=False)
        value = router(packed.router_logits, torch.ones(1, 18, dtype=torch.bool))
        assert rel(float(value), float(unpacked.aux_loss)) < 1e-5
        assert rel(float(value), float(router(unpacked.router_logits, mask))) < 1e-5


def _reference_step(model, micro_batches, K: int, mode: str, weights, coef: float):
    """The step loss by hand: the README's task formula over per-sample CE plus coef x the mean over micro-batches of
    the model's own aux loss, the model told which tokens are padding (rows are single right-padded samples)."""
    samples, aux = [], []
    for mb in micro_batches:
        real = mb["sample_ids"] >= 0
        out = model(input_ids=mb["input_ids"], attention_mask=real.long(), output_router_logits=True, use_cache=False)
        samples += sample_losses_from_logits(out.logits, mb)
        aux.append(out.aux_loss)
    task_loss, _ = hand_step_loss(samples, mode, weights, K)
    aux_mean = sum(aux) / len(aux)
    return task_loss, aux_mean, task_loss + coef * aux_mean


@pytest.mark.parametrize("coef", [None, 0.5])
def test_first_step_adds_the_router_loss_of_every_micro_batch(moe_model_dir, tasks, tmp_path, coef):
    """loss (logged) = the task loss; router_aux_loss = mean of the micro-batches' aux losses; the gradient (grad norm)
    is that of task loss + coef x router_aux_loss, coef the model's own (0.02) or the config's."""
    cfg = make_cfg(moe_model_dir, tasks, tmp_path / "out", padding_mode="padding", per_device_train_batch_size=3,
                   gradient_accumulation_steps=3, max_train_steps=1, task_weights=[1.0, 3.0],
                   router_aux_loss_coef=coef)
    train(cfg)
    step1 = train_records(read_records(cfg.output_dir))[0]

    _, batches = data_and_batches(cfg)
    model = initial_model(moe_model_dir)
    task_loss, aux, total = _reference_step(model, batches.micro_batches(0), 2, "case3", [1.0, 3.0],
                                            0.02 if coef is None else coef)
    total.backward()
    assert rel(step1["loss"], float(task_loss.detach())) < 1e-5
    assert rel(step1["router_aux_loss"], float(aux.detach())) < 1e-5
    assert rel(step1["grad_norm"], grad_norm(model)) < 1e-4


def test_router_loss_off_and_dense_models(moe_model_dir, tiny_model_dir, tasks, tmp_path):
    # 0 turns it off: no router_aux_loss, and the gradient is the task loss's alone
    cfg = make_cfg(moe_model_dir, tasks, tmp_path / "off", padding_mode="padding", per_device_train_batch_size=3,
                   gradient_accumulation_steps=2, max_train_steps=1, router_aux_loss_coef=0.0)
    train(cfg)
    step1 = train_records(read_records(cfg.output_dir))[0]
    assert "router_aux_loss" not in step1
    _, batches = data_and_batches(cfg)
    model = initial_model(moe_model_dir)
    task_loss, _, _ = _reference_step(model, batches.micro_batches(0), 2, "case3", [1.0, 1.0], 0.0)
    task_loss.backward()
    assert rel(step1["grad_norm"], grad_norm(model)) < 1e-4

    # a dense model has no router: a coefficient for it is refused before the model loads, null is fine
    assert resolve_router_loss(initial_model(tiny_model_dir), None) is None
    with pytest.raises(ConfigError, match="router_aux_loss_coef=0.1 .* not a Mixture-of-Experts"):
        train(make_cfg(tiny_model_dir, tasks, tmp_path / "dense", router_aux_loss_coef=0.1))
    assert not os.path.exists(tmp_path / "dense" / "metrics.jsonl")


def test_lora_on_moe_trains_saves_merges_and_logs_the_router_loss(moe_model_dir, tasks, tmp_path):
    """Mixtral's adapter includes PEFT's LoRA on the fused expert weights; it merges like any other."""
    from peft import PeftModel

    from mftcoder.merge import merge_adapter

    if "mixtral" in moe_model_dir:  # PEFT adapts Mixtral's fused expert weights, which cannot take dropout: said clearly
        with pytest.raises(ConfigError, match="lora_dropout=0.1: .* set lora_dropout to 0"):
            train(make_cfg(moe_model_dir, tasks, tmp_path / "dropout", peft_type="lora", lora_dropout=0.1))
    cfg = make_cfg(moe_model_dir, tasks, tmp_path / "lora", peft_type="lora", lora_rank=4, lora_alpha=8,
                   lora_dropout=0.0, padding_mode="pack", num_train_epochs=3, max_train_steps=6, learning_rate=1e-2,
                   evaluation_steps=6)
    summary = train(cfg)
    steps = train_records(read_records(cfg.output_dir))
    assert len(steps) == 6 and all(r["router_aux_loss"] > 0 for r in steps)
    first, last = summary["first_valid"], summary["last_valid"]
    assert sum(last.values()) < sum(first.values())
    with open(os.path.join(cfg.output_dir, "adapter_config.json")) as f:
        assert json.load(f)["peft_type"] == "LORA"
    adapted = PeftModel.from_pretrained(initial_model(moe_model_dir), cfg.output_dir).eval()
    merged = initial_model(merge_adapter(moe_model_dir, cfg.output_dir, str(tmp_path / "merged"))).eval()
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
        base = initial_model(moe_model_dir).eval()(input_ids=ids).logits
    assert float((a - b).abs().max()) < 1e-4
    assert float((a - base).abs().max()) > 1e-2  # the adapter changed the model


def test_gradient_checkpointing_keeps_the_router_loss(moe_model_dir, tasks, tmp_path):
    """Recomputing the blocks in backward must not record the router logits twice or lose them: the same metrics."""
    runs = []
    for checkpointing in (False, True):
        cfg = make_cfg(moe_model_dir, tasks, tmp_path / f"gc-{checkpointing}", max_train_steps=2,
                       gradient_checkpointing=checkpointing)
        train(cfg)
        records = train_records(read_records(cfg.output_dir))
        runs.append([(r["loss"], r["router_aux_loss"], r["grad_norm"]) for r in records])
    assert len(runs[0]) == 2
    for plain, recomputed in zip(*runs):
        assert recomputed == pytest.approx(plain, rel=1e-6)
