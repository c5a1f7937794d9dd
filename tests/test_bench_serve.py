"""benchmarks/bench_serve.py on the tiny model with small numbers: both server configurations are measured, no
request fails, every concurrent (batched) answer equals the single-request answer, and the batching-on server really
decoded several requests in one batch while the batching-off one never did.

Speed is never asserted (benchmarks/README.md has measured numbers).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_serve.py"
REQUESTS, MAX_TOKENS = 8, 8


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_serve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(*args: str, json_path: Path | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    extra = ["--json", str(json_path)] if json_path else []
    return subprocess.run([sys.executable, str(SCRIPT), *args, *extra], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-serve") / "serve.json"
    proc = run_bench("--requests", str(REQUESTS), "--max-tokens", str(MAX_TOKENS), "--rounds", "1",
                     "--max-batch-size", str(REQUESTS), "--batch-wait-ms", "200", json_path=out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


def test_both_configurations_are_reported_side_by_side(small_run):
    results, stdout = small_run
    assert set(results["configs"]) == {"off", "on"}
    assert [(r["config"], r["round"]) for r in results["runs"]] == [("off", 1), ("on", 1)]
    assert results["settings"]["requests"] == REQUESTS and results["settings"]["max_tokens"] == MAX_TOKENS
    for label in ("batching off", "batching on (8)", "on/off", "requests/s", "latency p95 (s)",
                  "time to first token p50 (s)", "completion tokens/s", "answers != single-request answer"):
        assert label in stdout
    for run in results["runs"]:
        assert run["requests"] == REQUESTS
        assert run["requests_per_s"] > 0 and run["latency_p95_s"] >= run["latency_p50_s"] >= run["ttft_p50_s"] > 0
        # every request streamed its answer to the end: 1..MAX_TOKENS tokens each, counted by the server's usage
        assert REQUESTS <= run["completion_tokens"] <= REQUESTS * MAX_TOKENS
        assert run["completion_tokens"] == results["reference"]["completion_tokens"]


def test_no_errors_and_batched_answers_equal_single_request_answers(small_run):
    results = small_run[0]
    for run in results["runs"]:
        assert run["errors"] == 0, run["error_messages"]
        assert run["mismatches"] == 0, run["mismatched_prompts"]


def test_batching_on_decodes_several_requests_together(small_run):
    configs = small_run[0]["configs"]
    # batching off: every request decoded alone, so each one started a batch of its own
    assert configs["off"]["largest_batch"] == 1 and configs["off"]["joins"] == [REQUESTS]
    # 8 requests sent at once and a 200 ms gathering window: several rows decode together
    assert configs["on"]["largest_batch"] > 1
    assert configs["on"]["joins"][0] < REQUESTS


def test_prompts_are_distinct_and_percentiles_are_measured_values():
    bench = load_bench()
    texts = bench.prompts(200)
    assert len(set(texts)) == 200
    assert bench.percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert bench.percentile([float(i) for i in range(1, 101)], 95) == 95.0
    assert bench.percentile([], 50) is None


@pytest.mark.parametrize("args, message", [
    (["--requests", "0"], "--requests must be >= 1, got 0"),
    (["--max-batch-size", "1"], "--max-batch-size must be >= 2, got 1"),
    (["--model", "/nonexistent"], "--model /nonexistent: not tiny, smollm2 or a model directory"),
])
def test_bad_arguments_are_refused_by_name(args, message):
    proc = run_bench(*args, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
