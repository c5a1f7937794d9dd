"""Every train_config and accelerate config we ship is valid: a typo in an example must fail here, not for a user."""
from __future__ import annotations

import glob
import os

import pytest
import yaml

from mftcoder.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.json")))
ACCELERATE_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "accelerate", "*.yaml")))


def test_the_shipped_configs_are_found():
    names = {os.path.basename(p) for p in TRAIN_CONFIGS}
    assert {"demo_smollm2_lora.json", "example_lora.json", "example_qlora.json", "example_full.json",
            "example_coba.json", "example_moe_lora.json", "example_dpo.json", "example_pretrain.json"} <= names
    assert len(ACCELERATE_CONFIGS) >= 12  # six setups, each for one node and for several


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=os.path.basename)
def test_train_config_validates_and_its_example_data_exists(path):
    cfg = load_config(path)  # the schema: unknown keys, types, combinations
    for task in cfg.data_paths:
        assert os.path.isdir(os.path.join(REPO, task.path)), f"{path}: data path {task.path} is not in the repo"


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=os.path.basename)
def test_accelerate_config_is_complete(path):
    with open(path) as f:
        cfg = yaml.safe_load(f)
    assert cfg["distributed_type"] in {"MULTI_GPU", "DEEPSPEED", "FSDP"}
    multinode = "multinode" in os.path.basename(path)
    # one node: torchrun's 'auto' (a process per GPU); several: the total, which multinode.sh passes anyway
    assert cfg["num_machines"] >= 1 and (cfg["num_processes"] >= 1 if multinode else cfg["num_processes"] == "auto")
    assert cfg["mixed_precision"] == "bf16"  # fp32 with one warning where the hardware lacks bf16 (runtime.py)
    assert (cfg["num_machines"] > 1) == multinode, "the *_multinode configs, and only they, span machines"
    if cfg["distributed_type"] == "DEEPSPEED":
        ds = cfg["deepspeed_config"]
        assert ds["zero_stage"] in (2, 3)
        assert "gradient_accumulation_steps" not in ds, "accumulation comes from the train_config only"
        if ds["zero_stage"] == 3:
            assert ds["zero3_save_16bit_model"] is True  # the final model is gathered on save
    if cfg["distributed_type"] == "FSDP":
        assert cfg["fsdp_config"]["fsdp_version"] == 2
        assert "fsdp_transformer_layer_cls_to_wrap" not in cfg["fsdp_config"]  # found from the model at run time
