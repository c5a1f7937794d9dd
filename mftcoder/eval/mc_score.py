"""Log-likelihood of each choice's continuation after a prompt, batched.

The context and context + continuation are tokenised separately; the continuation's tokens are the tail of the
second after their common prefix (so a merge across the boundary is scored as part of the continuation), and its
log-likelihood is the sum of log p(token | everything before it). When every choice is one token after the same
context (the usual " A" / "A" letters), one forward pass over the context scores all of them at its last position.

Batches are padded on the left with an attention mask and explicit position ids, so a padded sequence gets the
same numbers as the sequence alone; only the logits of the last positions that are scored are computed.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Scored:
    """One sequence to run: `ids`, and for each choice it scores, (choice index, first target position, tokens)."""
    question: int
    ids: list[int]
    targets: list[tuple[int, int, list[int]]] = field(default_factory=list)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def encode_question(tokenizer, question: int, context: str, continuations: Sequence[str],
                    add_special_tokens: bool) -> list[Scored]:
    """The sequences that score every continuation of one question (one sequence when they share the context)."""
    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    ctx = encode(context)
    wholes = [encode(context + c) for c in continuations]
    splits = [_common_prefix(ctx, w) for w in wholes]
    for c, n, whole in zip(continuations, splits, wholes):
        if n == 0 or n == len(whole):
            raise ValueError(f"cannot score continuation {c!r}: it has no token after a non-empty context")
    if all(n == len(ctx) and len(w) == n + 1 for n, w in zip(splits, wholes)):
        return [Scored(question, ctx, [(i, len(ctx), w[-1:]) for i, w in enumerate(wholes)])]
    return [Scored(question, w, [(i, n, w[n:])]) for i, (n, w) in enumerate(zip(splits, wholes))]


def _forward_kwargs(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _run_batch(model, batch: list[Scored], pad_id: int, accepts: set[str]) -> list[dict[int, float]]:
    import torch

    device = next(model.parameters()).device
    width = max(len(s.ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, s in enumerate(batch):
        ids[row, width - len(s.ids):] = torch.tensor(s.ids)
        mask[row, width - len(s.ids):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # logits needed from position start-1 of each target to the end: keep that many last positions
    keep = max(len(s.ids) - start + 1 for s in batch for _, start, _ in s.targets)
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if "position_ids" in accepts:
        kwargs["position_ids"] = positions.to(device)
    if "logits_to_keep" in accepts:
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits[:, -keep:]
    out = []
    for row, s in enumerate(batch):
        scores = {}
        for choice, start, tokens in s.targets:
            # token k of the target sits at position start+k; the logits predicting it at start+k-1
            first = keep - (len(s.ids) - start + 1)
            rows = logits[row, first:first + len(tokens)].float().log_softmax(-1)
            scores[choice] = float(rows.gather(-1, torch.tensor(tokens, device=rows.device)[:, None]).sum())
        out.append(scores)
    return out


def score_sequences(model, sequences: Sequence[Scored], batch_size: int, pad_id: int,
                    progress: bool = True) -> list[dict[int, float]]:
    """{choice: log-likelihood} per sequence, in the order given; longest first in batches of `batch_size`."""
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"--batch_size must be a positive integer; got {batch_size}")
    accepts = _forward_kwargs(model)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i].ids))
    results: list[dict[int, float]] = [{} for _ in sequences]
    bar = tqdm(total=len(order), desc="score", unit="seq", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            chunk = order[i:i + batch_size]
            for j, scores in zip(chunk, _run_batch(model, [sequences[j] for j in chunk], pad_id, accepts)):
                results[j] = scores
            bar.update(len(chunk))
    bar.close()
    return results


def question_loglikelihoods(sequences: Sequence[Scored], scores: Sequence[dict[int, float]],
                            n_questions: int) -> list[dict[int, float]]:
    """Merge the per-sequence scores into {choice: log-likelihood} per question."""
    out: list[dict[int, float]] = [{} for _ in range(n_questions)]
    for s, sc in zip(sequences, scores):
        out[s.question].update(sc)
    return out
