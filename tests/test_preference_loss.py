"""The preference losses against independent computations of the published formulas, and their place in the loop:
ln 2 before the first update, packed == padded pairs, micro batch x accumulation invariance, precomputed reference
== on the fly, the metrics, and the config keys."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from mftcoder.config import ConfigError
from mftcoder.data.collator import collate_pairs
from mftcoder.data.pairs import parse_pair
from mftcoder.data.template import get_template
from mftcoder.objectives import DPOObjective, ORPOObjective, RewardObjective, StepContext
from mftcoder.objectives.reference import reference_source
from tests.train_helpers import make_cfg, read_records, train_records, valid_records

LN2 = math.log(2)
LINES = [
    {"prompt": "add 1 to x", "chosen": "def add_1(x):\n    return x + 1", "rejected": "The quick brown fox"},
    {"prompt": "add 2 to x", "chosen": "def add_2(x):\n    return x + 2", "rejected": "def add_2(x):\n    return x"},
    {"prompt": "Write a function 3.", "chosen": "assert f(3) == 6", "rejected": "jumps over the lazy dog. " * 2},
]
TASKS = [0, 0, 1]
WEIGHTS = [1.0, 3.0]


def encoded_pairs(tokenizer) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    template = get_template("mftcoder", tokenizer)
    units = []
    for line in LINES:
        pair = parse_pair(line, "test")
        unit = []
        for answer in (pair.chosen, pair.rejected):
            enc = template.encode(pair.conversation(answer), last_answer_only=True)
            unit.append((np.asarray(enc.input_ids), np.asarray(enc.loss_mask)))
        units.append(unit)
    return units


def step_loss(objective, model, batch):
    counts = objective.count(batch)
    ctx = StepContext(counts, torch.tensor(WEIGHTS, dtype=torch.float64), 1)
    return objective.train_loss(objective.forward(model, batch, training=True), batch, ctx)


# ---- the independent computation: each sample alone, full logits, float64 formulas --------------------------------

def alone_logps(model, units) -> tuple[torch.Tensor, torch.Tensor]:
    """[P, 2] summed answer log-probs and [P, 2] answer token counts, one unpadded sample per forward."""
    logps, counts = [], []
    for unit in units:
        for ids, mask in unit:
            x = torch.tensor(ids, dtype=torch.long)
            logits = model(input_ids=x[None]).logits[0].double()
            token_logp = torch.log_softmax(logits[:-1], -1).gather(1, x[1:, None])[:, 0]
            keep = torch.tensor(mask[1:] == 1)
            logps.append(token_logp[keep].sum())
            counts.append(float(keep.sum()))
    return torch.stack(logps).view(-1, 2), torch.tensor(counts, dtype=torch.float64).view(-1, 2)


def task_weighted(per_pair: torch.Tensor) -> torch.Tensor:
    """case3: the weighted mean over tasks of each task's mean pair loss."""
    task = torch.tensor(TASKS)
    means = [per_pair[task == k].mean() for k in range(2)]
    return sum(w * m for w, m in zip(WEIGHTS, means)) / sum(WEIGHTS)


def published(kind: str, beta: float):
    if kind == "sigmoid":  # DPO (Rafailov et al. 2023)
        return lambda h: -torch.log(torch.sigmoid(beta * h))
    if kind == "ipo":  # IPO (Azar et al. 2023)
        return lambda h: (h - 1 / (2 * beta)) ** 2
    return lambda h: torch.clamp(1 - beta * h, min=0)  # SLiC hinge


def perturbed(model_dir, seed=3, scale=0.05):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def grads_of(model) -> dict:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(ours: dict, ref: dict, rtol=1e-4):
    assert ours.keys() == ref.keys()
    scale = max(float(g.abs().max()) for g in ref.values())
    worst = max(float((ours[n].double() - ref[n].double()).abs().max()) for n in ref)
    assert scale > 1e-6 and worst <= rtol * scale, (worst, scale)


# ---- the formulas --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("kind, beta", [("sigmoid", 0.5), ("ipo", 0.5), ("hinge", 0.1)])
def test_dpo_loss_and_gradient_equal_the_published_formula(tiny_model_dir, tiny_tokenizer, tmp_path, kind, beta,
                                                           packed):
    cfg = make_cfg(tiny_model_dir, [str(tmp_path)], tmp_path / "o", objective="dpo", dpo_loss=kind, dpo_beta=beta,
                   task_weights=WEIGHTS, padding_mode="pack" if packed else "padding")
    objective = DPOObjective(cfg, 2, chunked=True)
    policy = perturbed(tiny_model_dir)
    objective.attach_model(policy)  # full fine-tuning: the reference is a frozen copy of the base
    assert objective.source == "copy" and objective.reference is not None
    units = encoded_pairs(tiny_tokenizer)
    batch = collate_pairs(units, TASKS, tiny_tokenizer.pad_token_id, packed=packed)
    assert batch["input_ids"].shape[0] == (3 if packed else 6)
    out = step_loss(objective, policy, batch)
    out.loss.backward()
    ours = grads_of(policy)

    logp = alone_logps(policy, units)[0]
    with torch.no_grad():
        ref = alone_logps(objective.reference, units)[0]
    h = (logp[:, 0] - ref[:, 0]) - (logp[:, 1] - ref[:, 1])
    assert float(h.detach().abs().min()) > 1e-2  # the policy differs from the reference: the gradient is not trivial
    expected = task_weighted(published(kind, beta)(h))
    expected.backward()
    assert float(out.loss.detach()) == pytest.approx(float(expected), abs=1e-5, rel=1e-5)
    assert_same_grads(ours, grads_of(policy))
    # the metrics: rewards beta * (logp - ref), summed over the micro-batch's pairs
    rewards = beta * torch.stack([logp[:, 0] - ref[:, 0], logp[:, 1] - ref[:, 1]], 1).detach()
    expected_metrics = [float((rewards[:, 0] > rewards[:, 1]).sum()), float((rewards[:, 0] - rewards[:, 1]).sum()),
                        float(logp[:, 0].sum()), float(logp[:, 1].sum())]
    assert out.metric_sums.tolist() == pytest.approx(expected_metrics, abs=1e-4)


def test_orpo_loss_and_gradient_equal_the_published_formula(tiny_model_dir, tiny_tokenizer, tmp_path):
    lam = 0.25
    cfg = make_cfg(tiny_model_dir, [str(tmp_path)], tmp_path / "o", objective="orpo", orpo_lambda=lam,
                   task_weights=WEIGHTS)
    policy = perturbed(tiny_model_dir)
    units = encoded_pairs(tiny_tokenizer)
    out = step_loss(ORPOObjective(cfg, 2, chunked=True), policy,
                    collate_pairs(units, TASKS, tiny_tokenizer.pad_token_id, packed=False))
    out.loss.backward()
    ours = grads_of(policy)

    logp, n = alone_logps(policy, units)
    mean = logp / n
    p = torch.exp(mean)
    log_odds = torch.log(p) - torch.log1p(-p)
    nll_chosen = -mean[:, 0]  # the chosen answer's mean token cross entropy
    expected = task_weighted(nll_chosen - lam * torch.log(torch.sigmoid(log_odds[:, 0] - log_odds[:, 1])))
    expected.backward()
    assert float(out.loss.detach()) == pytest.approx(float(expected), abs=1e-5, rel=1e-5)
    assert_same_grads(ours, grads_of(policy))


@pytest.mark.parametrize("packed", [False, True])
def test_reward_model_pairwise_loss_reads_each_sequence_at_its_last_token(tiny_model_dir, tiny_tokenizer, tmp_path,
                                                                         packed):
    from transformers import AutoModelForSequenceClassification

    cfg = make_cfg(tiny_model_dir, [str(tmp_path)], tmp_path / "o", objective="reward", task_weights=WEIGHTS,
                   padding_mode="pack" if packed else "padding")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1, dtype=torch.float32)
    units = encoded_pairs(tiny_tokenizer)
    objective = RewardObjective(cfg, 2, chunked=True)
    out = step_loss(objective, model, objective.collate(units, TASKS, tiny_tokenizer.pad_token_id, None))
    out.loss.backward()
    ours = grads_of(model)

    # plain transformers, one unpadded sequence at a time: its own pooling reads the last token
    scores = torch.stack([model(input_ids=torch.tensor(ids)[None]).logits[0, 0] for unit in units
                          for ids, _ in unit]).view(-1, 2)
    expected = task_weighted(-torch.log(torch.sigmoid(scores[:, 0] - scores[:, 1])))
    expected.backward()
    assert float(out.loss.detach()) == pytest.approx(float(expected), abs=1e-5)
    assert_same_grads(ours, grads_of(model))


# ---- in the loop ---------------------------------------------------------------------------------------------------

def write_pair_tasks(root, sizes=(16, 10)) -> list[str]:
    paths = []
    for k, n in enumerate(sizes):
        folder = os.path.join(str(root), f"task{k}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "pairs.jsonl"), "w") as f:
            for i in range(n):
                if k == 0:
                    line = {"prompt": f"add {i} to x", "chosen": f"def add_{i}(x):\n    return x + {i}",
                            "rejected": "The quick brown fox " * (1 + i % 3)}
                else:
                    line = {"messages": [{"role": "user", "content": f"Write a function {i}."}],
                            "chosen": f"assert f({i}) == {2 * i}", "rejected": f"def add_{i}(a, b):\n    return a"}
                f.write(json.dumps(line) + "\n")
        paths.append(folder)
    return paths


def pair_cfg(model_dir, data, out, **over):
    base = dict(objective="dpo", dpo_beta=0.5, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                max_train_steps=3, data_split="75,25,0", learning_rate=1e-2)
    base.update(over)
    return make_cfg(model_dir, data, out, **base)


LORA = dict(peft_type="lora", lora_rank=4, lora_alpha=8, lora_dropout=0.1)


@pytest.mark.parametrize("how", ["lora", "full", "full_precomputed"])
def test_dpo_starts_at_ln2_because_the_policy_is_the_reference(tiny_model_dir, tmp_path, how, one_thread):
    from mftcoder.trainer.loop import setup, train_step

    over = {"lora": LORA, "full": {}, "full_precomputed": {"precompute_reference": True}}[how]
    run, state = setup(pair_cfg(tiny_model_dir, write_pair_tasks(tmp_path / "d"), tmp_path / "o", **over))
    try:
        record = train_step(run, state)
        tol = 1e-6 if how != "full_precomputed" else 2e-5  # precomputed in other batches: float32 rounding
        assert record["loss"] == pytest.approx(LN2, abs=tol)
        assert all(v == pytest.approx(LN2, abs=tol) for v in record["task_loss"].values())
        assert record["reward_margin"] == pytest.approx(0.0, abs=tol)
        assert record["chosen_logp"] < 0 and record["rejected_logp"] < 0
        assert (run.objective.reference is not None) == (how == "full")  # no copy held when precomputed / LoRA
    finally:
        run.metrics.close()
        run.acc.end_training()


def compare_records(a: list[dict], b: list[dict], tol=2e-5):
    assert [(r["step"], r.get("split")) for r in a] == [(r["step"], r.get("split")) for r in b]
    for x, y in zip(a, b):
        for key in ("loss", "grad_norm", "reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp"):
            if key in x:
                assert y[key] == pytest.approx(x[key], abs=tol, rel=tol), (key, x["step"])
        for key in ("task_loss", "task_reward_accuracy", "task_reward_margin"):
            if key in x:
                assert y[key] == pytest.approx(x[key], abs=tol, rel=tol), (key, x["step"])


@pytest.mark.parametrize("mode", ["case3", "coba"])
def test_micro_batch_times_accumulation_changes_nothing(tiny_model_dir, tmp_path, mode, one_thread):
    from mftcoder.trainer.loop import train

    data = write_pair_tasks(tmp_path / "d")
    extra = dict(weighted_loss_mode=mode, evaluation_steps=2, **{**LORA, "lora_dropout": 0.0})
    if mode == "coba":
        extra.update(coba_warmup_steps=1, coba_history_length=2)
    else:
        extra.update(task_weights=WEIGHTS)
    runs = []
    for micro, accum in ((4, 1), (1, 4)):
        cfg = pair_cfg(tiny_model_dir, data, tmp_path / f"o{micro}", per_device_train_batch_size=micro,
                       gradient_accumulation_steps=accum, **extra)
        train(cfg)
        runs.append(read_records(cfg.output_dir))
    compare_records(*runs)
    assert len(valid_records(runs[0])) >= 2 and "task_reward_accuracy" in valid_records(runs[0])[-1]


def test_precomputed_reference_equals_the_reference_on_the_fly_and_is_kept(tiny_model_dir, tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mftcoder.trainer.loop import train

    data = write_pair_tasks(tmp_path / "d")
    runs = []
    for pre in (False, True):
        cfg = pair_cfg(tiny_model_dir, data, tmp_path / f"o{pre}", precompute_reference=pre, evaluation_steps=2,
                       checkpointing_steps=2, tb_dir=str(tmp_path / f"tb{pre}"), **LORA)
        train(cfg)
        runs.append(read_records(cfg.output_dir))
    compare_records(*runs)
    out = tmp_path / "oTrue"
    saved = np.load(out / "checkpoint-2" / "precomputed.npy")
    cache_files = [f for f in os.listdir(out / "cache" / os.listdir(out / "cache")[0]) if f.startswith("precomputed-")]
    assert len(cache_files) == 1 and saved.shape == (2 * 26,) and (saved < 0).all()  # every sample's log-prob
    # the scalars reach TensorBoard too
    acc = EventAccumulator(str(tmp_path / "tbTrue"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/reward_accuracy", "train/reward_margin", "train/chosen_logp", "train/rejected_logp",
                "valid/task_reward_accuracy/task0", "valid/task_reward_margin/task1"):
        assert tag in tags, (tag, sorted(tags))
    steps = train_records(runs[1])
    assert {e.step: e.value for e in acc.Scalars("train/reward_margin")} == pytest.approx(
        {r["step"]: r["reward_margin"] for r in steps}, rel=1e-5)


# ---- config --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("over, message", [
    ({"dpo_beta": 0.2}, "dpo_beta applies only to objective 'dpo', not 'sft'"),
    ({"objective": "orpo", "precompute_reference": True}, "precompute_reference applies only to objective 'dpo'"),
    ({"objective": "dpo", "orpo_lambda": 0.5}, "orpo_lambda applies only to objective 'orpo', not 'dpo'"),
    ({"objective": "reward", "reference_model_path": "/x"}, "reference_model_path applies only to objective 'dpo'"),
    ({"objective": "dpo", "tokenize_mode": "pretrain"}, "tokenize_mode='pretrain' cannot be combined with objective"),
    ({"objective": "dpo", "dpo_loss": "kto"}, "dpo_loss"),
    ({"objective": "ppo"}, "objective"),
])
def test_keys_of_another_objective_are_refused_by_name(tiny_model_dir, tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(tiny_model_dir, [str(tmp_path)], tmp_path / "o", **over)


def test_a_saved_config_with_every_key_at_its_default_loads_again(tiny_model_dir, tmp_path):
    from mftcoder.config import parse_config

    for objective in ("sft", "orpo", "reward"):
        cfg = make_cfg(tiny_model_dir, [str(tmp_path)], tmp_path / "o", objective=objective)
        assert parse_config(cfg.model_dump(mode="json")) == cfg  # a checkpoint's train_config.json


def test_a_missing_reference_model_is_refused_before_anything_loads(tiny_model_dir, tmp_path):
    from mftcoder.config import check_environment

    cfg = make_cfg(tiny_model_dir, [str(tmp_path)], tmp_path / "o", objective="dpo",
                   reference_model_path=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"^reference_model_path: '.*nowhere' is not a directory"):
        check_environment(cfg)
    cfg.reference_model_path = "builtin:llama"
    with pytest.raises(ConfigError, match="reference_model_path: 'builtin:llama' is not a built-in model"):
        check_environment(cfg)


def test_a_reward_model_on_an_architecture_without_a_scalar_head_is_refused(tiny_model_dir, tmp_path):
    from transformers import CodeGenConfig, CodeGenForCausalLM

    from mftcoder.model.load import load_model

    CodeGenForCausalLM(CodeGenConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=64, rotary_dim=8,
                                     bos_token_id=0, eos_token_id=0)).save_pretrained(str(tmp_path / "codegen"))
    cfg = make_cfg(str(tmp_path / "codegen"), [str(tmp_path)], tmp_path / "o", objective="reward")
    with pytest.raises(ConfigError, match="objective 'reward' needs a sequence-classification class"):
        load_model(cfg, head="sequence_classification")


def test_a_reference_that_cannot_be_sharded_is_refused_with_the_fix(tiny_model_dir, tmp_path):
    cfg = make_cfg(tiny_model_dir, [str(tmp_path)], tmp_path / "o", objective="dpo")
    assert reference_source(cfg, sharded=False) == "copy"
    with pytest.raises(ConfigError, match="set precompute_reference: true"):
        reference_source(cfg, sharded=True)
    pre = make_cfg(tiny_model_dir, [str(tmp_path)], tmp_path / "o", objective="dpo", precompute_reference=True)
    assert reference_source(pre, sharded=True) == "policy"
    lora = make_cfg(tiny_model_dir, [str(tmp_path)], tmp_path / "o", objective="dpo", **LORA)
    assert reference_source(lora, sharded=True) == "adapter"
    other = make_cfg(tiny_model_dir, [str(tmp_path)], tmp_path / "o", objective="dpo", reference_model_path="/else",
                     precompute_reference=True)
    with pytest.raises(ConfigError, match="drop reference_model_path"):
        reference_source(other, sharded=True)
