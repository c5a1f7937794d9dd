"""Per-sample values an objective computes once, before the first step (DPO's reference log-probs with
`precompute_reference`): every train and validation item, sharded over the processes, summed into one array indexed
by the cache's rows, and kept three ways:
- in the token cache (`precomputed-<key>.npy` beside the tokens), so a new run on the same data and reference skips
  the pass;
- in every checkpoint (`precomputed.npy`), so a resume uses exactly the values the interrupted run trained with;
- in the objective (`use_precomputed`), which then needs no reference model in memory.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Optional

import numpy as np
import torch

from mftcoder.config import ConfigError
from mftcoder.trainer.batches import sharded_batches

log = logging.getLogger("mftcoder")

CHECKPOINT_FILE = "precomputed.npy"


def cache_file(run, key: dict) -> str:
    full = {**key, "objective": run.objective.name, "mixed_precision": run.acc.mixed_precision,
            "chunked": run.objective.chunked}
    digest = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return os.path.join(run.data.cache_path, f"precomputed-{digest}.npy")


def prepare_precomputed(run, step: int) -> Optional[np.ndarray]:
    """The objective's precomputed values (from the checkpoint resumed, the cache, or computed now), handed to it."""
    key = run.objective.precompute_key()
    if key is None:
        return None
    path = cache_file(run, key)
    values = _read(os.path.join(run.resume_path, CHECKPOINT_FILE)) if run.resume_path else None
    if values is None:
        values = _read(path)
    if values is None:
        if step > 0 and not run.objective.precompute_after_start:
            raise ConfigError(f"precompute_reference: the checkpoint {run.resume_path!r} holds no {CHECKPOINT_FILE} "
                              f"and the cache has none; the policy has trained {step} steps, so it is no longer the "
                              "reference and cannot compute them; start a new run")
        values = compute_all(run)
        if run.acc.is_main_process:
            _write(path, values)
        run.acc.wait_for_everyone()
    if len(values) != run.data.num_rows:
        raise ConfigError(f"{path}: {len(values)} precomputed values for {run.data.num_rows} cached samples; delete "
                          "the file to compute them again")
    run.objective.use_precomputed(torch.from_numpy(values))
    return values


def all_items(run) -> list[tuple[str, tuple[int, int]]]:
    g = run.objective.samples_per_item
    return [(split, (t, i)) for split in ("train", "valid") for t, task in enumerate(run.data.tasks)
            for i in range(len(getattr(task, split)) // g)]


@torch.no_grad()
def compute_all(run) -> np.ndarray:
    """Every item once, sharded over processes (the same number of forwards on every rank), summed across them."""
    acc, model, cfg = run.acc, run.model, run.cfg
    items = all_items(run)
    values = torch.zeros(run.data.num_rows, dtype=torch.float64)
    was_training = model.training
    model.eval()
    if acc.is_main_process:
        log.info("precomputing %s for %d items", run.objective.name, len(items))
    for batch, real in sharded_batches(items, acc.process_index, acc.num_processes, cfg.per_device_eval_batch_size,
                                       run.batches.collate_items, acc.device):
        with acc.autocast():
            out = run.objective.precompute(model, batch).double().cpu()
        if real:
            values[batch["cache_rows"].cpu()] = out
    if was_training:
        model.train()
    if acc.num_processes > 1:
        t = values.to(acc.device)
        torch.distributed.all_reduce(t)
        values = t.cpu()
    return values.numpy()


def _read(path: str) -> Optional[np.ndarray]:
    return np.load(path) if os.path.isfile(path) else None


def _write(path: str, values: np.ndarray) -> None:
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, values)
    os.replace(tmp, path)
