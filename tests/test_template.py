import copy

import jinja2
import pytest
from transformers import AutoTokenizer

from mftcoder.data.formats import Conversation, Turn
from mftcoder.data.template import TemplateError, attach_chat_template, get_template

EOS = "<|endoftext|>"

# SmolLM2-style ChatML with a default system prompt: a realistic "tokenizer" template.
OWN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CUSTOM_MARKERS = {"system": "### System 'S' \"q\"\n", "user": "\n### Üser:\n\t", "assistant": "### {{bot}} %}\\n:\n"}


def chat(system: bool, rounds: int) -> Conversation:
    turns = [Turn("system", "You write Python.")] if system else []
    for i in range(1, rounds + 1):
        turns += [Turn("user", f"Write add_{i}(a, b).\n"), Turn("assistant", f"def add_{i}(a, b):\n    return a + b\n")]
    return Conversation(tuple(turns))


def trained_text(tok, enc) -> str:
    return tok.decode([i for i, m in zip(enc.input_ids, enc.loss_mask) if m])


@pytest.fixture
def tok(tiny_tokenizer):
    """A private copy: attaching a template must not leak into other tests."""
    return copy.deepcopy(tiny_tokenizer)


# ---------------------------------------------------------------- the mftcoder template, exactly as MFTCoder trains

SQA = Conversation((Turn("system", "S"), Turn("user", "Q1"), Turn("assistant", "A1"),
                    Turn("user", "Q2"), Turn("assistant", "A2")))


def test_mftcoder_renders_the_exact_training_string(tiny_tokenizer):
    text, spans = get_template("mftcoder", tiny_tokenizer).render(SQA)
    assert text == f"<s>system\nS\n<s>human\nQ1\n<s>bot\nA1\n{EOS}\n<s>human\nQ2\n<s>bot\nA2\n{EOS}\n"
    assert [text[a:b] for a, b in spans] == [f"A1\n{EOS}", f"A2\n{EOS}"]


def test_mftcoder_trains_every_answer_its_newline_and_eos_and_nothing_else(tiny_tokenizer):
    enc = get_template("mftcoder", tiny_tokenizer).encode(SQA)
    assert len(enc.input_ids) == len(enc.loss_mask)
    assert trained_text(tiny_tokenizer, enc) == f"A1\n{EOS}A2\n{EOS}"
    # each eos is trained and the "\n" right after it is not
    eos_at = [i for i, t in enumerate(enc.input_ids) if t == tiny_tokenizer.eos_token_id]
    assert len(eos_at) == 2
    assert [enc.loss_mask[i] for i in eos_at] == [1, 1]
    assert [tiny_tokenizer.decode([enc.input_ids[i + 1]]) for i in eos_at] == ["\n", "\n"]
    assert [enc.loss_mask[i + 1] for i in eos_at] == [0, 0]
    # the ids are the whole string tokenised once: no BOS, no per-segment drift
    text, _ = get_template("mftcoder", tiny_tokenizer).render(SQA)
    assert enc.input_ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_custom_role_markers_partial_override(tiny_tokenizer):
    template = get_template("mftcoder", tiny_tokenizer, role_markers={"user": "User: ", "assistant": "Bot: "})
    text, _ = template.render(SQA)
    assert text == f"<s>system\nS\nUser: Q1\nBot: A1\n{EOS}\nUser: Q2\nBot: A2\n{EOS}\n"
    assert trained_text(tiny_tokenizer, template.encode(SQA)) == f"A1\n{EOS}A2\n{EOS}"
    assert template.generation_prompt([{"role": "user", "content": "Q"}]) == "User: Q\nBot: "


def test_text_kind_is_all_trained_and_ends_with_eos(tok):
    tok.chat_template = OWN_TEMPLATE
    sample = Conversation((Turn("text", "def f():\n    return 1\n"),), kind="text")
    for name in ("mftcoder", "chatml", "tokenizer"):
        template = get_template(name, tok)
        assert template.render(sample)[0] == f"def f():\n    return 1\n{EOS}"
        enc = template.encode(sample)
        assert enc.loss_mask == [1] * len(enc.input_ids)
        assert enc.input_ids[-1] == tok.eos_token_id
        assert tok.decode(enc.input_ids) == f"def f():\n    return 1\n{EOS}"


# ---------------------------------------------------------------- the saved chat_template renders training ids

def _template(name, tok):
    if name == "mftcoder-custom":
        return get_template("mftcoder", tok, role_markers=CUSTOM_MARKERS)
    if name == "mftcoder-<s>-special":  # Llama-like: "<s>" is a special token, so both paths must split it the same
        tok.add_tokens(["<s>"], special_tokens=True)
        return get_template("mftcoder", tok)
    if name == "tokenizer":
        tok.chat_template = OWN_TEMPLATE
    return get_template(name, tok)


def _assert_same_as_apply_chat_template(tok, template, conv):
    messages = conv.messages()
    text, _ = template.render(conv)
    enc = template.encode(conv)
    assert tok.apply_chat_template(messages, tokenize=False) == text
    out = tok.apply_chat_template(messages, tokenize=True)  # transformers 5: a BatchEncoding by default
    assert out["input_ids"] == enc.input_ids
    assert tok.apply_chat_template(messages, tokenize=True, return_dict=False) == enc.input_ids
    prompt = messages[:-1]
    assert tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == \
        template.generation_prompt(prompt)


@pytest.mark.parametrize("name", ["mftcoder", "mftcoder-custom", "mftcoder-<s>-special", "chatml", "tokenizer"])
@pytest.mark.parametrize("system, rounds", [(False, 1), (True, 1), (False, 3), (True, 3)])
def test_chat_template_reproduces_training_ids(tok, name, system, rounds):
    template = _template(name, tok)
    attach_chat_template(tok, template)
    assert tok.chat_template == template.jinja
    _assert_same_as_apply_chat_template(tok, template, chat(system, rounds))


@pytest.mark.parametrize("name", ["mftcoder", "mftcoder-custom", "chatml", "tokenizer"])
def test_saved_and_reloaded_tokenizer_keeps_the_template(tok, tmp_path, name):
    template = _template(name, tok)
    attach_chat_template(tok, template)
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.chat_template == template.jinja
    for system, rounds in [(True, 3), (False, 1)]:
        _assert_same_as_apply_chat_template(reloaded, template, chat(system, rounds))


def test_generation_prompt_strings(tiny_tokenizer):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert get_template("mftcoder", tiny_tokenizer).generation_prompt(msgs) == "<s>system\nS\n<s>human\nQ\n<s>bot\n"
    assert get_template("chatml", tiny_tokenizer).generation_prompt(msgs) == \
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(TemplateError, match="last message to be the user's"):
        get_template("mftcoder", tiny_tokenizer).generation_prompt(msgs + [{"role": "assistant", "content": "A"}])


def test_chatml_trains_answers_and_im_end_only(tiny_tokenizer):
    enc = get_template("chatml", tiny_tokenizer).encode(SQA)
    assert trained_text(tiny_tokenizer, enc) == "A1<|im_end|>A2<|im_end|>"


def test_tokenizer_template_trains_what_each_assistant_message_adds(tok):
    tok.chat_template = OWN_TEMPLATE
    conv = Conversation(SQA.turns[1:])  # no system: the template adds its default one
    template = get_template("tokenizer", tok)
    text, _ = template.render(conv)
    assert text.startswith("<|im_start|>system\nYou are helpful.<|im_end|>\n")
    # the assistant header comes from the generation prompt, so it is not trained
    assert trained_text(tok, template.encode(conv)) == "A1<|im_end|>\nA2<|im_end|>\n"


def test_jinja_rejects_what_the_parser_rejects(tok):
    attach_chat_template(tok, get_template("mftcoder", tok))
    for bad in ([{"role": "assistant", "content": "a"}],
                [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}],
                [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}],
                [{"role": "tool", "content": "q"}]):
        with pytest.raises(jinja2.exceptions.TemplateError):
            tok.apply_chat_template(bad, tokenize=False)


# ---------------------------------------------------------------- clear errors

def test_tokenizer_template_without_prefix_property_is_refused(tok):
    # like templates that drop the reasoning of earlier turns: an answer renders differently once a turn follows
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
                         "{{ 'assistant:[earlier answer]|' }}{% else %}{{ m['role'] + ':' + m['content'] + '|' }}"
                         "{% endif %}{% endfor %}")
    conv = Conversation(SQA.turns[1:])
    with pytest.raises(TemplateError, match="prefix"):
        get_template("tokenizer", tok).encode(conv)


def test_tokenizer_template_needs_a_chat_template(tiny_tokenizer):
    assert tiny_tokenizer.chat_template is None
    with pytest.raises(TemplateError, match="has none; choose one of: mftcoder, chatml"):
        get_template("tokenizer", tiny_tokenizer)


def test_missing_eos_is_a_clear_error(tok):
    tok.eos_token = None
    with pytest.raises(TemplateError, match="has no eos token"):
        get_template("mftcoder", tok)


def test_slow_tokenizer_is_a_clear_error():
    from transformers import ByT5Tokenizer  # a pure-Python tokenizer that needs no files

    with pytest.raises(TemplateError, match="a fast tokenizer is needed"):
        get_template("mftcoder", ByT5Tokenizer())


def test_chatml_needs_its_special_tokens():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word = Tokenizer(models.WordLevel({"a": 0, "</s>": 1, "[UNK]": 2}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    plain = PreTrainedTokenizerFast(tokenizer_object=word, eos_token="</s>")
    with pytest.raises(TemplateError, match=r"needs <\|im_start\|> as a special token"):
        get_template("chatml", plain)


def test_bad_names_and_markers(tiny_tokenizer):
    with pytest.raises(TemplateError, match="unknown template 'llama'; valid templates: mftcoder, chatml, tokenizer"):
        get_template("llama", tiny_tokenizer)
    with pytest.raises(TemplateError, match=r"unknown role\(s\) \['bot'\]; valid roles: system, user, assistant"):
        get_template("mftcoder", tiny_tokenizer, role_markers={"bot": "B:"})
    with pytest.raises(TemplateError, match="only apply to the 'mftcoder' template"):
        get_template("chatml", tiny_tokenizer, role_markers={"user": "U:"})


@pytest.mark.parametrize("template,markers", [
    ("mftcoder", {"bot": "B:"}), ("mftcoder", {"user": 3}), ("chatml", {"user": "U:"}), ("tokenizer", {"user": "U:"}),
    ("chatml", {}), ("mftcoder", {"user": "U: "}), ("chatml", None),
])
def test_role_markers_have_one_rule_for_the_config_and_the_template(tiny_tokenizer, template, markers):
    """The config decides; a template built without a config applies the same rule with the same message."""
    from mftcoder.config import ConfigError, parse_config

    base = {"data_paths": "[a]", "pretrained_model_path": "/m", "output_dir": "/o"}
    try:
        parse_config({**base, "template": template, "role_markers": markers})
        config_msg = None
    except ConfigError as e:
        config_msg = str(e)
    try:
        get_template(template, tiny_tokenizer, role_markers=markers)
        template_msg = None
    except TemplateError as e:  # chatml/tokenizer also want special tokens the tiny tokenizer lacks: not ours here
        template_msg = str(e) if "role_markers" in str(e) else None
    assert (config_msg is None) == (template_msg is None), (config_msg, template_msg)
    if template_msg is not None and not isinstance(next(iter(markers.values())), int):  # pydantic words type errors
        assert template_msg in config_msg
