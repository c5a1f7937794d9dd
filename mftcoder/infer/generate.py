"""Batched generation: `mftcoder generate --model DIR [--adapter DIR] --input prompts.jsonl --output out.jsonl`.

Prompts are rendered with the model's chat template (the one training saved, so inference sees the training
format token for token) and tokenised with `add_special_tokens=False`; `--raw` sends them as plain text.
Rows are sorted by length and left-padded into batches, decoded with the KV cache, greedy (`--temperature 0`)
or sampled (`--temperature --top_p --n`), and stopped per row at eos or a stop string.

Input lines: {"messages": [{"role", "content"}, ...]}, {"chat_rounds": [...]} (MFTCoder's roles human/bot/system
are mapped), or {"prompt": "..."} (also instruction / question / query) with an optional "system". Every
input field is copied to the output line, which gains "output" (and "outputs" when --n > 1).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from mftcoder.errors import run_reporting_errors
from mftcoder.jsonl import iter_json_objects

PROMPT_KEYS = ("prompt", "instruction", "question", "query")
_ROLE_MAP = {"human": "user", "user": "user", "bot": "assistant", "assistant": "assistant", "gpt": "assistant",
             "system": "system"}


@dataclass
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1  # samples per prompt
    batch_size: int = 8
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        self.stop = tuple(self.stop)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1 or self.batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got n={self.n}, batch_size={self.batch_size}")
        if self.n > 1 and self.temperature == 0:
            raise ValueError(f"n={self.n} samples with temperature 0 would be {self.n} identical greedy answers; "
                             "set temperature > 0 (e.g. 0.2) or n=1")

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


# ---------------------------------------------------------------------------------------------- loading
def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str, device: str, config_dtype):
    import torch

    if dtype == "auto":
        d = config_dtype if isinstance(config_dtype, torch.dtype) else getattr(torch, str(config_dtype or "float32"), None)
        d = d or torch.float32
        if device == "cpu" and d == torch.float16:
            d = torch.float32  # fp16 matmuls are slow or missing on CPU
        return d
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16") from None


def has_tokenizer_files(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def load_tokenizer(model_dir: str, adapter: str | None = None):
    """The tokenizer saved with the adapter (it carries the training chat template) if there is one, else the
    model's; left padding, pad falls back to eos."""
    from transformers import AutoTokenizer

    source = adapter if adapter and has_tokenizer_files(adapter) else model_dir
    tok = AutoTokenizer.from_pretrained(source)
    tok.padding_side = "left"
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer in {source} has neither a pad nor an eos token; batched generation needs one")
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_dir: str, adapter: str | None = None, dtype: str = "auto", device: str = "auto",
               threads: int | None = None):
    """(model, tokenizer) ready for generation; an adapter is merged in memory (same logits, faster decoding)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    device = _resolve_device(device)
    config = AutoConfig.from_pretrained(model_dir)
    torch_dtype = _resolve_dtype(dtype, device, getattr(config, "dtype", None))
    tokenizer = load_tokenizer(model_dir, adapter)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
    if adapter:
        from mftcoder.merge import apply_adapter

        model = apply_adapter(model, adapter).merge_and_unload()
    model.to(device).eval()
    return model, tokenizer


# ---------------------------------------------------------------------------------------------- prompts
def record_messages(record: dict, where: str = "input") -> list[dict]:
    """Messages of one input record (see the module docstring); errors name `where` (file:line)."""
    if "messages" in record or "chat_rounds" in record:
        turns = record.get("messages", record.get("chat_rounds"))
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"{where}: 'messages' / 'chat_rounds' must be a non-empty list of {{role, content}}")
        out = []
        for j, turn in enumerate(turns):
            role = _ROLE_MAP.get(str(turn.get("role", "")).lower()) if isinstance(turn, dict) else None
            if role is None or not isinstance(turn.get("content"), str):
                raise ValueError(f"{where}: turn {j} needs a role in {sorted(_ROLE_MAP)} and a string content")
            out.append({"role": role, "content": turn["content"]})
        if out[-1]["role"] == "assistant":
            raise ValueError(f"{where}: the last turn is the assistant's; nothing to answer")
        return out
    for key in PROMPT_KEYS:
        if isinstance(record.get(key), str):
            msgs = [{"role": "system", "content": record["system"]}] if isinstance(record.get("system"), str) else []
            return msgs + [{"role": "user", "content": record[key]}]
    raise ValueError(f"{where}: expected a 'messages' or 'chat_rounds' list or a string field {' / '.join(PROMPT_KEYS)}; "
                     f"got keys {sorted(record)}")


def render_messages(tokenizer, messages: list[dict]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat_template, so chat prompts cannot be rendered; models trained with "
                         "mftcoder carry one. For a base model use --raw to send the prompt text as it is")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# ---------------------------------------------------------------------------------------------- decoding
def _stop_token_ids(model, tokenizer, stops: Sequence[str]) -> list[int]:
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


def _first_stop(text: str, stops: Sequence[str], checker: Callable[[str], int | None] | None) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if checker is not None:
        j = checker(text)
        if j is not None:
            found.append(j)
    return min(found) if found else None


def _pick_tokens(logits, settings: GenerationSettings, generator):
    """Greedy argmax, or sampling with temperature and nucleus (top_p) filtering."""
    import torch

    if settings.greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p > settings.top_p  # keep the smallest prefix reaching top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


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
    import inspect

    import torch
    from transformers import DynamicCache

    n_rows = input_ids.shape[0]
    eos = set(eos_ids)
    cache = DynamicCache(config=model.config)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    mask = attention_mask
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate() does for left padding
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, **extra)
    logits = out.logits[:, -1, :]
    generated: list[list[int]] = [[] for _ in range(n_rows)]
    reasons = ["length"] * n_rows
    active = list(range(n_rows))  # original row of each position in the shrinking batch
    for step in range(settings.max_new_tokens):
        next_ids = _pick_tokens(logits, settings, generator)
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
            active = [active[p] for p in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        positions = mask.long().sum(-1, keepdim=True) - 1
        out = model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, **extra)
        logits = out.logits[:, -1, :]
    if streamer is not None:
        streamer.end()
    return generated, reasons


def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    settings: GenerationSettings,
    add_special_tokens: bool = False,
    stop_checkers: Sequence[Callable[[str], int | None] | None] | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> GenerationOutput:
    """n texts per prompt. Rows are sorted by prompt length (less padding), batched, left-padded, decoded by
    `decode_batch`; sampled batches use a generator seeded with `seed + batch index`, so the same settings give
    the same texts."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    checkers = list(stop_checkers) if stop_checkers is not None else [None] * len(prompts)
    if len(checkers) != len(prompts):
        raise ValueError(f"{len(checkers)} stop checkers for {len(prompts)} prompts")
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    rows = [(i, s) for i in sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i)) for s in range(settings.n)]
    eos_ids = _stop_token_ids(model, tokenizer, settings.stop)
    texts: list[list[str]] = [[""] * settings.n for _ in prompts]
    finish: list[list[str]] = [[""] * settings.n for _ in prompts]
    device = next(model.parameters()).device
    new_tokens, start = 0, time.perf_counter()
    bar = tqdm(total=len(rows), desc=desc, unit="sample", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for b in range(math.ceil(len(rows) / settings.batch_size)):
        batch = rows[b * settings.batch_size:(b + 1) * settings.batch_size]
        enc = tokenizer.pad({"input_ids": [encoded[i] for i, _ in batch]}, return_tensors="pt")
        generator = None
        if not settings.greedy:
            generator = torch.Generator(device=device).manual_seed(settings.seed + b)

        def is_stopped(r: int, ids: list[int], batch=batch) -> bool:
            if not settings.stop and checkers[batch[r][0]] is None:
                return False
            text = tokenizer.decode(ids, skip_special_tokens=False)
            return _first_stop(text, settings.stop, checkers[batch[r][0]]) is not None

        with torch.inference_mode():
            ids_per_row, reasons = decode_batch(model, enc["input_ids"].to(device), enc["attention_mask"].to(device),
                                                settings, eos_ids, is_stopped, generator)
        for (i, s), ids, reason in zip(batch, ids_per_row, reasons):
            text = tokenizer.decode(ids, skip_special_tokens=False)
            cut = _first_stop(text, settings.stop, checkers[i])
            if cut is not None:
                text = text[:cut]
            # Drop special tokens the model emitted (pad, bos) without touching the text around them.
            for special in getattr(tokenizer, "all_special_tokens", []):
                if special and special in text:
                    text = text.replace(special, "")
            texts[i][s], finish[i][s] = text, reason
            new_tokens += len(ids)
        bar.update(len(batch))
        elapsed = time.perf_counter() - start
        bar.set_postfix(tok_s=f"{new_tokens / elapsed:.1f}" if elapsed > 0 else "-")
    bar.close()
    return GenerationOutput(texts, new_tokens, time.perf_counter() - start, finish)


# ---------------------------------------------------------------------------------------------- CLI
def read_jsonl(path: str) -> list[tuple[int, dict]]:
    return list(iter_json_objects(path, "input"))


def add_generation_args(parser: argparse.ArgumentParser, max_new_tokens: int = 512) -> None:
    parser.add_argument("--model", required=True, help="model directory (a merged model or a base model)")
    parser.add_argument("--adapter", default=None, help="LoRA/QLoRA adapter directory applied on --model")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="weights dtype (auto: as saved; fp16 becomes fp32 on CPU)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--n", type=int, default=1, help="samples per prompt (needs --temperature > 0 when > 1)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice; 1 is often fastest on a busy machine)")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="mftcoder generate", description=__doc__.split("\n\n")[0])
    add_generation_args(parser)
    parser.add_argument("--input", required=True, help="prompts jsonl")
    parser.add_argument("--output", required=True, help="output jsonl (input fields + output)")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--raw", action="store_true", help="send the prompt text as is, without the chat template")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point for `mftcoder generate`: bad input gives one clear error line and exit status 2."""
    return run_reporting_errors("mftcoder generate", _run, args)


def _run(args: argparse.Namespace) -> int:
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.n, args.batch_size,
                                  args.seed, tuple(args.stop))
    records = read_jsonl(args.input)
    model, tokenizer = load_model(args.model, args.adapter, args.dtype, args.device, args.threads)
    prompts = []
    for lineno, rec in records:
        where = f"{args.input}:{lineno}"
        if args.raw:
            key = next((k for k in PROMPT_KEYS if isinstance(rec.get(k), str)), None)
            if key is None:
                raise ValueError(f"{where}: --raw needs a string field {' / '.join(PROMPT_KEYS)}")
            prompts.append(rec[key])
        else:
            prompts.append(render_messages(tokenizer, record_messages(rec, where)))
    result = generate_texts(model, tokenizer, prompts, settings, add_special_tokens=args.raw,
                            progress=not args.no_progress)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for (_, rec), texts in zip(records, result.texts):
            out = dict(rec, output=texts[0])
            if settings.n > 1:
                out["outputs"] = texts
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
    os.replace(tmp, args.output)
    print(f"generated {len(records)} x {settings.n} samples, {result.new_tokens} tokens in {result.seconds:.1f} s "
          f"({result.tokens_per_s:.1f} tokens/s) -> {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
