"""Preference pairs as data: every accepted line shape, the file:line errors, rendering with the SFT templates (loss on
the final answer only), fitting over-long pairs (prompt side first), and the accounting in data_stats.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mftcoder.data.cache import PreprocessError, load_or_build
from mftcoder.data.formats import DataFormatError, Turn
from mftcoder.data.pairs import PreferencePair, fit_pair, parse_pair
from mftcoder.data.template import get_template
from tests.train_helpers import make_cfg

U, A, S = "user", "assistant", "system"


@pytest.mark.parametrize("line, prompt", [
    ({"prompt": "add 1", "chosen": "x + 1", "rejected": "x - 1"}, ((U, "add 1"),)),
    ({"system": "be brief", "question": "add 1", "chosen": "x + 1", "rejected": "x - 1"},
     ((S, "be brief"), (U, "add 1"))),
    ({"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "add 1"}],
      "chosen": [{"role": "assistant", "content": "x + 1"}], "rejected": [{"role": "assistant", "content": "x - 1"}]},
     ((S, "sys"), (U, "add 1"))),
    ({"chat_rounds": [{"role": "human", "content": "hi"}, {"role": "bot", "content": "hello"},
                      {"role": "human", "content": "add 1"}], "chosen": "x + 1", "rejected": "x - 1"},
     ((U, "hi"), (A, "hello"), (U, "add 1"))),
    ({"messages": [{"role": "user", "content": "add 1"}], "chosen": {"role": "assistant", "content": "x + 1"},
      "rejected": {"role": "assistant", "content": "x - 1"}}, ((U, "add 1"),)),
    ({"conversations": [{"from": "human", "value": "add 1"}], "chosen": {"from": "gpt", "value": "x + 1"},
      "rejected": {"from": "gpt", "value": "x - 1"}}, ((U, "add 1"),)),
    ({"prompt": [{"from": "human", "value": "add 1"}], "chosen": "x + 1", "rejected": "x - 1"}, ((U, "add 1"),)),
])
def test_every_accepted_line_shape_gives_the_same_pair(line, prompt):
    pair = parse_pair(line, "f.jsonl:3")
    assert pair == PreferencePair(tuple(Turn(r, c) for r, c in prompt), "x + 1", "x - 1")
    assert pair.conversation("x + 1").messages()[-1] == {"role": "assistant", "content": "x + 1"}


@pytest.mark.parametrize("line, message", [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "'chosen' and 'rejected' are identical"),
    ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "'chosen' is empty or whitespace-only"),
    ({"prompt": "q", "chosen": "a"}, "no 'rejected' (keys found: prompt, chosen)"),
    ({"chosen": "a", "rejected": "b"}, "no prompt (keys found: chosen, rejected)"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "'prompt' is empty"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a",
      "rejected": "b"}, "'messages' ends with a assistant turn; the prompt of a pair must end with the user's turn"),
    ({"prompt": "q", "chosen": {"role": "user", "content": "a"}, "rejected": "b"},
     "'chosen' has role 'user'; expected an assistant turn"),
    ({"prompt": "q", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}] * 2},
     "'rejected' is a list of 2 turns; expected one assistant turn"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}], "chosen": "a",
      "rejected": "b"}, "roles do not alternate in 'prompt'"),
    (["not", "an", "object"], "line is a JSON list; expected a preference pair"),
])
def test_bad_lines_are_refused_naming_the_line_and_what_is_valid(line, message):
    with pytest.raises(DataFormatError) as info:
        parse_pair(line, "f.jsonl:7")
    assert str(info.value).startswith("f.jsonl:7: ") and message in str(info.value), str(info.value)


def _ids_mask(prompt_len: int, answer_len: int, start: int = 100):
    ids = np.arange(start, start + prompt_len + answer_len, dtype=np.int32)
    mask = np.r_[np.zeros(prompt_len), np.ones(answer_len)].astype(np.uint8)
    return ids, mask


def test_fitting_cuts_both_prompts_from_the_start_first_then_the_answers_or_drops():
    fits = fit_pair(_ids_mask(10, 5), _ids_mask(10, 3), 20, "truncate", "w")
    assert fits.status == "ok" and not fits.overlong and len(fits.samples[0][0]) == 15  # fits: untouched

    # 30 + 8 > 20: the prompts lose their first 18 tokens alike (room for the longer answer), answers untouched
    fits = fit_pair(_ids_mask(30, 8), _ids_mask(30, 5), 20, "truncate", "w")
    (c_ids, c_mask), (r_ids, r_mask) = fits.samples
    assert fits.status == "ok" and fits.overlong
    assert c_ids.tolist() == list(range(118, 138)) and r_ids.tolist() == list(range(118, 135))
    assert c_mask.sum() == 8 and r_mask.sum() == 5

    # an answer longer than half a row: the prompt keeps half a row (10), the answers are cut at their end...
    fits = fit_pair(_ids_mask(30, 25), _ids_mask(30, 4), 20, "truncate", "w")
    (c_ids, c_mask), (r_ids, r_mask) = fits.samples
    assert (len(c_ids), int(c_mask.sum())) == (20, 10) and (len(r_ids), int(r_mask.sum())) == (14, 4)
    assert c_ids[0] == r_ids[0] == 120  # the same prompt tokens for both answers
    # ...or, under overlong_policy drop, the pair is dropped
    dropped = fit_pair(_ids_mask(30, 25), _ids_mask(30, 4), 20, "drop", "f:2")
    assert dropped.status == "dropped" and dropped.overlong and dropped.reason.startswith("f:2: ")
    # a prompt shorter than half a row stays whole however long the answer
    fits = fit_pair(_ids_mask(4, 40), _ids_mask(4, 2), 20, "truncate", "w")
    assert fits.samples[0][0][:4].tolist() == [100, 101, 102, 103]


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return str(path.parent)


def test_pairs_render_like_sft_with_loss_on_the_final_answer_only(tiny_model_dir, tiny_tokenizer, tmp_path):
    line = {"chat_rounds": [{"role": "human", "content": "hi"}, {"role": "bot", "content": "hello there"},
                            {"role": "human", "content": "add 1 to x"}],
            "chosen": "def f(x):\n    return x + 1", "rejected": "The quick brown fox"}
    task = _write(tmp_path / "data" / "t" / "a.jsonl", [line] * 1)
    cfg = make_cfg(tiny_model_dir, [task], tmp_path / "out", objective="dpo", data_split="100,0,0")
    data = load_or_build(cfg, tiny_tokenizer, progress=False)
    store = data.tasks[0].train
    assert len(store) == 2 and data.num_rows == 2  # one pair: chosen, then rejected
    template = get_template("mftcoder", tiny_tokenizer)
    pair = parse_pair(line, "x")
    for (ids, mask), answer in zip((store[0], store[1]), (pair.chosen, pair.rejected)):
        enc = template.encode(pair.conversation(answer))
        assert ids.tolist() == enc.input_ids  # the same text and tokens as SFT renders
        text = template.render(pair.conversation(answer))[0]
        trained = tiny_tokenizer.decode([int(i) for i, m in zip(ids, mask) if m])
        assert trained == answer + "\n" + tiny_tokenizer.eos_token  # the earlier bot turn is prompt, not trained
        assert text.endswith(trained + "\n")
    stats = data.stats["tasks"]["t"]
    assert stats["unit"] == "pair" and stats["train_samples"] == 1 and stats["tokens"] == len(store[0][0]) + len(store[1][0])


def test_bad_and_overlong_pairs_are_counted_never_silent(tiny_model_dir, tiny_tokenizer, tmp_path):
    good = {"prompt": "add 1 to x", "chosen": "def f(x):\n    return x + 1", "rejected": "The quick brown fox"}
    long_answer = {"prompt": "add 2 to x", "chosen": "return x + 2 " * 40, "rejected": "no"}
    long_prompt = {"prompt": "The quick brown fox " * 30, "chosen": "x + 3", "rejected": "x - 3"}
    lines = [good, {"prompt": "q", "chosen": "a", "rejected": "a"}, "", long_answer, long_prompt, "{broken"]
    task = _write(tmp_path / "data" / "t" / "a.jsonl", lines)

    with pytest.raises(PreprocessError, match=r"a\.jsonl:2: 'chosen' and 'rejected' are identical(.|\n)*on_bad_line"):
        load_or_build(make_cfg(tiny_model_dir, [task], tmp_path / "o1", objective="dpo"), tiny_tokenizer,
                      progress=False)
    for policy, kept, dropped in (("truncate", 3, 0), ("drop", 2, 1)):
        cfg = make_cfg(tiny_model_dir, [task], tmp_path / f"o-{policy}", objective="dpo", on_bad_line="skip",
                       overlong_policy=policy, data_split="100,0,0")
        data = load_or_build(cfg, tiny_tokenizer, progress=False)
        st = data.stats["tasks"]["t"]
        assert (st["lines"], st["blank"], st["rejected"], st["train_samples"]) == (6, 1, 2, kept)
        assert (st["overlong"], st["truncated"], st["dropped"]) == (2, kept - 1, dropped)
        assert st["lines"] == st["blank"] + st["rejected"] + st["dropped"] + st["train_samples"]
        assert all(len(data.tasks[0].train[i][0]) <= cfg.seq_length + 1 for i in range(2 * kept))
        assert data.stats["rejected_examples"]["t"][0].startswith(f"{task}/a.jsonl:2: ")


def test_preference_and_sft_caches_are_kept_apart(tiny_model_dir, tiny_tokenizer, tmp_path):
    """The same files read as pairs and (for a line that is also valid SFT) as chat: different cache entries."""
    line = {"prompt": "add 1", "answer": "x + 1", "chosen": "x + 1", "rejected": "x - 1"}
    task = _write(tmp_path / "data" / "t" / "a.jsonl", [line])
    sft = load_or_build(make_cfg(tiny_model_dir, [task], tmp_path / "o", data_split="100,0,0"), tiny_tokenizer,
                        progress=False)
    dpo = load_or_build(make_cfg(tiny_model_dir, [task], tmp_path / "o", objective="orpo", data_split="100,0,0"),
                        tiny_tokenizer, progress=False)
    assert sft.cache_path != dpo.cache_path and (len(sft.tasks[0].train), len(dpo.tasks[0].train)) == (1, 2)
