"""The OpenAI API shapes the server speaks: request models (validated with pydantic), response and chunk bodies,
and the error body `{"error": {"message", "type", "param", "code"}}` that OpenAI clients parse.

Only the fields a transformers engine can honour are accepted with effect; the penalties, logit_bias, logprobs,
tools and response_format that OpenAI clients send with their neutral values are accepted, other values are
refused by name (never ignored). Fields that change nothing about the answer (`user`, `metadata`, ...) are accepted.
"""
from __future__ import annotations

import time
import uuid
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class APIError(Exception):
    """An error answered with OpenAI's error body and an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


def _refused_unless_neutral(value, info):
    """Fields clients send with a neutral value (0, false, {}) that this server cannot honour otherwise."""
    if value:
        raise ValueError(f"{info.field_name} is not supported by this server; leave it out (or send its neutral "
                         "value: 0, false, empty)")
    return value


class _Sampling(BaseModel):
    """The fields chat and text completions share."""

    model_config = ConfigDict(extra="ignore")  # clients send fields such as `user` that change nothing here

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[dict] = None
    logprobs: Union[bool, int, None] = None
    top_logprobs: Optional[int] = None
    tools: Optional[list] = None
    functions: Optional[list] = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    _neutral_only = field_validator("presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
                                    "tools", "functions")(_refused_unless_neutral)
    tool_choice: Union[str, dict, None] = None
    response_format: Optional[dict] = None

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_call(cls, value):
        if value not in (None, "none", "auto"):
            raise ValueError("tool calls are not supported by this server; leave tool_choice out (or 'none')")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value):
        if value and value.get("type") != "text":
            raise ValueError(f"response_format {value.get('type')!r} is not supported by this server; it answers "
                             "plain text ({'type': 'text'})")
        return value

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `name` and the like

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def as_turn(self) -> dict:
        """{"role", "content"}: parts joined, OpenAI's `developer` read as the system message."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    echo: bool = False
    max_tokens: Optional[int] = Field(16, ge=1)  # OpenAI's default for text completions

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError(f"send one prompt per request (got a list of {len(value)}); token-id prompts are "
                                 "not accepted")
            value = value[0]
        return value

    _no_echo = field_validator("echo")(_refused_unless_neutral)


# ---------------------------------------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, model: str, texts: list[str], finishes: list[str], use: dict) -> dict:
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f, "logprobs": None}
               for i, (t, f) in enumerate(zip(texts, finishes))]
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": use}


def completion_response(rid: str, model: str, texts: list[str], finishes: list[str], use: dict) -> dict:
    choices = [{"index": i, "text": t, "finish_reason": f, "logprobs": None}
               for i, (t, f) in enumerate(zip(texts, finishes))]
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": use}


def chat_chunk(rid: str, model: str, index: int, delta: dict, finish: str | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}


def completion_chunk(rid: str, model: str, index: int, text: str, finish: str | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]}


def usage_chunk(rid: str, model: str, kind: str, use: dict) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": [], "usage": use}


def model_list(names: list[str], created: int) -> dict:
    return {"object": "list",
            "data": [{"id": n, "object": "model", "created": created, "owned_by": "mftcoder"} for n in names]}


# ---------------------------------------------------------------------------------------------- wire shapes
class ChatShape:
    """How chat completions look on the wire."""

    id_prefix, object_name = "chatcmpl", "chat.completion.chunk"
    response = staticmethod(chat_response)

    @staticmethod
    def opening(rid, model, index):
        return chat_chunk(rid, model, index, {"role": "assistant", "content": ""})

    @staticmethod
    def delta(rid, model, index, text):
        return chat_chunk(rid, model, index, {"content": text})

    @staticmethod
    def closing(rid, model, index, reason):
        return chat_chunk(rid, model, index, {}, reason)


class CompletionShape:
    """How text completions look on the wire."""

    id_prefix, object_name = "cmpl", "text_completion"
    response = staticmethod(completion_response)
    opening = None

    @staticmethod
    def delta(rid, model, index, text):
        return completion_chunk(rid, model, index, text)

    @staticmethod
    def closing(rid, model, index, reason):
        return completion_chunk(rid, model, index, "", reason)
