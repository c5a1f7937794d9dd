"""Extend a base tokenizer without moving any of its ids: listed tokens, or a BPE trained on a corpus.

* Listed tokens (`--tokens FILE`) become added tokens (matched as whole strings before the BPE runs). A line that
  the base already encodes as a single token is reported and skipped: adding it again would give one text two ids.
* A trained BPE (`--train_corpus PATH --new_tokens N`) is learnt by the `tokenizers` trainer through the base
  tokenizer's own normalizer and pre-tokenizer (`train_new_from_iterator`). Its merges are read in the order it
  learnt them; a merge is kept only when both parts are base or already accepted tokens, its result is not a
  base token, and it fires on the corpus as the base segments it (a trained merge of parts the base never puts
  side by side would give a token that is never used). Kept tokens get ids after the base vocabulary and kept
  merges rank after every base merge, so the base merges always run first: a text whose encoding uses no new
  token is encoded exactly as before, and expanding each new token back through its merge gives the base ids.
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Iterator

CORPUS_SUFFIXES = (".txt", ".jsonl")


@dataclass
class NewToken:
    token: str  # the vocabulary entry (byte-level / metaspace alphabet for trained tokens)
    pieces: list[int]  # base ids the base tokenizer splits it into: its embedding row starts as their mean
    id: int = -1
    merge: tuple[str, str] | None = None  # trained tokens: the BPE merge that makes it


@dataclass
class Extension:
    tokenizer: object
    method: str  # "tokens" or "bpe"
    base_vocab_size: int
    new: list[NewToken]
    skipped_existing: list[str] = field(default_factory=list)
    merges_added: int = 0


# ----------------------------------------------------------------------------------------------------- inputs
def _decode_utf8(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); convert the file to "
                         "UTF-8") from None


def read_token_file(path: str) -> list[str]:
    """One token per line (line ending removed, nothing else stripped); blank lines and repeats are skipped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--tokens: token file {path} does not exist")
    with open(path, "rb") as f:
        text = _decode_utf8(path, f.read()).removeprefix("\ufeff")
    tokens = [line.rstrip("\r") for line in text.split("\n")]
    tokens = list(dict.fromkeys(t for t in tokens if t.strip()))
    if not tokens:
        raise ValueError(f"--tokens: {path} holds no tokens (one token per line)")
    return tokens


def corpus_files(path: str) -> list[str]:
    """The .txt / .jsonl files of a corpus: `path` itself, or every such file under the folder (sorted)."""
    if os.path.isfile(path):
        if not path.endswith(CORPUS_SUFFIXES):
            raise ValueError(f"--train_corpus: {path} is neither .txt (one document) nor .jsonl ({{\"text\": ...}} "
                             "lines)")
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--train_corpus: {path} does not exist")
    found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                   if name.endswith(CORPUS_SUFFIXES))
    if not found:
        raise ValueError(f"--train_corpus: no .txt or .jsonl files under {path}")
    return found


def iter_corpus(path: str) -> Iterator[str]:
    """Documents of the corpus: a whole .txt file, or the "text" of each .jsonl line; empty ones are skipped."""
    from mftcoder.data.documents import decode_text_file  # the pretraining reader of a .txt document (BOM dropped)
    from mftcoder.jsonl import iter_json_objects

    for file in corpus_files(path):
        if file.endswith(".txt"):
            with open(file, "rb") as f:
                text = decode_text_file(f.read(), file)
            if text.strip():
                yield text
            continue
        for lineno, row in iter_json_objects(file, kind="corpus", expected='a JSON object {"text": ...}'):
            text = row.get("text")
            if not isinstance(text, str):
                raise ValueError(f'{file}:{lineno}: expected a "text" string, got keys {sorted(row)[:5]}')
            if text.strip():
                yield text


# ------------------------------------------------------------------------------------------------ extending
def base_vocab_size(tokenizer) -> int:
    """The first free id: one past every id the base tokenizer uses (added/special tokens included)."""
    return max(tokenizer.get_vocab().values()) + 1


def _is_existing(base, text: str) -> bool:
    return text in base.get_vocab() or len(base(text, add_special_tokens=False)["input_ids"]) == 1


def add_listed_tokens(base, tokens: Iterable[str], load_fresh) -> Extension:
    """`load_fresh()` returns another copy of the base tokenizer, which gets the tokens not already in the base."""
    from tokenizers import AddedToken

    tokens = list(tokens)
    skipped = [t for t in tokens if _is_existing(base, t)]
    kept = [t for t in tokens if t not in set(skipped)]
    tok = load_fresh()
    start = base_vocab_size(base)
    tok.add_tokens([AddedToken(t, normalized=True, special=False) for t in kept])
    new = [NewToken(t, base(t, add_special_tokens=False)["input_ids"], tok.convert_tokens_to_ids(t)) for t in kept]
    _check_ids(new, start)
    return Extension(tok, "tokens", start, new, skipped)


def _check_ids(new: list[NewToken], start: int) -> None:
    got, want = [t.id for t in new], list(range(start, start + len(new)))
    if got != want:  # a tokenizer whose ids have holes would otherwise shift rows silently
        raise RuntimeError(f"new tokens got ids {got[:5]}..., expected {want[:5]}... after the base vocabulary")


def _merge_pair(merge) -> tuple[str, str]:
    return tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge)


def _merged(model: dict, a: str, b: str) -> str:
    prefix = model.get("continuing_subword_prefix") or ""
    return a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)


class CorpusSegments:
    """The corpus's distinct pre-tokenized words as the base BPE splits them, so that a trained merge can be checked
    to fire: new merges run after every base merge, in their order, so applying the accepted ones in turn to the
    base segmentation is exactly what the extended tokenizer does."""

    def __init__(self, base, texts: Iterable[str]):
        backend = base.backend_tokenizer
        words: Counter = Counter()
        for text in texts:
            text = backend.normalizer.normalize_str(text) if backend.normalizer else text
            pre = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer else [(text, None)]
            words.update(w for w, _ in pre)
        self.seqs = [[t.value for t in backend.model.tokenize(w)] for w in words]
        self.where: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> words holding it
        for i, seq in enumerate(self.seqs):
            for pair in zip(seq, seq[1:]):
                self.where[pair].add(i)

    def apply(self, a: str, b: str, result: str) -> bool:
        """Merge every (a, b) into `result`; False when the pair never occurs (the merge would never fire)."""
        words = self.where.pop((a, b), set())
        for i in words:
            seq, out, j = self.seqs[i], [], 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == a and seq[j + 1] == b:
                    out.append(result)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            for pair in zip(seq, seq[1:]):
                if pair != (a, b):
                    self.where[pair].discard(i)
            for pair in zip(out, out[1:]):
                self.where[pair].add(i)
            self.seqs[i] = out
        return bool(words)


def select_new_merges(base_model: dict, trained_merges: list, n: int,
                      segments: CorpusSegments) -> list[tuple[str, str, str]]:
    """(left, right, result) for up to `n` trained merges, in the trainer's order (most frequent first), that make
    a new token from base or accepted parts and fire at least once on the corpus (`segments`, updated)."""
    base_vocab = base_model["vocab"]
    accepted: dict[str, None] = {}
    out = []
    for merge in trained_merges:
        a, b = _merge_pair(merge)
        result = _merged(base_model, a, b)
        known = lambda t: t in base_vocab or t in accepted  # noqa: E731
        if result in base_vocab or result in accepted or not (known(a) and known(b)):
            continue
        if not segments.apply(a, b, result):
            continue
        accepted[result] = None
        out.append((a, b, result))
        if len(out) == n:
            break
    return out


def train_bpe_merges(base, texts: list[str], n: int) -> tuple[list[tuple[str, str, str]], dict]:
    """Up to `n` new merges (see `select_new_merges`) of a BPE learnt on `texts` with the base pipeline, and the
    base tokenizer JSON. The trained vocabulary grows until it offers `n` or the corpus has no more pairs."""
    base_json = json.loads(base.backend_tokenizer.to_str())
    if base_json["model"]["type"] != "BPE":
        raise ValueError(f"--train_corpus needs a BPE base tokenizer; this one is {base_json['model']['type']} "
                         "(use --tokens FILE instead)")
    size = len(base_json["model"]["vocab"]) // 8 + 4 * n + 512
    while True:
        trained = base.train_new_from_iterator([texts], vocab_size=size, show_progress=False)
        merges = json.loads(trained.backend_tokenizer.to_str())["model"]["merges"]
        chosen = select_new_merges(base_json["model"], merges, n, CorpusSegments(base, texts))
        if len(chosen) == n or len(trained.get_vocab()) < size:
            return chosen, base_json
        size *= 2


def add_trained_tokens(base, texts: list[str], n: int, tokenizer_from_json) -> Extension:
    """Base tokenizer + the first `n` acceptable trained merges. `tokenizer_from_json(dict)` builds the
    transformers tokenizer (same class and settings as the base) from a tokenizer.json dict."""
    chosen, base_json = train_bpe_merges(base, texts, n)
    model = base_json["model"]
    start = base_vocab_size(base)
    string_merges = bool(model["merges"]) and isinstance(model["merges"][0], str)
    new = []
    for i, (a, b, result) in enumerate(chosen):
        model["vocab"][result] = start + i
        model["merges"].append(f"{a} {b}" if string_merges else [a, b])
        pieces = [t.id for t in base.backend_tokenizer.model.tokenize(result)]
        new.append(NewToken(result, pieces, start + i, (a, b)))
    tok = tokenizer_from_json(base_json)
    _check_ids([NewToken(t.token, t.pieces, tok.convert_tokens_to_ids(t.token)) for t in new], start)
    return Extension(tok, "bpe", start, new, merges_added=len(chosen))


def corpus_counts(base, extended, texts: list[str], new_ids: Iterable[int]) -> dict:
    """Tokens of the corpus before and after, and how many new tokens its extended encoding uses (a trained merge
    whose parts the base never puts side by side can stay unused)."""
    before = sum(len(ids) for ids in base(texts, add_special_tokens=False)["input_ids"])
    after_ids = extended(texts, add_special_tokens=False)["input_ids"]
    used = set(new_ids).intersection(i for ids in after_ids for i in ids)
    return {"corpus_tokens_before": before, "corpus_tokens_after": sum(map(len, after_ids)),
            "new_tokens_used_in_corpus": len(used)}
