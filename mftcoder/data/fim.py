"""Fill-in-the-middle (FIM): documents rewritten so that a causal model learns to fill a hole.

A document is cut at two character positions into prefix, middle and suffix, drawn uniformly (so any piece may be
empty), and laid out with three sentinel tokens so that the middle comes last:

- PSM: `[PRE] prefix [SUF] suffix [MID] middle [EOS]`
- SPM: `[PRE] [SUF] suffix [MID] prefix middle [EOS]` (the SPM variant of Bavarian et al. 2022 that shares PSM's
  sentinels and keeps `[PRE]` first, as StarCoder's training code does; prefix and middle are one run of text).
- plain (not chosen for FIM): `text [EOS]`.

Each piece is tokenised on its own with `add_special_tokens=False`, so a sentinel never merges with neighbouring
text. Whether a document becomes FIM, in which order, and where it is cut come from a `random.Random` seeded with
the config seed and the SHA-256 of the document text: the same document and seed always give the same ids, whatever
the number of workers or the order in which they see it. The sentinels are the tokenizer's own (`FAMILIES`, tried in
order) unless `fim_tokens` names them. Reconstruction (`fim_reconstruct`) gives back the text exactly, for strings
and, with a byte-level BPE tokenizer, for token ids. A document that itself contains a sentinel's spelling is
tokenised as it is (the sentinel id then appears inside the text), which makes its ids ambiguous to parse back.

This module imports nothing from the cache or tokenise modules: they import it.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

ROLES = ("prefix", "middle", "suffix")
MODES = ("plain", "psm", "spm")


@dataclass(frozen=True)
class FimFamily:
    name: str
    prefix: str
    middle: str
    suffix: str
    eot: Optional[str] = None  # a separate end-of-infill token the model emits after the middle, where it has one


FAMILIES: tuple[FimFamily, ...] = (
    FimFamily("starcoder", "<fim_prefix>", "<fim_middle>", "<fim_suffix>"),  # also SantaCoder, StarCoder2
    FimFamily("qwen2.5-coder", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"),  # also CodeGemma
    # DeepSeek-Coder: U+FF5C FULLWIDTH VERTICAL LINE and U+2581 LOWER ONE EIGHTH BLOCK; begin/hole/end are its names
    # for prefix/suffix/middle.
    FimFamily("deepseek-coder", "<\uff5cfim\u2581begin\uff5c>", "<\uff5cfim\u2581end\uff5c>",
              "<\uff5cfim\u2581hole\uff5c>"),
    FimFamily("codellama", "\u2581<PRE>", "\u2581<MID>", "\u2581<SUF>", eot="\u2581<EOT>"),
)


@dataclass(frozen=True)
class FimTokens:
    prefix: str
    middle: str
    suffix: str
    prefix_id: int
    middle_id: int
    suffix_id: int
    family: str  # a FAMILIES name, or "configured"
    eot: Optional[str] = None

    @property
    def strings(self) -> tuple[str, str, str]:
        return self.prefix, self.middle, self.suffix

    @property
    def ids(self) -> tuple[int, int, int]:
        return self.prefix_id, self.middle_id, self.suffix_id

    @property
    def stops(self) -> tuple[str, ...]:
        """Strings that end a generated middle: any sentinel, and the family's end-of-infill token."""
        return self.strings + ((self.eot,) if self.eot else ())


# ---------------------------------------------------------------------------------------------- sentinels
def single_token_id(tokenizer, token: str) -> Optional[int]:
    """The id `token` encodes to when it is exactly one token of the tokenizer (and that token is spelled `token`)."""
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or tokenizer.convert_tokens_to_ids(token) != ids[0]:
        return None
    unk = getattr(tokenizer, "unk_token_id", None)
    return None if unk is not None and ids[0] == unk and token != tokenizer.unk_token else int(ids[0])


def _family_names() -> str:
    return "; ".join(f"{f.name} {f.prefix} {f.middle} {f.suffix}" for f in FAMILIES)


def resolve_fim_tokens(tokenizer, configured: Optional[Mapping[str, str]] = None,
                       key: str = "fim_tokens") -> FimTokens:
    """The FIM sentinels to use: `configured` ({"prefix", "middle", "suffix"} -> token) when given, else the first
    of FAMILIES whose three tokens are single tokens of the tokenizer. Errors name `key` (the config key or option)."""
    if configured is not None:
        return _configured_tokens(tokenizer, configured, key)
    for family in FAMILIES:
        ids = [single_token_id(tokenizer, t) for t in (family.prefix, family.middle, family.suffix)]
        if None not in ids and len(set(ids)) == 3:
            return FimTokens(family.prefix, family.middle, family.suffix, *ids, family=family.name, eot=family.eot)
    raise ValueError(
        f"the tokenizer has no fill-in-the-middle sentinel tokens (none of these families is in its vocabulary: "
        f"{_family_names()}); set {key} to three single tokens it has, e.g. "
        '{"prefix": "<fim_prefix>", "middle": "<fim_middle>", "suffix": "<fim_suffix>"}, after adding them with '
        "`mftcoder extend-vocab --base MODEL --output DIR --tokens FILE` (then use DIR as the model)"
        + (", or set fim_rate 0" if key == "fim_tokens" else ""))


def _configured_tokens(tokenizer, configured: Mapping[str, str], key: str) -> FimTokens:
    if not isinstance(configured, Mapping) or set(configured) != set(ROLES):
        got = sorted(configured) if isinstance(configured, Mapping) else type(configured).__name__
        raise ValueError(f"{key} must map exactly prefix, middle, suffix to token strings, got {got}")
    ids = {}
    for role in ROLES:
        token = configured[role]
        found = single_token_id(tokenizer, token) if isinstance(token, str) and token else None
        if found is None:
            n = len(tokenizer(token, add_special_tokens=False)["input_ids"]) if isinstance(token, str) else 0
            raise ValueError(f"{key}.{role} {token!r} is not a single token of the tokenizer (it encodes to {n} "
                             "tokens); use a token the tokenizer has, or add it with `mftcoder extend-vocab --base "
                             "MODEL --output DIR --tokens FILE`")
        ids[role] = found
    if len(set(ids.values())) != 3:
        raise ValueError(f"{key}: prefix, middle and suffix must be three different tokens, got {dict(configured)}")
    return FimTokens(configured["prefix"], configured["middle"], configured["suffix"], ids["prefix"], ids["middle"],
                     ids["suffix"], family="configured")


def parse_fim_tokens(text: Optional[str], key: str = "--fim_tokens") -> Optional[dict]:
    """A JSON object {"prefix": .., "middle": .., "suffix": ..} given on the command line (None stays None)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{key} must be a JSON object like "
                         '\'{"prefix": "<fim_prefix>", "middle": "<fim_middle>", "suffix": "<fim_suffix>"}\': '
                         f"{e.msg}") from None
    if not isinstance(value, dict) or set(value) != set(ROLES) or not all(isinstance(v, str) and v
                                                                          for v in value.values()):
        raise ValueError(f"{key} must map exactly prefix, middle, suffix to non-empty token strings, got {text}")
    return value


# ---------------------------------------------------------------------------------------------- the transform
def document_rng(seed: int, text: str) -> random.Random:
    """The random stream of one document: a function of the seed and the text only."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    mixed = hashlib.sha256(str(int(seed)).encode() + b"\0" + digest).digest()
    return random.Random(int.from_bytes(mixed[:8], "little"))


def choose_mode(rng: random.Random, fim_rate: float, fim_spm_rate: float) -> str:
    """"plain", "psm" or "spm". Both draws are always made, so raising fim_rate only adds FIM documents and the
    order of a FIM document does not depend on fim_rate."""
    u_fim, u_spm = rng.random(), rng.random()
    if u_fim >= fim_rate:
        return "plain"
    return "spm" if u_spm < fim_spm_rate else "psm"


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    """Two cut points drawn uniformly over the character positions 0..len(text); prefix + middle + suffix == text."""
    a, b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return text[:a], text[a:b], text[b:]


def fim_text(prefix: str, middle: str, suffix: str, mode: str, tokens: FimTokens, eos: str = "") -> str:
    """The string form of a FIM sample (the token form is `FimEncoder.encode`)."""
    pre, mid, suf = tokens.strings
    if mode == "psm":
        return f"{pre}{prefix}{suf}{suffix}{mid}{middle}{eos}"
    if mode == "spm":
        return f"{pre}{suf}{suffix}{mid}{prefix}{middle}{eos}"
    raise ValueError(f"unknown FIM mode {mode!r}; expected psm or spm")


@dataclass(frozen=True)
class FimSample:
    mode: str  # "plain" | "psm" | "spm"
    prefix: str  # plain: the whole text
    middle: str
    suffix: str


def fim_sample(text: str, seed: int, fim_rate: float, fim_spm_rate: float) -> FimSample:
    """The deterministic decision for one document: its mode and, for FIM, its three pieces."""
    rng = document_rng(seed, text)
    mode = choose_mode(rng, fim_rate, fim_spm_rate)
    if mode == "plain":
        return FimSample("plain", text, "", "")
    return FimSample(mode, *fim_split(text, rng))


class FimEncoder:
    """text -> (token ids ending in eos, mode), FIM-transformed for a `fim_rate` share of the documents."""

    def __init__(self, tokenizer, configured: Optional[Mapping[str, str]] = None, fim_rate: float = 0.0,
                 fim_spm_rate: float = 0.5, seed: int = 0, eos_id: Optional[int] = None, key: str = "fim_tokens"):
        for name, rate in (("fim_rate", fim_rate), ("fim_spm_rate", fim_spm_rate)):
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        self.tokenizer = tokenizer
        self.tokens = resolve_fim_tokens(tokenizer, configured, key)
        self.rate, self.spm_rate, self.seed = fim_rate, fim_spm_rate, seed
        self.eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
        if self.eos_id is None:
            raise ValueError("the tokenizer has no eos token, which ends every FIM sample; set eos_token in the "
                             "model's tokenizer_config.json")

    def encode(self, text: str) -> tuple[list[int], str]:
        s = fim_sample(text, self.seed, self.rate, self.spm_rate)
        pre, mid, suf = self.tokens.ids
        if s.mode == "plain":
            ids = _encode(self.tokenizer, text)
        elif s.mode == "psm":  # the inference prompt (`fim_prompt_ids`), then the middle it asks for
            ids = [*fim_prompt_ids(self.tokenizer, self.tokens, s.prefix, s.suffix), *_encode(self.tokenizer, s.middle)]
        else:  # spm: prefix and middle tokenised apart, so the cut is at the same place as in PSM
            ids = [pre, suf, *_encode(self.tokenizer, s.suffix), mid, *_encode(self.tokenizer, s.prefix),
                   *_encode(self.tokenizer, s.middle)]
        return ids + [self.eos_id], s.mode


def _encode(tokenizer, text: str) -> list[int]:
    """One piece on its own, so a sentinel never merges with the text beside it."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def fim_prompt_ids(tokenizer, tokens: FimTokens, prefix: str, suffix: str) -> list[int]:
    """The PSM prompt that asks for the middle: [PRE] prefix [SUF] suffix [MID] (no bos, as training has none)."""
    return [tokens.prefix_id, *_encode(tokenizer, prefix), tokens.suffix_id, *_encode(tokenizer, suffix),
            tokens.middle_id]


# ---------------------------------------------------------------------------------------------- the inverse
def fim_reconstruct(sample: str | Sequence[int], tokens: FimTokens, tokenizer=None,
                    eos: str | int | None = None) -> str:
    """The original document of a FIM or plain sample, as a string or token ids (ids need `tokenizer` to decode).
    A trailing `eos` (string, or id; default for ids: the tokenizer's eos) is dropped. Both PSM and SPM are
    `PRE a SUF suffix MID b` with text == a + b + suffix (SPM has a == "")."""
    if isinstance(sample, str):
        body = sample[:-len(eos)] if eos and sample.endswith(eos) else sample
        return _reassemble(body, tokens.strings, lambda piece: piece)
    if tokenizer is None:
        raise ValueError("fim_reconstruct needs the tokenizer to decode token ids")
    end = tokenizer.eos_token_id if eos is None else eos
    ids = list(sample)
    if ids and ids[-1] == end:
        ids = ids[:-1]
    return _reassemble(ids, tokens.ids, lambda piece: tokenizer.decode(list(piece), skip_special_tokens=False))


def _reassemble(body, sentinels, decode) -> str:
    pre, mid, suf = sentinels
    size = len if isinstance(body, str) else (lambda _: 1)  # a sentinel is a substring, or one id
    if not body or not _starts_with(body, pre):
        return decode(body)
    s = _index(body, suf, size(pre))
    m = _index(body, mid, s + size(suf))
    return decode(body[size(pre):s]) + decode(body[m + size(mid):]) + decode(body[s + size(suf):m])


def _starts_with(body, sentinel) -> bool:
    return body.startswith(sentinel) if isinstance(body, str) else body[0] == sentinel


def _index(body, sentinel, start: int) -> int:
    try:
        return body.index(sentinel, start)
    except ValueError:
        raise ValueError(f"not a FIM sample: {sentinel!r} missing after position {start}") from None
