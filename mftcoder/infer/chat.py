"""Terminal chat: `mftcoder chat --model DIR [--adapter DIR]`.

Keeps the conversation, renders it with the model's chat template (the training template for models trained
with mftcoder), streams the answer token by token, and understands `/reset` (forget the conversation) and
`/exit` (or Ctrl-D). When the conversation outgrows the model's context, the oldest turns are dropped.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from typing import Callable

from mftcoder.errors import ArgumentParser, run_reporting_errors, with_example
from mftcoder.infer.engine import GenerationSettings, generate_texts
from mftcoder.infer.options import add_generation_args, load_from_args, settings_from_args
from mftcoder.infer.prompts import render_messages

EXAMPLE = """\
mftcoder chat --model runs/demo-merged --system "You are a coding assistant." \\
    --temperature 0.7 --top_k 40 --repetition_penalty 1.1 --max_new_tokens 256
"""
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


class ChatSession:
    def __init__(self, model, tokenizer, settings: GenerationSettings, system: str | None = None,
                 max_context: int | None = None):
        if settings.n != 1:
            raise ValueError("chat answers one sample at a time (n=1)")
        self.model, self.tokenizer, self.settings, self.system = model, tokenizer, settings, system
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None) or 4096
        self.messages: list[dict] = []

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
        messages = self.messages + [{"role": "user", "content": text}]
        ids, dropped = self._fit(messages)
        messages = messages[2 * dropped:]
        # each turn samples with its own seed, so a conversation replays the same
        settings = replace(self.settings, seed=self.settings.seed + len(self.messages))
        out = generate_texts(self.model, self.tokenizer, [ids], settings, progress=False, on_text=on_text)
        answer = out.texts[0][0]
        self.messages = messages + [{"role": "assistant", "content": answer.rstrip()}]
        return answer, TurnStats(len(ids), out.new_tokens, out.seconds, dropped)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or ArgumentParser(prog="mftcoder chat", description=__doc__.split("\n\n")[0])
    with_example(parser, EXAMPLE)
    add_generation_args(parser, max_new_tokens=512)
    parser.add_argument("--system", default=None, help="system message at the start of the conversation")
    parser.add_argument("--max_context", type=int, default=None,
                        help="tokens of conversation kept (default: the model's max_position_embeddings)")
    parser.add_argument("--no_stats", action="store_true", help="do not print token counts and speed after answers")
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point for `mftcoder chat`: bad input gives one clear error line and exit status 2."""
    return run_reporting_errors(_run, args)


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, n=1, batch_size=1)
    model, tokenizer = load_from_args(args)
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
