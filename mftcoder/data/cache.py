"""Tokenise every task once (tokenise.py, in parallel) into a memory-mapped cache keyed by a fingerprint of everything
that matters, and account for every line in the statistics.

Layout of one cache entry, `<cache_dir>/<fingerprint>/`:
  ids.npy    int32, all samples' token ids back to back (memory-mapped on load)
  mask.npy   uint8, their loss masks
  index.npy  int64 [N, 4]: task_id, split (0 train, 1 valid, 2 test), offset, length
  meta.json  tasks, statistics and the fingerprint inputs
An entry is written under a temporary name and renamed when complete, so a crash never leaves a half cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mftcoder.config import TrainConfig
from mftcoder.data.blocks import block_stats
from mftcoder.data.documents import DocumentTokenizer
from mftcoder.data.formats import DataFormatError
from mftcoder.data.npy_stream import NpyAppender
from mftcoder.data.tasks import Task, resolve_tasks
from mftcoder.data.template import TemplateError, get_template
from mftcoder.data.tokenise import EncodeSettings, LineResult, tokenise_tasks

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2
SPLITS = ("train", "valid", "test")
STAT_KEYS = ("lines", "blank", "train_samples", "valid_samples", "test_samples", "overlong", "truncated",
             "dropped", "rejected", "tokens", "loss_tokens")
# pretraining adds: empty documents, how documents were written (fill-in-the-middle), and the blocks of each split
DOCUMENT_STAT_KEYS = ("empty", "plain", "psm", "spm")


class PreprocessError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------------------------------
# fingerprint


# Tokenised with every fingerprint: catches in-memory changes to a tokenizer that its files do not show.
_TOKENIZER_PROBE = "def f(x):\n\treturn x  # Caf\u00e9 \u2713 1234\r\n<|endoftext|><s>human\n<|im_start|>user"


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    source = os.path.join(getattr(tokenizer, "name_or_path", "") or "", "tokenizer.json")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if os.path.isfile(source):
        # the file it was loaded from: hashing it takes ~3 ms where serialising a 50k-vocab tokenizer takes ~20 ms,
        # which would be most of a warm cache load
        h.update(file_digest(source).encode())
    elif backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    probe = tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    # the chat_template is not part of it: the template in use is fingerprinted on its own (data_fingerprint)
    h.update(json.dumps({"class": type(tokenizer).__name__, "size": len(tokenizer), "probe": probe,
                         "added": tokenizer.get_added_vocab(), "eos": tokenizer.eos_token,
                         "pad": tokenizer.pad_token, "bos": tokenizer.bos_token}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_template(cfg: TrainConfig, tokenizer):
    try:
        return get_template(cfg.template, tokenizer, cfg.role_markers)
    except TemplateError as e:
        raise PreprocessError(f"template={cfg.template!r}: {e}") from None


def data_fingerprint(cfg: TrainConfig, tasks: list[Task], tokenizer) -> tuple[str, dict]:
    """A key of everything that changes the tokens: file contents (not mtimes: touching a file or copying the data
    keeps the cache; editing a byte, even at the same size and mtime, does not), tokenizer, template, settings."""
    files = [[t.name, os.path.abspath(f), file_digest(f)] for t in tasks for f in t.files]
    inputs = {
        "version": CACHE_FORMAT_VERSION,
        "files": files,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": cfg.template,
        # the rendering itself, so a changed template definition (or tokenizer chat_template) re-tokenises
        "template_jinja": build_template(cfg, tokenizer).jinja,
        "seq_length": cfg.seq_length,
        "tokenize_mode": cfg.tokenize_mode,
        **({"pairs": True} if cfg.is_preference else {}),  # SFT fingerprints stay as they were
        **({"documents": {"fim_rate": cfg.fim_rate, "fim_spm_rate": cfg.fim_spm_rate, "fim_tokens": cfg.fim_tokens,
                          "seed": cfg.seed if cfg.fim_rate > 0 else None}} if cfg.objective == "pretrain" else {}),
        "overlong_policy": cfg.overlong_policy,
        "on_bad_line": cfg.on_bad_line,
        "data_split": cfg.split_fractions,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]
    return digest, inputs


def content_digest(inputs: dict) -> str:
    """The fingerprint inputs without where the files lie, in task order: what a resume must see unchanged."""
    located = {**inputs, "files": [[name, digest] for name, _path, digest in inputs["files"]]}
    return hashlib.sha256(json.dumps(located, sort_keys=True).encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------------------------------
# the cache


class SampleStore:
    """The tokenised samples of one task and split: views into the memory-mapped arrays. `rows` is each sample's row
    in the cache's index (a key for values computed per sample, e.g. reference log-probs)."""

    def __init__(self, ids: np.ndarray, mask: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                 rows: Optional[np.ndarray] = None):
        self._ids, self._mask, self._offsets, self.lengths = ids, mask, offsets, lengths
        self.rows = rows if rows is not None else np.arange(len(lengths))

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        o, n = int(self._offsets[i]), int(self.lengths[i])
        return self._ids[o:o + n], self._mask[o:o + n]


@dataclass
class TaskData:
    task: Task
    train: SampleStore
    valid: SampleStore


@dataclass
class TokenizedData:
    tasks: list[TaskData]
    stats: dict
    cache_path: str
    from_cache: bool
    content_digest: str = ""  # the tokens' identity without file paths: moved data keeps it, edited data does not
    num_rows: int = 0  # samples in the cache (all tasks and splits): the length of per-sample arrays

    @property
    def task_names(self) -> list[str]:
        return [t.task.name for t in self.tasks]


def _count(st: dict, r: LineResult) -> None:
    """Account for one line in its task's statistics."""
    st["lines"] += 1
    if r.written_as is not None:
        st[r.written_as] += 1
    if r.status in ("blank", "empty"):
        st[r.status] += 1
    elif r.status == "rejected":
        st["rejected"] += 1
    elif r.status == "dropped":
        st["overlong"] += int(r.overlong)
        st["dropped"] += 1
    else:
        st["overlong"] += int(r.overlong)
        st["truncated"] += int(r.overlong)
        st[f"{r.split}_samples"] += 1  # a preference pair counts once (its two sequences are one sample)
        st["tokens"] += sum(len(ids) for ids, _ in r.samples)
        st["loss_tokens"] += sum(int(mask[1:].sum()) for _, mask in r.samples)


def _new_stats(cfg: TrainConfig, tasks: list[Task]) -> dict:
    unit = "pair" if cfg.is_preference else "document" if cfg.objective == "pretrain" else "sample"  # *_samples count
    extra = DOCUMENT_STAT_KEYS if cfg.objective == "pretrain" else ()
    return {t.name: {"files": list(t.files), "unit": unit, **{k: 0 for k in STAT_KEYS + extra}} for t in tasks}


class _CacheWriter:
    """ids, mask and index appended to the cache files as lines arrive: memory stays bounded whatever the corpus."""

    def __init__(self, out_dir: str):
        self.ids = NpyAppender(os.path.join(out_dir, "ids.npy"), np.int32)
        self.mask = NpyAppender(os.path.join(out_dir, "mask.npy"), np.uint8)
        self.index = NpyAppender(os.path.join(out_dir, "index.npy"), np.int64, (4,))
        self.offset = 0

    def add(self, task_id: int, r: LineResult) -> None:
        for ids, mask in r.samples:  # a pair's chosen and rejected are consecutive rows
            self.ids.append(ids)
            self.mask.append(mask)
            self.index.append(np.asarray([[task_id, SPLITS.index(r.split), self.offset, len(ids)]]))
            self.offset += len(ids)

    def close(self) -> None:
        for f in (self.ids, self.mask, self.index):
            f.close()


def _build(cfg: TrainConfig, settings: EncodeSettings, tasks: list[Task], tokenizer, out_dir: str, num_workers: int,
           progress: bool) -> dict:
    from tqdm import tqdm

    stats = _new_stats(cfg, tasks)
    rejected_examples: dict[str, list[str]] = {t.name: [] for t in tasks}
    total_bytes = sum(os.path.getsize(f) for t in tasks for f in t.files)
    bar = tqdm(total=total_bytes, desc="tokenising", unit="B", unit_scale=True, disable=not progress,
               dynamic_ncols=True)
    writer = _CacheWriter(out_dir)
    results = tokenise_tasks(tasks, tokenizer, settings, num_workers)
    try:
        for job, lines in results:
            name = tasks[job.task_id].name
            for r in lines:
                if r.status == "rejected":
                    if cfg.on_bad_line == "error":
                        raise PreprocessError(f"{r.reason}\n(set \"on_bad_line\": \"skip\" to skip and count bad lines)")
                    if len(rejected_examples[name]) < 5:
                        rejected_examples[name].append(r.reason)
                _count(stats[name], r)
                writer.add(job.task_id, r)
            bar.update(job.nbytes)
    except DataFormatError as e:  # a file that cannot be read at all (a broken gzip): no line of it is usable
        raise PreprocessError(str(e)) from None
    finally:
        bar.close()
        results.close()  # stops the worker processes now, not when the generator is collected
        writer.close()
    if cfg.objective == "pretrain":
        _add_block_stats(stats, tasks, np.load(os.path.join(out_dir, "index.npy")), cfg.seq_length)
    return {"tasks": stats, "rejected_examples": {k: v for k, v in rejected_examples.items() if v}}


def _add_block_stats(stats: dict, tasks: list[Task], index: np.ndarray, seq_length: int) -> None:
    """Each split's blocks (blocks.py): (blocks - 1) x seq_length + last_block_tokens == the split's tokens."""
    for t in tasks:
        st = stats[t.name]
        for field in ("blocks", "last_block_tokens"):
            st[field] = {}
        for s, split in enumerate(SPLITS):
            lengths = index[(index[:, 0] == t.task_id) & (index[:, 1] == s), 3]
            for field, value in block_stats(lengths, seq_length).items():
                st[field][split] = value


def _load(path: str, tasks: list[Task]) -> tuple[list[TaskData], int]:
    ids = np.load(os.path.join(path, "ids.npy"), mmap_mode="r")
    mask = np.load(os.path.join(path, "mask.npy"), mmap_mode="r")
    index = np.load(os.path.join(path, "index.npy"))
    out = []
    for t in tasks:
        stores = []
        for split in (0, 1):
            rows = np.flatnonzero((index[:, 0] == t.task_id) & (index[:, 1] == split))
            stores.append(SampleStore(ids, mask, index[rows, 2].copy(), index[rows, 3].copy(), rows))
        out.append(TaskData(t, stores[0], stores[1]))
    return out, len(index)


SMALL_DATA_BYTES = 4 << 20  # below this, starting worker processes costs more than it saves (measured: 2,000 lines)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a pinned or containerised job sees its share)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_workers(tasks: list[Task]) -> int:
    """Tokenising processes when preprocessing_num_workers is unset: every usable core, or 1 for small data."""
    size = sum(os.path.getsize(f) for t in tasks for f in t.files)
    return 1 if size < SMALL_DATA_BYTES else usable_cores()


def load_or_build(cfg: TrainConfig, tokenizer, *, num_workers: Optional[int] = None, progress: bool = True,
                  tasks: Optional[list[Task]] = None) -> TokenizedData:
    """Reuse the cache entry for these inputs if it exists, else tokenise everything and write it."""
    tasks = tasks or resolve_tasks(cfg)
    fingerprint, inputs = data_fingerprint(cfg, tasks, tokenizer)
    root = cfg.resolved_cache_dir
    path = os.path.join(root, fingerprint)
    meta_path = os.path.join(path, "meta.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        task_data, num_rows = _load(path, tasks)
        data = TokenizedData(task_data, meta["stats"], path, from_cache=True, content_digest=content_digest(inputs),
                             num_rows=num_rows)
        warn_small_tasks(cfg, data)  # the run that loads the cache needs to hear it as much as preprocess did
        return data
    for t in tasks:
        for f in t.files:
            if os.path.getsize(f) == 0:
                log.warning(f"{f}: empty file (task {t.name!r}); it contributes no sample")
    settings = EncodeSettings.from_config(cfg)
    if settings.documents is not None:  # e.g. FIM sentinels missing: one clear error now, not one per worker
        try:
            DocumentTokenizer(tokenizer, settings.documents)
        except ValueError as e:
            raise PreprocessError(str(e)) from None
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{fingerprint}.tmp-", dir=root)
    try:
        workers = num_workers or cfg.preprocessing_num_workers or default_workers(tasks)
        stats = _build(cfg, settings, tasks, tokenizer, tmp, workers, progress)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"fingerprint": fingerprint, "inputs": inputs, "stats": stats}, f, indent=1)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same entry first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    task_data, num_rows = _load(path, tasks)
    data = TokenizedData(task_data, stats, path, from_cache=False, content_digest=content_digest(inputs),
                         num_rows=num_rows)
    warn_small_tasks(cfg, data)
    return data


def warn_small_tasks(cfg: TrainConfig, data: TokenizedData) -> list[str]:
    warnings = []
    if cfg.split_fractions[1] > 0:
        for t in data.tasks:
            if len(t.valid) == 0:
                msg = (f"task {t.task.name!r} has no validation sample ({len(t.train)} train samples at data_split "
                       f"{cfg.data_split!r}); its validation loss is not measured")
                log.warning(msg)
                warnings.append(msg)
    for t in data.tasks:
        if len(t.train) == 0:
            msg = f"task {t.task.name!r} has no training sample after preprocessing"
            log.warning(msg)
            warnings.append(msg)
    return warnings


def stats_table(stats: dict) -> str:
    cols = ["task", "lines", "train", "valid", "test", "truncated", "dropped", "rejected", "blank", "tokens", "loss_tokens"]
    keys = [None, "lines", "train_samples", "valid_samples", "test_samples", "truncated", "dropped", "rejected", "blank",
            "tokens", "loss_tokens"]
    rows = [[name] + [str(s[k]) for k in keys[1:]] for name, s in stats["tasks"].items()]
    totals = ["TOTAL"] + [str(sum(s[k] for s in stats["tasks"].values())) for k in keys[1:]]
    table = [cols] + rows + [totals]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [fmt(cols), "-" * (sum(widths) + 2 * (len(cols) - 1))] + [fmt(r) for r in rows] + [fmt(totals)]
    documents = {name: s for name, s in stats["tasks"].items() if s.get("unit") == "document"}
    if documents:
        lines.append("(pretraining: train / valid / test count documents; every token is trained)")
        lines += [f"{name}: blocks train {s['blocks']['train']} / valid {s['blocks']['valid']} (last block "
                  f"{s['last_block_tokens']['train']} / {s['last_block_tokens']['valid']} tokens), {s['empty']} empty "
                  f"document(s) skipped, fill-in-the-middle psm {s['psm']} / spm {s['spm']} of "
                  f"{s['plain'] + s['psm'] + s['spm']}" for name, s in documents.items()]
    if any(s.get("unit") == "pair" for s in stats["tasks"].values()):
        lines.append("(preference data: train / valid / test / truncated / dropped count pairs; tokens count both "
                     "answers)")
    return "\n".join(lines)


STATS_FILE = "data_stats.json"


def write_stats(output_dir: str, stats: dict) -> str:
    """Written under a temporary name and renamed: a reader sees the old file or the whole new one."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, STATS_FILE)
    tmp = os.path.join(output_dir, f".{STATS_FILE}.tmp-{os.getpid()}")  # per process: two runs never share it
    try:
        with open(tmp, "w") as f:
            json.dump(stats, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def remove_stats(output_dir: str) -> None:
    """Before preprocessing: a run that fails must not leave an earlier run's statistics to be read as its own."""
    try:
        os.remove(os.path.join(output_dir, STATS_FILE))
    except FileNotFoundError:
        pass
