"""The README's SFT -> merge -> DPO -> merge recipe, run command by command as written (the tiny model in place of
the built-in SmolLM2 and 2 steps per training run, so it fits in a test): every command exits 0, the DPO run starts
from the merged SFT model at ln 2 and the final merged model loads with plain transformers."""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUILTIN_DIR = "~/.cache/mftcoder/smollm2-135m-instruct"


def recipe_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Preference training"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_recipe_runs_as_written(tiny_model_dir, tmp_path):
    commands = recipe_commands()
    assert [c.split()[:2] for c in commands] == [["python", "mftcoder/train.py"], ["mftcoder", "merge"],
                                                 ["python", "mftcoder/train.py"], ["mftcoder", "merge"]]
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    runs = tmp_path / "runs"
    for command in commands:
        args = shlex.split(command.replace(BUILTIN_DIR, tiny_model_dir).replace("runs/", f"{runs}/"))
        if args[0] == "python":
            args = [sys.executable, *args[1:], "--max_train_steps", "2"]
            if "--pretrained_model_path" not in args:  # the SFT step trains the built-in model: the tiny one here
                args += ["--pretrained_model_path", tiny_model_dir]
            config = json.loads((REPO / args[args.index("--train_config") + 1]).read_text())
            args += ["--output_dir", f"{runs}/{Path(config['output_dir']).name}"]
        else:
            args = [sys.executable, "-m", "mftcoder", *args[1:]]
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"

    with open(runs / "example_dpo" / "metrics.jsonl") as f:
        first = next(r for r in map(json.loads, f) if r.get("split") is None)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and "reward_accuracy" in first
    adapter = json.loads((runs / "example_dpo" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"].rstrip("/").endswith("sft-merged")  # DPO trained on the SFT model
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(runs / "dpo-merged"))
    assert not any("lora_" in name for name, _ in merged.named_modules())
