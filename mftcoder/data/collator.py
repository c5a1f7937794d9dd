"""Micro-batch tensors from units (rows of one or more packed samples).

Each sample (ids, mask) of n tokens is shifted on its own: inputs ids[:-1], targets ids[1:] kept where mask[1:] == 1
(else -100), positions 0..n-2. Samples of a row are laid side by side, so a target never crosses into the next sample.
Rows are right-padded to the longest row of the micro-batch (pad_id, label -100, sample id -1). Pad positions keep
counting after the row's last sample, so the model does not see them as a new sequence.

The model must be called with `position_ids=batch["position_ids"], attention_mask=None, use_cache=False`: with
transformers 5 that makes it build a block-causal mask from the restarting position ids (samples isolated). An
all-ones attention mask, or use_cache=True, silently lets packed samples attend to each other, so none is returned.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

IGNORE_INDEX = -100  # the label of an untrained position; defined here only (losses import it)


def collate(
    samples_per_unit: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]],
    task_ids: Sequence[int],
    pad_id: int,
    pad_to_multiple_of: int | None = None,
    shift: bool = True,
) -> dict:
    """Returns input_ids, labels, position_ids, sample_ids [B, T] (long), sample_task_ids [S], task_ids [B] and
    num_loss_tokens (python int): the number of labels that are not -100.

    `shift=False` keeps every token of a sample as input (a sequence scorer reads the last one), with labels = the
    trained tokens themselves."""
    if len(samples_per_unit) == 0:
        raise ValueError("collate got an empty micro-batch")
    if len(task_ids) != len(samples_per_unit):
        raise ValueError(f"got {len(task_ids)} task ids for {len(samples_per_unit)} units")
    if pad_to_multiple_of is not None and int(pad_to_multiple_of) < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1 or None, got {pad_to_multiple_of}")

    rows = []  # per row: (inputs, labels, positions, sample ids), each a 1-D int64 array
    sample_task_ids: list[int] = []
    for b, unit in enumerate(samples_per_unit):
        if len(unit) == 0:
            raise ValueError(f"unit {b} of the micro-batch holds no sample")
        parts: list[list[np.ndarray]] = [[], [], [], []]
        for j, (ids, mask) in enumerate(unit):
            ids = np.asarray(ids, dtype=np.int64)
            mask = np.asarray(mask)
            if ids.ndim != 1 or ids.shape != mask.shape:
                raise ValueError(
                    f"unit {b} sample {j}: input_ids {ids.shape} and loss_mask {mask.shape} must be 1-D of equal length"
                )
            if len(ids) < 2:
                raise ValueError(f"unit {b} sample {j} has {len(ids)} token(s); a sample needs at least 2")
            n = len(ids) - 1 if shift else len(ids)
            inputs, targets, trained = (ids[:-1], ids[1:], mask[1:]) if shift else (ids, ids, mask)
            parts[0].append(inputs)
            parts[1].append(np.where(trained != 0, targets, IGNORE_INDEX))
            parts[2].append(np.arange(n, dtype=np.int64))
            parts[3].append(np.full(n, len(sample_task_ids), dtype=np.int64))
            sample_task_ids.append(int(task_ids[b]))
        rows.append([np.concatenate(p) for p in parts])

    T = max(len(r[0]) for r in rows)
    if pad_to_multiple_of:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
    B = len(rows)
    input_ids = torch.full((B, T), int(pad_id), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    sample_ids = torch.full((B, T), -1, dtype=torch.long)
    position_ids = torch.empty((B, T), dtype=torch.long)
    for b, (inp, lab, pos, sid) in enumerate(rows):
        n = len(inp)
        input_ids[b, :n] = torch.from_numpy(inp)
        labels[b, :n] = torch.from_numpy(lab)
        sample_ids[b, :n] = torch.from_numpy(sid)
        position_ids[b, :n] = torch.from_numpy(pos)
        position_ids[b, n:] = torch.arange(int(pos[-1]) + 1, int(pos[-1]) + 1 + T - n)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "sample_ids": sample_ids,
        "sample_task_ids": torch.tensor(sample_task_ids, dtype=torch.long),
        "task_ids": torch.tensor([int(t) for t in task_ids], dtype=torch.long),
        "num_loss_tokens": int((labels != IGNORE_INDEX).sum()),
    }


def collate_pairs(units: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], task_ids: Sequence[int], pad_id: int,
                  pad_to_multiple_of: int | None = None, *, packed: bool, shift: bool = True) -> dict:
    """Preference pairs: each unit holds pairs as consecutive samples (chosen, rejected, chosen, ...). Padded, every
    sample gets its own row; packed, a unit's samples share one row. Either way sample s belongs to pair s // 2 and is
    the chosen answer iff s is even, and both answers of a pair are in the same micro-batch. Adds pair_task_ids [P]."""
    for b, unit in enumerate(units):
        if len(unit) % 2:
            raise ValueError(f"unit {b} holds {len(unit)} samples; preference units hold whole pairs")
    if not packed:
        task_ids = [t for unit, t in zip(units, task_ids) for _ in unit]
        units = [[sample] for unit in units for sample in unit]
    batch = collate(units, task_ids, pad_id, pad_to_multiple_of, shift=shift)
    batch["pair_task_ids"] = batch["sample_task_ids"][0::2].clone()
    return batch
