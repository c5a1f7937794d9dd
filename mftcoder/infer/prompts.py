"""Input lines -> chat messages -> prompt text, read the way training reads its data.

Every line `mftcoder preprocess` accepts is a prompt here (`mftcoder.data.formats.parse_prompt`): chat_rounds,
messages, ShareGPT conversations, Firefly conversation, prompt/answer pairs (Alpaca's instruction + input too),
and a prompt key alone. A trailing assistant answer is not part of the prompt; it stays in the output line (every
input field is copied there), where it serves as the reference. The messages are rendered with the tokenizer's
chat template, which for a model trained with mftcoder is the template training rendered its data with.
With `--fim` a line is {"prefix": .., "suffix": ..} and its prompt is the fill-in-the-middle one (`fim_prompt_ids`).
"""
from __future__ import annotations

from mftcoder.data.formats import PROMPT_KEYS, parse_prompt

RAW_KEYS = (*PROMPT_KEYS, "text")
FIM_KEYS = ("prefix", "suffix")


def record_messages(record: dict, where: str = "input") -> list[dict]:
    """The prompt messages of one input record, ending on the user's turn; errors name `where` (file:line)."""
    return parse_prompt(record, where).messages()


def raw_prompt(record: dict, where: str = "input") -> str:
    """The text a --raw line sends as it is: its first string field among RAW_KEYS."""
    key = next((k for k in RAW_KEYS if isinstance(record.get(k), str)), None)
    if key is None:
        raise ValueError(f"{where}: --raw needs a string field {' / '.join(RAW_KEYS)}; got keys {sorted(record)}")
    return record[key]


def fim_parts(record: dict, where: str = "input") -> tuple[str, str]:
    """The (prefix, suffix) of a --fim line: both string fields (either may be empty)."""
    if not all(isinstance(record.get(k), str) for k in FIM_KEYS):
        raise ValueError(f'{where}: --fim needs string fields "prefix" and "suffix" (the code before and after the '
                         f"hole); got keys {sorted(record)}")
    return record["prefix"], record["suffix"]


def render_messages(tokenizer, messages: list[dict]) -> str:
    """The prompt text: the messages through the chat template, with the assistant's opener appended."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat_template, so chat prompts cannot be rendered; models trained with "
                         "mftcoder carry one. For a base model use --raw to send the prompt text as it is")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
