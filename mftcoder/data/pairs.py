"""Preference pairs: one JSONL line -> (prompt turns, chosen answer, rejected answer), and the rule that fits a
tokenised pair into a training row.

Accepted lines (detected per line, like the SFT formats of formats.py):
- ``{"prompt": ..., "chosen": ..., "rejected": ...}``: the prompt is a string (also under the other SFT prompt keys,
  with an optional ``system``) or a list of turns (``{role, content}`` or ShareGPT ``{from, value}``);
- ``chat_rounds`` / ``messages`` / ``conversations`` (the prompt, ending with the user's turn) plus ``chosen`` and
  ``rejected``.
``chosen`` / ``rejected`` are a string, one assistant turn object (``{role, content}`` or ``{from, value}``) or a list
holding one assistant turn. Every problem is a DataFormatError naming the line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from mftcoder.data.formats import (_ROLE_ALIASES, _SHAREGPT_ROLE_ALIASES, PROMPT_KEYS, Conversation,
                                   DataFormatError, Turn, _content, parse_record, prompt_turns)

PAIR_KEYS = ("chosen", "rejected")
CHAT_KEYS = ("chat_rounds", "messages", "conversations")
ACCEPTED_PAIR_FORMATS = (
    f"{{prompt, chosen, rejected}} (prompt: a string under {'|'.join(PROMPT_KEYS)} or a list of turns), or "
    f"{'|'.join(CHAT_KEYS)} ending with the user's turn + chosen + rejected; chosen/rejected: a string, an "
    "assistant turn, or a list of one assistant turn")


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[Turn, ...]  # ends with the user's turn
    chosen: str
    rejected: str

    def conversation(self, answer: str) -> Conversation:
        return Conversation(self.prompt + (Turn("assistant", answer),))


def parse_pair(obj: object, where: str) -> PreferencePair:
    """One decoded JSON line as a preference pair."""
    if not isinstance(obj, dict):
        raise DataFormatError(where, f"line is a JSON {type(obj).__name__}; expected a preference pair: "
                                     f"{ACCEPTED_PAIR_FORMATS}")
    missing = [k for k in PAIR_KEYS if k not in obj]
    if missing:
        keys = ", ".join(map(str, obj)) or "none"
        raise DataFormatError(where, f"no {' or '.join(map(repr, missing))} (keys found: {keys}); a preference line "
                                     f"needs a prompt and two answers: {ACCEPTED_PAIR_FORMATS}")
    prompt = _prompt(obj, where)
    chosen, rejected = (_answer(obj[k], where, k) for k in PAIR_KEYS)
    if chosen == rejected:
        raise DataFormatError(where, "'chosen' and 'rejected' are identical; a pair needs two different answers")
    return PreferencePair(prompt, chosen, rejected)


def _prompt(obj: dict, where: str) -> tuple[Turn, ...]:
    chat_key = next((k for k in CHAT_KEYS if k in obj), None)
    prompt_key = next((k for k in PROMPT_KEYS if k in obj), None)
    if chat_key is not None:
        turns, source = _turn_list(obj[chat_key], chat_key, where), chat_key
    elif prompt_key is not None and isinstance(obj[prompt_key], list):
        turns, source = _turn_list(obj[prompt_key], prompt_key, where), prompt_key
    elif prompt_key is not None:
        return tuple(prompt_turns(obj, where, prompt_key))
    else:
        keys = ", ".join(map(str, obj))
        raise DataFormatError(where, f"no prompt (keys found: {keys}); expected {ACCEPTED_PAIR_FORMATS}")
    if turns[-1].role != "user":
        raise DataFormatError(where, f"'{source}' ends with a {turns[-1].role} turn; the prompt of a pair must end "
                                     "with the user's turn (the answers are 'chosen' and 'rejected')")
    return turns


def _turn_list(items: object, key: str, where: str) -> tuple[Turn, ...]:
    """A list of {role, content} or {from, value} turns, validated as an SFT conversation is (roles alternate)."""
    sharegpt = isinstance(items, list) and bool(items) and isinstance(items[0], dict) and "from" in items[0]
    parse_key = key if key in CHAT_KEYS else "conversations" if sharegpt else "messages"
    try:
        return parse_record({parse_key: items}, where, require_assistant_last=False).turns
    except DataFormatError as e:
        if parse_key == key:
            raise
        raise DataFormatError(where, e.reason.replace(parse_key, key)) from None  # name the line's own key


def _answer(value: object, where: str, key: str) -> str:
    if isinstance(value, list):
        if len(value) != 1:
            raise DataFormatError(where, f"'{key}' is a list of {len(value)} turns; expected one assistant turn "
                                         "(or a string)")
        value, key = value[0], f"{key}[0]"
    if isinstance(value, dict):
        role_key, content_key, aliases = (("from", "value", _SHAREGPT_ROLE_ALIASES) if "from" in value
                                          else ("role", "content", _ROLE_ALIASES))
        role = value.get(role_key)
        if not isinstance(role, str) or aliases.get(role.lower()) != "assistant":
            raise DataFormatError(where, f"'{key}' has {role_key} {role!r}; expected an assistant turn")
        if content_key not in value:
            raise DataFormatError(where, f"'{key}' has no '{content_key}'; expected {{{role_key}, {content_key}}}")
        return _content(value[content_key], where, f"'{key}'.{content_key}")
    return _content(value, where, f"'{key}'")


# ---------------------------------------------------------------------------------------------------------------------
# fitting a tokenised pair into a row


@dataclass
class FittedPair:
    status: str                   # "ok" | "dropped"
    samples: tuple = ()           # ((ids, mask) chosen, (ids, mask) rejected) when ok
    overlong: bool = False        # longer than max_len before fitting
    reason: Optional[str] = None


def answer_start(mask: np.ndarray) -> int:
    """Index of the first trained token: where the prompt ends."""
    trained = np.flatnonzero(mask)
    return int(trained[0]) if trained.size else len(mask)


def fit_pair(chosen: tuple[np.ndarray, np.ndarray], rejected: tuple[np.ndarray, np.ndarray], max_len: int,
             policy: str, where: str) -> FittedPair:
    """Fit both samples into `max_len` tokens. The prompt side goes first: each prompt loses tokens from its start
    (the end, next to the answer, is kept) down to half a row at most; if an answer still does not fit, `policy`
    "truncate" cuts the ends of the answers, "drop" drops the pair."""
    longest = max(len(chosen[0]), len(rejected[0]))
    if longest <= max_len:
        return _checked((chosen, rejected), False, max_len, where)
    starts = [answer_start(mask) for _, mask in (chosen, rejected)]
    longest_answer = max(len(ids) - start for (ids, _), start in zip((chosen, rejected), starts))
    fitted = []
    for (ids, mask), start in zip((chosen, rejected), starts):
        # both prompts keep the same tokens (as much as the longer answer leaves room for, at least half a row)
        keep_prompt = min(start, max(max_len // 2, max_len - longest_answer))
        ids, mask = ids[start - keep_prompt:], mask[start - keep_prompt:]
        if len(ids) > max_len:
            if policy == "drop":
                return FittedPair("dropped", overlong=True, reason=(
                    f"{where}: an answer of {len(ids) - keep_prompt} tokens does not fit seq_length+1 = {max_len} "
                    f"with half a row of prompt"))
            ids, mask = ids[:max_len], mask[:max_len]
        fitted.append((ids, mask))
    return _checked(tuple(fitted), True, max_len, where)


def _checked(samples: tuple, overlong: bool, max_len: int, where: str) -> FittedPair:
    for (_, mask), name in zip(samples, PAIR_KEYS):
        if mask[1:].sum() == 0:  # nothing to score (an empty rendering of the answer within the row)
            return FittedPair("dropped", overlong=overlong,
                              reason=f"{where}: no trained token of the {name} answer within seq_length+1 = {max_len}")
    return FittedPair("ok", samples, overlong)
