"""`mftcoder preprocess`: the statistics table, data_stats.json, exit codes, and the warm-cache speed-up."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from mftcoder import cli
from mftcoder.config import parse_config
from mftcoder.data.prepare import prepare_data
from mftcoder.model.tokenizer import load_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples", "data")
STAT_KEYS = {"files", "lines", "train_samples", "valid_samples", "overlong", "truncated", "dropped", "rejected",
             "tokens", "loss_tokens"}


def chat(i):
    return json.dumps({"chat_rounds": [{"role": "human", "content": f"Write add {i}."},
                                       {"role": "bot", "content": f"def add_{i}(a, b):\n    return a + b + {i}"}]})


def write_task(folder, lines):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "data.jsonl")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def write_config(tmp_path, model_dir, **kw):
    cfg = {"data_paths": [str(tmp_path / "data" / "completion"), str(tmp_path / "data" / "tests")],
           "pretrained_model_path": model_dir, "output_dir": str(tmp_path / "out"), "seq_length": 128,
           "data_split": "90,10,0", **kw}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "mftcoder", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def table_rows(stdout):
    """{first column: [other columns]} of the statistics table."""
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) > 5 and all(re.fullmatch(r"\d+", c) for c in cells[1:]):
            rows[cells[0]] = [int(c) for c in cells[1:]]
    return rows


def test_preprocess_prints_the_table_and_writes_data_stats(tmp_path, tiny_model_dir, capsys):
    write_task(str(tmp_path / "data" / "completion"), [chat(i) for i in range(30)] + [""])
    write_task(str(tmp_path / "data" / "tests"), [chat(i) for i in range(100, 112)])
    cfg = write_config(tmp_path, tiny_model_dir)

    res = run_cli("preprocess", "--train_config", cfg)
    assert res.returncode == 0, res.stderr
    assert "tokenised in" in res.stdout
    header = next(line for line in res.stdout.splitlines() if line.startswith("task"))
    assert header.split()[:4] == ["task", "lines", "train", "valid"]
    rows = table_rows(res.stdout)
    assert set(rows) == {"completion", "tests", "TOTAL"}
    assert rows["completion"][0] == 31 and rows["tests"][0] == 12 and rows["TOTAL"][0] == 43

    with open(tmp_path / "out" / "data_stats.json") as f:
        stats = json.load(f)["tasks"]
    assert set(stats) == {"completion", "tests"}
    for name, st in stats.items():
        assert STAT_KEYS <= set(st)
        assert rows[name][:3] == [st["lines"], st["train_samples"], st["valid_samples"]]
    assert stats["completion"]["blank"] == 1
    assert stats["completion"]["train_samples"] + stats["completion"]["valid_samples"] == 30

    # again, in-process this time (a second interpreter start costs seconds): the cache is reused
    assert cli.main(["preprocess", "--train_config", cfg]) == 0
    again = capsys.readouterr().out
    assert "loaded from cache" in again
    assert table_rows(again) == rows


def test_preprocess_bad_line_exits_nonzero_with_file_and_line(tmp_path, tiny_model_dir):
    write_task(str(tmp_path / "data" / "completion"), [chat(i) for i in range(5)])
    bad = write_task(str(tmp_path / "data" / "tests"), [chat(1), '{"chat_rounds": [}'])
    cfg = write_config(tmp_path, tiny_model_dir)
    res = run_cli("preprocess", "--train_config", cfg)
    assert res.returncode != 0
    assert f"{bad}:2: invalid JSON" in res.stderr
    assert "Traceback" not in res.stderr
    assert not os.path.exists(tmp_path / "out" / "data_stats.json")


def test_preprocess_skip_counts_the_bad_line(tmp_path, tiny_model_dir, capsys):
    write_task(str(tmp_path / "data" / "completion"), [chat(i) for i in range(5)])
    write_task(str(tmp_path / "data" / "tests"), [chat(1), '{"chat_rounds": [}'])
    cfg = write_config(tmp_path, tiny_model_dir, on_bad_line="skip")
    assert cli.main(["preprocess", "--train_config", cfg]) == 0
    out = capsys.readouterr().out
    assert "rejected lines of tests" in out and "data.jsonl:2: invalid JSON" in out
    with open(tmp_path / "out" / "data_stats.json") as f:
        assert json.load(f)["tasks"]["tests"]["rejected"] == 1


def test_preprocess_config_errors_exit_2_naming_the_key(tmp_path, tiny_model_dir, capsys):
    write_task(str(tmp_path / "data" / "completion"), [chat(1)])
    write_task(str(tmp_path / "data" / "tests"), [chat(2)])
    assert cli.main(["preprocess", "--train_config", write_config(tmp_path, tiny_model_dir, lerning_rate=1)]) == 2
    assert "did you mean 'learning_rate'" in capsys.readouterr().err
    assert cli.main(["preprocess", "--train_config", write_config(tmp_path, str(tmp_path / "no_model"))]) == 2
    assert "pretrained_model_path" in capsys.readouterr().err
    cfg = write_config(tmp_path, tiny_model_dir, data_paths=[str(tmp_path / "data" / "nope")])
    assert cli.main(["preprocess", "--train_config", cfg]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_failed_preprocess_leaves_no_stale_data_stats(tmp_path, tiny_model_dir, capsys):
    write_task(str(tmp_path / "data" / "completion"), [chat(i) for i in range(5)])
    write_task(str(tmp_path / "data" / "tests"), [chat(i) for i in range(5)])
    cfg = write_config(tmp_path, tiny_model_dir)
    assert cli.main(["preprocess", "--train_config", cfg]) == 0
    stats = tmp_path / "out" / "data_stats.json"
    assert json.loads(stats.read_text())["tasks"]["tests"]["lines"] == 5
    capsys.readouterr()
    # the same output_dir, now with a bad line: the earlier run's statistics must not survive to be read as this one's
    write_task(str(tmp_path / "data" / "tests"), [chat(1), '{"chat_rounds": [}'])
    assert cli.main(["preprocess", "--train_config", cfg]) == 2
    assert "data.jsonl:2: invalid JSON" in capsys.readouterr().err
    assert not stats.exists()
    # a good run writes it again; a run whose data cannot even be found removes it too
    write_task(str(tmp_path / "data" / "tests"), [chat(i) for i in range(3)])
    assert cli.main(["preprocess", "--train_config", cfg]) == 0
    assert json.loads(stats.read_text())["tasks"]["tests"]["lines"] == 3
    cfg = write_config(tmp_path, tiny_model_dir, data_paths=[str(tmp_path / "data" / "nope")])
    assert cli.main(["preprocess", "--train_config", cfg]) == 2
    assert not stats.exists()
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".data_stats")]  # no temporary left


def test_json_only_task_folder_exits_2_listing_what_it_found(tmp_path, tiny_model_dir, capsys):
    write_task(str(tmp_path / "data" / "completion"), [chat(1)])
    folder = tmp_path / "data" / "tests"
    folder.mkdir(parents=True)
    (folder / "train.json").write_text(json.dumps([json.loads(chat(1)), json.loads(chat(2))]))
    (folder / "README.md").write_text("exported from the labelling tool")
    assert cli.main(["preprocess", "--train_config", write_config(tmp_path, tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data_paths: folder") and "contains no .jsonl file" in err
    assert "found 2 file(s): README.md, train.json" in err and "jq -c" in err


def test_preprocess_overrides(tmp_path, tiny_model_dir, capsys):
    write_task(str(tmp_path / "data" / "completion"), [chat(i) for i in range(4)])
    write_task(str(tmp_path / "data" / "tests"), [chat(i) for i in range(4)])
    cfg = write_config(tmp_path, "/not/used")
    assert cli.main(["preprocess", "--train_config", cfg, "--pretrained_model_path", tiny_model_dir,
                     "--output_dir", str(tmp_path / "elsewhere"), "--cache_dir", str(tmp_path / "tokcache"),
                     "--data_paths", f"[{tmp_path / 'data' / 'tests'}]"]) == 0
    with open(tmp_path / "elsewhere" / "data_stats.json") as f:
        assert list(json.load(f)["tasks"]) == ["tests"]
    assert len(os.listdir(tmp_path / "tokcache")) == 1
    assert not os.path.exists(tmp_path / "out")


# --- the bundled examples: a warm cache loads >= 20x faster than tokenising --------------------------------------------


def example_tasks():
    if not os.path.isdir(EXAMPLES):
        return []
    return sorted(os.path.join(EXAMPLES, d) for d in os.listdir(EXAMPLES)
                  if os.path.isdir(os.path.join(EXAMPLES, d))
                  and any(f.endswith(".jsonl") for _, _, fs in os.walk(os.path.join(EXAMPLES, d)) for f in fs))


def test_warm_cache_is_20x_faster_than_tokenising_the_examples(tmp_path, tiny_model_dir, capsys):
    tasks = example_tasks()
    if not tasks:
        pytest.skip(f"no task folders with .jsonl files under {EXAMPLES} yet (the bundled example data set)")
    cfg_dict = {"data_paths": tasks, "pretrained_model_path": tiny_model_dir, "output_dir": str(tmp_path / "out"),
                "seq_length": 512, "data_split": "90,10,0"}
    cfg = parse_config(cfg_dict)
    tokenizer = load_tokenizer(tiny_model_dir)

    start = time.perf_counter()
    cold = prepare_data(cfg, tokenizer, progress=False, verbose=False)
    cold_s = time.perf_counter() - start
    assert not cold.from_cache
    warm_s = []
    for _ in range(3):
        start = time.perf_counter()
        warm = prepare_data(cfg, tokenizer, progress=False, verbose=False)
        warm_s.append(time.perf_counter() - start)
        assert warm.from_cache and warm.cache_path == cold.cache_path
    ratio = cold_s / min(warm_s)
    lines = sum(st["lines"] for st in cold.stats["tasks"].values())
    with capsys.disabled():  # shown with -s
        print(f"\nexamples: {len(tasks)} tasks, {lines} lines; cold {cold_s * 1000:.0f} ms, "
              f"best warm {min(warm_s) * 1000:.1f} ms: {ratio:.0f}x")
    assert ratio >= 20, f"warm load only {ratio:.1f}x faster (cold {cold_s:.3f}s, warm {warm_s})"

    # the command itself reuses the cache too
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg_dict))
    capsys.readouterr()
    assert cli.main(["preprocess", "--train_config", str(path)]) == 0
    assert "loaded from cache" in capsys.readouterr().out
