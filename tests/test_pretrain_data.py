"""Continued-pretraining data: documents -> cache -> blocks. No token is lost or trained twice, a long document is
split across blocks and never truncated, the counts in data_stats.json add up, bad input is counted or named."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from mftcoder.config import ConfigError, parse_config
from mftcoder.data.blocks import block_samples, block_stats, build_blocks
from mftcoder.data.cache import PreprocessError, load_or_build
from mftcoder.testing import build_tokenizer
from mftcoder.trainer.batches import TrainBatches


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def pretrain_cfg(tmp_path, paths, **overrides):
    base = dict(data_paths=[str(p) for p in paths], output_dir=str(tmp_path / "out"), pretrained_model_path=str(tmp_path),
                objective="pretrain", seq_length=32, data_split="100,0,0")
    return parse_config({**base, **overrides})


def write_docs(path, texts) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


class ListStore:
    """A SampleStore stand-in over in-memory documents (ids = positions in the stream, so pieces are traceable)."""

    def __init__(self, lengths):
        ends = np.cumsum(lengths)
        self.docs = [np.arange(e - n, e) for n, e in zip(lengths, ends)]
        self.lengths = np.asarray(lengths)

    def __getitem__(self, i):
        return self.docs[i], np.ones_like(self.docs[i], dtype=np.uint8)


# ---- blocks ----------------------------------------------------------------------------------------------------------

def test_blocks_of_a_small_stream_are_pinned():
    # 22 tokens, seq_length 8: windows [0, 9), [8, 17), [16, 22); consecutive windows share one token
    assert build_blocks([5, 3, 12, 2], 8) == [((0, 0, 5), (1, 0, 3), (2, 0, 1)), ((2, 0, 9),),
                                              ((2, 8, 12), (3, 0, 2))]
    assert block_stats([5, 3, 12, 2], 8) == {"blocks": 3, "last_block_tokens": 6}
    assert build_blocks([], 8) == [] and build_blocks([1], 8) == []  # one token holds no target


@pytest.mark.parametrize("seed", range(6))
def test_every_target_of_the_stream_is_trained_exactly_once(seed):
    rng = random.Random(seed)
    L = rng.choice([8, 16, 33])
    lengths = [rng.randint(2, 3 * L) for _ in range(rng.randint(1, 40))]
    store, total = ListStore(lengths), sum(lengths)
    blocks = build_blocks(lengths, L)
    st = block_stats(lengths, L)
    assert len(blocks) == st["blocks"] and (st["blocks"] - 1) * L + st["last_block_tokens"] == total
    # classic blocks: the stream in windows of L+1 tokens with stride L, every next-token target once
    targets = []
    for k, block in enumerate(blocks):
        (joined, _), = block_samples(block, store, reset_position_ids=False)
        assert joined.tolist() == list(range(k * L, min(k * L + L + 1, total)))
        targets += joined[1:].tolist()
    assert targets == list(range(1, total))
    # document-isolated blocks: the same targets except each document's first token (nothing precedes it)
    targets = []
    for block in blocks:
        for ids, mask in block_samples(block, store, reset_position_ids=True):
            assert len(ids) >= 2 and mask.all()
            targets += ids[1:].tolist()
    firsts = set(np.cumsum([0] + lengths[:-1]).tolist())
    assert sorted(targets) == [t for t in range(1, total) if t not in firsts]


# ---- the cache -------------------------------------------------------------------------------------------------------

def test_documents_are_cached_whole_and_the_counts_add_up(tmp_path, tok):
    long_doc = "def long_function(x):\n" + "    x = x + 1\n" * 200
    texts = [long_doc] + [f"print({i})\n" * (1 + i % 5) for i in range(40)] + ["   ", ""]
    a = write_docs(tmp_path / "a" / "docs.jsonl", texts)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "one.txt").write_text("hello world\n" * 30)
    (tmp_path / "b" / "two.txt").write_text("\ufeffcaf\u00e9 \u2713\r\nsecond line\n")
    cfg = pretrain_cfg(tmp_path, [a, tmp_path / "b"], data_split="80,20,0")
    data = load_or_build(cfg, tok, num_workers=2, progress=False)
    ta, tb = data.stats["tasks"]["docs"], data.stats["tasks"]["b"]
    assert ta["unit"] == "document" and ta["empty"] == 2 and ta["lines"] == 43
    assert ta["train_samples"] + ta["valid_samples"] == 41 and ta["truncated"] == ta["dropped"] == 0
    assert tb["lines"] == 2 and tb["train_samples"] + tb["valid_samples"] == 2 and tb["plain"] == 2
    # the long document is one sample of all its tokens plus eos, far longer than seq_length
    expected = tok(long_doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    stored = [s[i][0].tolist() for s in (data.tasks[0].train, data.tasks[0].valid) for i in range(len(s))]
    assert expected in stored and len(expected) > 4 * cfg.seq_length
    # .txt: the BOM dropped, CRLF kept as written
    two = [t for t in (data.tasks[1].train, data.tasks[1].valid) for i in range(len(t))
           if tok.decode(t[i][0][:-1].tolist()).startswith("caf")]
    assert len(two) == 1
    for t, st in zip(data.tasks, (ta, tb)):
        for split, part in (("train", t.train), ("valid", t.valid)):
            tokens = int(np.sum(part.lengths))
            assert (st["blocks"][split], st["last_block_tokens"][split]) == tuple(
                block_stats(part.lengths, cfg.seq_length).values())
            if st["blocks"][split]:
                assert (st["blocks"][split] - 1) * cfg.seq_length + st["last_block_tokens"][split] == tokens
        assert st["tokens"] == int(np.sum(t.train.lengths) + np.sum(t.valid.lengths))
    batches = TrainBatches(data, cfg, 0, 1, tok.pad_token_id, layout="blocks")
    assert [len(u) for u in batches.units] == [ta["blocks"]["train"], tb["blocks"]["train"]]
    assert len(batches.eval_units()) == ta["blocks"]["valid"] + tb["blocks"]["valid"]


def test_chat_lines_are_documents_with_every_token_trained(tmp_path, tok):
    line = {"chat_rounds": [{"role": "human", "content": "hi"}, {"role": "bot", "content": "hello"}]}
    path = tmp_path / "c" / "c.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps(line) + "\n" + json.dumps({**line, "text": ""}) + "\n")  # the chat wins
    data = load_or_build(pretrain_cfg(tmp_path, [path.parent]), tok, num_workers=1, progress=False)
    ids, mask = data.tasks[0].train[0]
    assert mask.all() and tok.decode(ids.tolist()).count("hello") == 1
    assert (data.stats["tasks"]["c"]["plain"], data.stats["tasks"]["c"]["empty"]) == (2, 0)


def test_a_non_utf8_text_file_is_named_with_its_line(tmp_path, tok):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "bad.txt").write_bytes(b"fine\nstill fine\nbad \xff byte\n")
    with pytest.raises(PreprocessError, match=r"bad\.txt:3: not valid UTF-8 \(byte 0xff"):
        load_or_build(pretrain_cfg(tmp_path, [tmp_path / "t"]), tok, num_workers=1, progress=False)
    data = load_or_build(pretrain_cfg(tmp_path, [tmp_path / "t"], on_bad_line="skip"), tok, num_workers=1,
                         progress=False)
    assert data.stats["tasks"]["t"]["rejected"] == 1


def test_sft_runs_do_not_read_text_files(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "doc.txt").write_text("text")
    from mftcoder.data.tasks import resolve_tasks

    with pytest.raises(ConfigError, match=r"contains no \.jsonl file"):
        resolve_tasks(pretrain_cfg(tmp_path, [tmp_path / "t"], objective="sft"))
    assert len(resolve_tasks(pretrain_cfg(tmp_path, [tmp_path / "t"]))[0].files) == 1


# ---- config ----------------------------------------------------------------------------------------------------------

def test_tokenize_mode_pretrain_is_the_pretrain_objective(tmp_path):
    cfg = pretrain_cfg(tmp_path, [tmp_path], objective="sft", tokenize_mode="pretrain")
    assert cfg.objective == "pretrain"
    reloaded = parse_config(cfg.model_dump())  # a checkpoint's train_config.json loads again
    assert reloaded.objective == "pretrain"


@pytest.mark.parametrize("key, value, message", [
    ("fim_rate", 0.5, "fim_rate applies only to objective 'pretrain'"),
    ("reset_position_ids", False, "reset_position_ids applies only to objective 'pretrain'"),
    ("train_new_tokens", True, "train_new_tokens applies to LoRA/QLoRA"),
])
def test_pretrain_keys_are_refused_elsewhere(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        pretrain_cfg(tmp_path, [tmp_path], objective="sft", **{key: value})


def test_fim_tokens_need_all_three_roles(tmp_path):
    with pytest.raises(ConfigError, match="fim_tokens must map exactly prefix, middle, suffix"):
        pretrain_cfg(tmp_path, [tmp_path], fim_tokens={"prefix": "<p>", "middle": "<m>"})


@pytest.mark.parametrize("key, value", [("padding_mode", "pack"), ("overlong_policy", "drop")])
def test_row_keys_of_other_objectives_are_refused_in_pretraining(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"{key} applies only to objective 'sft' / 'dpo' / 'orpo' / 'reward', not "
                                          "'pretrain'"):
        pretrain_cfg(tmp_path, [tmp_path], **{key: value})


# ---- fill-in-the-middle in the cache ---------------------------------------------------------------------------------

def test_fim_documents_in_the_cache_reconstruct_and_are_counted(tmp_path):
    from mftcoder.data.fim import fim_reconstruct, resolve_fim_tokens

    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<fim_prefix>", "<fim_middle>", "<fim_suffix>"]})
    texts = [f"def f_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400)]
    path = write_docs(tmp_path / "code" / "docs.jsonl", texts)
    cfg = pretrain_cfg(tmp_path, [path], fim_rate=0.5, fim_spm_rate=0.5)
    data = load_or_build(cfg, tok, num_workers=2, progress=False)
    st = data.stats["tasks"]["docs"]
    assert st["plain"] + st["psm"] + st["spm"] == 400
    assert 150 <= st["psm"] + st["spm"] <= 250 and 50 <= st["spm"] <= 150  # binomial, > 4 sigma
    sentinels = resolve_fim_tokens(tok)
    store = data.tasks[0].train
    rebuilt = sorted(fim_reconstruct(store[i][0].tolist()[:-1], sentinels, tok) for i in range(len(store)))
    assert rebuilt == sorted(texts)
    # the same seed writes the same ids (a fresh build of another cache), another seed does not
    again = load_or_build(pretrain_cfg(tmp_path, [path], fim_rate=0.5, cache_dir=str(tmp_path / "c2")), tok,
                          num_workers=1, progress=False)
    assert np.array_equal(np.load(f"{again.cache_path}/ids.npy"), np.load(f"{data.cache_path}/ids.npy"))
    other = load_or_build(pretrain_cfg(tmp_path, [path], fim_rate=0.5, seed=7), tok, num_workers=1, progress=False)
    assert other.cache_path != data.cache_path


def test_fim_without_sentinels_is_one_clear_error(tmp_path, tok):
    path = write_docs(tmp_path / "code" / "docs.jsonl", ["def f(): pass"])
    with pytest.raises(PreprocessError, match=r"no fill-in-the-middle sentinel tokens .* set fim_tokens"):
        load_or_build(pretrain_cfg(tmp_path, [path], fim_rate=0.1), tok, num_workers=2, progress=False)
    with pytest.raises(PreprocessError, match=r"fim_tokens\.prefix '<p>' is not a single token"):
        load_or_build(pretrain_cfg(tmp_path, [path], fim_rate=0.1,
                                   fim_tokens={"prefix": "<p>", "middle": "<m>", "suffix": "<s>"}), tok,
                      num_workers=1, progress=False)


def test_tokenising_jobs_are_bounded_in_bytes_as_well_as_lines(tmp_path):
    from mftcoder.data.tasks import resolve_tasks
    from mftcoder.data.tokenise import read_jobs

    big = "x = 1\n" * 20_000  # ~140 kB per line once JSON-escaped
    path = write_docs(tmp_path / "t" / "docs.jsonl", [big] * 10)
    jobs = list(read_jobs(resolve_tasks(pretrain_cfg(tmp_path, [path])), chunk_lines=256, chunk_bytes=300_000))
    assert [len(j.lines) for j in jobs] == [3, 3, 3, 1]
    assert [n for j in jobs for n, _ in j.lines] == list(range(1, 11))
    assert sum(j.nbytes for j in jobs) == os.path.getsize(path)
