"""The one decoding engine: `generate`, `chat` and the evals are thin users of `generate_texts`.

Prompts (text, or token ids) are sorted by length, left-padded into batches and decoded with the KV cache:
greedy (`temperature=0`) or sampled (temperature, top_k, top_p), with an optional repetition penalty, stopped
per row at eos, a stop string or a caller's check; or, with `num_beams > 1`, by transformers' beam search.
A single prompt can stream its answer text to a callback as it is chosen.
"""
from __future__ import annotations

import inspect
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

StopChecker = Callable[[str], "int | None"]  # text so far -> index where the answer ends, or None


@dataclass
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1  # samples per prompt
    batch_size: int = 8
    seed: int = 0
    stop: tuple[str, ...] = ()
    top_k: int = 0  # 0 = no top-k filtering
    repetition_penalty: float = 1.0  # 1 = none; > 1 discourages tokens already in the prompt or answer
    num_beams: int = 1  # > 1: beam search (deterministic)

    def __post_init__(self):
        self.stop = tuple(self.stop)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = none), got {self.repetition_penalty}")
        if self.n < 1 or self.batch_size < 1 or self.num_beams < 1:
            raise ValueError(f"n, batch_size and num_beams must be >= 1, got n={self.n}, "
                             f"batch_size={self.batch_size}, num_beams={self.num_beams}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"n={self.n} samples with temperature 0 would be {self.n} identical greedy answers; "
                             "set temperature > 0 (e.g. 0.2) or n=1")
        if self.num_beams > 1 and self.temperature > 0:
            raise ValueError(f"num_beams={self.num_beams} is beam search, which does not sample; "
                             "use temperature 0 with beams, or num_beams 1 to sample")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return asdict(self) | {"stop": list(self.stop), "do_sample": not self.greedy}


@dataclass
class GenerationOutput:
    texts: list[list[str]]  # per prompt, n texts, each cut before its stop
    new_tokens: int = 0
    seconds: float = 0.0
    finish: list[list[str]] = field(default_factory=list)  # "eos" | "stop" | "length"

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------- pieces
def stop_token_ids(model, tokenizer, stops: Sequence[str] = ()) -> list[int]:
    """eos ids of tokenizer and generation config, plus stop strings that are single special tokens."""
    ids = set()
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(i for i in source if isinstance(i, int))
    special = set(getattr(tokenizer, "all_special_tokens", []))
    for s in stops:
        if s in special:
            ids.add(tokenizer.convert_tokens_to_ids(s))
    return sorted(ids)


def first_stop(text: str, stops: Sequence[str], checker: StopChecker | None = None) -> int | None:
    """Where the answer ends: the first stop string or the checker's cut, whichever comes first."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if checker is not None:
        j = checker(text)
        if j is not None:
            found.append(j)
    return min(found) if found else None


def penalize_repeats(logits, seen, penalty: float):
    """transformers' repetition penalty: logits of tokens already seen are divided by `penalty` (multiplied
    when negative). `seen` is a boolean [rows, vocab] mask of prompt and answer tokens, padding excluded."""
    import torch

    logits = logits.float()
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def pick_tokens(logits, settings: GenerationSettings, generator):
    """Greedy argmax, or sampling with temperature, then top_k, then nucleus (top_p) filtering."""
    import torch

    if settings.greedy:
        return logits.argmax(-1)
    scaled = logits.float() / settings.temperature
    if settings.top_k:
        kth = scaled.topk(min(settings.top_k, scaled.shape[-1]), dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if settings.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p > settings.top_p  # keep the smallest prefix reaching top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def pick_tokens_per_row(logits, settings: Sequence[GenerationSettings], generators: Sequence):
    """The next token of each row when rows sample differently (a server's requests share one batch): row i uses
    settings[i] and its own seeded generators[i], so its tokens do not depend on which rows share its batch.
    Greedy rows take the argmax."""
    next_ids = logits.argmax(-1)
    for row, (row_settings, generator) in enumerate(zip(settings, generators)):
        if not row_settings.greedy:
            next_ids[row] = pick_tokens(logits[row:row + 1], row_settings, generator)[0]
    return next_ids


# ---------------------------------------------------------------------------------------------- decoding
def _seen_tokens(model, input_ids, attention_mask):
    """[rows, vocab] mask of the prompt tokens of each row (padding left out), for the repetition penalty."""
    import torch

    vocab = model.get_output_embeddings().weight.shape[0]
    seen = torch.zeros(input_ids.shape[0], vocab, dtype=torch.bool, device=input_ids.device)
    return seen.scatter_(1, input_ids.masked_fill(attention_mask == 0, 0), attention_mask.bool())


def decode_batch(model, input_ids, attention_mask, settings: GenerationSettings, eos_ids: Sequence[int],
                 is_stopped: Callable[[int, list[int]], bool], generator=None,
                 streamer=None) -> tuple[list[list[int]], list[str]]:
    """Left-padded batch -> new token ids per row (eos excluded) and why each row ended.

    A KV-cache decoding loop like `model.generate`, except that a row that ends (eos, stop, or the custom
    `is_stopped(row, ids)`) leaves the batch at once, with its cache rows: the long tail of a batch runs at
    the size of the rows still going instead of the full batch. `streamer` (a transformers TextStreamer, for
    a batch of one) receives each new token as it is chosen.
    """
    if streamer is not None and input_ids.shape[0] != 1:
        raise ValueError("streaming needs a batch of one row")
    import torch
    from transformers import DynamicCache

    n_rows = input_ids.shape[0]
    eos = set(eos_ids)
    cache = DynamicCache(config=model.config)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    penalty = settings.repetition_penalty if settings.repetition_penalty != 1.0 else None
    seen = _seen_tokens(model, input_ids, attention_mask) if penalty else None
    mask = attention_mask
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate() does for left padding
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, **extra)
    logits = out.logits[:, -1, :]
    generated: list[list[int]] = [[] for _ in range(n_rows)]
    reasons = ["length"] * n_rows
    active = list(range(n_rows))  # original row of each position in the shrinking batch
    for step in range(settings.max_new_tokens):
        if penalty:
            logits = penalize_repeats(logits, seen, penalty)
        next_ids = pick_tokens(logits, settings, generator)
        keep = []
        for pos, (row, token) in enumerate(zip(active, next_ids.tolist())):
            if token in eos:
                reasons[row] = "eos"
                continue
            generated[row].append(token)
            if streamer is not None:
                streamer.put(next_ids[pos:pos + 1].cpu())
            if is_stopped(row, generated[row]):
                reasons[row] = "stop"
                continue
            keep.append(pos)
        if not keep or step == settings.max_new_tokens - 1:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(index)
            mask, next_ids = mask[index], next_ids[index]
            seen = seen[index] if penalty else None
            active = [active[p] for p in keep]
        if penalty:
            seen.scatter_(1, next_ids[:, None], True)
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        positions = mask.long().sum(-1, keepdim=True) - 1
        out = model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, **extra)
        logits = out.logits[:, -1, :]
    if streamer is not None:
        streamer.end()
    return generated, reasons


def beam_search_batch(model, input_ids, attention_mask, settings: GenerationSettings, eos_ids: Sequence[int],
                      pad_id: int) -> tuple[list[list[int]], list[str]]:
    """Left-padded batch -> the best beam's new token ids per row (eos excluded) and why it ended, by
    transformers' beam search with only these settings (not the model's saved generation defaults)."""
    from transformers import GenerationConfig

    config = GenerationConfig(num_beams=settings.num_beams, max_new_tokens=settings.max_new_tokens, do_sample=False,
                              repetition_penalty=settings.repetition_penalty, eos_token_id=list(eos_ids) or None,
                              pad_token_id=pad_id)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    eos = set(eos_ids)
    ids, reasons = [], []
    for row in out[:, input_ids.shape[1]:].tolist():
        end = next((i for i, t in enumerate(row) if t in eos), None)
        ids.append(row if end is None else row[:end])
        reasons.append("length" if end is None else "eos")
    return ids, reasons


def _callback_streamer(tokenizer, on_text: Callable[[str], None]):
    """A transformers TextStreamer that hands finished pieces of text (word boundaries) to a callback."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                on_text(text)

    return Streamer(tokenizer, skip_prompt=False, skip_special_tokens=True)


def clean_text(tokenizer, ids: list[int], stops: Sequence[str], checker: StopChecker | None) -> str:
    """Decoded answer cut before its stop, without the special tokens the model emitted (pad, bos)."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    cut = first_stop(text, stops, checker)
    return strip_special_tokens(tokenizer, text if cut is None else text[:cut])


def strip_special_tokens(tokenizer, text: str) -> str:
    """`text` without the special tokens' strings (pad, bos, eos) a model may emit."""
    for special in getattr(tokenizer, "all_special_tokens", []):
        if special and special in text:
            text = text.replace(special, "")
    return text


# ---------------------------------------------------------------------------------------------- the engine
def _decode_rows(model, tokenizer, enc, settings, eos_ids, checkers, batch, generator, streamer):
    """One padded batch through beam search or the shrinking-batch loop."""
    device = next(model.parameters()).device
    input_ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    if settings.num_beams > 1:
        return beam_search_batch(model, input_ids, mask, settings, eos_ids, tokenizer.pad_token_id)

    def is_stopped(r: int, ids: list[int]) -> bool:
        if not settings.stop and checkers[batch[r][0]] is None:
            return False
        return first_stop(tokenizer.decode(ids, skip_special_tokens=False), settings.stop,
                          checkers[batch[r][0]]) is not None

    return decode_batch(model, input_ids, mask, settings, eos_ids, is_stopped, generator, streamer)


def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str | list[int]],
    settings: GenerationSettings,
    add_special_tokens: bool = False,
    stop_checkers: Sequence[StopChecker | None] | None = None,
    progress: bool = True,
    desc: str = "generate",
    on_text: Callable[[str], None] | None = None,
) -> GenerationOutput:
    """n texts per prompt (a prompt is text, or token ids used as they are). Rows are sorted by prompt length
    (less padding), batched, left-padded and decoded; sampled batches use a generator seeded with
    `seed + batch index`, so the same settings give the same texts. `on_text` streams the answer of a single
    prompt (n=1) piece by piece (with beams: the whole answer at the end)."""
    import torch
    from tqdm.auto import tqdm

    if on_text is not None and (len(prompts) != 1 or settings.n != 1):
        raise ValueError("streaming (on_text) needs one prompt and n=1")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    checkers = list(stop_checkers) if stop_checkers is not None else [None] * len(prompts)
    if len(checkers) != len(prompts):
        raise ValueError(f"{len(checkers)} stop checkers for {len(prompts)} prompts")
    encoded = [p if isinstance(p, list) else tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]
               for p in prompts]
    rows = [(i, s) for i in sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i)) for s in range(settings.n)]
    eos_ids = stop_token_ids(model, tokenizer, settings.stop)
    texts: list[list[str]] = [[""] * settings.n for _ in prompts]
    finish: list[list[str]] = [[""] * settings.n for _ in prompts]
    device = next(model.parameters()).device
    streamer = _callback_streamer(tokenizer, on_text) if on_text is not None and settings.num_beams == 1 else None
    new_tokens, start = 0, time.perf_counter()
    bar = tqdm(total=len(rows), desc=desc, unit="sample", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for b in range(math.ceil(len(rows) / settings.batch_size)):
        batch = rows[b * settings.batch_size:(b + 1) * settings.batch_size]
        enc = tokenizer.pad({"input_ids": [encoded[i] for i, _ in batch]}, return_tensors="pt")
        generator = None if settings.greedy else torch.Generator(device=device).manual_seed(settings.seed + b)
        with torch.inference_mode():
            ids_per_row, reasons = _decode_rows(model, tokenizer, enc, settings, eos_ids, checkers, batch, generator,
                                                streamer)
        for (i, s), ids, reason in zip(batch, ids_per_row, reasons):
            texts[i][s] = clean_text(tokenizer, ids, settings.stop, checkers[i])
            cut = settings.num_beams > 1 and first_stop(tokenizer.decode(ids), settings.stop, checkers[i]) is not None
            finish[i][s] = "stop" if cut else reason
            new_tokens += len(ids)
        bar.update(len(batch))
        elapsed = time.perf_counter() - start
        bar.set_postfix(tok_s=f"{new_tokens / elapsed:.1f}" if elapsed > 0 else "-")
    bar.close()
    if on_text is not None and streamer is None and texts[0][0]:
        on_text(texts[0][0])
    return GenerationOutput(texts, new_tokens, time.perf_counter() - start, finish)

