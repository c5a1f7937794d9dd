"""benchmarks/bench_training.py --quick: every section is there and its timing-free invariants hold.

Speed is never asserted here (see benchmarks/README.md for measured numbers); only what must be true on any machine:
identical data from a warm cache, less pad waste with packing, the same samples in both throughput runs, and a
chunked cross entropy equal to the full one.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench_helpers import load_script, quick_json

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_training.py"
EXAMPLE_LINES = 680  # examples/data: 250 + 200 + 150 + 80 (pinned in test_examples_data.py)


def load_bench():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return quick_json(SCRIPT, tmp_path_factory.mktemp("bench"))


def test_every_section_is_reported(quick_run):
    results, stdout = quick_run
    for key in ("tokenisation", "packing", "cross_entropy", "machine", "settings"):
        assert key in results, f"--json lacks {key!r}"
    assert results["model"] == "tiny" and results["quick"] is True
    assert results["machine"]["threads"] == 1
    # one side-by-side table per section
    for title in ("== 1. tokenisation", "== 2. padding vs packing", "== 3. cross entropy"):
        assert title in stdout
    assert stdout.count("ours/baseline") == 4  # sections 1, 2, 3 and 3b (the fused cross entropy)


def test_warm_cache_gives_the_cold_build_data(quick_run):
    t = quick_run[0]["tokenisation"]
    assert t["identical"] is True
    assert t["warm_from_cache"] is True
    assert t["independent_builds"] >= 2  # compared with a build of its own, not only the files it was loaded from
    assert t["lines"] == EXAMPLE_LINES
    assert t["samples"] == EXAMPLE_LINES  # nothing of the example set is dropped or rejected
    assert len(t["cold_times_s"]) >= 1 and len(t["warm_times_s"]) >= 1


def test_packing_wastes_less_and_both_modes_train_the_same_samples(quick_run):
    p = quick_run[0]["packing"]
    pad, pack = p["padding"], p["pack"]
    assert pack["pad_waste"] < pad["pad_waste"]
    assert pack["pad_waste"] < 0.05
    assert pad["rows_per_epoch"] == p["train_samples"]  # padding: one sample a row
    assert pack["rows_per_epoch"] < pad["rows_per_epoch"]
    for mode in (pad, pack):
        # the rows the trainer builds in an epoch: whole steps of micro_batch rows
        assert mode["rows_built"] == mode["steps_per_epoch"] * p["micro_batch"]
        assert mode["pad_positions"] < mode["positions"]
    # the throughput runs cover exactly the same samples and non-pad tokens
    assert pad["train"]["samples"] == pack["train"]["samples"] > 0
    assert pad["train"]["tokens"] == pack["train"]["tokens"] > 0
    assert pack["train"]["positions"] < pad["train"]["positions"]


def test_chunked_cross_entropy_equals_full(quick_run):
    c = quick_run[0]["cross_entropy"]
    assert c["vocab"] == 49152
    assert c["max_abs_loss_diff"] <= 1e-5
    assert c["max_abs_grad_hidden_diff"] <= 1e-5 * c["max_abs_grad_hidden"]
    assert c["fused_max_abs_loss_diff"] <= 1e-5
    assert c["fused_max_abs_grad_hidden_diff"] <= 1e-5 * c["max_abs_grad_hidden"]
    for variant in ("full", "chunked", "fused"):
        r = c[variant]
        # near-uniform logits over 49,152 classes: the mean loss is close to ln(V), so a real CE over V ran
        assert abs(r["loss"] - math.log(c["vocab"])) < 0.5
        assert r["peak_rss_increase_mib"] > 0


def test_same_data_detects_one_changed_token(tiny_model_dir, tmp_path):
    bench = load_bench()
    from mftcoder.data.cache import TaskData, TokenizedData, load_or_build
    from mftcoder.model.tokenizer import load_tokenizer

    cfg = bench.make_config(tiny_model_dir, str(tmp_path), seq_length=1024, preprocessing_num_workers=1)
    data = load_or_build(cfg, load_tokenizer(tiny_model_dir), progress=False)

    def copy(flip: bool):
        tasks = []
        for k, t in enumerate(data.tasks):
            train = [(ids.copy(), mask.copy()) for ids, mask in (t.train[i] for i in range(len(t.train)))]
            if flip and k == len(data.tasks) - 1:
                train[-1][0][-1] += 1
            valid = [t.valid[i] for i in range(len(t.valid))]
            tasks.append(TaskData(t.task, bench.sample_store(train), bench.sample_store(valid)))
        return TokenizedData(tasks, data.stats, data.cache_path, data.from_cache)

    assert bench.same_data(data, copy(flip=False))
    assert not bench.same_data(data, copy(flip=True))
    assert not bench.same_data(data, bench.subset(data, 0.5))
    assert np.array_equal(bench.subset(data, 1.0).tasks[0].train.lengths, data.tasks[0].train.lengths)


def test_bad_arguments_are_refused_with_the_valid_choices(capsys):
    bench = load_bench()
    with pytest.raises(SystemExit):
        bench.parse_args(["--sections", "tokenisation,speed"])
    err = capsys.readouterr().err
    assert "speed" in err and "cross_entropy" in err
    with pytest.raises(SystemExit):
        bench.parse_args(["--threads", "0"])
    assert bench.parse_args(["--sections", "ce,tok"]).sections == ["tokenisation", "cross_entropy"]


# ---------------------------------------------------------------------------------------------------------------------
# benchmarks/bench_code_eval.py --quick: every language with a toolchain is timed and every canonical sample passes

CODE_EVAL_SCRIPT = ROOT / "benchmarks" / "bench_code_eval.py"


def _runnable(languages: list[str]) -> list[str]:
    from mftcoder.eval.languages import LANGUAGES, missing_requirements
    from mftcoder.eval.native_sandbox import bwrap_path

    return [lang for lang in languages if not missing_requirements(LANGUAGES[lang], "humaneval-x")
            and (lang == "python" or bwrap_path() is not None)]


def _code_eval_quick(tmp_path, languages: list[str]) -> dict:
    out = tmp_path / "code_eval.json"
    proc = subprocess.run([sys.executable, str(CODE_EVAL_SCRIPT), "--quick", "--languages", ",".join(languages),
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "samples/s" in proc.stdout and "2/1" in proc.stdout  # the side-by-side table
    with open(out) as f:
        return json.load(f)


def _check_code_eval(results: dict, languages: list[str]) -> None:
    ready = _runnable(languages)
    assert sorted(results["languages"]) == sorted(ready)
    assert sorted(results["skipped_languages"]) == sorted(set(languages) - set(ready))  # named, never timed as 0
    for lang, row in results["languages"].items():
        assert row["samples_per_s"] > 0 and row["speedup"] > 0, lang
        assert set(row["runs"]) == {"1", "2"}
        for run in row["runs"].values():
            assert run["samples"] == 2 and run["passed"] == 2 and run["not_passed"] == [], (lang, run)


def test_code_eval_benchmark_quick(tmp_path):
    """Every language but Go (whose first build of testing + testify into a fresh cache takes ~10 CPU s)."""
    languages = ["python", "cpp", "java", "js", "rust"]
    if not _runnable(languages[1:]):
        pytest.skip("no compiled-language toolchain or bubblewrap here")
    _check_code_eval(_code_eval_quick(tmp_path, languages), languages)


@pytest.mark.slow
def test_code_eval_benchmark_quick_go(tmp_path):
    if not _runnable(["go"]):
        pytest.skip("the Go toolchain (golang-go, testify) or bubblewrap is missing")
    _check_code_eval(_code_eval_quick(tmp_path, ["go"]), ["go"])
