"""examples/mft_vs_sft: the run configs are valid train_configs, the claims are checked against the numbers (true
and false), and the --quick comparison runs end to end (slow)."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "mft_vs_sft" / "run.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("mft_vs_sft_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_run_config_is_a_valid_train_config(example, tmp_path):
    from mftcoder.config import TrainConfig

    specs = example.run_specs()
    assert [s.name for s in specs] == ["sft_code_completion", "sft_text_to_code", "sft_code_explain", "sft_unit_tests",
                                       "mixed_sft", "mft_case3", "mft_coba"]
    for budget in (example.FULL, example.QUICK):
        tokens = set()
        for spec in specs:
            cfg = example.train_config(spec, budget, tmp_path / "data", tmp_path / spec.name, str(tmp_path))
            parsed = TrainConfig(**cfg)
            assert parsed.max_train_steps == budget.steps and parsed.peft_type == "lora"
            tokens.add(parsed.per_device_train_batch_size * parsed.gradient_accumulation_steps * parsed.seq_length)
        assert len(tokens) == 1  # the same tokens per step in every run


def _results(example, last: dict, rises: dict | None = None) -> dict:
    """A results dict with the given last validation loss {run: [4 task losses]}."""
    runs = {}
    for name, losses in last.items():
        runs[name] = {"label": name, "valid": {t: {"first": 2.0, "last": v, "rise_from_best": (rises or {}).get(
            name, {}).get(t, 0.0)} for t, v in zip(example.TASKS, losses)}}
    return {"runs": runs, "budget": {"sizes": list(example.FULL.sizes), "humaneval": 0}}


def test_claims_are_checked_against_the_numbers(example):
    good = _results(example, {"mixed_sft": [1.0, 1.0, 1.0, 2.0], "mft_case3": [0.9, 1.0, 0.95, 1.0],
                              "mft_coba": [1.0, 0.9, 1.1, 1.2]}, {"mft_coba": {"unit_tests": 0.05}})
    text = example.claims(good)
    assert text[0].startswith("holds: every task")
    assert text[1].startswith("holds: the smallest task (unit_tests)") and "unit_tests -50.0%" in text[1]
    assert "no task's validation loss rose" in text[2]  # case3
    assert "unit_tests (+5.0%)" in text[3]  # coba
    bad = _results(example, {"mixed_sft": [1.0, 1.0, 1.0, 1.0], "mft_case3": [1.2, 0.5, 1.0, 1.0],
                             "mft_coba": [1.1, 0.9, 1.0, 1.0]})
    text = example.claims(bad)
    assert text[0].startswith("does not hold for code_completion")
    assert text[1].startswith("does not hold: the smallest task")


@pytest.mark.slow
def test_quick_comparison_runs_every_run_and_task(tiny_chat_model_dir, tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--model", tiny_chat_model_dir, "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, env={**__import__("os").environ,
                                                                                       "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    tasks = ["code_completion", "text_to_code", "code_explain", "unit_tests"]
    assert sorted(results["runs"]) == sorted(["sft_" + t for t in tasks] + ["mixed_sft", "mft_case3", "mft_coba"])
    for name, run in results["runs"].items():
        assert run["tokens"] > 0
        for task in run["tasks"]:
            v = run["valid"][task]
            assert math.isfinite(v["first"]) and math.isfinite(v["last"]), (name, task)
        for task in ("code_completion", "text_to_code", "unit_tests"):
            if task in run["tasks"]:
                assert 0 <= run["passed"][task] <= run["problems"][task] == 3
        if len(run["tasks"]) > 1:
            assert 0.0 <= run["humaneval_pass@1"] <= 1.0
    assert sorted(results["base"]["problems"]) == ["code_completion", "text_to_code", "unit_tests"]
    table = (out / "results.md").read_text()
    for label in ["base model", "single-task SFT", "mixed SFT", "MFT case3", "MFT CoBa", *tasks]:
        assert label in table
    assert "nan" not in table
    html = (out / "report.html").read_text()
    assert all(name in html for name in results["runs"])
