"""Conversation -> text -> token ids + loss mask, and the Jinja chat_template that renders the same text.

A template renders a Conversation to one string plus the character spans that are trained. The whole string is
tokenised once (``add_special_tokens=False``, as ``apply_chat_template`` does) and a token is trained iff its
first character lies inside a trained span. Tokenising once means no drift between segments and no stray BOS,
so the ids equal ``tokenizer.apply_chat_template(messages)`` with the template's ``jinja`` attached.

Templates:
- ``mftcoder`` (default): MFTCoder's role markers ``<s>system\\n``, ``<s>human\\n``, ``<s>bot\\n`` (overridable),
  ``{marker}{content}\\n`` per turn and ``{eos}\\n`` after each answer; trained: each answer, its ``\\n`` and eos.
- ``chatml``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; trained: each answer and its ``<|im_end|>``.
- ``tokenizer``: the tokenizer's own chat_template; trained: the characters each assistant message adds.
A ``text`` conversation (pretraining) renders as ``text + eos``, all trained, whatever the template.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from mftcoder.config import check_role_markers
from mftcoder.data.formats import Conversation

TEMPLATE_NAMES = ("mftcoder", "chatml", "tokenizer")
DEFAULT_ROLE_MARKERS = {"system": "<s>system\n", "user": "<s>human\n", "assistant": "<s>bot\n"}
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"

Span = tuple[int, int]


class TemplateError(ValueError):
    """A template that cannot be built or applied with this tokenizer or these messages."""


@dataclass
class Encoded:
    input_ids: list[int]
    loss_mask: list[int]  # 1 = trained; same length as input_ids


def _jinja_str(s: str) -> str:
    """`s` as a Jinja string literal (Jinja decodes literals with Python's unicode-escape rules)."""
    out = []
    for ch in s:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)  # the Jinja lexer re-escapes non-ASCII itself before decoding
    return "'" + "".join(out) + "'"


# Shared Jinja prologue: reject what the Python side rejects, so both paths accept the same conversations.
_JINJA_CHECKS = (
    "{%- set offset = 1 if (messages and messages[0]['role'] == 'system') else 0 -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and not loop.first -%}"
    "{{- raise_exception('a system message is only allowed first') -}}"
    "{%- elif message['role'] != 'system' and message['role'] not in ['user', 'assistant'] -%}"
    "{{- raise_exception('unknown role ' + message['role'] + '; expected system, user or assistant') -}}"
    "{%- elif message['role'] != 'system' and "
    "(message['role'] == 'user') != ((loop.index0 - offset) % 2 == 0) -%}"
    "{{- raise_exception('roles must alternate user/assistant after an optional system message') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


class ChatTemplate:
    """Renders Conversations for training and, through `jinja`, the same text at inference."""

    name: str
    jinja: str

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "is_fast", False):
            raise TemplateError(
                f"tokenizer {type(tokenizer).__name__} is a slow (pure Python) tokenizer without character offsets; "
                "a fast tokenizer is needed (load it with AutoTokenizer and a tokenizer.json, use_fast=True)")
        if not tokenizer.eos_token:
            raise TemplateError(
                f"tokenizer {type(tokenizer).__name__} has no eos token; every sample ends with eos so the model "
                "learns to stop; set one (tokenizer.eos_token = ...) before building the template")
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token

    # -- rendering ---------------------------------------------------------------------------------------------
    def render(self, conv: Conversation) -> tuple[str, list[Span]]:
        """The full text of `conv` and the (start, end) character spans that are trained."""
        if conv.kind == "text":
            text = "".join(t.content for t in conv.turns) + self.eos
            return text, [(0, len(text))]
        return self._render_chat(conv.messages())

    def _render_chat(self, messages: list[dict]) -> tuple[str, list[Span]]:
        raise NotImplementedError

    def _assistant_opener(self, messages: list[dict]) -> str:
        raise NotImplementedError

    def generation_prompt(self, messages: list[dict]) -> str:
        """System/user (and earlier assistant) turns, then the opener of the assistant's reply, for inference."""
        conv = Conversation.from_messages(messages, where="generation_prompt(messages)")
        if conv.turns[-1].role != "user":
            raise TemplateError("generation_prompt needs the last message to be the user's, "
                                f"got {conv.turns[-1].role}")
        return self._generation_text(conv.messages())

    def _generation_text(self, messages: list[dict]) -> str:
        return self._render_chat(messages)[0] + self._assistant_opener(messages)

    # -- tokenising --------------------------------------------------------------------------------------------
    def encode(self, conv: Conversation, last_answer_only: bool = False) -> Encoded:
        """Token ids and loss mask of `conv`; `last_answer_only` trains the final assistant turn alone (a preference
        pair's answer: earlier turns belong to the prompt)."""
        text, spans = self.render(conv)
        if last_answer_only:
            spans = spans[-1:]
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc.get("offset_mapping")
        if offsets is None:
            raise TemplateError(f"tokenizer {type(self.tokenizer).__name__} returned no offsets; "
                                "a fast tokenizer is needed")
        starts = [s for s, _ in spans]
        mask = []
        for start, _ in offsets:
            i = bisect.bisect_right(starts, start) - 1
            mask.append(1 if i >= 0 and start < spans[i][1] else 0)
        return Encoded(list(enc["input_ids"]), mask)


class MFTCoderTemplate(ChatTemplate):
    name = "mftcoder"

    def __init__(self, tokenizer, role_markers: dict | None = None):
        super().__init__(tokenizer)
        _check_role_markers(role_markers, self.name)
        self.role_markers = {**DEFAULT_ROLE_MARKERS, **(role_markers or {})}
        self.jinja = self._build_jinja()

    def _render_chat(self, messages):
        parts, spans, pos = [], [], 0
        for m in messages:
            head = self.role_markers[m["role"]]
            if m["role"] == "assistant":
                trained = m["content"] + "\n" + self.eos
                parts += [head, trained, "\n"]
                spans.append((pos + len(head), pos + len(head) + len(trained)))
            else:
                parts += [head, m["content"] + "\n"]
            pos = sum(map(len, parts))
        return "".join(parts), spans

    def _assistant_opener(self, messages):
        return self.role_markers["assistant"]

    def _build_jinja(self) -> str:
        sys_m, user_m, bot_m = (_jinja_str(self.role_markers[r]) for r in ("system", "user", "assistant"))
        return (
            _JINJA_CHECKS
            + "{%- for message in messages -%}"
            "{%- if message['role'] == 'system' -%}"
            f"{{{{- {sys_m} + message['content'] + '\\n' -}}}}"
            "{%- elif message['role'] == 'user' -%}"
            f"{{{{- {user_m} + message['content'] + '\\n' -}}}}"
            "{%- else -%}"
            f"{{{{- {bot_m} + message['content'] + '\\n' + eos_token + '\\n' -}}}}"
            "{%- endif -%}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{- {bot_m} -}}}}{{%- endif -%}}"
        )


class ChatMLTemplate(ChatTemplate):
    name = "chatml"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        added = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
        for tok in (CHATML_START, CHATML_END):
            if tok not in added:
                raise TemplateError(f"the chatml template needs {tok} as a special token, and tokenizer "
                                    f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__} has none; "
                                    "use template 'mftcoder' or a tokenizer with ChatML tokens")
        self.jinja = (
            _JINJA_CHECKS
            + "{%- for message in messages -%}"
            f"{{{{- '{CHATML_START}' + message['role'] + '\\n' + message['content'] + '{CHATML_END}' + '\\n' -}}}}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{- '{CHATML_START}assistant\\n' -}}}}{{%- endif -%}}"
        )

    def _render_chat(self, messages):
        parts, spans, pos = [], [], 0
        for m in messages:
            head = f"{CHATML_START}{m['role']}\n"
            body = m["content"] + CHATML_END
            if m["role"] == "assistant":
                spans.append((pos + len(head), pos + len(head) + len(body)))
            parts += [head, body, "\n"]
            pos += len(head) + len(body) + 1
        return "".join(parts), spans

    def _assistant_opener(self, messages):
        return f"{CHATML_START}assistant\n"


class TokenizerTemplate(ChatTemplate):
    """The tokenizer's own chat_template; each assistant message trains the characters it adds to the text."""

    name = "tokenizer"

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):  # several named templates: the default one renders chats
            template = template.get("default")
        if not template:
            raise TemplateError(f"template 'tokenizer' needs the tokenizer's chat_template, and "
                                f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__} has none; "
                                f"choose one of: {', '.join(n for n in TEMPLATE_NAMES if n != 'tokenizer')}")
        self.jinja = template

    def _apply(self, messages, add_generation_prompt=False) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.jinja, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def _render_chat(self, messages):
        full = self._apply(messages)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            upto = self._apply(messages[: i + 1])
            # Prefer the prefix with the generation prompt, so the assistant header is not trained.
            before = self._apply(messages[:i], add_generation_prompt=True)
            if not upto.startswith(before):
                before = self._apply(messages[:i])
            if not (full.startswith(upto) and upto.startswith(before)):
                raise TemplateError(
                    "the tokenizer's chat_template does not render conversations as prefixes of each other "
                    f"(rendering messages[:{i + 1}] is not a prefix of the whole chat, or messages[:{i}] is not a "
                    f"prefix of messages[:{i + 1}]), so the trained tokens of assistant message {i} cannot be "
                    "located; use template 'mftcoder' or 'chatml'")
            if len(upto) > len(before):
                spans.append((len(before), len(upto)))
        return full, spans

    def _generation_text(self, messages):
        return self._apply(messages, add_generation_prompt=True)


def _check_role_markers(role_markers: dict | None, template: str) -> None:
    """The config's rule (one place: config.check_role_markers), for templates built without a config."""
    try:
        check_role_markers(role_markers, template)
    except ValueError as e:
        raise TemplateError(str(e)) from None


def get_template(name: str, tokenizer, role_markers: dict | None = None) -> ChatTemplate:
    """Build template `name` ("mftcoder" | "chatml" | "tokenizer") for `tokenizer`."""
    if name == "mftcoder":
        return MFTCoderTemplate(tokenizer, role_markers)
    if name not in TEMPLATE_NAMES:
        raise TemplateError(f"unknown template {name!r}; valid templates: {', '.join(TEMPLATE_NAMES)}")
    _check_role_markers(role_markers, name)
    return ChatMLTemplate(tokenizer) if name == "chatml" else TokenizerTemplate(tokenizer)


def attach_chat_template(tokenizer, template: ChatTemplate) -> None:
    """Make `tokenizer.apply_chat_template` (and everything saved with the tokenizer) render as training did."""
    tokenizer.chat_template = template.jinja
