"""Checkpoints: written under a temporary name and renamed when complete, so a kill at any moment leaves either the
previous complete checkpoint or the new one, never a half one. Resume restores everything needed for an identical run."""
from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = CKPT_RE.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(m.group(1)), path))
    return sorted(found)


def resolve_resume(resume: Optional[str], output_dir: str, auto_resume: bool) -> Optional[str]:
    if resume == "latest" or (resume is None and auto_resume):
        found = list_checkpoints(output_dir)
        # nothing yet is a fresh start, so a restart loop can always pass "latest"
        return found[-1][1] if found else None
    if resume is None:
        return None
    if not os.path.isfile(os.path.join(resume, STATE_FILE)):
        from mftcoder.config import ConfigError

        raise ConfigError(f"resume_from_checkpoint: {resume!r} is not a complete checkpoint (no {STATE_FILE}); "
                          f'give a checkpoint-<step> folder or "latest"')
    return resume


def save_checkpoint(acc, output_dir: str, step: int, trainer_state: dict, scheduler, config_dict: dict,
                    saving_limit: Optional[int], arrays: Optional[dict] = None) -> str:
    """`arrays`: {file name: numpy array} saved beside the state (e.g. precomputed reference log-probs)."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = os.path.join(output_dir, f".tmp-checkpoint-{step}")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    acc.wait_for_everyone()
    with _only_trainable_weights(acc):
        acc.save_state(tmp)  # model (or adapter), optimizer, RNG states of every process; backend-aware (ZeRO, FSDP)
    acc.wait_for_everyone()  # every rank has written its shard and RNG state before the rename
    if acc.is_main_process:
        torch.save(scheduler.state_dict(), os.path.join(tmp, "scheduler_state.pt"))
        with open(os.path.join(tmp, "train_config.json"), "w") as f:
            json.dump(config_dict, f, indent=1)
        torch.save(trainer_state, os.path.join(tmp, "loop_state.pt"))
        for name, array in (arrays or {}).items():
            np.save(os.path.join(tmp, name), array)
        # the summary is written last: its presence marks a complete checkpoint
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            json.dump({"step": trainer_state["step"]}, f)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        if saving_limit:
            for _, old in list_checkpoints(output_dir)[:-saving_limit]:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def read_loop_state(path: str) -> dict:
    """The loop's saved state alone (cheap: no weights), to check a resume before the model loads."""
    return torch.load(os.path.join(path, "loop_state.pt"), weights_only=False)


def load_checkpoint(acc, path: str, scheduler) -> dict:
    with _only_trainable_weights(acc):
        acc.load_state(path)
    scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler_state.pt"), weights_only=False))
    return read_loop_state(path)


def _trainable_names(model) -> set[str] | None:
    """Names of the trainable parameters when some are frozen (LoRA / QLoRA), else None (full fine-tuning)."""
    names = [(n, p.requires_grad) for n, p in model.named_parameters()]
    trainable = {n for n, g in names if g}
    return trainable if len(trainable) < len(names) else None


@contextmanager
def _only_trainable_weights(acc):
    """An adapter run's checkpoint holds the adapter, not another copy of the frozen (possibly quantized) base, which
    resume reloads from pretrained_model_path anyway. Applies where accelerate itself writes the weights (single
    process, DDP); DeepSpeed and FSDP save through their own engines."""

    def on_save(models, weights, _output_dir):
        for i, (model, state) in enumerate(zip(models, weights)):
            keep = _trainable_names(model)
            if keep is not None:
                weights[i] = {k: v for k, v in state.items() if k in keep}

    def on_load(models, input_dir):
        from safetensors.torch import load_file

        for i, model in reversed(list(enumerate(models))):
            keep = _trainable_names(model)
            file = os.path.join(input_dir, f"model{'_' + str(i) if i else ''}.safetensors")
            if keep is None or not os.path.isfile(file):
                continue
            state = load_file(file, device=str(next(model.parameters()).device))
            if keep < set(state):
                continue  # a full state dict (an older checkpoint): accelerate loads it as before
            if set(state) != keep:  # another adapter's checkpoint: refuse, do not guess
                raise ValueError(f"{file} holds {len(state)} tensors but this run trains {len(keep)} "
                                 f"(e.g. missing {sorted(keep - set(state))[:3]}, unexpected "
                                 f"{sorted(set(state) - keep)[:3]}); resume with the same peft settings")
            model.load_state_dict(state, strict=False)
            models.pop(i)  # loaded here; accelerate would insist on the full state dict

    handles = [acc.register_save_state_pre_hook(on_save), acc.register_load_state_pre_hook(on_load)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
