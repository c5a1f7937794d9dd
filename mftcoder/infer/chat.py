"""Terminal chat: `mftcoder chat --model DIR [--adapter DIR]`.

Keeps the conversation, renders it with the model's chat template (the training template for models trained
with mftcoder), streams the answer token by token, and understands `/reset` (forget the conversation) and
`/exit` (or Ctrl-D). When the conversation outgrows the model's context, the oldest turns are dropped.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable

from mftcoder.errors import run_reporting_errors
from mftcoder.infer.generate import (
    GenerationSettings,
    _stop_token_ids,
    add_generation_args,
    decode_batch,
    load_model,
    render_messages,
)

HELP = "/reset clears the conversation, /exit quits"


@dataclass
class TurnStats:
    context_tokens: int  # prompt length of this turn (history + new message + generation prompt)
    new_tokens: int
    seconds: float
    dropped_turns: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


class _CallbackStreamer:
    """A transformers TextStreamer that hands finished pieces of text to a callback instead of printing."""

    def __new__(cls, tokenizer, on_text: Callable[[str], None]):
        from transformers import TextStreamer

        class Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                if text:
                    on_text(text)

        return Streamer(tokenizer, skip_prompt=False, skip_special_tokens=True)


class ChatSession:
    def __init__(self, model, tokenizer, settings: GenerationSettings, system: str | None = None,
                 max_context: int | None = None):
        if settings.n != 1:
            raise ValueError("chat answers one sample at a time (n=1)")
        self.model, self.tokenizer, self.settings, self.system = model, tokenizer, settings, system
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None) or 4096
        self.messages: list[dict] = []
        self.eos_ids = _stop_token_ids(model, tokenizer, settings.stop)

    def reset(self) -> None:
        self.messages = []

    def _conversation(self, messages: list[dict]) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + messages

    def render(self, messages: list[dict] | None = None) -> str:
        return render_messages(self.tokenizer, self._conversation(self.messages if messages is None else messages))

    def _fit(self, messages: list[dict]) -> tuple[list[int], int]:
        """Token ids of the prompt, dropping the oldest user/assistant pairs until answer room is left."""
        dropped = 0
        while True:
            ids = self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]
            if len(ids) + self.settings.max_new_tokens <= self.max_context or len(messages) <= 1:
                break
            messages = messages[2:]
            dropped += 1
        if len(ids) + 1 > self.max_context:
            raise ValueError(f"the message is {len(ids)} tokens long; the model's context is {self.max_context}")
        return ids, dropped

    def send(self, text: str, on_text: Callable[[str], None] | None = None) -> tuple[str, TurnStats]:
        """Answer `text` given the conversation so far; the turn joins the history only when complete."""
        import torch

        messages = self.messages + [{"role": "user", "content": text}]
        ids, dropped = self._fit(messages)
        messages = messages[2 * dropped:]
        streamer = _CallbackStreamer(self.tokenizer, on_text) if on_text else None
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        generator = None if self.settings.greedy else torch.Generator(device=device).manual_seed(
            self.settings.seed + len(self.messages))
        start = time.perf_counter()
        with torch.inference_mode():
            out, _ = decode_batch(self.model, input_ids, torch.ones_like(input_ids), self.settings, self.eos_ids,
                                  lambda row, toks: False, generator, streamer)
        seconds = time.perf_counter() - start
        answer = self.tokenizer.decode(out[0], skip_special_tokens=True)
        for stop in self.settings.stop:
            if stop in answer:
                answer = answer[:answer.find(stop)]
        self.messages = messages + [{"role": "assistant", "content": answer.rstrip()}]
        return answer, TurnStats(len(ids), len(out[0]), seconds, dropped)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="mftcoder chat", description=__doc__.split("\n\n")[0])
    add_generation_args(parser, max_new_tokens=512)
    parser.add_argument("--system", default=None, help="system message at the start of the conversation")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--max_context", type=int, default=None,
                        help="tokens of conversation kept (default: the model's max_position_embeddings)")
    parser.add_argument("--no_stats", action="store_true", help="do not print token counts and speed after answers")
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point for `mftcoder chat`: bad input gives one clear error line and exit status 2."""
    return run_reporting_errors("mftcoder chat", _run, args)


def _run(args: argparse.Namespace) -> int:
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, 1, 1, args.seed, tuple(args.stop))
    model, tokenizer = load_model(args.model, args.adapter, args.dtype, args.device, args.threads)
    session = ChatSession(model, tokenizer, settings, args.system, args.max_context)
    session.render([{"role": "user", "content": "probe"}])  # fail now, not at the first message, without a template
    print(f"mftcoder chat with {args.model}{' + ' + args.adapter if args.adapter else ''}. {HELP}.", flush=True)
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            session.reset()
            print("(conversation cleared)", flush=True)
            continue
        if command.startswith("/"):
            print(f"unknown command {command}; {HELP}", flush=True)
            continue
        try:
            _, stats = session.send(line, on_text=lambda t: print(t, end="", flush=True))
        except KeyboardInterrupt:
            print("\n(interrupted; this turn is not kept)", flush=True)
            continue
        except ValueError as e:
            print(f"\n(error: {e})", flush=True)
            continue
        print(flush=True)
        if stats.dropped_turns:
            print(f"(dropped the {stats.dropped_turns} oldest exchange(s) to fit the context)", flush=True)
        if not args.no_stats:
            print(f"(context {stats.context_tokens} tokens, {stats.new_tokens} new tokens, "
                  f"{stats.tokens_per_s:.1f} tokens/s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
