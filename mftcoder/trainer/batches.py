"""From the tokenised tasks to this process's micro-batches: units (rows), the balanced sampler, the collator."""
from __future__ import annotations

import math
import random
from typing import Callable, Iterator

import torch

from mftcoder.config import TrainConfig
from mftcoder.data.blocks import DocumentBlocks, block_samples
from mftcoder.data.cache import SampleStore, TokenizedData
from mftcoder.data.collator import collate
from mftcoder.data.packing import build_units
from mftcoder.data.sampler import TaskBalancedSampler


class ItemRows:
    """SFT and preference rows: a unit is a list of items (an item: one sample, or `group` consecutive samples that
    train together, e.g. a preference pair), one item a row (padding) or bin-packed (pack)."""

    def __init__(self, cfg: TrainConfig, group: int):
        self.cfg, self.group = cfg, group

    def train_units(self, store: SampleStore) -> list[list[int]]:
        """A group of g samples needs sum(n) - g positions; packed, it shares a row of g x seq_length positions with
        others (a pair then takes what its two padded rows would)."""
        g, lengths = self.group, store.lengths
        items = [int(sum(lengths[g * i:g * i + g])) - (g - 1) for i in range(len(lengths) // g)]
        return build_units(items, g * self.cfg.seq_length, self.cfg.padding_mode)

    def valid_units(self, store: SampleStore) -> list[list[int]]:
        return [[i] for i in range(len(store) // self.group)]

    def samples(self, store: SampleStore, unit: list[int]) -> tuple[list, list[int]]:
        """(the row's samples, their indices in the store)."""
        index = [s for item in unit for s in range(self.group * item, self.group * item + self.group)]
        return [store[i] for i in index], index


class BlockRows:
    """Continued-pretraining rows: a unit is a block of the task's concatenated documents (mftcoder/data/blocks.py),
    in training and validation alike."""

    def __init__(self, cfg: TrainConfig):
        self.seq_length, self.reset = cfg.seq_length, cfg.reset_position_ids

    def train_units(self, store: SampleStore) -> DocumentBlocks:
        return DocumentBlocks(store.lengths, self.seq_length)

    valid_units = train_units

    def samples(self, store: SampleStore, unit) -> tuple[list, list[int]]:
        kept = [d for d, a, b in unit if b - a >= 2] if self.reset else [unit[0][0]]
        return block_samples(unit, store, self.reset), kept


ROW_LAYOUTS = ("items", "blocks")


class TrainBatches:
    """The micro-batches of optimizer step N for one process: the same global batch whatever the geometry."""

    def __init__(self, data: TokenizedData, cfg: TrainConfig, rank: int, world_size: int, pad_id: int,
                 collate_fn: Callable = collate, samples_per_item: int = 1, layout: str = "items"):
        """`collate_fn(rows, task_ids, pad_id, pad_to_multiple_of)` makes a micro-batch (the objective's `collate`).
        `samples_per_item`: consecutive samples that train together (2: a preference pair, chosen then rejected).
        `layout`: "items" (ItemRows) or "blocks" (BlockRows, continued pretraining)."""
        self.data, self.cfg, self.rank, self.world, self.pad_id = data, cfg, rank, world_size, pad_id
        self.collate_fn, self.group = collate_fn, samples_per_item
        self.rows = BlockRows(cfg) if layout == "blocks" else ItemRows(cfg, samples_per_item)
        self.units = [self.rows.train_units(t.train) for t in data.tasks]
        self.valid = [self.rows.valid_units(t.valid) for t in data.tasks]
        weights = [t.task.sampling_weight for t in data.tasks] if cfg.task_sampling == "explicit" else None
        self.global_batch_size = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size
        self.sampler = TaskBalancedSampler(
            [len(u) for u in self.units], self.global_batch_size, strategy=cfg.task_sampling,
            temperature=cfg.sampling_temperature, weights=weights, seed=cfg.seed, group_by_task=cfg.group_by_task)

    def eval_units(self) -> list[tuple[int, int]]:
        """Every validation unit (an item, or a block) once, as (task, unit)."""
        return [(t, i) for t in range(len(self.valid)) for i in range(len(self.valid[t]))]

    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch()

    def micro_batches(self, step: int) -> list[dict]:
        batch = self.sampler.global_batch(step)
        shards = self.sampler.shard(batch, self.rank, self.world, self.cfg.per_device_train_batch_size,
                                    self.cfg.gradient_accumulation_steps)
        return [self.collate_units(mb, split="train") for mb in shards]

    def collate_units(self, units: list[tuple[int, int]], split: str) -> dict:
        """A micro-batch of (task, unit) of the train or valid split (the units of `self.units` / `self.valid`)."""
        table = self.units if split == "train" else self.valid
        return self._collate([(split, task_id, table[task_id][unit]) for task_id, unit in units])

    def collate_items(self, items: list[tuple[str, tuple[int, int]]]) -> dict:
        """A batch of (split, (task, item)), one item a unit, from any split (item layouts only)."""
        return self._collate([(split, task_id, [item]) for split, (task_id, item) in items])

    def _collate(self, groups: list[tuple[str, int, list]]) -> dict:
        rows, task_ids, cache_rows = [], [], []
        for split, task_id, unit in groups:
            store = getattr(self.data.tasks[task_id], split)
            samples, index = self.rows.samples(store, unit)
            rows.append(samples)
            task_ids.append(task_id)
            cache_rows += [int(store.rows[i]) for i in index]
        multiple = None if self.cfg.use_dynamic_padding else self.cfg.seq_length
        batch = self.collate_fn(rows, task_ids, self.pad_id, multiple)
        batch["cache_rows"] = torch.tensor(cache_rows, dtype=torch.long)  # [S]: each sample's row in the cache
        return batch


def shard_eval(units: list, rank: int, world: int, batch_size: int) -> tuple[list[list], int]:
    """This rank's evaluation batches, and how many every rank runs (the same count everywhere, so sharded models that
    gather parameters in forward never wait on a rank that ran out of data; extra batches are dummies)."""
    mine = units[rank::world]
    per_rank = math.ceil(len(units) / world) if units else 0
    n_batches = math.ceil(per_rank / batch_size) if per_rank else 0
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)], n_batches


def sharded_batches(units: list, rank: int, world: int, batch_size: int, collate: Callable, device) -> Iterator:
    """(batch on `device`, real) for this rank's batches of `units`. Ranks with fewer real batches get dummy ones (the
    first unit again, real=False), so every rank runs the same number of forwards: sharded models gather parameters
    inside forward and would wait forever on a rank that stopped."""
    mine, n_batches = shard_eval(units, rank, world, batch_size)
    for i in range(n_batches):
        real = i < len(mine) and len(mine[i]) > 0  # shard_eval gives [] to a rank without data
        yield to_device(collate(mine[i] if real else [units[0]]), device), real


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class ValidProbe:
    """CoBa's cheap validation signal: the next few validation batches of a seeded cycle over all tasks."""

    def __init__(self, units: list[tuple[int, int]], seed: int):
        self.units = list(units)
        random.Random(seed).shuffle(self.units)
        self.position = 0

    def next_units(self, count: int) -> list[tuple[int, int]]:
        out = []
        for _ in range(min(count, len(self.units))):
            out.append(self.units[self.position % len(self.units)])
            self.position += 1
        return out
