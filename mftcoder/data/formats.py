"""Training data line formats -> one normalised `Conversation`.

Every JSONL line is one sample. The format is detected per line, so a folder may mix formats. Accepted:

- ``chat_rounds``: ``[{"role", "content"}]`` (MFTCoder's own format)
- ``messages``: ``[{"role", "content"}]`` (OpenAI)
- ``conversations``: ``[{"from", "value"}]`` (ShareGPT)
- ``conversation``: ``[{"human", "assistant"}]`` pairs, optional top-level ``system`` (Firefly)
- prompt/answer: a prompt key (prompt|instruction|question|query|input) and an answer key
  (answer|response|output|completion), optional ``system``; Alpaca's ``instruction`` + ``input`` + ``output``
- ``text``: pretraining text

The multi-turn keys are checked first (in the order above), then prompt/answer, then ``text``: a line that
carries both ``messages`` and a pre-rendered ``text`` is read as the chat.

Every problem raises `DataFormatError` whose message starts with ``"<file>:<line>: "`` and says what was expected.
"""
from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from typing import Iterator

# Accepted spellings of each role, per list format (lower-cased before lookup).
_ROLE_ALIASES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "bot": "assistant",
    "assistant": "assistant",
    "gpt": "assistant",
}
_SHAREGPT_ROLE_ALIASES = {**_ROLE_ALIASES, "chatgpt": "assistant"}

PROMPT_KEYS = ("prompt", "instruction", "question", "query", "input")
ANSWER_KEYS = ("answer", "response", "output", "completion")

ACCEPTED_FORMATS = (
    "chat_rounds [{role, content}], messages [{role, content}], conversations [{from, value}], "
    "conversation [{human, assistant}] (+ optional system), "
    f"prompt/answer ({'|'.join(PROMPT_KEYS)} + {'|'.join(ANSWER_KEYS)}, + optional system), text"
)

GZIP_MAGIC = b"\x1f\x8b"

# MFTCoder normalises these two no-break spaces to a plain space before tokenising.
_SPACE_LIKE = str.maketrans({"\u202f": " ", "\u00a0": " "})


class DataFormatError(ValueError):
    """A data line that cannot be used; ``str(err)`` is ``"<where>: <reason>"``."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason

    def __reduce__(self):  # keep it picklable across worker processes
        return (type(self), (self.where, self.reason))


@dataclass(frozen=True)
class Turn:
    role: str  # "system" | "user" | "assistant", or "text" for a pretraining sample
    content: str


@dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...]
    kind: str = "chat"  # "chat" or "text"

    def messages(self) -> list[dict]:
        """The turns as ``[{"role", "content"}]``, the shape chat templates take."""
        return [{"role": t.role, "content": t.content} for t in self.turns]

    @classmethod
    def from_messages(cls, messages: list[dict], *, require_assistant_last: bool = False,
                      where: str = "<messages>") -> "Conversation":
        """Validate OpenAI-style messages (e.g. an inference request) into a Conversation."""
        return parse_record({"messages": messages}, where, require_assistant_last=require_assistant_last)


def _content(value: object, where: str, path: str) -> str:
    if not isinstance(value, str):
        raise DataFormatError(where, f"{path} is {type(value).__name__}, not a string; expected non-empty text")
    if not value.strip():
        raise DataFormatError(where, f"{path} is empty or whitespace-only; expected non-empty text")
    return value.translate(_SPACE_LIKE)


def _optional_system(obj: dict, where: str) -> list[Turn]:
    """A top-level ``system`` field; null or blank means no system prompt."""
    system = obj.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return []
    return [Turn("system", _content(system, where, "'system'"))]


def _role_list(items: object, where: str, key: str, role_key: str, content_key: str, aliases: dict) -> list[Turn]:
    if not isinstance(items, list):
        raise DataFormatError(where, f"'{key}' is {type(items).__name__}; expected a list of "
                                     f"{{{role_key}, {content_key}}} objects")
    turns = []
    for i, item in enumerate(items):
        path = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise DataFormatError(where, f"{path} is {type(item).__name__}; expected an object "
                                         f"{{{role_key}, {content_key}}}")
        for k in (role_key, content_key):
            if k not in item:
                raise DataFormatError(where, f"{path} has no '{k}' (keys: {', '.join(map(str, item)) or 'none'}); "
                                             f"expected {{{role_key}, {content_key}}}")
        raw_role = item[role_key]
        role = aliases.get(raw_role.lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise DataFormatError(where, f"{path} has unknown {role_key} {raw_role!r}; "
                                         f"expected one of the valid roles: {', '.join(aliases)} (case-insensitive)")
        turns.append(Turn(role, _content(item[content_key], where, f"{path}.{content_key}")))
    return turns


def _firefly(obj: dict, where: str) -> list[Turn]:
    pairs = obj["conversation"]
    if not isinstance(pairs, list):
        raise DataFormatError(where, f"'conversation' is {type(pairs).__name__}; "
                                     "expected a list of {human, assistant} objects")
    turns = _optional_system(obj, where)
    for i, pair in enumerate(pairs):
        path = f"conversation[{i}]"
        if not isinstance(pair, dict) or "human" not in pair:
            found = ", ".join(map(str, pair)) if isinstance(pair, dict) else type(pair).__name__
            raise DataFormatError(where, f"{path} ({found}) has no 'human'; expected an object {{human, assistant}}")
        turns.append(Turn("user", _content(pair["human"], where, f"{path}.human")))
        if "assistant" in pair:
            turns.append(Turn("assistant", _content(pair["assistant"], where, f"{path}.assistant")))
        elif i != len(pairs) - 1:  # only the last pair may stop at the question (prompt-only data)
            raise DataFormatError(where, f"{path} has no 'assistant'; expected an object {{human, assistant}}")
    return turns


def prompt_turns(obj: dict, where: str, prompt_key: str) -> list[Turn]:
    """The optional system turn and the user turn of a prompt/answer line."""
    prompt = _content(obj[prompt_key], where, f"'{prompt_key}'")
    if prompt_key == "instruction" and "input" in obj:  # Alpaca: the input is appended to the instruction
        extra = obj["input"]
        if extra is not None and not isinstance(extra, str):
            raise DataFormatError(where, f"'input' is {type(extra).__name__}, not a string; expected text or \"\"")
        if extra and extra.strip():
            prompt = prompt + "\n\n" + extra.translate(_SPACE_LIKE)
    return _optional_system(obj, where) + [Turn("user", prompt)]


def _prompt_answer(obj: dict, where: str, prompt_key: str, answer_key: str) -> list[Turn]:
    turns = prompt_turns(obj, where, prompt_key)
    return turns + [Turn("assistant", _content(obj[answer_key], where, f"'{answer_key}'"))]


def _check_order(turns: list[Turn], where: str, source: str, require_assistant_last: bool) -> None:
    if not turns:
        raise DataFormatError(where, f"'{source}' is empty; expected at least one user turn and one assistant turn")
    for i, turn in enumerate(turns):
        if turn.role == "system" and i != 0:
            raise DataFormatError(where, f"system turn at position {i} of '{source}'; "
                                         "expected a system turn only as the first turn")
    body = turns[1:] if turns[0].role == "system" else turns
    offset = len(turns) - len(body)
    if not body:
        raise DataFormatError(where, f"'{source}' holds only a system turn; expected user/assistant turns after it")
    if body[0].role != "user":
        raise DataFormatError(where, f"'{source}' starts with {body[0].role} at position {offset}; "
                                     "expected the first turn (after an optional system turn) to be the user's")
    for i, turn in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            raise DataFormatError(where, f"roles do not alternate in '{source}': position {i + offset} is "
                                         f"{turn.role} after {body[i - 1].role}; expected {expected} "
                                         "(user and assistant take turns after an optional system turn)")
    if require_assistant_last and body[-1].role != "assistant":
        raise DataFormatError(where, f"'{source}' ends on a user turn; expected the last turn to be the "
                                     "assistant's (there is nothing to train on after it)")


def parse_record(obj: object, where: str, *, require_assistant_last: bool = True) -> Conversation:
    """Detect the format of one decoded JSON line and return it as a validated Conversation."""
    if not isinstance(obj, dict):
        raise DataFormatError(where, f"line is a JSON {type(obj).__name__}; expected a JSON object in one of: "
                                     f"{ACCEPTED_FORMATS}")
    if "chat_rounds" in obj:
        source, turns = "chat_rounds", _role_list(obj["chat_rounds"], where, "chat_rounds", "role", "content",
                                                  _ROLE_ALIASES)
    elif "messages" in obj:
        source, turns = "messages", _role_list(obj["messages"], where, "messages", "role", "content", _ROLE_ALIASES)
    elif "conversations" in obj:
        source, turns = "conversations", _role_list(obj["conversations"], where, "conversations", "from", "value",
                                                    _SHAREGPT_ROLE_ALIASES)
    elif "conversation" in obj:
        source, turns = "conversation", _firefly(obj, where)
    else:
        prompt_key = next((k for k in PROMPT_KEYS if k in obj), None)
        answer_key = next((k for k in ANSWER_KEYS if k in obj), None)
        if prompt_key and answer_key:
            source, turns = f"{prompt_key}/{answer_key}", _prompt_answer(obj, where, prompt_key, answer_key)
        elif "text" in obj:
            return Conversation((Turn("text", _content(obj["text"], where, "'text'")),), kind="text")
        else:
            keys = ", ".join(map(str, obj)) or "none"
            raise DataFormatError(where, f"unknown line format (keys found: {keys}); expected one of: "
                                         f"{ACCEPTED_FORMATS}")
    _check_order(turns, where, source, require_assistant_last)
    return Conversation(tuple(turns))


def parse_prompt(obj: object, where: str) -> Conversation:
    """One line as an inference prompt (`mftcoder generate`): every chat format `parse_record` accepts, plus a
    prompt key without an answer. The conversation ends on the user's turn: a trailing assistant answer (the
    reference) is left out of the prompt."""
    if isinstance(obj, dict) and not any(k in obj for k in ("chat_rounds", "messages", "conversations",
                                                            "conversation", *ANSWER_KEYS)):
        prompt_key = next((k for k in PROMPT_KEYS if k in obj), None)
        if prompt_key:
            return Conversation(tuple(prompt_turns(obj, where, prompt_key)))
    conv = parse_record(obj, where, require_assistant_last=False)
    if conv.kind == "text":
        raise DataFormatError(where, "a 'text' line is pretraining text with no question to answer; expected a chat "
                                     f"line ({ACCEPTED_FORMATS}), or --raw to continue the text as it is")
    return Conversation(conv.turns[:-1] if conv.turns[-1].role == "assistant" else conv.turns)


def iter_raw_lines(path: str) -> Iterator[tuple[int, bytes, int]]:
    """Yield ``(line_number, raw bytes, bytes of the file read so far)`` from 1; gzip files are decompressed
    (recognised by their bytes, not their name: a `.jsonl.gz` and a gzip file named `.jsonl` both read).

    The third value counts the file as stored (compressed for gzip), for progress bars. A corrupt or truncated
    gzip file raises DataFormatError naming the file and the line it broke at.
    """
    with open(path, "rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        number, done = 0, 0
        try:
            if not compressed:
                for number, data in enumerate(raw, start=1):
                    done += len(data)
                    yield number, data, done
                return
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                for number, data in enumerate(f, start=1):
                    yield number, data, raw.tell()
        except (OSError, EOFError, zlib.error) as e:
            if not compressed:
                raise
            raise DataFormatError(f"{path}:{number + 1}", f"cannot read the gzip data ({e}); expected a complete "
                                                          "gzip file (check it with `gzip -t`)") from None


def decode_line(data: bytes, number: int, where: str) -> str:
    """One raw line -> text without its line ending; a BOM on line 1 is dropped, non-UTF-8 raises DataFormatError."""
    if number == 1 and data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark is not JSON
        data = data[3:]
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataFormatError(where, f"not valid UTF-8 (byte 0x{data[e.start]:02x} at byte {e.start + 1} of the "
                                     "line); expected UTF-8 text (re-encode the file, e.g. with iconv)") from None


def iter_jsonl(path: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` from 1, line endings removed; blank lines are yielded too. Reads gzip too.

    Bytes that are not UTF-8 (or a broken gzip file) raise DataFormatError naming the file and line.
    """
    for number, data, _ in iter_raw_lines(path):
        yield number, decode_line(data, number, f"{path}:{number}")


def load_json_line(raw: str, where: str) -> object:
    """One raw JSONL line decoded, or a DataFormatError naming the line and the JSON problem."""
    if not raw.strip():
        raise DataFormatError(where, "empty line; expected one JSON object per line")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataFormatError(where, f"invalid JSON: {e.msg} at column {e.colno}; expected one JSON object "
                                     "per line") from None


def parse_line(raw: str, where: str, **kw) -> Conversation:
    """Parse one raw JSONL line (``where`` = ``"file:line"``); keyword args go to `parse_record`."""
    return parse_record(load_json_line(raw, where), where, **kw)
