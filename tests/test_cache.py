"""Token cache: every line accounted for, bad lines, fingerprint invalidation, warm loads, parallel == serial."""
import json
import logging
import os

import numpy as np
import pytest

from mftcoder.config import parse_config
from mftcoder.data.cache import PreprocessError, load_or_build
from mftcoder.data.formats import parse_line
from mftcoder.data.prepare import prepare_data
from mftcoder.data.tasks import split_of
from mftcoder.model.tokenizer import load_tokenizer

SEQ = 64


def chat(question, answer, system=None):
    rounds = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "human", "content": question}, {"role": "bot", "content": answer}]
    return json.dumps({"chat_rounds": rounds})


def short(i):
    return chat(f"Write add {i}.", f"def add_{i}(a, b):\n    return a + b + {i}")


def long_answer(i):  # ~210 tokens, trained tokens survive truncation to SEQ
    return chat(f"Repeat {i}.", " ".join(["word"] * 40) + f" {i}")


def long_prompt(i):  # ~255 tokens, the answer lies beyond SEQ: nothing trainable is left
    return chat(" ".join(["zq"] * 80) + f" {i}", "ok")


def write_lines(path, lines):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture
def make_cfg(tmp_path, tiny_model_dir):
    def make(data_paths, **kw):
        base = {"data_paths": data_paths, "pretrained_model_path": tiny_model_dir, "output_dir": str(tmp_path / "out"),
                "seq_length": SEQ, "data_split": "80,10,10", "preprocessing_num_workers": 1}
        return parse_config({**base, **kw})
    return make


def build(cfg, tokenizer, **kw):
    return load_or_build(cfg, tokenizer, progress=False, **kw)


def all_samples(data, split):
    return [getattr(t, split)[i] for t in data.tasks for i in range(len(getattr(t, split)))]


# --- every line accounted for ----------------------------------------------------------------------------------------


@pytest.fixture
def mixed_task(tmp_path):
    """39 lines: 30 good, 3 with a long answer, 2 with a long prompt, 2 blank, 2 invalid, in two files."""
    a = [short(i) for i in range(20)] + [long_answer(i) for i in range(3)] + ["", "{broken json"]
    b = [short(i) for i in range(20, 30)] + [long_prompt(i) for i in range(2)] + ["   ", '{"foo": 1}']
    write_lines(tmp_path / "mixed" / "a.jsonl", a)
    write_lines(tmp_path / "mixed" / "sub" / "b.jsonl", b)
    return str(tmp_path / "mixed")


def accounted(st):
    return (st["train_samples"] + st["valid_samples"] + st["test_samples"] + st["dropped"] + st["rejected"]
            + st["blank"])


def test_every_line_accounted_for_with_truncate(make_cfg, tokenizer, mixed_task):
    data = build(make_cfg([mixed_task], on_bad_line="skip"), tokenizer)
    st = data.stats["tasks"]["mixed"]
    assert st["lines"] == 39 == accounted(st)
    assert (st["blank"], st["rejected"], st["overlong"], st["truncated"], st["dropped"]) == (2, 2, 5, 3, 2)
    assert st["train_samples"] + st["valid_samples"] + st["test_samples"] == 33
    assert st["files"] == [os.path.join(mixed_task, "a.jsonl"), os.path.join(mixed_task, "sub", "b.jsonl")]
    # all kept samples, test split included (stored, not served for training)
    arrays = stored_arrays(data)
    lengths = arrays["index.npy"][:, 3]
    assert len(lengths) == 33 and lengths.max() == SEQ + 1  # truncated to seq_length + 1 (n tokens, n-1 targets)
    assert (lengths == SEQ + 1).sum() == 3
    assert st["tokens"] == lengths.sum() == len(arrays["ids.npy"])
    mask = arrays["mask.npy"]
    assert st["loss_tokens"] == sum(int(mask[o + 1:o + n].sum()) for _, _, o, n in arrays["index.npy"])


def test_every_line_accounted_for_with_drop(make_cfg, tokenizer, mixed_task):
    data = build(make_cfg([mixed_task], on_bad_line="skip", overlong_policy="drop"), tokenizer)
    st = data.stats["tasks"]["mixed"]
    assert st["lines"] == 39 == accounted(st)
    assert (st["overlong"], st["truncated"], st["dropped"]) == (5, 0, 5)
    assert st["train_samples"] + st["valid_samples"] + st["test_samples"] == 30
    assert max(len(ids) for ids, _ in all_samples(data, "train")) <= SEQ + 1


def test_stats_tokens_match_the_stored_samples(make_cfg, tokenizer, tmp_path):
    task = write_lines(tmp_path / "t" / "x.jsonl", [short(i) for i in range(40)])
    data = build(make_cfg([task], data_split="90,10,0"), tokenizer)
    st = data.stats["tasks"]["x"]
    samples = all_samples(data, "train") + all_samples(data, "valid")
    assert len(samples) == 40
    assert st["tokens"] == sum(len(ids) for ids, _ in samples)
    assert st["loss_tokens"] == sum(int(mask[1:].sum()) for _, mask in samples)
    # the stored ids decode back to the template's text, answer and eos trained
    ids, mask = samples[0]
    trained = tokenizer.decode([int(i) for i, m in zip(ids, mask) if m])
    assert trained.endswith(tokenizer.eos_token) and "return a + b" in trained


def test_split_in_the_cache_is_the_content_hash_split(make_cfg, tokenizer, tmp_path):
    lines = [short(i) for i in range(200)]
    task = write_lines(tmp_path / "t.jsonl", lines)
    cfg = make_cfg([task], data_split="70,30,0")
    data = build(cfg, tokenizer)
    expected = sum(split_of(line, cfg.split_fractions) == "valid" for line in lines)
    assert len(data.tasks[0].valid) == expected == data.stats["tasks"]["t"]["valid_samples"]
    assert 30 <= expected <= 90 and len(data.tasks[0].train) == 200 - expected


def test_pretrain_mode_trains_every_token(make_cfg, tokenizer, tmp_path):
    task = write_lines(tmp_path / "p.jsonl", [json.dumps({"text": f"def f{i}():\n    return {i}"}) for i in range(10)]
                       + [short(1)])
    data = build(make_cfg([task], tokenize_mode="pretrain", data_split="100,0,0"), tokenizer)
    st = data.stats["tasks"]["p"]
    assert st["train_samples"] == 11
    assert st["loss_tokens"] == st["tokens"] - 11  # every position after the first of each sample


# --- bad lines -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad,reason", [
    ("{not json", "invalid JSON"),
    ('{"foo": "bar"}', "unknown line format"),
    (json.dumps({"chat_rounds": [{"role": "human", "content": "q"}]}), "ends on a user turn"),
    (json.dumps({"chat_rounds": [{"role": "human", "content": "q"}, {"role": "bot", "content": "  "}]}), "empty"),
    (json.dumps({"chat_rounds": [{"role": "bot", "content": "a"}, {"role": "human", "content": "q"}]}), "user"),
])
def test_bad_line_stops_with_file_and_line(make_cfg, tokenizer, tmp_path, bad, reason):
    path = write_lines(tmp_path / "t" / "x.jsonl", [short(0), short(1), bad, short(2)])
    with pytest.raises(PreprocessError) as info:
        build(make_cfg([str(tmp_path / "t")]), tokenizer)
    msg = str(info.value)
    assert msg.startswith(f"{path}:3: ") and reason in msg
    assert "on_bad_line" in msg  # says how to skip instead
    assert os.listdir(tmp_path / "out" / "cache") == [], "no half-written cache entry is left behind"


def test_bad_lines_skipped_and_counted(make_cfg, tokenizer, tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [short(0), "{not json", short(1), '{"foo": 1}'])
    data = build(make_cfg([path], on_bad_line="skip", data_split="100,0,0"), tokenizer)
    st = data.stats["tasks"]["x"]
    assert (st["lines"], st["train_samples"], st["rejected"]) == (4, 2, 2)
    examples = data.stats["rejected_examples"]["x"]
    assert [e.split(": ")[0] for e in examples] == [f"{path}:2", f"{path}:4"]


def test_non_utf8_line(make_cfg, tokenizer, tmp_path):
    path = str(tmp_path / "latin1.jsonl")
    with open(path, "wb") as f:
        f.write((short(0) + "\n").encode())
        f.write('{"prompt": "caf\u00e9 ?", "answer": "oui"}\n'.encode("latin-1"))
        f.write((short(1) + "\n").encode())
    with pytest.raises(PreprocessError, match=rf"{path}:2: not valid UTF-8 \(byte 0xe9"):
        build(make_cfg([path]), tokenizer)
    data = build(make_cfg([path], on_bad_line="skip", data_split="100,0,0"), tokenizer)
    st = data.stats["tasks"]["latin1"]
    assert (st["lines"], st["train_samples"], st["rejected"]) == (3, 2, 1)


def test_utf8_bom_and_crlf_are_fine(make_cfg, tokenizer, tmp_path):
    path = str(tmp_path / "bom.jsonl")
    with open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + short(0).encode() + b"\r\n" + short(1).encode() + b"\r\n")
    data = build(make_cfg([path], data_split="100,0,0"), tokenizer)
    assert data.stats["tasks"]["bom"]["train_samples"] == 2


def test_gzip_task_folder_gives_the_same_samples_as_the_plain_file(make_cfg, tokenizer, tmp_path):
    import gzip

    lines = [short(i) for i in range(30)] + [long_answer(0), long_prompt(0), "", "{broken json"]
    content = ("\n".join(lines) + "\n").encode()
    write_lines(tmp_path / "plain" / "x.jsonl", lines)
    (tmp_path / "packed").mkdir()
    (tmp_path / "packed" / "x.jsonl.gz").write_bytes(gzip.compress(content))
    plain = build(make_cfg([str(tmp_path / "plain")], on_bad_line="skip"), tokenizer)
    packed = build(make_cfg([str(tmp_path / "packed")], on_bad_line="skip"), tokenizer, num_workers=2)
    assert packed.tasks[0].task.files == (str(tmp_path / "packed" / "x.jsonl.gz"),)
    for split in ("train", "valid"):
        a, b = all_samples(plain, split), all_samples(packed, split)
        assert len(a) == len(b) > 0
        assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    strip = lambda st: {k: v for k, v in st.items() if k != "files"}  # noqa: E731
    assert strip(packed.stats["tasks"]["packed"]) == strip(plain.stats["tasks"]["plain"])
    assert packed.stats["tasks"]["packed"]["lines"] == 34 and packed.stats["tasks"]["packed"]["rejected"] == 1
    assert [e.split(": ")[0] for e in packed.stats["rejected_examples"]["packed"]] == [
        f"{tmp_path / 'packed' / 'x.jsonl.gz'}:34"]
    # the fingerprint follows the file's bytes: a changed .gz is tokenised again
    (tmp_path / "packed" / "x.jsonl.gz").write_bytes(gzip.compress(content + short(99).encode() + b"\n"))
    again = build(make_cfg([str(tmp_path / "packed")], on_bad_line="skip"), tokenizer)
    assert not again.from_cache and again.stats["tasks"]["packed"]["lines"] == 35


def test_corrupt_gzip_is_an_error_naming_the_file_even_when_skipping_bad_lines(make_cfg, tokenizer, tmp_path):
    import gzip

    data = gzip.compress(("\n".join(short(i) for i in range(300)) + "\n").encode())
    path = tmp_path / "t" / "x.jsonl.gz"
    path.parent.mkdir()
    path.write_bytes(data[: len(data) // 2])  # cut off mid-stream, as by an interrupted copy
    with pytest.raises(PreprocessError, match=rf"{path}:\d+: cannot read the gzip data") as info:
        build(make_cfg([str(path.parent)], on_bad_line="skip"), tokenizer)
    assert "UTF-8" not in str(info.value)
    assert not [d for d in os.listdir(tmp_path / "out" / "cache") if not d.startswith(".")]  # no cache entry made


def test_blank_lines_counted(make_cfg, tokenizer, tmp_path):
    path = write_lines(tmp_path / "b.jsonl", ["", short(0), "  \t", "", short(1), ""])
    data = build(make_cfg([path], data_split="100,0,0"), tokenizer)
    st = data.stats["tasks"]["b"]
    assert (st["lines"], st["blank"], st["train_samples"]) == (6, 4, 2)


def test_empty_file_warns(make_cfg, tokenizer, tmp_path, caplog):
    write_lines(tmp_path / "t" / "a.jsonl", [short(i) for i in range(5)])
    (tmp_path / "t" / "empty.jsonl").write_text("")
    with caplog.at_level(logging.WARNING):
        data = build(make_cfg([str(tmp_path / "t")], data_split="100,0,0"), tokenizer)
    assert data.stats["tasks"]["t"]["lines"] == 5
    assert any("empty.jsonl" in r.getMessage() and "empty file" in r.getMessage() for r in caplog.records)


# --- small tasks -----------------------------------------------------------------------------------------------------


def test_task_too_small_for_validation_warns_not_errors(make_cfg, tokenizer, tmp_path, caplog):
    big = write_lines(tmp_path / "big.jsonl", [short(i) for i in range(100)])
    tiny = write_lines(tmp_path / "tiny.jsonl", [short(1000)])
    assert split_of(short(1000), (0.98, 0.02, 0.0)) == "train"
    cfg = make_cfg([big, tiny], data_split="98,2,0")
    for attempt in ("cold", "warm"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            data = build(cfg, tokenizer)
        assert data.from_cache == (attempt == "warm")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("'tiny'" in w and "no validation sample" in w for w in warnings), (attempt, warnings)
        assert len(data.tasks[1].train) == 1 and len(data.tasks[1].valid) == 0


# --- the cache: warm loads and invalidation --------------------------------------------------------------------------


def two_task_folders(tmp_path, n=60):
    a = [write_lines(tmp_path / "data" / "cc" / "part1.jsonl", [short(i) for i in range(n)]),
         write_lines(tmp_path / "data" / "cc" / "part2.jsonl", [long_answer(i) for i in range(n // 4)])]
    b = write_lines(tmp_path / "data" / "t2c" / "x.jsonl",
                    [chat(f"Explain {i}", f"It returns {i}.", system="You are terse.") for i in range(n)])
    return [str(tmp_path / "data" / "cc"), str(tmp_path / "data" / "t2c")], a + [b]


def stored_arrays(data):
    return {name: np.load(os.path.join(data.cache_path, name)) for name in ("ids.npy", "mask.npy", "index.npy")}


def served(data):
    return [[(ids.tolist(), mask.tolist()) for ids, mask in (t.train[i] for i in range(len(t.train)))]
            + [(ids.tolist(), mask.tolist()) for ids, mask in (t.valid[i] for i in range(len(t.valid)))]
            for t in data.tasks]


def test_warm_load_returns_the_same_data(make_cfg, tokenizer, tmp_path):
    paths, _ = two_task_folders(tmp_path)
    cfg = make_cfg(paths)
    cold = build(cfg, tokenizer)
    warm = build(cfg, tokenizer)
    assert (cold.from_cache, warm.from_cache) == (False, True)
    assert warm.cache_path == cold.cache_path
    assert warm.stats == cold.stats
    assert served(warm) == served(cold)
    assert warm.task_names == ["cc", "t2c"]
    assert isinstance(warm.tasks[0].train._ids, np.memmap)  # memory-mapped, not read into memory


def test_what_invalidates_the_cache(make_cfg, tokenizer, tmp_path, tiny_model_dir):
    paths, files = two_task_folders(tmp_path, n=20)
    cfg = make_cfg(paths)
    first = build(cfg, tokenizer)

    # touching (new mtime, same bytes) and rebuilding the config object: reused
    os.utime(files[0], ns=(1, 1))
    again = build(make_cfg(paths), tokenizer)
    assert again.from_cache and again.cache_path == first.cache_path

    seen = {first.cache_path}

    def assert_new(data, what):
        assert not data.from_cache, what
        assert data.cache_path not in seen, what
        seen.add(data.cache_path)

    assert_new(build(make_cfg(paths, seq_length=SEQ * 2), tokenizer), "seq_length")
    assert_new(build(make_cfg(paths, template="chatml"), tokenizer), "template")
    assert_new(build(make_cfg(paths, role_markers={"user": "<s>user\n"}), tokenizer), "role_markers")
    assert_new(build(make_cfg(paths, tokenize_mode="pretrain"), tokenizer), "tokenize_mode")
    assert_new(build(make_cfg(paths, overlong_policy="drop"), tokenizer), "overlong_policy")
    assert_new(build(make_cfg(paths, data_split="50,50,0"), tokenizer), "data_split")

    other_tok = load_tokenizer(tiny_model_dir)
    other_tok.add_special_tokens({"additional_special_tokens": ["<|fim_middle|>"]})
    assert_new(build(cfg, other_tok), "tokenizer with an added token")

    from mftcoder.testing import build_tokenizer
    retrained = tmp_path / "retrained"
    build_tokenizer(vocab_size=400).save_pretrained(str(retrained))
    assert_new(build(cfg, load_tokenizer(str(retrained))), "another tokenizer")

    # the original inputs still map to the first entry
    back = build(make_cfg(paths), tokenizer)
    assert back.from_cache and back.cache_path == first.cache_path

    # one changed byte, same size, same mtime: still a new entry (the fingerprint reads the content)
    st = os.stat(files[0])
    with open(files[0], "r+b") as f:
        content = f.read()
        f.seek(0)
        f.write(content.replace(b"add 3.", b"add 7.", 1))
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.path.getsize(files[0]) == st.st_size
    changed = build(cfg, tokenizer)
    assert_new(changed, "file content")

    # a new file in a task folder
    write_lines(tmp_path / "data" / "t2c" / "more.jsonl", [short(99)])
    assert_new(build(make_cfg(paths), tokenizer), "added file")


def test_parallel_and_serial_builds_are_identical(make_cfg, tokenizer, tmp_path):
    paths, _ = two_task_folders(tmp_path, n=700)  # several 256-line chunks per file
    serial = build(make_cfg(paths, cache_dir=str(tmp_path / "c1"), on_bad_line="skip"), tokenizer, num_workers=1)
    parallel = build(make_cfg(paths, cache_dir=str(tmp_path / "c2"), on_bad_line="skip"), tokenizer, num_workers=2)
    assert os.path.basename(serial.cache_path) == os.path.basename(parallel.cache_path)
    assert serial.stats == parallel.stats
    a, b = stored_arrays(serial), stored_arrays(parallel)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    assert serial.stats["tasks"]["cc"]["lines"] == 700 + 175


def test_parallel_build_reports_the_first_bad_line_in_file_order(make_cfg, tokenizer, tmp_path):
    lines = [short(i) for i in range(1200)]
    lines[900] = "{bad"
    lines[1100] = "{bad too"
    path = write_lines(tmp_path / "x.jsonl", lines)
    with pytest.raises(PreprocessError, match=rf"{path}:901: invalid JSON"):
        build(make_cfg([path]), tokenizer, num_workers=2)


# --- data_stats.json -------------------------------------------------------------------------------------------------


def test_data_stats_json_has_the_documented_keys(make_cfg, tokenizer, tmp_path, capsys):
    paths, _ = two_task_folders(tmp_path, n=20)
    cfg = make_cfg(paths)
    prepare_data(cfg, tokenizer, progress=False)
    with open(os.path.join(cfg.output_dir, "data_stats.json")) as f:
        stats = json.load(f)
    assert list(stats["tasks"]) == ["cc", "t2c"]
    documented = {"files", "lines", "train_samples", "valid_samples", "overlong", "truncated", "dropped", "rejected",
                  "tokens", "loss_tokens"}
    for name, st in stats["tasks"].items():
        assert documented <= set(st), name
        assert st["lines"] == accounted(st)
    assert stats["tasks"]["cc"]["lines"] == 25 and stats["tasks"]["cc"]["truncated"] == 5
    assert len(stats["tasks"]["cc"]["files"]) == 2
    out = capsys.readouterr().out
    assert "tokenised in" in out and "TOTAL" in out


def test_tokenizer_fingerprint_sees_in_memory_changes(tiny_model_dir):
    from tokenizers import normalizers

    from mftcoder.data.cache import tokenizer_fingerprint

    a, b = load_tokenizer(tiny_model_dir), load_tokenizer(tiny_model_dir)
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    b.backend_tokenizer.normalizer = normalizers.Lowercase()  # same files on disk, different tokens
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)


def test_attaching_the_chat_template_keeps_the_cache(make_cfg, tokenizer, tiny_model_dir, tmp_path):
    """Training attaches the template's Jinja to the tokenizer it saves; that must not re-tokenise the data."""
    from mftcoder.data.template import attach_chat_template, get_template

    paths, _ = two_task_folders(tmp_path, n=10)
    cfg = make_cfg(paths)
    cold = build(cfg, tokenizer)
    tok = load_tokenizer(tiny_model_dir)
    attach_chat_template(tok, get_template("mftcoder", tok))
    assert tok.chat_template
    warm = build(cfg, tok)
    assert warm.from_cache and warm.cache_path == cold.cache_path


def test_tokenizer_template_without_a_chat_template_is_a_clear_error(make_cfg, tokenizer, tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [short(0)])
    assert not tokenizer.chat_template
    with pytest.raises(PreprocessError, match="template='tokenizer'.*chat_template"):
        build(make_cfg([path], template="tokenizer"), tokenizer)


def test_a_line_the_tokenizer_template_refuses_is_a_bad_line(make_cfg, tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    tok.chat_template = ("{% for m in messages %}{% if 'forbidden' in m['content'] %}"
                         "{{ raise_exception('no forbidden words') }}{% endif %}"
                         "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
    path = write_lines(tmp_path / "x.jsonl", [short(0), chat("say the forbidden word", "no"), short(1)])
    with pytest.raises(PreprocessError, match=rf"{path}:2: .*no forbidden words"):
        build(make_cfg([path], template="tokenizer"), tok)
    data = build(make_cfg([path], template="tokenizer", on_bad_line="skip", data_split="100,0,0"), tok)
    assert (data.stats["tasks"]["x"]["train_samples"], data.stats["tasks"]["x"]["rejected"]) == (2, 1)


# --- the tokenising step on its own ----------------------------------------------------------------------------------


def test_line_encoder_gives_each_line_a_status(make_cfg, tokenizer, tmp_path):
    from mftcoder.data.template import get_template
    from mftcoder.data.tokenise import EncodeSettings, LineEncoder

    cfg = make_cfg([str(tmp_path)], overlong_policy="drop", data_split="100,0,0")
    enc = LineEncoder(get_template(cfg.template, tokenizer), EncodeSettings.from_config(cfg))
    ok = enc.encode(short(1).encode() + b"\r\n", 3, "f.jsonl")
    assert (ok.lineno, ok.status, ok.split, ok.overlong) == (3, "ok", "train", False)
    full = get_template(cfg.template, tokenizer).encode(parse_line(short(1), "f:1"))
    assert ok.ids.tolist() == full.input_ids and ok.mask.tolist() == full.loss_mask
    assert enc.encode(b"  \n", 4, "f.jsonl").status == "blank"
    bad = enc.encode(b'{"foo": 1}\n', 5, "f.jsonl")
    assert bad.status == "rejected" and bad.reason.startswith("f.jsonl:5: unknown line format")
    long = enc.encode(long_answer(0).encode(), 6, "f.jsonl")
    assert (long.status, long.overlong) == ("dropped", True) and long.reason.startswith("f.jsonl:6: ")
    assert long.ids is None  # nothing of a dropped line is kept
