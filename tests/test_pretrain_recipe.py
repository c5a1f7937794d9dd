"""The README's Firefly-LLaMA2-Chinese recipe, run command by command as written (the tiny model in place of the
built-in SmolLM2, 2 steps per training run): extend the vocabulary on the bundled Chinese notes -> QLoRA continued
pretraining with the new rows trained -> merge -> SFT -> merge -> chat. Every command exits 0; the vocabulary grows and
stays grown through both merges; the new embedding rows move in pretraining and nothing else of the embedding does."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUILTIN = "builtin:smollm2-135m-instruct"


def recipe_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### From a base model to a chat model in another language"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def _embeddings(path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).get_input_embeddings().weight.detach()


def test_the_firefly_recipe_runs_as_written(tiny_model_dir, tmp_path):
    commands = recipe_commands()
    assert [c.split()[:2] for c in commands] == [
        ["mftcoder", "extend-vocab"], ["python", "mftcoder/train.py"], ["mftcoder", "merge"],
        ["python", "mftcoder/train.py"], ["mftcoder", "merge"], ["mftcoder", "chat"]]
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    runs = tmp_path / "runs"
    for command in commands:
        args = shlex.split(command.replace(BUILTIN, tiny_model_dir).replace("runs/", f"{runs}/"))
        stdin = None
        if args[0] == "python":
            args = [sys.executable, *args[1:], "--max_train_steps", "2"]
            if "--output_dir" not in args:
                config = json.loads((REPO / args[args.index("--train_config") + 1]).read_text())
                args += ["--output_dir", f"{runs}/{Path(config['output_dir']).name}",
                         "--pretrained_model_path", config["pretrained_model_path"].replace("runs/", f"{runs}/")]
        else:
            args = [sys.executable, "-m", "mftcoder", *args[1:]]
            if args[3] == "chat":
                args += ["--max_new_tokens", "8"]
                stdin = "你好, write add(a, b)\n/exit\n"
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, input=stdin)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"

    ext = json.loads((runs / "smollm2-zh" / "vocab_extension.json").read_text())
    new_ids = ext["new_token_ids"]
    assert len(new_ids) > 50 and min(new_ids) == ext["base_vocab_size"]
    pretrain = [json.loads(line) for line in open(runs / "example_pretrain_qlora" / "metrics.jsonl")]
    assert any("task_perplexity" in r for r in pretrain)
    extended, pretrained = _embeddings(runs / "smollm2-zh"), _embeddings(runs / "pretrain-merged")
    final = _embeddings(runs / "firefly-merged")
    assert extended.shape == pretrained.shape == final.shape and extended.shape[0] >= max(new_ids) + 1
    old = torch.ones(extended.shape[0], dtype=torch.bool)
    old[new_ids] = False
    assert torch.equal(pretrained[old], extended[old])  # base rows are not trained by train_new_tokens
    assert (pretrained[new_ids] - extended[new_ids]).abs().max() > 1e-4  # the new rows are
