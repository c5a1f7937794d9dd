"""Deterministic multi-task code chats for bench_vs_peers: lengths log-uniform from tens of tokens to the sequence
length, so packing and padding meet the mix of short and long samples real code data has.

Each sample is one chat (an optional system turn, a request, an answer of generated Python) written in mftcoder's
chat_rounds format, one task folder per task. The answer is built line by line until the sample reaches its drawn
token length (the lines' token counts are measured with the model's tokenizer), so the lengths follow the drawn
distribution closely; mftcoder's own tokenisation then gives the exact ids everybody trains on.
"""
from __future__ import annotations

import json
import math
import os
import random

TASK_STYLES = (  # (task name, system prompt or None, request template)
    ("code_completion", None, "Complete the following Python function.\n\n```python\ndef {name}({args}):\n```"),
    ("text_to_code", "You are a careful Python programmer.", "Write a Python function `{name}` that takes {args} and "
                                                               "returns the processed result, handling empty input."),
    ("unit_tests", "You write pytest tests.", "Write unit tests for `{name}({args})`, covering edge cases."),
    ("code_review", None, "Review this function and rewrite it to be clearer:\n\n`{name}({args})`"),
    ("bug_fix", "You fix bugs in Python code.", "The function `{name}({args})` fails on large inputs. Fix it."),
)
WORDS = ("items", "value", "count", "total", "index", "result", "buffer", "key", "node", "limit", "offset", "name",
         "width", "height", "score", "path", "token", "record", "weight", "size", "left", "right", "queue", "seen")
OPS = ("+", "-", "*", "//", "%")


def _line(rng: random.Random, depth: int) -> str:
    a, b, c = rng.choice(WORDS), rng.choice(WORDS), rng.choice(WORDS)
    kind = rng.randrange(6)
    pad = "    " * depth
    if kind == 0:
        return f"{pad}{a} = {b} {rng.choice(OPS)} {rng.randint(1, 999)}"
    if kind == 1:
        return f"{pad}if {a} > {b}:\n{pad}    {c} += 1"
    if kind == 2:
        return f"{pad}for {a} in range(len({b})):\n{pad}    {c}.append({b}[{a}])"
    if kind == 3:
        return f"{pad}{a}_{b} = [{c} for {c} in {a} if {c} != {rng.randint(0, 99)}]"
    if kind == 4:
        return f"{pad}# keep {a} and {b} in step so {c} stays sorted"
    return f"{pad}assert {a}({b}) == {rng.randint(0, 9999)}"


def generate(out_dir: str, tokenizer, num_samples: int, num_tasks: int, seq_length: int, seed: int = 0) -> list[str]:
    """Writes `out_dir/<task>/train.jsonl` for `num_tasks` tasks (samples dealt round-robin); returns the folders.
    Sample lengths (template tokens included, roughly) are log-uniform in [40, seq_length - 24]."""
    if not 1 <= num_tasks <= len(TASK_STYLES):
        raise ValueError(f"--tasks must be 1..{len(TASK_STYLES)}, got {num_tasks}")
    rng = random.Random(seed)
    lo, hi = math.log(40), math.log(max(seq_length - 24, 48))
    line_tokens: dict[str, int] = {}

    def tokens(text: str) -> int:
        if text not in line_tokens:
            line_tokens[text] = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + the newline
        return line_tokens[text]

    folders = [os.path.join(out_dir, TASK_STYLES[k][0]) for k in range(num_tasks)]
    files = []
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
        files.append(open(os.path.join(folder, "train.jsonl"), "w"))
    try:
        for i in range(num_samples):
            task = i % num_tasks
            name, system, request = TASK_STYLES[task]
            target = int(math.exp(rng.uniform(lo, hi)))
            fn = f"{rng.choice(WORDS)}_{rng.choice(WORDS)}_{i}"
            prompt = request.format(name=fn, args=", ".join(rng.sample(WORDS, rng.randint(1, 3))))
            used = tokens(prompt) + (tokens(system) if system else 0) + 12  # role tags and their newlines
            answer = [f"def {fn}(items):"]
            used += tokens(answer[0])
            while True:
                line = _line(rng, 1 + rng.randrange(2))
                if used + tokens(line) > target:
                    break
                answer.append(line)
                used += tokens(line)
            rounds = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "human", "content": prompt}, {"role": "bot", "content": "\n".join(answer)}]
            files[task].write(json.dumps({"id": f"{name}-{i}", "chat_rounds": rounds}) + "\n")
    finally:
        for f in files:
            f.close()
    return folders
