"""Fill-in-the-middle: sentinel resolution, the lossless character-level transform, its rates and determinism,
and `mftcoder generate --fim` on a tiny model whose tokenizer carries sentinels."""
import copy
import json
import math
import random
import shutil

import pytest

from mftcoder.data.fim import (FAMILIES, FimEncoder, FimSample, choose_mode, fim_prompt_ids, fim_reconstruct,
                               fim_sample, fim_split, fim_text, parse_fim_tokens, resolve_fim_tokens)
from mftcoder.testing import build_tokenizer

FAMILY = {f.name: f for f in FAMILIES}
STARCODER = FAMILY["starcoder"]
ALPHABET = "ab c\n\r\t{}()=:_éü日本語😀\u0301"  # CRLF pieces, a combining accent, astral emoji


@pytest.fixture(scope="module")
def base_tok():
    return build_tokenizer()


def _with_tokens(tok, tokens, special=True):
    """A copy of `tok` with `tokens` added, as special tokens or as plain added tokens."""
    tok = copy.deepcopy(tok)
    if special:
        tok.add_special_tokens({"additional_special_tokens": list(tokens)})
    else:
        tok.add_tokens(list(tokens))
    return tok


@pytest.fixture(scope="module")
def fim_tok(base_tok):
    return _with_tokens(base_tok, (STARCODER.prefix, STARCODER.middle, STARCODER.suffix))


def random_texts(n=300, seed=0):
    rng = random.Random(seed)
    fixed = ["", "x", "é", "\r\n", "a\r\nb\r\n", "日本語", "😀", "def f():\r\n    return 1\r\n"]
    return fixed + ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 60))) for _ in range(n)]


# ---------------------------------------------------------------------------------------------- sentinels
def test_registry_spellings_are_exact():
    deepseek = FAMILY["deepseek-coder"]
    assert [hex(ord(c)) for c in deepseek.prefix] == [hex(ord(c)) for c in "<\uff5cfim\u2581begin\uff5c>"]
    assert (deepseek.prefix, deepseek.suffix, deepseek.middle) == \
        ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>")
    assert (FAMILY["qwen2.5-coder"].prefix, FAMILY["qwen2.5-coder"].middle) == ("<|fim_prefix|>", "<|fim_middle|>")
    assert (FAMILY["codellama"].prefix, FAMILY["codellama"].suffix, FAMILY["codellama"].middle) == \
        ("\u2581<PRE>", "\u2581<SUF>", "\u2581<MID>")
    assert [f.name for f in FAMILIES] == ["starcoder", "qwen2.5-coder", "deepseek-coder", "codellama"]


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
@pytest.mark.parametrize("special", [True, False])
def test_each_family_is_found_in_a_tokenizer_that_carries_it(base_tok, family, special):
    f = FAMILY[family]
    tok = _with_tokens(base_tok, (f.prefix, f.middle, f.suffix), special=special)
    found = resolve_fim_tokens(tok)
    assert found.family == family and found.strings == (f.prefix, f.middle, f.suffix)
    assert found.ids == tuple(tok.convert_tokens_to_ids(t) for t in (f.prefix, f.middle, f.suffix))
    assert len(base_tok) <= min(found.ids) and len(set(found.ids)) == 3  # the added ids, not pieces of text


def test_first_family_wins_and_configured_tokens_win_over_the_registry(base_tok):
    qwen = FAMILY["qwen2.5-coder"]
    tok = _with_tokens(base_tok, (qwen.prefix, qwen.middle, qwen.suffix, STARCODER.prefix, STARCODER.middle,
                                  STARCODER.suffix))
    assert resolve_fim_tokens(tok).family == "starcoder"
    configured = {"prefix": qwen.prefix, "middle": qwen.middle, "suffix": qwen.suffix}
    got = resolve_fim_tokens(tok, configured)
    assert got.family == "configured" and got.strings == (qwen.prefix, qwen.middle, qwen.suffix)
    assert got.middle_id == tok.convert_tokens_to_ids(qwen.middle)
    # any single token of the tokenizer may be configured, added or not
    plain = resolve_fim_tokens(base_tok, {"prefix": "<|im_start|>", "middle": "<|im_end|>", "suffix": "<|pad|>"})
    assert plain.ids == tuple(base_tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|pad|>"))


def test_configured_token_that_is_not_one_token_is_an_error_naming_the_role(fim_tok):
    bad = {"prefix": "<fim_prefix>", "middle": "<fim_mid>", "suffix": "<fim_suffix>"}
    with pytest.raises(ValueError, match=r"^fim_tokens\.middle '<fim_mid>' is not a single token .*extend-vocab"):
        resolve_fim_tokens(fim_tok, bad)
    with pytest.raises(ValueError, match=r"--fim_tokens\.suffix"):
        resolve_fim_tokens(fim_tok, {**bad, "middle": "<fim_middle>", "suffix": "hello world"}, key="--fim_tokens")
    with pytest.raises(ValueError, match="three different tokens"):
        resolve_fim_tokens(fim_tok, {**bad, "middle": "<fim_prefix>"})
    with pytest.raises(ValueError, match="exactly prefix, middle, suffix"):
        resolve_fim_tokens(fim_tok, {"prefix": "<fim_prefix>", "middle": "<fim_middle>"})


def test_missing_sentinels_error_says_how_to_fix(base_tok):
    with pytest.raises(ValueError) as e:
        resolve_fim_tokens(base_tok)
    msg = str(e.value)
    assert msg.startswith("the tokenizer has no fill-in-the-middle sentinel tokens")
    assert all(f.prefix in msg for f in FAMILIES)
    assert "set fim_tokens" in msg and "mftcoder extend-vocab" in msg and "--tokens" in msg and "fim_rate 0" in msg
    with pytest.raises(ValueError, match="no fill-in-the-middle"):
        FimEncoder(base_tok, None, fim_rate=0.5)


def test_parse_fim_tokens_json():
    assert parse_fim_tokens(None) is None
    value = {"prefix": "<a>", "middle": "<b>", "suffix": "<c>"}
    assert parse_fim_tokens(json.dumps(value)) == value
    with pytest.raises(ValueError, match="--fim_tokens must be a JSON object"):
        parse_fim_tokens("<a>,<b>,<c>")
    with pytest.raises(ValueError, match="--fim_tokens must map exactly"):
        parse_fim_tokens('{"prefix": "<a>", "middle": "<b>"}')


# ---------------------------------------------------------------------------------------------- the transform
def test_split_covers_every_pair_of_cut_points_uniformly():
    counts = {}
    rng = random.Random(0)
    for _ in range(6000):
        parts = fim_split("abc", rng)
        assert "".join(parts) == "abc"
        counts[tuple(map(len, parts))] = counts.get(tuple(map(len, parts)), 0) + 1
    # cuts (a, b) drawn independently from 0..3 and sorted: 4 pairs with a == b (p 1/16), 6 with a < b (p 2/16)
    assert len(counts) == 10
    for (p, m, s), c in counts.items():
        expected = 6000 * (1 if m == 0 else 2) / 16
        assert abs(c - expected) < 5 * math.sqrt(expected), ((p, m, s), c)


@pytest.mark.parametrize("mode", ["psm", "spm"])
def test_string_level_reconstruction_is_exact(fim_tok, mode):
    tokens = resolve_fim_tokens(fim_tok)
    rng = random.Random(1)
    for text in random_texts():
        for _ in range(3):
            prefix, middle, suffix = fim_split(text, rng)
            sample = fim_text(prefix, middle, suffix, mode, tokens, eos="<|endoftext|>")
            assert sample.startswith(tokens.prefix + (tokens.suffix if mode == "spm" else ""))
            assert fim_reconstruct(sample, tokens, eos="<|endoftext|>") == text
    assert fim_text("P", "M", "S", "psm", tokens) == "<fim_prefix>P<fim_suffix>S<fim_middle>M"
    assert fim_text("P", "M", "S", "spm", tokens) == "<fim_prefix><fim_suffix>S<fim_middle>PM"


@pytest.mark.parametrize("spm_rate, mode", [(0.0, "psm"), (1.0, "spm")])
def test_token_level_layout_and_reconstruction_are_exact(fim_tok, spm_rate, mode):
    enc = FimEncoder(fim_tok, None, fim_rate=1.0, fim_spm_rate=spm_rate, seed=7)
    pre, mid, suf = enc.tokens.ids
    eos = fim_tok.eos_token_id

    def ids(s):
        return fim_tok(s, add_special_tokens=False)["input_ids"]

    for text in random_texts(200, seed=3):
        got, got_mode = enc.encode(text)
        s = fim_sample(text, 7, 1.0, spm_rate)
        assert got_mode == mode == s.mode and s.prefix + s.middle + s.suffix == text
        if mode == "psm":
            assert got == [pre, *ids(s.prefix), suf, *ids(s.suffix), mid, *ids(s.middle), eos]
        else:
            assert got == [pre, suf, *ids(s.suffix), mid, *ids(s.prefix), *ids(s.middle), eos]
        assert sum(t in (pre, mid, suf) for t in got) == 3  # sentinels never merge with text
        assert fim_reconstruct(got, enc.tokens, fim_tok) == text
        assert fim_tok.decode(got, skip_special_tokens=False) == fim_text(s.prefix, s.middle, s.suffix, mode,
                                                                          enc.tokens, fim_tok.eos_token)


def test_prompt_ids_are_psm_without_the_middle(fim_tok):
    tokens = resolve_fim_tokens(fim_tok)
    pre, mid, suf = tokens.ids
    code = fim_tok("x = 1", add_special_tokens=False)["input_ids"]
    assert fim_prompt_ids(fim_tok, tokens, "x = 1", "") == [pre, *code, suf, mid]
    assert fim_prompt_ids(fim_tok, tokens, "", "x = 1") == [pre, suf, *code, mid]
    # the PSM training sample of a document begins with exactly this prompt
    enc = FimEncoder(fim_tok, None, fim_rate=1.0, fim_spm_rate=0.0, seed=0)
    text = "def add_1(a, b):\n    return a + b + 1\n"
    s = fim_sample(text, 0, 1.0, 0.0)
    ids, _ = enc.encode(text)
    prompt = fim_prompt_ids(fim_tok, tokens, s.prefix, s.suffix)
    assert ids[:len(prompt)] == prompt


def test_rate_zero_is_always_plain_text_plus_eos(fim_tok):
    enc = FimEncoder(fim_tok, None, fim_rate=0.0, seed=1)
    for text in random_texts(100):
        ids, mode = enc.encode(text)
        assert mode == "plain" and ids == fim_tok(text, add_special_tokens=False)["input_ids"] + [fim_tok.eos_token_id]
        assert fim_reconstruct(ids, enc.tokens, fim_tok) == text


def _within_binomial(count, n, p, sds=5.0):
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


def test_rates_choose_about_the_configured_shares():
    texts = [f"document {i}\n" for i in range(2000)]
    for rate in (0.0, 1.0):
        assert {fim_sample(t, 3, rate, 0.5).mode != "plain" for t in texts} == {rate == 1.0}
    modes = [fim_sample(t, 3, 0.5, 0.3).mode for t in texts]
    n_fim = sum(m != "plain" for m in modes)
    assert _within_binomial(n_fim, 2000, 0.5)
    assert _within_binomial(modes.count("spm"), n_fim, 0.3)
    assert {fim_sample(t, 3, 1.0, 0.0).mode for t in texts} == {"psm"}
    assert {fim_sample(t, 3, 1.0, 1.0).mode for t in texts} == {"spm"}
    # a higher rate only adds FIM documents; the order a FIM document gets does not depend on the rate
    more = [fim_sample(t, 3, 0.7, 0.3).mode for t in texts]
    assert all(b == a for a, b in zip(modes, more) if a != "plain")
    assert _within_binomial(sum(m != "plain" for m in more), 2000, 0.7)


def test_choice_is_deterministic_per_document_and_seed(fim_tok):
    texts = random_texts(200, seed=5)
    a = FimEncoder(fim_tok, None, fim_rate=0.5, seed=11)
    b = FimEncoder(fim_tok, None, fim_rate=0.5, seed=11)
    forward = [a.encode(t) for t in texts]
    backward = [b.encode(t) for t in reversed(texts)][::-1]  # another order, another encoder: the same ids
    assert forward == backward
    other = [FimEncoder(fim_tok, None, fim_rate=0.5, seed=12).encode(t) for t in texts]
    assert other != forward
    assert sum(x[1] != y[1] for x, y in zip(forward, other)) > 20  # the seed changes choices, not just one document
    # pinned: the choice is a fixed function of (seed, text), so caches stay valid across versions and machines
    doc = "def add(a, b):\n    return a + b\n"
    assert fim_sample(doc, 2, 0.5, 0.5) == FimSample("spm", "def ad", "d(a, b):\n    retu", "rn a + b\n")
    assert fim_sample(doc, 1234, 0.5, 0.5) == FimSample("plain", doc, "", "")


def test_choose_mode_edges():
    class Fixed(random.Random):
        def __init__(self, values):
            super().__init__(0)
            self.values = list(values)

        def random(self):
            return self.values.pop(0)

    assert choose_mode(Fixed([0.0, 0.0]), 0.0, 1.0) == "plain"
    assert choose_mode(Fixed([0.999, 0.999]), 1.0, 0.0) == "psm"
    assert choose_mode(Fixed([0.2, 0.1]), 0.5, 0.2) == "spm"


# ---------------------------------------------------------------------------------------------- generate --fim
@pytest.fixture(scope="module")
def fim_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with StarCoder sentinels added to its tokenizer and its embeddings resized."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = str(tmp_path_factory.mktemp("tiny-fim"))
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_special_tokens({"additional_special_tokens": [STARCODER.prefix, STARCODER.middle, STARCODER.suffix]})
    model = AutoModelForCausalLM.from_pretrained(out)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _generate(args, capsys):
    from mftcoder.infer.generate import main

    rc = main(args)
    return rc, capsys.readouterr().err


def _write_lines(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_generate_fim_builds_the_psm_prompt_and_fills_the_hole(fim_model_dir, tmp_path, capsys):
    from mftcoder.infer.engine import GenerationSettings, generate_texts
    from mftcoder.infer.generate import fim_prompts_of, read_jsonl
    from mftcoder.model.inference import load_for_inference

    rows = [{"id": 1, "prefix": "def add_3(a, b):\n    ", "suffix": "\n", "middle": "return a + b + 3"},
            {"id": 2, "prefix": "", "suffix": "The quick brown fox"}]
    inp, out = _write_lines(tmp_path / "holes.jsonl", rows), str(tmp_path / "filled.jsonl")
    rc, err = _generate(["--model", fim_model_dir, "--input", inp, "--output", out, "--fim", "--max_new_tokens", "8",
                         "--batch_size", "2", "--no_progress"], capsys)
    assert rc == 0, err
    lines = [json.loads(line) for line in open(out, encoding="utf-8")]
    model, tok = load_for_inference(fim_model_dir)
    prompts, tokens = fim_prompts_of(read_jsonl(inp), inp, tok)
    pre, mid, suf = (tok.convert_tokens_to_ids(t) for t in (STARCODER.prefix, STARCODER.middle, STARCODER.suffix))

    def ids(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    assert tokens.family == "starcoder" and tok.bos_token_id not in (prompts[0][0], prompts[1][0])
    assert prompts[0] == [pre, *ids("def add_3(a, b):\n    "), suf, *ids("\n"), mid]
    assert prompts[1] == [pre, suf, *ids("The quick brown fox"), mid]
    expected = generate_texts(model, tok, prompts, GenerationSettings(max_new_tokens=8, stop=tokens.stops),
                              progress=False)
    assert [line["middle"] for line in lines] == [t[0] for t in expected.texts]
    assert [line["output"] for line in lines] == [line["middle"] for line in lines]
    assert [line["id"] for line in lines] == [1, 2] and lines[1]["suffix"] == "The quick brown fox"
    assert lines[0]["reference"] == "return a + b + 3" and "reference" not in lines[1]  # an input middle is kept


@pytest.fixture(scope="module")
def sentinel_model_dir(tiny_model_dir, tmp_path_factory):
    """A tiny model whose sentinels are plain added tokens and whose every next token is a sentinel: lm_head is zero
    except the rows of <fim_middle> (+) and <fim_suffix> (-), so one of them always has the largest logit."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = str(tmp_path_factory.mktemp("tiny-sentinel"))
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_tokens([STARCODER.prefix, STARCODER.middle, STARCODER.suffix])
    model = AutoModelForCausalLM.from_pretrained(out)
    model.resize_token_embeddings(len(tok))
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.zero_()
        head[tok.convert_tokens_to_ids(STARCODER.middle)] = 10.0
        head[tok.convert_tokens_to_ids(STARCODER.suffix)] = -10.0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_generate_fim_stops_at_a_sentinel(sentinel_model_dir, tmp_path, capsys):
    rows = [{"prefix": "def f(", "suffix": "):\n"}, {"prefix": "a", "suffix": ""}]
    inp = _write_lines(tmp_path / "holes.jsonl", rows)
    out = str(tmp_path / "filled.jsonl")
    rc, err = _generate(["--model", sentinel_model_dir, "--input", inp, "--output", out, "--fim", "--max_new_tokens",
                         "6", "--no_progress"], capsys)
    assert rc == 0, err
    assert [json.loads(line)["middle"] for line in open(out)] == ["", ""]
    assert "generated 2 x 1 samples, 2 tokens" in err  # one sentinel each, then stop (not 6 tokens each)


def test_generate_fim_errors(tiny_model_dir, fim_model_dir, tmp_path, capsys):
    out = str(tmp_path / "out.jsonl")
    inp = _write_lines(tmp_path / "in.jsonl", [{"prefix": "a", "suffix": "b"}, {"prompt": "no hole"}])
    rc, err = _generate(["--model", "does-not-exist", "--input", inp, "--output", out, "--fim"], capsys)
    assert rc == 2 and f'error: {inp}:2: --fim needs string fields "prefix" and "suffix"' in err  # before loading
    inp = _write_lines(tmp_path / "in.jsonl", [{"prefix": "a", "suffix": "b"}])
    rc, err = _generate(["--model", tiny_model_dir, "--input", inp, "--output", out, "--fim"], capsys)
    assert rc == 2 and "no fill-in-the-middle sentinel tokens" in err and "set --fim_tokens" in err
    assert "fim_rate" not in err
    bad = json.dumps({"prefix": "<fim_prefix>", "middle": "<fim_middle>", "suffix": "<suffix>"})
    rc, err = _generate(["--model", fim_model_dir, "--input", inp, "--output", out, "--fim", "--fim_tokens", bad],
                        capsys)
    assert rc == 2 and "error: --fim_tokens.suffix '<suffix>' is not a single token" in err
    rc, err = _generate(["--model", fim_model_dir, "--input", inp, "--output", out, "--fim", "--raw"], capsys)
    assert rc == 2 and "leave out --raw" in err
