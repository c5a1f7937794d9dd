"""train_config schema: MFTCoder's string forms, and every mistake caught up front with the key named."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from mftcoder import cli
from mftcoder.config import (
    ConfigError,
    TaskSpec,
    TrainConfig,
    check_environment,
    load_config,
    parse_config,
    schema_text,
)

BASE = {"data_paths": "[data/a,data/b]", "pretrained_model_path": "/models/base", "output_dir": "/runs/x"}


def config_error(**overrides) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, **overrides})
    return str(info.value)


# --- data_paths and task_weights in all their forms -------------------------------------------------------------------


def test_data_paths_mftcoder_bracket_string():
    cfg = parse_config({**BASE, "data_paths": "[ /d/code_completion, '/d/text2code' ,\"/d/unittest\"]"})
    assert cfg.data_paths == [TaskSpec(path="/d/code_completion"), TaskSpec(path="/d/text2code"),
                              TaskSpec(path="/d/unittest")]


def test_data_paths_list_of_paths():
    cfg = parse_config({**BASE, "data_paths": ["/d/a", "/d/b.jsonl"]})
    assert [t.path for t in cfg.data_paths] == ["/d/a", "/d/b.jsonl"]
    assert all(t.name is None and t.weight is None for t in cfg.data_paths)


def test_data_paths_list_of_objects_and_mixed():
    cfg = parse_config({**BASE, "data_paths": [{"name": "cc", "path": "/d/a", "weight": 2}, "/d/b"]})
    assert cfg.data_paths == [TaskSpec(path="/d/a", name="cc", weight=2.0), TaskSpec(path="/d/b")]


def test_data_paths_empty_is_an_error():
    assert "data_paths" in config_error(data_paths="[]")
    assert "data_paths" in config_error(data_paths=[])


def test_data_paths_entry_with_misspelt_key_suggests_path():
    msg = config_error(data_paths=[{"pth": "/d/a"}])
    assert "'data_paths.0.pth'" in msg and "did you mean 'path'" in msg


def test_data_paths_entry_weight_must_be_positive():
    assert "data_paths.0.weight" in config_error(data_paths=[{"path": "/d/a", "weight": 0}])


def test_task_weights_string_list_and_dict():
    assert parse_config({**BASE, "task_weights": "[1,2.5]"}).task_weights == [1.0, 2.5]
    assert parse_config({**BASE, "task_weights": [1, 2]}).task_weights == [1.0, 2.0]
    assert parse_config({**BASE, "task_weights": {"a": 3}}).task_weights == {"a": 3.0}
    msg = config_error(task_weights="[1,heavy]")
    assert "task_weights" in msg and "[1,heavy]" in msg


# --- unknown keys, wrong types -----------------------------------------------------------------------------------------


def test_unknown_key_names_it_and_suggests_nearest():
    msg = config_error(lerning_rate=1e-4)
    assert "unknown key 'lerning_rate'" in msg
    assert "did you mean 'learning_rate'" in msg


def test_unknown_key_far_from_everything_gets_no_wild_guess():
    msg = config_error(zzzqqq=1)
    assert "unknown key 'zzzqqq'" in msg and "did you mean" not in msg


def test_every_error_is_reported_at_once():
    msg = config_error(lerning_rate=1e-4, seq_length="long")
    assert "lerning_rate" in msg and "seq_length" in msg


@pytest.mark.parametrize("key,value,shown", [
    ("seq_length", "long", "'long'"),
    ("per_device_train_batch_size", 1.5, "1.5"),
    ("early_stopping", "maybe", "'maybe'"),
    ("padding_mode", "packed", "'packed'"),
    ("weighted_loss_mode", "case5", "'case5'"),
    ("learning_rate", -1.0, "-1.0"),
    ("data_split", "98,two", "'98,two'"),
    ("data_split", "1,2,3,4", "'1,2,3,4'"),
    ("role_markers", {"bot": "<s>bot\n"}, "['bot']"),
])
def test_wrong_type_or_value_names_the_key_and_the_value(key, value, shown):
    msg = config_error(**{key: value})
    assert f"{key}:" in msg
    assert shown in msg


def test_literal_error_lists_the_valid_choices():
    msg = config_error(padding_mode="packed")
    assert "'padding'" in msg and "'pack'" in msg


def test_missing_required_key_named_with_its_meaning():
    with pytest.raises(ConfigError) as info:
        parse_config({"data_paths": "[a]"})
    msg = str(info.value)
    assert "missing required key 'pretrained_model_path'" in msg
    assert "missing required key 'output_dir'" in msg


# --- impossible combinations -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,key", [
    ({"quantization": "4bit"}, "quantization"),
    ({"quantization": "8bit", "peft_type": "lora"}, "quantization"),
    ({"weighted_loss_mode": "coba", "data_split": "100,0,0"}, "data_split"),
    ({"weighted_loss_mode": "coba", "data_split": "100,0"}, "data_split"),
    ({"weighted_loss_mode": "coba", "task_weights": "[1,2]"}, "task_weights"),
    ({"task_sampling": "explicit"}, "task_sampling_weights"),
    ({"min_lr": 1e-3, "learning_rate": 1e-4}, "min_lr"),
    ({"num_warmup_steps": 1.5}, "num_warmup_steps"),
    ({"num_warmup_steps": 1.0}, "num_warmup_steps"),
    ({"template": "chatml", "role_markers": {"user": "<u>"}}, "role_markers"),
    ({"template": "tokenizer", "role_markers": {"user": "<u>"}}, "role_markers"),
])
def test_impossible_combinations_fail_naming_the_key(overrides, key):
    assert key in config_error(**overrides)


def test_valid_combinations_pass():
    cfg = parse_config({**BASE, "peft_type": "qlora"})
    assert cfg.quantization == "4bit"  # qlora without a choice means the usual nf4
    cfg = parse_config({**BASE, "peft_type": "qlora", "quantization": "8bit", "weighted_loss_mode": "coba",
                        "task_sampling": "explicit", "task_sampling_weights": [1, 3], "num_warmup_steps": 10,
                        "role_markers": {"user": "<|user|>\n"}})
    assert cfg.quantization == "8bit" and cfg.num_warmup_steps == 10
    assert cfg.split_fractions == pytest.approx((0.98, 0.02, 0.0))


def test_split_fractions_from_percentages():
    assert parse_config({**BASE, "data_split": "90,10"}).split_fractions == pytest.approx((0.9, 0.1, 0.0))
    assert parse_config({**BASE, "data_split": "50,25,25"}).split_fractions == pytest.approx((0.5, 0.25, 0.25))
    assert parse_config({**BASE, "data_split": "99.5/0.5/0"}).split_fractions == pytest.approx((0.995, 0.005, 0.0))


@pytest.mark.parametrize("split,total", [("2,1,1", "4"), ("98,2,2", "102"), ("90,5", "95")])
def test_split_not_summing_to_100_is_refused_not_rescaled(split, total):
    msg = config_error(data_split=split)
    assert f"data_split '{split}'" in msg and "sum to 100" in msg and f"these sum to {total}" in msg


# --- booleans are not numbers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,value", [
    ("max_train_steps", True), ("seed", False), ("seq_length", True), ("learning_rate", True),
    ("num_warmup_steps", True), ("lora_alpha", False), ("task_weights", [1, True]), ("task_weights", {"a": True}),
    ("task_sampling_weights", [True, 1.0]),
])
def test_a_boolean_is_not_a_number(key, value):
    msg = config_error(**{key: value})
    assert f"{key}: got " in msg and "a boolean where a number belongs" in msg


def test_a_boolean_task_weight_in_data_paths_is_refused():
    msg = config_error(data_paths=[{"path": "/d/a", "weight": True}])
    assert "data_paths.0.weight" in msg and "boolean" in msg


def test_numbers_still_pass_where_numbers_belong():
    cfg = parse_config({**BASE, "learning_rate": 1, "lora_alpha": 16, "max_train_steps": 3, "min_lr": 0,
                        "task_weights": [1, 2.5], "num_warmup_steps": 10, "seed": 0, "early_stopping": True})
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float) and cfg.lora_alpha == 16.0
    assert cfg.max_train_steps == 3 and cfg.task_weights == [1.0, 2.5] and cfg.num_warmup_steps == 10
    assert cfg.seed == 0 and cfg.early_stopping is True  # booleans stay fine where booleans belong


def test_assignment_refuses_a_boolean_too():
    cfg = parse_config(BASE)
    with pytest.raises(ValueError, match="boolean"):
        cfg.max_train_steps = True


# --- task weights only where they apply ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["case1", "case2", "coba"])
def test_task_weights_refused_where_the_mode_ignores_them(mode):
    msg = config_error(weighted_loss_mode=mode, task_weights="[1,2]")
    assert f"task_weights cannot be combined with weighted_loss_mode='{mode}'" in msg
    assert "case3 and case4" in msg
    msg = config_error(weighted_loss_mode=mode, data_paths=[{"path": "/d/a", "weight": 2}, "/d/b"])
    assert f"data_paths.0.weight cannot be combined with weighted_loss_mode='{mode}'" in msg


@pytest.mark.parametrize("mode", ["case3", "case4"])
def test_task_weights_accepted_where_they_apply(mode):
    cfg = parse_config({**BASE, "weighted_loss_mode": mode, "task_weights": "[1,2]"})
    assert cfg.task_weights == [1.0, 2.0]


def test_defaults_resolve_under_output_dir():
    cfg = parse_config(BASE)
    assert cfg.resolved_cache_dir == os.path.join("/runs/x", "cache")
    assert cfg.resolved_tb_dir == os.path.join("/runs/x", "tensorboard")


def test_assignment_is_validated_too():
    cfg = parse_config(BASE)
    with pytest.raises(ValueError):
        cfg.seq_length = "long"


# --- files -----------------------------------------------------------------------------------------------------------


def test_json_and_yaml_files_give_the_same_config(tmp_path):
    data = {**BASE, "data_paths": ["/d/a", {"name": "b", "path": "/d/b"}], "seq_length": 256, "task_weights": "[1,2]"}
    (tmp_path / "c.json").write_text(json.dumps(data))
    import yaml
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert load_config(str(tmp_path / "c.json")) == load_config(str(tmp_path / "c.yaml"))


def test_overrides_replace_file_values(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(BASE))
    cfg = load_config(str(tmp_path / "c.json"), overrides={"output_dir": "/elsewhere", "data_paths": "[x]",
                                                           "cache_dir": None})
    assert cfg.output_dir == "/elsewhere" and [t.path for t in cfg.data_paths] == ["x"]


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "data_paths": "[a]",\n  oops\n}')
    with pytest.raises(ConfigError, match=r"bad\.json:3: invalid JSON"):
        load_config(str(bad))
    arr = tmp_path / "arr.json"
    arr.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="object of keys"):
        load_config(str(arr))
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({**BASE, "lerning_rate": 1}))
    with pytest.raises(ConfigError, match="typo.json") as info:
        load_config(str(typo))
    assert "did you mean 'learning_rate'" in str(info.value)


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data_paths: [a, b]\noutput_dir: runs/x\nseq_length: [1, 2\nlearning_rate: 1e-4\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(bad))
    msg = str(info.value)
    assert msg.startswith(f"{bad}:4: invalid YAML:") and "\n" not in msg
    tabs = tmp_path / "tabs.yml"
    tabs.write_text("data_paths: [a]\n\toutput_dir: x\n")
    with pytest.raises(ConfigError, match=rf"{tabs}:2: invalid YAML"):
        load_config(str(tabs))


def test_legacy_mftcoder_keys_are_accepted(tmp_path):
    cfg = parse_config({**BASE, "load_raw_dataset": True, "tokenizer_type": "AutoTokenizer", "model_type": "llama",
                        "tb_dir": "/tb"})
    assert cfg.model_type == "llama" and cfg.resolved_tb_dir == "/tb"


# --- environment checks ----------------------------------------------------------------------------------------------


def test_check_environment_missing_model_path(tmp_path):
    cfg = parse_config({**BASE, "pretrained_model_path": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="pretrained_model_path") as info:
        check_environment(cfg)
    assert str(tmp_path / "nope") in str(info.value)


def test_check_environment_folder_without_config_json(tmp_path):
    cfg = parse_config({**BASE, "pretrained_model_path": str(tmp_path)})
    with pytest.raises(ConfigError, match="config.json"):
        check_environment(cfg)


def copy_model(src, dst, skip=()):
    os.makedirs(dst)
    for name in os.listdir(src):
        if name not in skip:
            shutil.copy(os.path.join(src, name), dst)
    return str(dst)


def test_check_environment_broken_config_json_names_file_and_line(tiny_model_dir, tmp_path):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    with open(os.path.join(model, "config.json"), "a") as f:
        f.write("\n}\n")  # a stray brace after the object: what a bad merge or a cut copy leaves
    lines = open(os.path.join(model, "config.json")).read().count("\n")
    with pytest.raises(ConfigError) as info:
        check_environment(parse_config({**BASE, "pretrained_model_path": model}))
    assert str(info.value).startswith(f"{model}/config.json:{lines}: invalid JSON: Extra data")
    (tmp_path / "m" / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(ConfigError, match="model_type"):
        check_environment(parse_config({**BASE, "pretrained_model_path": model}))


def test_check_environment_names_the_missing_tokenizer_files(tiny_model_dir, tmp_path):
    tok = {"tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "tokenizer_config.json"}
    model = copy_model(tiny_model_dir, tmp_path / "m", skip=tok)
    with pytest.raises(ConfigError) as info:
        check_environment(parse_config({**BASE, "pretrained_model_path": model}))
    msg = str(info.value)
    assert msg.startswith(f"pretrained_model_path: no tokenizer files in {model!r}")
    assert "tokenizer.json" in msg and "vocab.json + merges.txt" in msg and "sentencepiece" not in msg
    (tmp_path / "m" / "vocab.json").write_text("{}")
    with pytest.raises(ConfigError, match="it has vocab.json but not the rest of its set"):
        check_environment(parse_config({**BASE, "pretrained_model_path": model}))
    (tmp_path / "m" / "merges.txt").write_text("")
    check_environment(parse_config({**BASE, "pretrained_model_path": model}))  # a BPE vocabulary is enough


def test_check_environment_accepts_a_real_model(tiny_model_dir):
    check_environment(parse_config({**BASE, "pretrained_model_path": tiny_model_dir}))


# --- config-schema ---------------------------------------------------------------------------------------------------


def test_schema_lists_every_key_with_a_description():
    text = schema_text()
    lines = text.splitlines()
    for name, field in TrainConfig.model_fields.items():
        assert field.description and len(field.description.splitlines()) == 1, name
        header = [i for i, line in enumerate(lines) if line.startswith(f"{name}  [")]
        assert len(header) == 1, name
        assert lines[header[0] + 1].strip() == field.description


def test_schema_shows_readable_types_and_defaults():
    text = schema_text()
    assert 'padding_mode  ["padding" | "pack"]  default: "padding"' in text
    assert "pretrained_model_path  [str]  default: required" in text
    assert "max_train_steps  [int | null]  default: null" in text


def test_config_schema_command(capsys):
    assert cli.main(["config-schema"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == schema_text().strip()


def test_config_schema_subprocess():
    res = subprocess.run([sys.executable, "-m", "mftcoder", "config-schema"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    for name in TrainConfig.model_fields:
        assert f"\n{name}  [" in "\n" + res.stdout
