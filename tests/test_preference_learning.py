"""Preference training learns, end to end on the tiny model: DPO, ORPO and reward runs on two synthetic tasks reach
held-out reward accuracy >= 0.9 on every task; the saved reward model scores pairs with plain transformers exactly as
training did; DPO / ORPO / reward adapters merge with `merge_adapter` into models equal to base + adapter."""
import json
import os

import pytest
import torch

from mftcoder.merge import merge_adapter
from train_helpers import make_cfg, read_records, valid_records

# task "arith": the chosen answer applies the operator the prompt names, the rejected one another operator (the
# answers differ in one token, so the model must read the prompt); task "code_not_prose": code vs prose.
OPERATIONS = (("add {i} to x", "+"), ("subtract {i} from x", "-"), ("multiply x by {i}", "*"))
PAIRS_PER_TASK = 100  # data_split 80/20 holds out 27 and 21 pairs: 0.9 allows two misses per task
LORA = dict(peft_type="lora", lora_rank=8, lora_alpha=16, lora_dropout=0.0)
# Settings tuned on this data: with them every run reached accuracy 1.0 on both tasks for each of the seeds 1-8 and
# 1234 (each run 2-8 s on one thread). Full reward training at lr 1e-2 for 4 epochs fell to 0.63-0.85 on "arith" for
# some seeds, hence its smaller rate and more epochs.
RUNS = {
    "dpo_lora": dict(objective="dpo", learning_rate=1e-2, num_train_epochs=3, **LORA),
    "orpo_full": dict(objective="orpo", orpo_lambda=0.5, learning_rate=1e-2, num_train_epochs=4),
    # the tiny model's lm_head is random and LoRA's "all-linear" leaves it frozen: it is trained in full here
    "orpo_lora": dict(objective="orpo", orpo_lambda=0.5, learning_rate=1e-2, num_train_epochs=4,
                      modules_to_save=["lm_head"], **dict(LORA, lora_rank=16, lora_alpha=32)),
    "reward_full": dict(objective="reward", learning_rate=3e-3, num_train_epochs=10),
    "reward_lora": dict(objective="reward", learning_rate=5e-3, num_train_epochs=8, **LORA),
}


def _pair_lines(task: str) -> list[dict]:
    lines = []
    for i in range(PAIRS_PER_TASK):
        if task == "arith":
            words, op = OPERATIONS[i % 3]
            wrong = OPERATIONS[(i + 1) % 3][1]
            lines.append({"prompt": words.format(i=i), "chosen": f"def f(x):\n    return x {op} {i}",
                          "rejected": f"def f(x):\n    return x {wrong} {i}"})
        else:
            lines.append({"prompt": f"Write a function that returns {i}.", "chosen": f"def f_{i}():\n    return {i}",
                          "rejected": f"The quick brown fox number {i} jumps over the lazy dog."})
    return lines


TASKS = ("arith", "code_not_prose")


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("pairs")
    paths = []
    for task in TASKS:
        folder = root / task
        folder.mkdir()
        (folder / "pairs.jsonl").write_text("".join(json.dumps(line) + "\n" for line in _pair_lines(task)))
        paths.append(str(folder))
    return paths


@pytest.fixture(scope="module")
def runs(tiny_model_dir, pair_data, tmp_path_factory):
    """name -> (cfg, metrics records), each run trained once per module, when first asked for."""
    from mftcoder.trainer.loop import train

    done = {}

    def get(name):
        if name not in done:
            cfg = make_cfg(tiny_model_dir, pair_data, tmp_path_factory.mktemp(name), evaluation_steps=20,
                           **RUNS[name])
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("OMP_NUM_THREADS", "1")  # tiny models run fastest on one thread
                threads = torch.get_num_threads()
                try:
                    train(cfg)
                finally:
                    torch.set_num_threads(threads)
            done[name] = cfg, read_records(cfg.output_dir)
        return done[name]

    return get


# ---------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("name", list(RUNS))
def test_held_out_reward_accuracy_on_every_task(runs, name):
    cfg, records = runs(name)
    valid = valid_records(records)
    first, last = valid[0], valid[-1]
    assert first["step"] == 0 and last["step"] == max(r["step"] for r in records) >= 30
    assert set(last["task_reward_accuracy"]) == set(TASKS)
    for task in TASKS:
        assert last["task_reward_accuracy"][task] >= 0.9, (task, last)
        assert last["task_reward_margin"][task] > 0, (task, last)
        assert last["task_loss"][task] < first["task_loss"][task], (task, first, last)
    assert last["loss"] < 0.8 * first["loss"], (first, last)
    if cfg.objective == "dpo":  # policy == reference before training: every pair's loss is ln 2, none is right yet
        from mftcoder.objectives.reference import reference_source

        assert reference_source(cfg, sharded=False) == "adapter"  # the reference: the base with the adapter disabled
        assert first["loss"] == pytest.approx(0.6931471805599453, abs=1e-6)
        assert set(first["task_reward_accuracy"].values()) == {0.0}


# ---------------------------------------------------------------------------------------------- scoring pairs
def _valid_batch(cfg, packed: bool) -> dict:
    """Every held-out pair of every task in one batch, tokenised and collated by the reward objective as training
    does (the base's tokenizer with the run's template, not the saved one)."""
    from mftcoder.data.prepare import prepare_data
    from mftcoder.data.template import attach_chat_template, get_template
    from mftcoder.model.tokenizer import load_tokenizer
    from mftcoder.objectives import make_objective
    from mftcoder.trainer.batches import TrainBatches

    tokenizer = load_tokenizer(cfg.pretrained_model_path)
    attach_chat_template(tokenizer, get_template(cfg.template, tokenizer, cfg.role_markers))
    cfg = cfg.model_copy(update={"padding_mode": "pack" if packed else "padding"})
    data = prepare_data(cfg, tokenizer, progress=False, verbose=False, writes_stats=False)
    objective = make_objective("reward", cfg, len(data.tasks), chunked=False)
    batches = TrainBatches(data, cfg, 0, 1, tokenizer.pad_token_id, collate_fn=objective.collate,
                           samples_per_item=objective.samples_per_item)
    return batches.collate_items([("valid", unit) for unit in batches.eval_units()])


def _rendered_answers(tokenizer) -> dict:
    """token ids of prompt + answer rendered by the saved chat template -> (task, line, "chosen" | "rejected")."""
    found = {}
    for task in TASKS:
        for n, line in enumerate(_pair_lines(task)):
            for which in ("chosen", "rejected"):
                messages = [{"role": "user", "content": line["prompt"]},
                            {"role": "assistant", "content": line[which]}]
                text = tokenizer.apply_chat_template(messages, tokenize=False)
                ids = tokenizer(text, add_special_tokens=False).input_ids
                found[tuple(ids)] = (task, n, which)
    return found


def _plain_score(model, ids) -> float:
    with torch.no_grad():
        return float(model(torch.tensor([list(ids)])).logits[0, 0])


def _held_out_scores(model, tokenizer, batch) -> tuple[list, list]:
    """For every sample of `batch`: its rendering's (task, line, answer), and its plain transformers score."""
    rendered = _rendered_answers(tokenizer)
    keys, scores = [], []
    for s in range(batch["sample_task_ids"].numel()):
        ids = tuple(batch["input_ids"][batch["sample_ids"] == s].tolist())
        assert ids in rendered, f"sample {s}: training's tokens are not the chat template's rendering"
        keys.append(rendered[ids])
        scores.append(_plain_score(model, ids))
    return keys, scores


def _assert_ranks_held_out_pairs(keys, scores):
    """Chosen at even samples, rejected at odd ones, of the same line; >= 0.9 of pairs ranked right per task."""
    right = {task: [] for task in TASKS}
    for p in range(len(keys) // 2):
        (task, line, which), (task_r, line_r, which_r) = keys[2 * p], keys[2 * p + 1]
        assert (task, line, which) == (task_r, line_r, "chosen") and which_r == "rejected"
        right[task].append(scores[2 * p] > scores[2 * p + 1])
    for task, hits in right.items():
        assert len(hits) >= 15 and sum(hits) / len(hits) >= 0.9, (task, hits)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_saved_reward_model_scores_pairs_with_plain_transformers(runs, packed):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mftcoder.objectives.reward import sequence_rewards

    cfg, _ = runs("reward_full")
    model = AutoModelForSequenceClassification.from_pretrained(cfg.output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(cfg.output_dir)
    assert model.config.num_labels == 1 and type(model).__name__ == "LlamaForSequenceClassification"
    batch = _valid_batch(cfg, packed)
    keys, scores = _held_out_scores(model, tokenizer, batch)
    _assert_ranks_held_out_pairs(keys, scores)
    with torch.no_grad():
        trained = sequence_rewards(model, batch)
    torch.testing.assert_close(torch.tensor(scores), trained, atol=1e-4, rtol=0)


def _reward_adapter_model(base_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def test_reward_adapter_loads_with_peft_and_merges(runs, tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from mftcoder.objectives.reward import sequence_rewards

    cfg, _ = runs("reward_lora")
    adapter_config = json.load(open(os.path.join(cfg.output_dir, "adapter_config.json")))
    assert adapter_config["task_type"] == "SEQ_CLS"
    tokenizer = AutoTokenizer.from_pretrained(cfg.output_dir)
    batch = _valid_batch(cfg, packed=False)
    on_base = _reward_adapter_model(tiny_model_dir, cfg.output_dir)
    keys, adapter_scores = _held_out_scores(on_base, tokenizer, batch)
    _assert_ranks_held_out_pairs(keys, adapter_scores)  # the trained head came with the adapter, not a fresh one
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(adapter_scores), sequence_rewards(on_base, batch), atol=1e-4, rtol=0)

    merged_dir = merge_adapter(tiny_model_dir, cfg.output_dir, str(tmp_path / "merged"))
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    assert type(merged).__name__ == "LlamaForSequenceClassification" and merged.config.num_labels == 1
    assert not [n for n, _ in merged.named_modules() if "lora" in n.lower() or "modules_to_save" in n]
    _, merged_scores = _held_out_scores(merged, AutoTokenizer.from_pretrained(merged_dir), batch)
    torch.testing.assert_close(torch.tensor(merged_scores), torch.tensor(adapter_scores), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- merging
@pytest.mark.parametrize("name", ["dpo_lora", "orpo_lora"])
def test_preference_adapter_merges_like_an_sft_adapter(runs, tiny_model_dir, tmp_path, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, _ = runs(name)
    assert json.load(open(os.path.join(cfg.output_dir, "adapter_config.json")))["task_type"] == "CAUSAL_LM"
    merged_dir = merge_adapter(tiny_model_dir, cfg.output_dir, str(tmp_path / "merged"))
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(cfg.output_dir).chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "add 7 to x"}], tokenize=False,
                                         add_generation_prompt=True) + "def f(x):\n    return x + 7"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])

    def logits(model):
        with torch.no_grad():
            return model.eval()(ids).logits.float()

    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert type(merged).__name__ == "LlamaForCausalLM"
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), cfg.output_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.testing.assert_close(logits(merged), logits(adapter), atol=1e-4, rtol=0)
    assert (logits(merged) - logits(base)).abs().max() > 1e-2  # the adapter changed the model


def test_reward_adapter_without_its_head_is_refused(runs, tiny_model_dir, tmp_path):
    # the head is trained in full and saved with the adapter; without it the merge would keep a fresh random head
    import shutil

    from safetensors.torch import load_file, save_file

    cfg, _ = runs("reward_lora")
    broken = tmp_path / "headless"
    shutil.copytree(cfg.output_dir, broken, ignore=shutil.ignore_patterns("cache", "tensorboard"))
    weights = load_file(str(broken / "adapter_model.safetensors"))
    assert weights.pop("base_model.model.score.weight").shape == (1, 64)
    save_file(weights, str(broken / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="score.weight.*missing from the file"):
        merge_adapter(tiny_model_dir, str(broken), str(tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()
