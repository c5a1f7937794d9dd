"""Bad train_configs stop `mftcoder/train.py` with a clear message (key, what is wrong, what would be valid) and
exit code 2, BEFORE any model loads. "Before" is shown without mocks: the model directory's weights file is garbage,
so a run that got as far as loading the model would fail with a safetensors error instead of ours."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest

from mftcoder.config import ConfigError, parse_config
from mftcoder.train import main
from mftcoder.trainer.loop import train
from train_helpers import write_tasks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each, restored after


@pytest.fixture(scope="module")
def broken_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's config and tokenizer with a weights file no loader can read."""
    out = tmp_path_factory.mktemp("broken-model")
    for name in os.listdir(tiny_model_dir):
        if not name.endswith(".safetensors"):
            shutil.copy(os.path.join(tiny_model_dir, name), out)
    (out / "model.safetensors").write_bytes(b"not a safetensors file")
    return str(out)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("err-tasks"), {"a": 12, "b": 8})


def run_cli(tmp_path, capsys, config: dict, *args: str) -> tuple[int, str]:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config))
    rc = main(["--train_config", str(path), *args])
    return rc, capsys.readouterr().err


def base_config(model_dir, tasks, tmp_path, **overrides) -> dict:
    return {"data_paths": tasks, "output_dir": str(tmp_path / "out"), "pretrained_model_path": model_dir,
            "seq_length": 64, **overrides}


def test_the_broken_model_really_fails_to_load(broken_model_dir, tasks, tmp_path):
    """The premise of this file: with a good config, the run does reach the model and fails there."""
    with pytest.raises(Exception) as err:
        train(parse_config(base_config(broken_model_dir, tasks, tmp_path, max_train_steps=1)))
    assert not isinstance(err.value, ConfigError)


def test_qlora_without_bitsandbytes(broken_model_dir, tasks, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    rc, err = run_cli(tmp_path, capsys, base_config(broken_model_dir, tasks, tmp_path, peft_type="qlora"))
    assert rc == 2
    assert "peft_type='qlora' needs bitsandbytes" in err and "pip install bitsandbytes" in err
    rc, err = run_cli(tmp_path, capsys, base_config(broken_model_dir, tasks, tmp_path, optimizer="adamw_8bit"))
    assert rc == 2 and "optimizer='adamw_8bit' needs bitsandbytes" in err


def test_missing_model_path(tasks, tmp_path, capsys):
    rc, err = run_cli(tmp_path, capsys, base_config(str(tmp_path / "no-such-model"), tasks, tmp_path))
    assert rc == 2 and "pretrained_model_path" in err and "no-such-model" in err and "is not a directory" in err
    (tmp_path / "empty").mkdir()
    rc, err = run_cli(tmp_path, capsys, base_config(str(tmp_path / "empty"), tasks, tmp_path))
    assert rc == 2 and "no config.json" in err
    assert not os.path.exists(tmp_path / "out")  # stopped before anything was written


def test_unknown_key_suggests_the_nearest(broken_model_dir, tasks, tmp_path, capsys):
    rc, err = run_cli(tmp_path, capsys, base_config(broken_model_dir, tasks, tmp_path, learning_rat=1e-4))
    assert rc == 2
    assert "unknown key 'learning_rat'; did you mean 'learning_rate'?" in err and "cfg.json" in err
    rc, err = run_cli(tmp_path, capsys, base_config(broken_model_dir, tasks, tmp_path, weighted_loss_mode="case5"))
    assert rc == 2 and "weighted_loss_mode" in err and "case4" in err


def test_task_with_no_training_sample(broken_model_dir, tasks, tmp_path, capsys):
    long_task = tmp_path / "long"
    long_task.mkdir()
    with open(long_task / "x.jsonl", "w") as f:
        for i in range(3):
            f.write(json.dumps({"chat_rounds": [{"role": "human", "content": "word " * 100},
                                                {"role": "bot", "content": f"ok {i}"}]}) + "\n")
    config = base_config(broken_model_dir, [*tasks, str(long_task)], tmp_path, overlong_policy="drop")
    rc, err = run_cli(tmp_path, capsys, config)
    assert rc == 2
    assert "task 'long' has no training sample" in err and "3 were dropped as longer than seq_length=64" in err
    assert "data_stats.json" in err


def test_bad_schedule_and_resume_path(broken_model_dir, tasks, tmp_path, capsys):
    rc, err = run_cli(tmp_path, capsys, base_config(broken_model_dir, tasks, tmp_path, lr_scheduler_type="cosinee"))
    assert rc == 2 and "lr_scheduler_type='cosinee'" in err and "valid: linear, cosine" in err
    rc, err = run_cli(tmp_path, capsys, base_config(broken_model_dir, tasks, tmp_path),
                      "--resume_from_checkpoint", str(tmp_path / "nope"))
    assert rc == 2 and "resume_from_checkpoint" in err and "not a complete checkpoint" in err


def test_coba_without_any_validation_sample(broken_model_dir, tmp_path, capsys):
    """CoBa steers by validation loss: with data_split leaving no validation sample it cannot work."""
    few = write_tasks(tmp_path / "few", {"a": 3, "b": 3})
    rc, err = run_cli(tmp_path, capsys, base_config(broken_model_dir, few, tmp_path, weighted_loss_mode="coba",
                                                    data_split="99,1,0"))
    assert rc == 2 and "coba" in err and "validation" in err


# --- bad files give one `error:` line and exit 2, never a traceback ---------------------------------------------------


def assert_one_error_line(rc: int, err: str, *fragments: str) -> str:
    """Exit 2, exactly one `error:` line holding every fragment, no traceback."""
    assert rc == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_malformed_yaml_config(tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text("data_paths: [a, b]\noutput_dir: runs/x\nseq_length: {64\nlearning_rate: 1e-4\n")
    rc = main(["--train_config", str(path)])
    assert_one_error_line(rc, capsys.readouterr().err, f"error: {path}:4: invalid YAML")


def copy_model_without(src, dst, skip=()) -> str:
    os.makedirs(dst)
    for name in os.listdir(src):
        if name not in skip:
            shutil.copy(os.path.join(src, name), dst)
    return str(dst)


def test_model_folder_with_a_broken_config_json(broken_model_dir, tasks, tmp_path, capsys):
    model = copy_model_without(broken_model_dir, tmp_path / "model")
    text = open(os.path.join(model, "config.json")).read()
    open(os.path.join(model, "config.json"), "w").write(text[: len(text) // 2])  # cut short, as by a killed copy
    rc, err = run_cli(tmp_path, capsys, base_config(model, tasks, tmp_path))
    assert_one_error_line(rc, err, f"{model}/config.json:", "invalid JSON")
    assert not os.path.exists(tmp_path / "out")


def test_model_folder_without_tokenizer_files(broken_model_dir, tasks, tmp_path, capsys):
    model = copy_model_without(broken_model_dir, tmp_path / "model",
                               skip={"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                                     "merges.txt", "special_tokens_map.json"})
    rc, err = run_cli(tmp_path, capsys, base_config(model, tasks, tmp_path))
    line = assert_one_error_line(rc, err, "no tokenizer files in", "tokenizer.json", "tokenizer.model")
    assert "sentencepiece" not in line and "tiktoken" not in line.replace("*.tiktoken", "")


def test_boolean_max_train_steps_is_refused(broken_model_dir, tasks, tmp_path, capsys):
    """`max_train_steps: true` used to run one step; the broken weights show no model was reached."""
    rc, err = run_cli(tmp_path, capsys, base_config(broken_model_dir, tasks, tmp_path, max_train_steps=True))
    assert rc == 2 and "max_train_steps: got true: a boolean where a number belongs" in err


def test_task_weights_under_case1_is_refused(broken_model_dir, tasks, tmp_path, capsys):
    rc, err = run_cli(tmp_path, capsys, base_config(broken_model_dir, tasks, tmp_path, weighted_loss_mode="case1",
                                                    task_weights=[1, 3]))
    assert rc == 2 and "task_weights cannot be combined with weighted_loss_mode='case1'" in err


def test_data_split_not_summing_to_100_is_refused(broken_model_dir, tasks, tmp_path, capsys):
    rc, err = run_cli(tmp_path, capsys, base_config(broken_model_dir, tasks, tmp_path, data_split="9,1,0"))
    assert rc == 2 and "data_split '9,1,0' must be" in err and "sum to 100" in err
