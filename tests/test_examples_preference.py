"""The bundled preference example data (examples/data_preference/): reproducible, in the pinned line shapes, and
its code really behaves as the pair says (chosen passes; rejected fails, or passes but is clumsy)."""
from __future__ import annotations

import copy
import json
import re

import pytest
from example_helpers import EXAMPLES, assert_regenerates, load_script

SCRIPT = EXAMPLES / "make_preference_examples.py"
DATA = EXAMPLES / "data_preference"

EXPECTED_FILES = {
    "passing_vs_failing/pairs.jsonl": 200,
    "idiomatic_vs_not/messages.jsonl": 80,
    "idiomatic_vs_not/chat_rounds.jsonl": 20,
    "idiomatic_vs_not/conversations.jsonl": 20,
}
MAX_CHARS = 1400  # ~350 tokens at 4 characters per token
FENCE_RE = re.compile(r"```python\n(.*?)\n```", re.S)
DEF_RE = re.compile(r"^def (\w+)\(", re.M)
# index loops, comparisons with True/False/None, if-else ladders returning booleans, while loops, .keys()
# look-ups, hand-kept counters
CLUMSY_RE = re.compile(r"range\(len\(|== (True|False|None)|return (True|False)\b|\bwhile\b|\.keys\(\)"
                       r"|\b(?P<var>\w+) = (?P=var) [+*] |\+= 1")


def rows(rel: str) -> list[tuple[str, dict]]:
    with open(DATA / rel, encoding="utf-8") as f:
        return [(f"{rel}:{n}", json.loads(line)) for n, line in enumerate(f, start=1)]


@pytest.fixture(scope="module")
def library() -> dict:
    """Every accepted function name of the SFT generator's library -> its Fn (cases and documented errors)."""
    gen = load_script(EXAMPLES / "make_examples.py", "make_examples_for_preference_test")
    by_name = {}
    for fn_ in gen.LIBRARY:
        for name in fn_.names:
            assert name not in by_name, f"function name {name} is ambiguous in the library"
            by_name[name] = fn_
    return by_name


# --- the shapes, one per file ------------------------------------------------------------------------------------

def _turns(turns, role_key, content_key, roles, where):
    assert isinstance(turns, list) and turns, where
    for turn in turns:
        assert set(turn) == {role_key, content_key}, where
        assert isinstance(turn[content_key], str) and turn[content_key].strip(), where
    got = [t[role_key] for t in turns]
    assert got[-1] == roles["user"], f"{where}: the prompt must end with the user's turn"
    assert roles["system"] not in got[1:], where
    return [t[content_key] for t in turns], got[0] == roles["system"]


def pair_of(rel: str, where: str, record: dict) -> tuple[list[str], str, str, bool]:
    """Check the line's pinned shape; return (prompt texts, chosen text, rejected text, has a system prompt)."""
    if rel.startswith("passing_vs_failing/"):
        assert set(record) in ({"prompt", "chosen", "rejected"}, {"system", "prompt", "chosen", "rejected"}), where
        assert all(isinstance(v, str) and v.strip() for v in record.values()), where
        return [record.get("system", ""), record["prompt"]], record["chosen"], record["rejected"], "system" in record
    if rel.endswith("messages.jsonl"):
        assert set(record) == {"prompt", "chosen", "rejected"}, where
        texts, system = _turns(record["prompt"], "role", "content", {"user": "user", "system": "system"}, where)
        answers = []
        for key in ("chosen", "rejected"):
            (turn,) = record[key]
            assert turn["role"] == "assistant" and set(turn) == {"role", "content"}, where
            answers.append(turn["content"])
        return texts, answers[0], answers[1], system
    if rel.endswith("chat_rounds.jsonl"):
        assert set(record) == {"chat_rounds", "chosen", "rejected"}, where
        texts, system = _turns(record["chat_rounds"], "role", "content", {"user": "human", "system": "system"}, where)
        body = [t["role"] for t in record["chat_rounds"]][1 if system else 0:]
        assert body == ["human", "bot", "human"], f"{where}: roles {body}"
        return texts, record["chosen"], record["rejected"], system
    assert rel.endswith("conversations.jsonl"), rel
    assert set(record) == {"conversations", "chosen", "rejected"}, where
    texts, system = _turns(record["conversations"], "from", "value", {"user": "human", "system": "system"}, where)
    for key in ("chosen", "rejected"):
        assert set(record[key]) == {"from", "value"} and record[key]["from"] == "gpt", where
    return texts, record["chosen"]["value"], record["rejected"]["value"], system


def test_generator_rewrites_the_committed_files_byte_for_byte(tmp_path):
    assert_regenerates(SCRIPT, DATA, EXPECTED_FILES, tmp_path, hash_seed="4321")


@pytest.mark.parametrize("rel", sorted(EXPECTED_FILES))
def test_every_line_has_the_pinned_shape(rel):
    records = rows(rel)
    assert len(records) == EXPECTED_FILES[rel]
    seen, with_system = set(), 0
    for where, record in records:
        prompt, chosen, rejected, system = pair_of(rel, where, record)
        with_system += system
        assert chosen != rejected, f"{where}: chosen == rejected"
        assert len(FENCE_RE.findall(chosen)) == 1 and len(FENCE_RE.findall(rejected)) == 1, where
        assert sum(map(len, prompt)) + len(chosen) + len(rejected) <= MAX_CHARS, f"{where}: pair too long"
        key = json.dumps(record, sort_keys=True)
        assert key not in seen, f"{where}: duplicate pair"
        seen.add(key)
    assert 0 < with_system < len(records), "some lines, not all, carry a system prompt"


# --- the code in the answers, re-executed from the jsonl text ----------------------------------------------------

def case_flags(code: str, where: str, library: dict) -> list[bool]:
    """Run the answer's function on its library function's cases: one flag per case and per documented error."""
    name = DEF_RE.findall(code)[-1]
    fn_ = library[name]
    namespace: dict = {}
    exec(compile(code, where, "exec"), namespace)
    func, flags = namespace[name], []
    for args, expected in fn_.cases:
        try:
            flags.append(repr(func(*copy.deepcopy(args))) == repr(expected))
        except Exception:
            flags.append(False)
    for args, exc in fn_.raises:
        try:
            func(*copy.deepcopy(args))
            flags.append(False)
        except exc:
            flags.append(True)
        except Exception:
            flags.append(False)
    return flags


def _answer_code(rel, where, record):
    _, chosen, rejected, _ = pair_of(rel, where, record)
    (good,), (bad,) = FENCE_RE.findall(chosen), FENCE_RE.findall(rejected)
    assert DEF_RE.findall(good) == DEF_RE.findall(bad), f"{where}: chosen and rejected define different functions"
    return good, bad


def test_passing_vs_failing_chosen_passes_and_rejected_fails(library):
    functions = set()
    for where, record in rows("passing_vs_failing/pairs.jsonl"):
        good, bad = _answer_code("passing_vs_failing/pairs.jsonl", where, record)
        assert all(case_flags(good, where, library)), f"{where}: the chosen code fails a case\n{good}"
        flags = case_flags(bad, where, library)
        assert not all(flags), f"{where}: the rejected code passes every case\n{bad}"
        assert any(flags), f"{where}: the rejected code fails every case (not a plausible bug)\n{bad}"
        functions.add(library[DEF_RE.findall(good)[-1]].name)
    assert len(functions) >= 50  # many different bugs, not one repeated


def test_idiomatic_vs_not_both_pass(library):
    functions = set()
    for rel in (r for r in EXPECTED_FILES if r.startswith("idiomatic_vs_not/")):
        for where, record in rows(rel):
            good, bad = _answer_code(rel, where, record)
            assert all(case_flags(good, where, library)), f"{where}: the chosen code fails a case\n{good}"
            assert all(case_flags(bad, where, library)), f"{where}: the rejected code fails a case\n{bad}"
            assert CLUMSY_RE.search(bad), f"{where}: the rejected code shows no clumsy pattern\n{bad}"
            assert not CLUMSY_RE.search(good), f"{where}: the chosen code shows a clumsy pattern\n{good}"
            functions.add(library[DEF_RE.findall(good)[-1]].name)
    assert len(functions) >= 30


# --- the generator refuses pairs that do not say what they claim -------------------------------------------------

def test_generator_refuses_a_rejected_answer_that_passes_and_a_chosen_one_that_fails():
    gen = load_script(SCRIPT, "make_preference_examples_under_test")
    fn_ = next(f for f in gen.ex.LIBRARY if f.name == "factorial")
    variant = gen.ex.Variant(fn_, "factorial", ("n",), typed=False, doc_style="none", body_index=0)
    with pytest.raises(gen.GenerationError, match="rejected version of factorial passes every case"):
        gen.check_buggy(variant, variant.source(), "t")
    buggy = gen.render(variant, gen.BUGS["factorial"][0])
    gen.check_buggy(variant, buggy, "t")  # the shipped bug is accepted as a bug
    builder = gen.ex.Builder("t", 1, gen.ex.validate_library())
    with pytest.raises(gen.GenerationError, match=r"factorial\(5,\) returned 24, expected 120"):
        gen.check_correct(builder, variant, buggy, "t")
