"""benchmarks/bench_data.py --quick: the timing-free invariants of the data-stage benchmark.

Speed is never asserted (measured numbers are in benchmarks/README.md): only that the per-sample baseline and the
cache hold the same token ids for every sample, that every scaled line is counted once in every variant, that the
cold builds with every core and with one worker write identical caches, and that the warm load returns the cold
build's cache and statistics.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bench_helpers import load_script, quick_json

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_data.py"
EXAMPLE_LINES = 680  # examples/data (pinned in test_examples_data.py)


def load_bench():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return quick_json(SCRIPT, tmp_path_factory.mktemp("bench"))


def test_every_variant_is_reported_side_by_side(quick_run):
    results, stdout = quick_run
    assert results["quick"] is True and results["model"] == "tiny" and results["samples"] == 2000
    rows = results["rows"]
    assert set(rows) == {"baseline", "cold", "cold_1", "warm"}
    assert rows["cold"]["workers"] == len(os.sched_getaffinity(0)) and rows["cold_1"]["workers"] == 1
    for column in ("baseline", f"cold, {len(os.sched_getaffinity(0))} workers", "cold, 1 worker", "warm", "/baseline"):
        assert column in stdout
    for metric in ("seconds", "samples/s", "tokens/s", "CPU seconds", "tokens per CPU second", "cores busy"):
        assert metric in stdout
    for r in list(rows.values()) + [results["baseline_ids_only"]]:
        assert r["seconds"] > 0 and r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"])
    # the cold build with several workers tokenised in worker processes; the 1-worker build in its own process
    if os.cpu_count() > 1:
        assert rows["cold"]["children_cpu_s"] > 0
    assert rows["cold_1"]["children_cpu_s"] == 0


def test_baseline_and_cache_hold_the_same_token_ids(quick_run):
    c = quick_run[0]["checks"]
    assert c["compared"] == 2000 and c["identical_ids"] is True and c["same_tokens"] is True
    # the naive prefix-count mask also trains the separator after each eos, and nothing else differs
    assert c["identical_masks_but_separator_fraction"] == 1.0
    assert c["naive_extra_trained_tokens_per_sample"] >= 1


def test_every_sample_is_counted_and_warm_equals_cold(quick_run):
    results = quick_run[0]
    rows, c = results["rows"], results["checks"]
    assert c["all_samples_counted"] is True
    assert results["data"]["samples"] == 2000 and sum(results["data"]["tasks"].values()) == 2000
    for key in ("cold", "cold_1", "warm"):
        s = rows[key]["stats"]
        assert s["lines"] == s["samples"] == 2000
        assert s["truncated"] == s["dropped"] == s["rejected"] == 0
    assert rows["warm"]["stats"] == rows["cold"]["stats"] == rows["cold_1"]["stats"]
    assert rows["warm"]["from_cache"] is True and rows["warm"]["cache"] == rows["cold"]["cache"]
    assert c["warm_equals_cold"] is True and c["cold_caches_identical"] is True


def test_scaled_data_is_deterministic_and_every_line_distinct(tmp_path):
    bench = load_bench()
    a = bench.scale_examples(str(tmp_path / "a"), 1500)
    bench.scale_examples(str(tmp_path / "b"), 1500)

    def contents(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*.jsonl"))}

    assert contents(tmp_path / "a") == contents(tmp_path / "b")
    assert a["source_lines"] == EXAMPLE_LINES and a["copies"] == 3
    assert set(a["tasks"]) == {"code_completion", "text_to_code", "unit_tests", "code_explain"}
    lines = [line for data in contents(tmp_path / "a").values() for line in data.decode().splitlines()]
    assert len(lines) == 1500 == len(set(lines))  # no two samples alike: nothing can be deduplicated
    # the first copy is the examples as shipped, byte for byte; later copies differ in the first user turn only
    original = bench.scale_examples(str(tmp_path / "c"), EXAMPLE_LINES)
    assert original["tasks"] == {"code_completion": 250, "text_to_code": 200, "unit_tests": 150, "code_explain": 80}
    shipped = (ROOT / "examples" / "data" / "unit_tests" / "unit_tests.jsonl").read_bytes()
    assert (tmp_path / "c" / "unit_tests" / "unit_tests.jsonl").read_bytes() == shipped
    copy = json.loads(bench._variant(shipped.decode().splitlines()[0] + "\n", 7))
    assert copy["chat_rounds"][0]["content"].endswith(" (request #7)")
    assert copy["chat_rounds"][1] == json.loads(shipped.decode().splitlines()[0])["chat_rounds"][1]


def test_compare_detects_a_changed_token_or_mask(tmp_path):
    bench = load_bench()
    from mftcoder.data.cache import load_or_build
    from mftcoder.data.template import get_template
    from mftcoder.model.tokenizer import load_tokenizer

    data = bench.scale_examples(str(tmp_path / "data"), 60)
    path = bench.model_path("tiny", str(tmp_path))
    tokenizer = load_tokenizer(path)
    cfg = bench.make_config(data["task_dirs"], path, str(tmp_path), "cache", 1024, 1)
    cache = load_or_build(cfg, tokenizer, progress=False).cache_path
    naive = bench.naive_tokenise(data["task_dirs"], tokenizer, get_template("mftcoder", tokenizer).jinja, 1025)
    eos = tokenizer.eos_token_id
    c = bench.compare(bench.pack(naive), cache, eos)
    assert (c["compared"], c["identical_ids"], c["identical_masks_but_separator_fraction"]) == (60, True, 1.0)
    assert c["identical_masks_fraction"] == 0.0  # every sample has an answer, so a trained separator after its eos
    ids, mask = naive[-1]
    changed = ids.copy()
    changed[-1] += 1
    assert bench.compare(bench.pack(naive[:-1] + [(changed, mask)]), cache, eos)["identical_ids"] is False
    assert bench.compare(bench.pack(naive[:-1]), cache, eos)["identical_ids"] is False  # a sample missing
    untrained = mask.copy()
    untrained[np.flatnonzero(mask)[0]] = 0  # the first trained token, never a separator
    c = bench.compare(bench.pack(naive[:-1] + [(ids, untrained)]), cache, eos)
    assert c["identical_ids"] is True and c["identical_masks_but_separator_fraction"] == pytest.approx(59 / 60)


def test_bad_arguments_are_refused(capsys):
    bench = load_bench()
    for bad in (["--samples", "0"], ["--model", "gpt9"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
        assert bad[0] in capsys.readouterr().err
    args = bench.parse_args(["--quick"])
    assert (args.model, args.samples) == ("tiny", 2000)
    args = bench.parse_args([])
    assert (args.model, args.samples) == ("smollm2", 100_000)
