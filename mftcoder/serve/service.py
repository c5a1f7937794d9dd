"""What the HTTP routes ask of the model side: the served models by name, prompts rendered and tokenised the way
`mftcoder generate` does it, the request limits, and admission to the scheduler.

A chat request's messages go through the conversation parser training uses (`Conversation.from_messages`) and
the model's saved chat template (`render_messages`), tokenised without special tokens: the served prompt is the
training prompt token for token. A text completion's prompt is tokenised with them, as `generate --raw` does.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from mftcoder.data.formats import Conversation, DataFormatError
from mftcoder.infer.prompts import render_messages
from mftcoder.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, _Sampling
from mftcoder.serve.scheduler import Job, QueueFull, Sampling, Scheduler


@dataclass
class ServedModel:
    """A name clients ask for: a model (shared between names) and, for a PeftModel holding several adapters, the
    adapter to switch on (None: the base, adapters off)."""

    name: str
    model: Any
    tokenizer: Any
    adapter: str | None = None
    multi_adapter: bool = False

    @contextlib.contextmanager
    def activate(self):
        if not self.multi_adapter:
            yield
        elif self.adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(self.adapter)
            yield

    @property
    def context_length(self) -> int | None:
        config = getattr(self.model, "config", None)
        return getattr(config, "max_position_embeddings", None)


@dataclass(frozen=True)
class Limits:
    """Caps that keep one request from taking the server down."""

    max_tokens: int = 2048  # the most a request may ask for (also the default when it asks for none)
    max_n: int = 8
    max_prompt_tokens: int | None = None  # None: the model's context length
    max_request_bytes: int = 1 << 20

    def __post_init__(self):
        for key in ("max_tokens", "max_n", "max_request_bytes"):
            if getattr(self, key) < 1:
                raise ValueError(f"--{key} must be >= 1, got {getattr(self, key)}")


class Service:
    def __init__(self, models: list[ServedModel], scheduler: Scheduler, limits: Limits = Limits()):
        if not models:
            raise ValueError("nothing to serve")
        self.models = {m.name: m for m in models}
        self.scheduler, self.limits = scheduler, limits

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {', '.join(self.models)}",
                           param="model", code="model_not_found")
        return self.models[name]

    def chat_prompt(self, served: ServedModel, request: ChatCompletionRequest) -> list[int]:
        try:
            conversation = Conversation.from_messages([m.as_turn() for m in request.messages], where="messages")
        except DataFormatError as e:
            raise APIError(400, str(e), param="messages") from None
        if not getattr(served.tokenizer, "chat_template", None):
            raise APIError(400, f"the model {served.name!r} has no chat template, so chat messages cannot be rendered; "
                                "send the prompt text to /v1/completions instead", param="messages")
        turns = conversation.messages()
        if turns[-1]["role"] != "user":
            raise APIError(400, f"the last message must be the user's, got {turns[-1]['role']!r}", param="messages")
        try:
            text = render_messages(served.tokenizer, turns)
        except Exception as e:  # the template refuses (a role order it does not know)
            raise APIError(400, f"messages: {e}", param="messages") from None
        return served.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_prompt(self, served: ServedModel, request: CompletionRequest) -> list[int]:
        ids = served.tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        return ids

    def sampling(self, served: ServedModel, request: _Sampling, prompt_tokens: int) -> Sampling:
        """The request's sampling within the limits; 400 naming the field where it asks for too much."""
        limits, context = self.limits, served.context_length
        if limits.max_prompt_tokens and prompt_tokens > limits.max_prompt_tokens:
            raise APIError(400, f"the prompt is {prompt_tokens} tokens; this server takes at most "
                                f"{limits.max_prompt_tokens} (--max_prompt_tokens)", param="messages",
                           code="context_length_exceeded")
        if context and prompt_tokens >= context:
            raise APIError(400, f"the prompt is {prompt_tokens} tokens, which leaves no room for an answer in the "
                                f"model's context of {context} tokens", param="messages",
                           code="context_length_exceeded")
        asked = request.token_limit()
        if asked is not None and asked > limits.max_tokens:
            raise APIError(400, f"max_tokens is {asked}; this server allows at most {limits.max_tokens} "
                                "(--max_tokens)", param="max_tokens")
        room = context - prompt_tokens if context else limits.max_tokens
        if asked is not None and asked > room:
            raise APIError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({asked}) exceeds the model's "
                                f"context of {context} tokens", param="max_tokens", code="context_length_exceeded")
        if request.n > limits.max_n:
            raise APIError(400, f"n is {request.n}; this server allows at most {limits.max_n} (--max_n)", param="n")
        return Sampling(max_tokens=asked or min(limits.max_tokens, room), temperature=request.temperature,
                        top_p=request.top_p, n=request.n, stop=tuple(request.stop or ()), seed=request.seed)

    def submit(self, job: Job) -> None:
        try:
            self.scheduler.submit(job)
        except QueueFull as e:
            raise APIError(429, str(e), code="rate_limit_exceeded", type="rate_limit_error") from None
