"""A real client's configs: the original MFTCoder's four example train configs (tests/data/mftcoder_configs/, unchanged
copies) load, and train on CPU with their placeholders filled. They ask for flash_attention_2, which is never an error
here: sdpa with one warning line that says why.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mftcoder.config import check_environment, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "data" / "mftcoder_configs"
NAMES = ["lora", "qlora", "full", "coba"]
FALLBACK = "attn_implementation='flash_attention_2' but {why}: using sdpa"


def fill(name: str, tmp_path: Path, model_dir: str) -> Path:
    """The placeholders a MFTCoder user replaces, filled the way they would: their data, model and folders."""
    text = (CONFIGS / f"{name}_train_config.json").read_text()
    data = f"[{REPO / 'examples/data/code_completion'},{REPO / 'examples/data/unit_tests'}]"
    for key, value in {"$DATA_PATHS": data, "$OUTPUT_DIR": str(tmp_path / "out"),
                       "$TensorBoard_DIR": str(tmp_path / "tb"), "$MODEL_NAME_OR_PATH": model_dir,
                       "$MODEL_TYPE": "llama"}.items():
        text = text.replace(key, value)
    assert "$" not in text
    path = tmp_path / f"{name}.json"
    path.write_text(text)
    return path


def why_no_flash_attention() -> str | None:
    from mftcoder.model.load import flash_attention_unavailable

    return flash_attention_unavailable()


@pytest.mark.parametrize("name", NAMES)
def test_the_original_configs_are_faithful_and_load(name, tmp_path, tiny_model_dir):
    raw = json.loads((CONFIGS / f"{name}_train_config.json").read_text())
    assert raw["attn_implementation"] == "flash_attention_2"
    assert raw["peft_type"] == {"lora": "lora", "qlora": "qlora", "full": None, "coba": "qlora"}[name]
    cfg = load_config(str(fill(name, tmp_path, tiny_model_dir)))
    check_environment(cfg)  # no flash-attn here: no error (the fallback is decided when the model loads)
    assert cfg.attn_implementation == "flash_attention_2" and len(cfg.data_paths) == 2


def test_flash_attention_request_falls_back_with_one_warning(caplog):
    from mftcoder.model.load import pick_attn_implementation

    why = why_no_flash_attention()
    if why is None:
        pytest.skip("flash-attn runs here: nothing to fall back from")
    with caplog.at_level("WARNING", logger="mftcoder"):
        assert pick_attn_implementation("flash_attention_2") == "sdpa"
    assert [r.getMessage() for r in caplog.records] == [
        FALLBACK.format(why=why) + " (the same attention, slower on GPUs)"]
    assert why in ("flash-attn is not installed", "no CUDA device", "flash-attn does not work with this torch/GPU")
    assert pick_attn_implementation("eager") == "eager" and pick_attn_implementation(None) == "sdpa"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_the_original_config_trains_on_cpu(name, tmp_path, tiny_model_dir):
    if name in ("qlora", "coba"):
        pytest.importorskip("bitsandbytes")
    why = why_no_flash_attention()
    if why is None:
        pytest.skip("flash-attn runs here: the configs train with it")
    cfg = fill(name, tmp_path, tiny_model_dir)
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(REPO / "mftcoder" / "train.py"), "--train_config", str(cfg),
                        "--max_train_steps", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert r.stderr.count(FALLBACK.format(why=why)) == 1  # said once, and why
    assert "finished after 2 steps" in r.stdout
    records = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    steps = [rec for rec in records if rec.get("split") is None]
    assert [rec["step"] for rec in steps] == [1, 2]
    assert all(math.isfinite(rec["loss"]) for rec in steps)
    saved = "model.safetensors" if name == "full" else "adapter_model.safetensors"
    assert (tmp_path / "out" / saved).is_file()
