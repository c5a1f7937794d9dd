import json
import pickle

import pytest

from mftcoder.data.formats import (
    Conversation,
    DataFormatError,
    Turn,
    iter_jsonl,
    parse_line,
    parse_record,
)

SYS, U, A = "system", "user", "assistant"


def conv(*pairs, kind="chat"):
    return Conversation(tuple(Turn(r, c) for r, c in pairs), kind=kind)


# ---------------------------------------------------------------- every accepted format

@pytest.mark.parametrize("record, expected", [
    pytest.param(
        {"id": 7, "data_name": "x", "chat_rounds": [
            {"role": "system", "content": "S"}, {"role": "human", "content": "Q1"}, {"role": "bot", "content": "A1"},
            {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]},
        conv((SYS, "S"), (U, "Q1"), (A, "A1"), (U, "Q2"), (A, "A2")), id="chat_rounds"),
    pytest.param(
        {"chat_rounds": [{"role": "Human", "content": "Q"}, {"role": "GPT", "content": "A"}]},
        conv((U, "Q"), (A, "A")), id="chat_rounds-roles-case-insensitive"),
    pytest.param(
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello", "name": "bob"}]},
        conv((SYS, "be brief"), (U, "hi"), (A, "hello")), id="openai-messages-with-system"),
    pytest.param(
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q1"},
                           {"from": "gpt", "value": "A1"}, {"from": "user", "value": "Q2"},
                           {"from": "ChatGPT", "value": "A2"}]},
        conv((SYS, "S"), (U, "Q1"), (A, "A1"), (U, "Q2"), (A, "A2")), id="sharegpt"),
    pytest.param(
        {"system": "S", "conversation": [{"human": "Q1", "assistant": "A1"}, {"human": "Q2", "assistant": "A2"}]},
        conv((SYS, "S"), (U, "Q1"), (A, "A1"), (U, "Q2"), (A, "A2")), id="firefly"),
    pytest.param(
        {"conversation": [{"human": "Q", "assistant": "A"}], "system": ""},
        conv((U, "Q"), (A, "A")), id="firefly-blank-system-means-none"),
    pytest.param({"prompt": "P", "answer": "A"}, conv((U, "P"), (A, "A")), id="prompt/answer"),
    pytest.param({"system": "S", "question": "Q", "response": "R"}, conv((SYS, "S"), (U, "Q"), (A, "R")),
                 id="question/response+system"),
    pytest.param({"query": "Q", "answer": "A"}, conv((U, "Q"), (A, "A")), id="query/answer"),
    pytest.param({"prompt": "P", "completion": "C"}, conv((U, "P"), (A, "C")), id="prompt/completion"),
    pytest.param({"input": "I", "output": "O"}, conv((U, "I"), (A, "O")), id="input/output"),
    pytest.param({"instruction": "Sum.", "input": "1 2", "output": "3"}, conv((U, "Sum.\n\n1 2"), (A, "3")),
                 id="alpaca-with-input"),
    pytest.param({"instruction": "Say hi.", "input": "", "output": "hi"}, conv((U, "Say hi."), (A, "hi")),
                 id="alpaca-empty-input"),
    pytest.param({"text": "def f():\n    pass\n"}, conv(("text", "def f():\n    pass\n"), kind="text"), id="text"),
    pytest.param({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                  "text": "<rendered>"},
                 conv((U, "q"), (A, "a")), id="chat-wins-over-text"),
])
def test_each_format_parses_to_the_expected_conversation(record, expected):
    assert parse_record(record, "f.jsonl:1") == expected
    assert parse_line(json.dumps(record), "f.jsonl:1") == expected


def test_no_break_spaces_become_spaces_and_nothing_else_changes():
    got = parse_record({"prompt": "a\u202fb\u00a0c", "answer": "  x\u00a0\n"}, "f:1")
    assert got.turns == (Turn(U, "a b c"), Turn(A, "  x \n"))


def test_messages_round_trip_and_prompt_only_conversation_allowed_when_asked():
    record = {"chat_rounds": [{"role": "user", "content": "Q"}]}
    got = parse_record(record, "f:1", require_assistant_last=False)
    assert got.messages() == [{"role": "user", "content": "Q"}]
    assert Conversation.from_messages(got.messages()) == got
    firefly = {"conversation": [{"human": "Q1", "assistant": "A1"}, {"human": "Q2"}]}
    assert parse_record(firefly, "f:1", require_assistant_last=False).turns[-1] == Turn(U, "Q2")


# ---------------------------------------------------------------- every bad input names file:line and the reason

def _error_for_line(tmp_path, line, lineno=3, **kw) -> str:
    """Write `line` as line `lineno` of file.jsonl (valid lines before it) and return the parse error message."""
    good = json.dumps({"prompt": "p", "answer": "a"})
    path = tmp_path / "file.jsonl"
    path.write_text("\n".join([good] * (lineno - 1) + [line, good]) + "\n", encoding="utf-8")
    for number, raw in iter_jsonl(str(path)):
        try:
            parse_line(raw, f"{path}:{number}", **kw)
        except DataFormatError as e:
            assert number == lineno
            assert str(e).startswith(f"{path}:{lineno}: ")
            assert e.where == f"{path}:{lineno}"
            return str(e)
    raise AssertionError("no DataFormatError raised")


def _rounds(*roles, content="x"):
    return json.dumps({"chat_rounds": [{"role": r, "content": content} for r in roles]})


@pytest.mark.parametrize("line, reason", [
    ("[1, 2]", "expected a JSON object"),
    ('"just a string"', "line is a JSON str"),
    ('{"prompt": "p", "answer": ', "invalid JSON"),
    ("", "empty line"),
    ("   \t", "empty line"),
    (json.dumps({"foo": 1, "bar": 2}), "unknown line format (keys found: foo, bar)"),
    (json.dumps({"prompt": "p"}), "keys found: prompt"),
    (json.dumps({"chat_rounds": []}), "'chat_rounds' is empty"),
    (json.dumps({"messages": {"role": "user"}}), "'messages' is dict; expected a list"),
    (json.dumps({"chat_rounds": ["hi"]}), "chat_rounds[0] is str; expected an object"),
    (json.dumps({"messages": [{"content": "x"}]}), "messages[0] has no 'role'"),
    (json.dumps({"conversations": [{"from": "human"}]}), "conversations[0] has no 'value'"),
    (_rounds("user", "tool"), "unknown role 'tool'"),
    (_rounds("user", "assistant", "system"), "system turn at position 2"),
    (_rounds("assistant", "user", "assistant"), "starts with assistant at position 0"),
    (_rounds("system", "assistant"), "starts with assistant at position 1"),
    (_rounds("system"), "holds only a system turn"),
    (_rounds("user", "user", "assistant"), "roles do not alternate in 'chat_rounds': position 1 is user after user"),
    (_rounds("system", "user", "assistant", "assistant"), "position 3 is assistant after assistant"),
    (_rounds("user", "assistant", "user"), "ends on a user turn"),
    (json.dumps({"conversation": [{"human": "q"}, {"human": "q2", "assistant": "a"}]}),
     "conversation[0] has no 'assistant'"),
    (json.dumps({"conversation": [{"assistant": "a"}]}), "conversation[0] (assistant) has no 'human'"),
    (json.dumps({"chat_rounds": [{"role": "user", "content": 5}, {"role": "bot", "content": "a"}]}),
     "chat_rounds[0].content is int, not a string"),
    (json.dumps({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]}),
     "messages[0].content is NoneType, not a string"),
    (_rounds("user", "assistant", content=" \n "), "chat_rounds[0].content is empty or whitespace-only"),
    (json.dumps({"prompt": "p", "answer": ""}), "'answer' is empty"),
    (json.dumps({"prompt": ["p"], "answer": "a"}), "'prompt' is list, not a string"),
    (json.dumps({"instruction": "i", "input": 3, "output": "o"}), "'input' is int"),
    (json.dumps({"system": 1, "prompt": "p", "answer": "a"}), "'system' is int"),
    (json.dumps({"text": "   "}), "'text' is empty"),
])
def test_bad_line_raises_with_file_line_and_reason(tmp_path, line, reason):
    message = _error_for_line(tmp_path, line)
    assert "file.jsonl:3: " in message
    assert reason in message
    assert "expected" in message


def test_unknown_format_lists_the_accepted_formats(tmp_path):
    message = _error_for_line(tmp_path, json.dumps({"foo": 1}), lineno=2)
    for name in ("chat_rounds", "messages", "conversations", "conversation", "prompt", "answer", "text",
                 "instruction", "completion"):
        assert name in message


def test_unknown_role_lists_the_valid_roles(tmp_path):
    message = _error_for_line(tmp_path, json.dumps({"conversations": [{"from": "robot", "value": "x"}]}))
    assert "unknown from 'robot'" in message
    for role in ("system", "human", "user", "bot", "assistant", "gpt", "chatgpt"):
        assert role in message


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "file.jsonl"
    good = json.dumps({"prompt": "p", "answer": "a"}).encode()
    path.write_bytes(good + b"\n" + good + b"\n" + b'{"prompt": "caf\xe9", "answer": "a"}\n')
    seen = []
    with pytest.raises(DataFormatError) as err:
        for number, raw in iter_jsonl(str(path)):
            seen.append(number)
    assert seen == [1, 2]
    assert str(err.value).startswith(f"{path}:3: not valid UTF-8 (byte 0xe9")


def test_iter_jsonl_yields_every_line_numbered_including_blank_ones(tmp_path):
    path = tmp_path / "file.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\n{"text": "b\xc3\xa9"}\n   \n{"text": "c"}')
    lines = list(iter_jsonl(str(path)))
    assert lines == [(1, '{"text": "a"}'), (2, ""), (3, '{"text": "bé"}'), (4, "   "), (5, '{"text": "c"}')]
    assert parse_line(lines[0][1], "f:1").turns == (Turn("text", "a"),)  # the byte order mark is gone


def test_error_survives_pickling_for_worker_processes():
    err = DataFormatError("a.jsonl:4", "empty line; expected one JSON object per line")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), str(back), back.where, back.reason) == (DataFormatError, str(err), err.where, err.reason)
    assert isinstance(back, ValueError)


# ---------------------------------------------------------------- gzip

def test_iter_jsonl_reads_gzip_like_the_plain_file(tmp_path):
    import gzip

    content = b'\xef\xbb\xbf{"text": "a"}\r\n\n{"text": "b\xc3\xa9"}\n   \n{"text": "c"}'
    plain, packed, misnamed = tmp_path / "f.jsonl", tmp_path / "f.jsonl.gz", tmp_path / "g.jsonl"
    plain.write_bytes(content)
    packed.write_bytes(gzip.compress(content))
    misnamed.write_bytes(gzip.compress(content))  # gzip is recognised by its bytes, not its name
    expected = list(iter_jsonl(str(plain)))
    assert len(expected) == 5
    assert list(iter_jsonl(str(packed))) == expected
    assert list(iter_jsonl(str(misnamed))) == expected


def test_non_utf8_inside_gzip_names_file_and_line(tmp_path):
    import gzip

    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n{"text": "caf\xe9"}\n'))
    with pytest.raises(DataFormatError, match=r"f\.jsonl\.gz:2: not valid UTF-8 \(byte 0xe9"):
        list(iter_jsonl(str(path)))


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_corrupt_gzip_is_a_clear_error_naming_the_file(tmp_path, damage):
    import gzip

    data = gzip.compress(b"".join(json.dumps({"text": f"line {i} " * 20}).encode() + b"\n" for i in range(200)))
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data = data[:10] + bytes(b ^ 0x5A for b in data[10:60]) + data[60:]
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(data)
    with pytest.raises(DataFormatError) as err:
        list(iter_jsonl(str(path)))
    msg = str(err.value)
    assert msg.startswith(f"{path}:") and "cannot read the gzip data" in msg and "gzip -t" in msg
    assert "UTF-8" not in msg and "iconv" not in msg
