"""The terminal chat: the session logic, then the real CLI driven through a pseudo-terminal with pexpect."""
import os
import re
import shutil
import sys

import pytest

from mftcoder.data.template import attach_chat_template, get_template
from mftcoder.infer.chat import ChatSession
from mftcoder.infer.engine import GenerationSettings
from mftcoder.model.inference import load_for_inference as load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATS = re.compile(r"\(context (\d+) tokens, (\d+) new tokens, [\d.]+ tokens/s\)")


ANSWER = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def chat_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a chat template, taught in a few steps to answer "hello" with ANSWER, so that its
    answers are words (streamed at word boundaries) and show the template really reaches the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = str(tmp_path_factory.mktemp("tiny-chat"))
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    attach_chat_template(tok, get_template("mftcoder", tok))  # what training saves
    tok.save_pretrained(out)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "hello"}, {"role": "assistant", "content": ANSWER}],
                                   tokenize=False)
    prompt_len = len(tok(tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                                 add_generation_prompt=True), add_special_tokens=False).input_ids)
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    labels = ids.clone()
    labels[:, :prompt_len] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def session(chat_model_dir):
    model, tok = load_model(chat_model_dir)
    return ChatSession(model, tok, GenerationSettings(max_new_tokens=16))


def test_history_is_kept_rendered_with_the_template_and_reset(session):
    session.reset()
    chunks = []
    first, s1 = session.send("hello", on_text=chunks.append)
    assert first.strip() == ANSWER  # the prompt was rendered exactly as the model was taught
    assert len(chunks) > 3 and "".join(chunks) == first  # streamed piece by piece, nothing lost
    eos = session.tokenizer.eos_token
    assert session.render() == f"<s>human\nhello\n<s>bot\n{first.rstrip()}\n{eos}\n<s>bot\n"  # + generation prompt
    second, s2 = session.send("hello")
    assert s2.context_tokens > s1.context_tokens + 5
    assert session.render().startswith(f"<s>human\nhello\n<s>bot\n{first.rstrip()}\n")
    assert len(session.messages) == 4
    session.reset()
    again, s3 = session.send("hello")
    assert again == first and s3.context_tokens == s1.context_tokens  # greedy, same empty history


def test_oldest_turns_are_dropped_to_fit_the_context(chat_model_dir):
    model, tok = load_model(chat_model_dir)
    small = ChatSession(model, tok, GenerationSettings(max_new_tokens=8), max_context=60)
    stats = [small.send("The quick brown fox number 1")[1] for _ in range(4)]
    assert any(s.dropped_turns for s in stats)
    assert all(s.context_tokens + 8 <= 60 for s in stats)
    assert len(small.messages) < 8


def test_chat_cli_through_a_pseudo_terminal(chat_model_dir):
    pexpect = pytest.importorskip("pexpect")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    child = pexpect.spawn(sys.executable, ["-m", "mftcoder.infer.chat", "--model", chat_model_dir,
                                           "--max_new_tokens", "16"], cwd=REPO, env=env, encoding="utf-8", timeout=180)
    try:
        child.expect("/reset clears the conversation")
        child.expect(">>> ")

        def ask(text):
            child.sendline(text)
            child.expect(STATS)
            answer_block = child.before
            context = int(child.match.group(1))
            child.expect(">>> ")
            # what was printed between the echoed input and the stats line is the streamed answer
            return answer_block.split(text, 1)[1].strip(), context

        a1, c1 = ask("hello")
        assert a1 == ANSWER
        a2, c2 = ask("hello")
        assert c2 > c1  # the second prompt carries the first exchange
        child.sendline("/reset")
        child.expect(r"\(conversation cleared\)")
        child.expect(">>> ")
        a3, c3 = ask("hello")
        assert c3 == c1 and a3 == a1
        child.sendline("/nonsense")
        child.expect("unknown command /nonsense")
        child.expect(">>> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_chat_cli_without_a_template_says_what_to_do(tiny_model_dir):
    import subprocess

    res = subprocess.run([sys.executable, "-m", "mftcoder.infer.chat", "--model", tiny_model_dir], input="", text=True,
                         capture_output=True, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=180)
    assert res.returncode == 2 and "no chat_template" in res.stderr
