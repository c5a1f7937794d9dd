"""The bundled continued-pretraining example data (examples/data_pretrain/): reproducible, every document is read by
the real pretraining cache (nothing rejected or empty), and some modules are long enough to be split across blocks."""
from __future__ import annotations

import json
import os
import re

import pytest
from example_helpers import EXAMPLES, assert_regenerates

from mftcoder.config import load_config, parse_config
from mftcoder.data.cache import load_or_build
from mftcoder.testing import build_tokenizer

SCRIPT = EXAMPLES / "make_pretrain_examples.py"
DATA = EXAMPLES / "data_pretrain"
REPO = EXAMPLES.parent
CATEGORIES = {"strings": 27, "lists": 27, "dicts": 11, "math": 24, "misc": 5}  # library functions per category
EXPECTED_FILES = {"python_modules/part-000.jsonl": 200, "python_modules/part-001.jsonl": 120,
                  "zh_code_notes/qa/notes.jsonl": 400, "en_reference/reference.jsonl": 120}
DOCUMENTS = {"python_modules": 320, "zh_code_notes": 400 + sum(CATEGORIES.values()), "en_reference": 120}
CJK_RE = re.compile(r"[\u4e00-\u9fff]")


def txt_files() -> list[str]:
    return sorted(p.relative_to(DATA).as_posix() for p in (DATA / "zh_code_notes").rglob("*.txt"))


def documents(task: str) -> list[str]:
    docs = []
    for path in sorted((DATA / task).rglob("*")):
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                docs += [json.loads(line)["text"] for line in f]
        elif path.suffix == ".txt":
            docs.append(path.read_text(encoding="utf-8"))
    return docs


def test_generator_rewrites_the_committed_files_byte_for_byte(tmp_path):
    assert_regenerates(SCRIPT, DATA, [*EXPECTED_FILES, *txt_files()], tmp_path, hash_seed="987")


def test_pinned_files_and_documents():
    for rel, n in EXPECTED_FILES.items():
        with open(DATA / rel, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        assert len(rows) == n and all(set(r) == {"text"} and r["text"].strip() for r in rows), rel
    by_folder = {}
    for rel in txt_files():
        by_folder.setdefault(rel.split("/")[1], []).append(rel)
    assert {k: len(v) for k, v in by_folder.items()} == CATEGORIES  # one reference page per library function
    for task, n in DOCUMENTS.items():
        docs = documents(task)
        assert len(docs) == n and len(set(docs)) == n, f"{task}: {len(set(docs))} distinct of {len(docs)}"
    # the Chinese task is Chinese: every document holds Chinese prose
    assert all(len(CJK_RE.findall(d)) >= 20 for d in documents("zh_code_notes"))


def test_every_module_compiles_and_defines_its_functions():
    for where, text in enumerate(documents("python_modules")):
        code = compile(text, f"python_modules[{where}]", "exec")
        assert text.startswith('"""') and sum(isinstance(c, type(code)) for c in code.co_consts) >= 2, where


def test_the_real_cache_reads_every_document(tmp_path):
    cfg = parse_config({"data_paths": [str(DATA / t) for t in DOCUMENTS], "output_dir": str(tmp_path / "out"),
                        "pretrained_model_path": str(tmp_path), "objective": "pretrain", "seq_length": 1024,
                        "data_split": "95,5,0"})
    data = load_or_build(cfg, build_tokenizer(), num_workers=1, progress=False)
    for task, n in DOCUMENTS.items():
        st = data.stats["tasks"][task]
        assert (st["rejected"], st["empty"]) == (0, 0), task
        assert st["train_samples"] + st["valid_samples"] == n and st["valid_samples"] > 0, task
        assert st["truncated"] == st["dropped"] == 0, task


def test_the_shipped_config_trains_on_these_tasks():
    cfg = load_config(str(REPO / "configs" / "example_pretrain.json"))
    assert cfg.objective == "pretrain" and cfg.seq_length == 1024 and cfg.reset_position_ids
    assert cfg.fim_rate == 0 and cfg.modules_to_save is None and cfg.peft_type == "lora"
    assert [os.path.normpath(t.path) for t in cfg.data_paths] == [f"examples/data_pretrain/{t}" for t in DOCUMENTS]


def smollm2_tokenizer():
    from mftcoder.model import smollm2

    target = os.path.join(smollm2.default_cache_dir(), smollm2.SUBDIR)
    if not os.path.isfile(os.path.join(target, smollm2._DONE_MARK)):
        pytest.skip("SmolLM2 is not converted on this machine (run `python -m mftcoder.model.smollm2` once)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(target)


def test_some_modules_are_split_across_1024_token_blocks_and_chinese_needs_many_tokens():
    tok = smollm2_tokenizer()
    lengths = [len(tok(d, add_special_tokens=False)["input_ids"]) for d in documents("python_modules")]
    assert 8 <= sum(n > 1024 for n in lengths) <= 20 and max(lengths) < 3000
    # byte-level BPE without Chinese merges: the Chinese prose needs about a token per character, which is what
    # vocabulary extension (mftcoder extend-vocab) improves
    prose = "".join(CJK_RE.findall("".join(documents("zh_code_notes"))))
    assert len(tok(prose, add_special_tokens=False)["input_ids"]) > 0.8 * len(prose)
