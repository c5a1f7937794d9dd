"""The decoding engine's options against transformers' own generate on the tiny model, and the prompt reader
against the training renderer."""
import gzip
import json
import os
import subprocess
import sys

import pytest
import torch

from mftcoder.data.formats import parse_record
from mftcoder.data.template import get_template
from mftcoder.infer.engine import GenerationSettings, decode_batch, generate_texts, stop_token_ids
from mftcoder.infer.prompts import record_messages, render_messages
from mftcoder.jsonl import iter_json_objects
from mftcoder.model.inference import load_for_inference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["def add_1(a, b):\n", "The quick brown fox number 7 jumps", "def", "The quick"]


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    return load_for_inference(tiny_model_dir)


def _ids(tok, prompt):
    return tok(prompt, return_tensors="pt", add_special_tokens=False)


def _greedy(model, tok, **kw):
    return generate_texts(model, tok, PROMPTS, GenerationSettings(max_new_tokens=12, **kw), progress=False).texts


def test_top_k_one_sampling_is_greedy_and_top_k_changes_sampling(model_and_tok):
    model, tok = model_and_tok
    greedy = _greedy(model, tok)
    assert _greedy(model, tok, temperature=1.5, top_k=1, seed=3) == greedy
    wide = _greedy(model, tok, temperature=1.5, seed=3)
    assert wide != greedy  # sampling at 1.5 really wanders, so top_k=1 above is doing the work
    assert _greedy(model, tok, temperature=1.5, top_k=0, seed=3) == wide  # 0 = off: today's sampling unchanged


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_equals_transformers_and_changes_the_answer(model_and_tok, penalty):
    model, tok = model_and_tok
    changed = 0
    for prompt in PROMPTS:
        enc = _ids(tok, prompt)
        ref = model.generate(**enc, max_new_tokens=16, do_sample=False, repetition_penalty=penalty,
                             eos_token_id=None, pad_token_id=tok.pad_token_id)[0, enc.input_ids.shape[1]:].tolist()
        plain = model.generate(**enc, max_new_tokens=16, do_sample=False, eos_token_id=None,
                               pad_token_id=tok.pad_token_id)[0, enc.input_ids.shape[1]:].tolist()
        with torch.inference_mode():
            ours, _ = decode_batch(model, enc.input_ids, enc.attention_mask,
                                   GenerationSettings(max_new_tokens=16, repetition_penalty=penalty), [],
                                   lambda r, t: False)
        assert ours[0] == ref, prompt
        changed += ref != plain
    assert changed >= 2  # the penalty is not a no-op on this model


def test_repetition_penalty_ignores_padding_in_a_batch(model_and_tok):
    model, tok = model_and_tok
    settings = dict(max_new_tokens=12, repetition_penalty=1.3)
    batched = _greedy(model, tok, batch_size=4, repetition_penalty=1.3)
    single = generate_texts(model, tok, PROMPTS, GenerationSettings(batch_size=1, **settings), progress=False).texts
    assert batched == single


def _hf_beams(model, tok, prompt, beams, max_new_tokens, eos):
    enc = _ids(tok, prompt)
    out = model.generate(**enc, num_beams=beams, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                         pad_token_id=tok.pad_token_id)[0, enc.input_ids.shape[1]:].tolist()
    return out[:out.index(eos[0])] if eos and eos[0] in out else out


def test_beam_search_equals_transformers_and_one_beam_is_greedy(model_and_tok):
    model, tok = model_and_tok
    assert _greedy(model, tok, num_beams=1) == _greedy(model, tok)
    eos = stop_token_ids(model, tok)
    beams = generate_texts(model, tok, PROMPTS, GenerationSettings(max_new_tokens=12, num_beams=3, batch_size=1),
                           progress=False)
    for prompt, (text,) in zip(PROMPTS, beams.texts):
        ref = tok.decode(_hf_beams(model, tok, prompt, 3, 12, eos), skip_special_tokens=True)
        assert text == ref, prompt
    greedy = _greedy(model, tok)
    differs = sum(a != b for a, b in zip(beams.texts, greedy))
    assert differs >= 1  # beam search found other answers than greedy on this model


def test_beam_search_streams_its_answer_once(model_and_tok):
    model, tok = model_and_tok
    chunks = []
    out = generate_texts(model, tok, PROMPTS[:1], GenerationSettings(max_new_tokens=8, num_beams=2), progress=False,
                         on_text=chunks.append)
    assert chunks == [out.texts[0][0]]


@pytest.mark.parametrize("kwargs, match", [({"top_k": -1}, "top_k"), ({"repetition_penalty": 0}, "repetition_penalty"),
                                           ({"num_beams": 0}, "num_beams"),
                                           ({"num_beams": 2, "temperature": 0.5}, "beam search")])
def test_invalid_new_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationSettings(**kwargs)


# ------------------------------------------------------------------------------------------- one reader
ANSWER = "def f():\n    return 1"
TRAINING_LINES = {
    "sharegpt": {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                   {"from": "gpt", "value": ANSWER}]},
    "firefly": {"system": "S", "conversation": [{"human": "Q", "assistant": ANSWER}]},
    "alpaca": {"system": "S", "instruction": "Q", "input": "x = 1", "output": ANSWER},
    "messages": {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                              {"role": "assistant", "content": ANSWER}]},
    "chat_rounds": {"chat_rounds": [{"role": "system", "content": "S"}, {"role": "human", "content": "Q"},
                                    {"role": "bot", "content": ANSWER}]},
    "prompt/answer": {"system": "S", "prompt": "Q", "answer": ANSWER},
}


@pytest.mark.parametrize("name", sorted(TRAINING_LINES))
def test_a_training_line_is_a_prompt_rendered_as_training_renders_it(tiny_chat_model_dir, name):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    line = TRAINING_LINES[name]
    trained_text, _ = get_template("mftcoder", tok).render(parse_record(line, "t:1"))  # what training tokenises
    prompt = render_messages(tok, record_messages(line, "t:1"))
    assert trained_text == prompt + f"{ANSWER}\n{tok.eos_token}\n"  # the prompt is training's text up to the answer
    user = "Q\n\nx = 1" if name == "alpaca" else "Q"
    assert prompt == f"<s>system\nS\n<s>human\n{user}\n<s>bot\n"


def test_prompt_only_lines_and_refusals():
    assert record_messages({"instruction": "Q", "input": "x"}) == [{"role": "user", "content": "Q\n\nx"}]
    assert record_messages({"conversation": [{"human": "Q"}]}) == [{"role": "user", "content": "Q"}]
    with pytest.raises(ValueError, match="f.jsonl:4: a 'text' line is pretraining text"):
        record_messages({"text": "continue me"}, "f.jsonl:4")
    with pytest.raises(ValueError, match=r"f.jsonl:2: conversations\[0\] has unknown from 'robot'"):
        record_messages({"conversations": [{"from": "robot", "value": "x"}]}, "f.jsonl:2")


def _cli(args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mftcoder.infer.generate", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)


def test_cli_reads_every_training_format_with_a_bom_and_new_options(tiny_chat_model_dir, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [dict(v, id=k) for k, v in TRAINING_LINES.items()]
    inp.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in lines).encode())
    res = _cli(["--model", tiny_chat_model_dir, "--input", str(inp), "--output", str(out), "--max_new_tokens", "6",
                "--repetition_penalty", "1.2", "--top_k", "5", "--num_beams", "1", "--stop", "zzz", "--no_progress"])
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(TRAINING_LINES)
    alpaca = rows[list(TRAINING_LINES).index("alpaca")]
    assert alpaca["reference"] == ANSWER and alpaca["output"] != ANSWER  # the input's answer is kept, not replaced
    # the other five lines are the same conversation, so they get the same answer (greedy, one template)
    assert len({r["output"] for r in rows if r["id"] != "alpaca"}) == 1


def test_cli_names_the_line_of_bytes_that_are_not_utf8(tiny_chat_model_dir, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    res = _cli(["--model", tiny_chat_model_dir, "--input", str(inp), "--output", str(tmp_path / "o.jsonl")])
    assert res.returncode == 2 and f"{inp}:2: not valid UTF-8 (byte 0xe9" in res.stderr


def test_help_ends_with_a_runnable_example():
    for module in ("mftcoder.infer.generate", "mftcoder.infer.chat", "mftcoder.merge"):
        res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO,
                             timeout=120)
        assert res.returncode == 0
        last = res.stdout.strip().splitlines()
        assert "example:" in res.stdout and any(line.strip().startswith("mftcoder ") for line in last[-3:]), module
    gen = subprocess.run([sys.executable, "-m", "mftcoder.infer.generate", "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=120).stdout
    for flag in ("--repetition_penalty", "--top_k", "--num_beams", "--max_new_tokens", "--stop", "--force"):
        assert flag in gen


def test_every_jsonl_reader_takes_a_bom_gzip_and_names_bad_bytes(tmp_path):
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_json_objects(str(plain))) == [(1, {"a": 1}), (3, {"a": 2})]
    packed = tmp_path / "b.jsonl.gz"
    with gzip.open(packed, "wb") as f:
        f.write(b'\xef\xbb\xbf{"a": 1}\n')
    assert list(iter_json_objects(str(packed))) == [(1, {"a": 1})]
    bad = tmp_path / "c.jsonl"
    bad.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(ValueError, match=rf"{bad}:2: not valid UTF-8"):
        list(iter_json_objects(str(bad)))


def test_a_damaged_model_folder_is_one_clear_error(tiny_model_dir, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_model_dir, name), bare / name)
    with pytest.raises(ValueError, match=rf"no tokenizer files in '{bare}' \(needs one of: tokenizer.json"):
        load_for_inference(str(bare))
    (bare / "config.json").write_text('{"model_type": "llama",\n')
    with pytest.raises(ValueError, match=rf"{bare}/config.json:2: invalid JSON"):
        load_for_inference(str(bare))
