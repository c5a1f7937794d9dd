"""The output_dir belongs to one run at a time, and to one run's history.

- A lock (`flock` on `output_dir/.mftcoder.lock`, held by the main process for the whole run) refuses a second
  training into the same folder, naming the holder. The kernel releases a flock when its process dies, so the file a
  killed run leaves behind never blocks.
- A fresh run into a folder that holds an earlier run's checkpoints or final model is refused unless
  `overwrite_output_dir: true` (which deletes them first); a resume only accepts checkpoints written by the same
  run: the same resolved config, apart from the keys in `SAME_RUN_EXEMPT`.
- Temporary folders of a killed run (`.tmp-checkpoint-N`, `.tmp-final`) are removed at start, under the lock.
- Then the run's resolved config is written to `output_dir/train_config.json` (for `mftcoder report` and the model
  card); it is not a result, so it never makes a folder count as holding an earlier run.
- `staged_directory` writes a folder's files beside it and moves them in with `os.replace`, config files last, so a
  kill never leaves a model folder with a config but missing or truncated weights.
"""
from __future__ import annotations

import datetime
import fnmatch
import functools
import json
import os
import shutil
import socket
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from mftcoder.config import ConfigError, TrainConfig
from mftcoder.trainer.checkpoint import CKPT_RE, resolve_resume

LOCK_FILE = ".mftcoder.lock"
CONFIG_FILE = "train_config.json"  # the resolved config of the run in output_dir (checkpoints hold their own copy)
TMP_PREFIXES = (".tmp-checkpoint-", ".tmp-final")
FINAL_TMP = ".tmp-final"
# the files that make a folder loadable: written last, removed first
MODEL_MARKERS = ("config.json", "adapter_config.json")
# what save_pretrained (model, adapter, tokenizer) writes into output_dir
FINAL_MODEL_FILES = ("config.json", "generation_config.json", "adapter_config.json", "*.safetensors",
                     "*.safetensors.index.json", "pytorch_model*.bin", "adapter_model.bin", "tokenizer*",
                     "special_tokens_map.json", "added_tokens.json", "chat_template.*", "vocab.json", "merges.txt",
                     "README.md")
# keys that may differ between a checkpoint's run and the run resuming it, each for a reason:
SAME_RUN_EXEMPT = frozenset({
    "resume_from_checkpoint", "auto_resume", "overwrite_output_dir",  # how this start is asked for
    "output_dir", "tb_dir", "cache_dir",  # where things go (the token cache is keyed by content)
    "report_to", "tracker_project",  # where the scalars are shown: metrics.jsonl stays the record
    "checkpointing_steps", "epoch_checkpointing", "saving_limit", "log_interval", "init_timeout_seconds",  # bookkeeping
    "data_paths",  # moved data is fine: the checkpoint's data digest refuses other content
    # the sampler refuses another global batch; the same global batch split another way trains the same
    "per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size",
    "max_train_steps",  # lengthening (or shortening) a run; the LR schedule is recomputed for the new length
})


def is_main_rank() -> bool:
    """Before the accelerator exists: the launchers (torchrun, accelerate, deepspeed) set RANK."""
    return int(os.environ.get("RANK", "0")) == 0


# --- the lock ---------------------------------------------------------------------------------------------------------

class OutputDirLock:
    """An exclusive, non-blocking flock on output_dir/.mftcoder.lock; the file tells who holds it."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self._fd: Optional[int] = None

    def acquire(self, command: Optional[list[str]] = None) -> "OutputDirLock":
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # no truncation: the holder's record stays readable
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"output_dir {os.path.dirname(self.path)!r} is in use by another training "
                              f"({describe_holder(read_holder(self.path))}); wait for it to finish, stop it, or "
                              "choose another output_dir") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now().isoformat(timespec="seconds"),
                  "command": list(sys.argv if command is None else command)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock; the file stays, harmless
            self._fd = None

    def __enter__(self) -> "OutputDirLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(path: str) -> dict:
    try:
        with open(path) as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}  # the holder has the lock but has not written its record yet


def describe_holder(holder: dict) -> str:
    if not holder:
        return "holder not recorded yet"
    command = " ".join(holder.get("command") or [])
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
            + (f": {command}" if command else ""))


# --- an earlier run in the folder --------------------------------------------------------------------------------------

def previous_run(output_dir: str) -> list[str]:
    """The names in output_dir that an earlier run's results are made of (checkpoints, a final model)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(e.name for e in os.scandir(output_dir)
                  if (e.is_dir() and CKPT_RE.match(e.name)) or e.name in MODEL_MARKERS
                  or e.name in ("model.safetensors", "adapter_model.safetensors", "model.safetensors.index.json"))


def remove_previous_run(cfg: TrainConfig) -> list[str]:
    """overwrite_output_dir: the earlier run's checkpoints, metrics, TensorBoard events, resolved config and final
    model (with its card). The token cache stays (keyed by content, it is valid for any run)."""
    out, removed = cfg.output_dir, []
    if not os.path.isdir(out):
        return removed
    tb_dirs = {os.path.abspath(os.path.join(out, "tensorboard")), os.path.abspath(cfg.resolved_tb_dir)}
    for e in list(os.scandir(out)):
        path = os.path.abspath(e.path)
        if e.is_dir() and (CKPT_RE.match(e.name) or path in tb_dirs or e.name.startswith(TMP_PREFIXES)):
            shutil.rmtree(e.path, ignore_errors=True)
        elif e.is_file() and (e.name in ("metrics.jsonl", CONFIG_FILE) or any(fnmatch.fnmatch(e.name, p) for p in FINAL_MODEL_FILES)):
            os.remove(e.path)
        else:
            continue
        removed.append(e.name)
    return sorted(removed)


def clean_stale_temp(output_dir: str) -> list[str]:
    """Remove the half-written folders of a killed run (only call this holding the lock)."""
    if not os.path.isdir(output_dir):
        return []
    stale = sorted(e.name for e in os.scandir(output_dir) if e.is_dir() and e.name.startswith(TMP_PREFIXES))
    for name in stale:
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    return stale


def config_differences(saved: dict, current: dict) -> list[str]:
    """`key (checkpoint: a, now: b)` for each key that differs, apart from SAME_RUN_EXEMPT. A key the checkpoint does
    not have (written by an older mftcoder) is not compared."""
    return [f"{k} (checkpoint: {saved[k]!r}, now: {current[k]!r})" for k in sorted(current)
            if k in saved and k not in SAME_RUN_EXEMPT and saved[k] != current[k]]


def check_same_run(checkpoint: str, cfg: TrainConfig) -> None:
    path = os.path.join(checkpoint, "train_config.json")
    if not os.path.isfile(path):
        return  # checked for completeness elsewhere; a checkpoint without a config predates this check
    with open(path) as f:
        saved = json.load(f)
    diff = config_differences(saved, cfg.model_dump(mode="json"))
    if diff:
        raise ConfigError(f"resume_from_checkpoint: {checkpoint!r} belongs to a run with another config: "
                          f"{'; '.join(diff)}. Resume with that run's config, or start this one in another "
                          "output_dir (or set overwrite_output_dir: true without resuming to delete the old run)")


def _reuse_message(out: str, found: list[str], resumable: bool) -> str:
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    hint = ("resume it with --resume_from_checkpoint latest, " if resumable else
            "it has no checkpoint to resume; ")
    return (f"output_dir {out!r} holds an earlier run ({shown}); a new run there would mix with it: {hint}choose "
            "another output_dir, or set overwrite_output_dir: true to delete its checkpoints, metrics and final model")


def prepare_output_dir(cfg: TrainConfig, main: bool) -> Optional[OutputDirLock]:
    """Lock (main process), then refuse a reuse or a foreign checkpoint (every process: the same files, the same
    verdict), then clean up (main process). Returns the held lock (None on the other processes)."""
    lock = OutputDirLock(cfg.output_dir).acquire() if main else None
    try:
        resume = resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir, cfg.auto_resume)
        if resume:
            check_same_run(resume, cfg)
        else:
            found = previous_run(cfg.output_dir)
            if found and not cfg.overwrite_output_dir:
                raise ConfigError(_reuse_message(cfg.output_dir, found, any(CKPT_RE.match(n) for n in found)))
        if main:
            clean_stale_temp(cfg.output_dir)
            if not resume and cfg.overwrite_output_dir:
                remove_previous_run(cfg)
            write_resolved_config(cfg)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def write_resolved_config(cfg: TrainConfig) -> str:
    """output_dir/train_config.json: every key of this run's config, defaults included (a resume rewrites it)."""
    path = os.path.join(cfg.output_dir, CONFIG_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(cfg.model_dump(mode="json"), f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def owns_output_dir(train_fn: Callable) -> Callable:
    """Decorates train(cfg): the run holds its output_dir from the first file it writes to its last."""

    @functools.wraps(train_fn)
    def run(cfg: TrainConfig, *args, **kwargs):
        main = is_main_rank()
        created = main and not os.path.exists(cfg.output_dir)
        lock = None
        try:
            lock = prepare_output_dir(cfg, main)
            return train_fn(cfg, *args, **kwargs)
        except BaseException:
            if created:  # a run that failed before writing anything leaves no folder behind
                _remove_if_only_lock(cfg.output_dir)
            raise
        finally:
            if lock is not None:
                lock.release()

    return run


def _remove_if_only_lock(output_dir: str) -> None:
    try:
        names = os.listdir(output_dir)
        if LOCK_FILE in names and set(names) <= {LOCK_FILE, CONFIG_FILE}:
            for name in names:
                os.remove(os.path.join(output_dir, name))
            os.rmdir(output_dir)
    except OSError:
        pass


# --- atomic folder writes ----------------------------------------------------------------------------------------------

def commit_directory(staged: str, target: str, markers: tuple[str, ...] = MODEL_MARKERS) -> None:
    """Move every entry of `staged` into `target` with os.replace (atomic per file). The target's marker files go
    first and come back last: at any moment the folder is loadable (old or new files) or visibly unfinished (no
    config), never a config beside missing or truncated weights."""
    os.makedirs(target, exist_ok=True)
    for name in markers:
        if os.path.lexists(os.path.join(target, name)):
            os.remove(os.path.join(target, name))
    names = sorted(os.listdir(staged), key=lambda n: (n in markers, n))  # markers last
    for name in names:
        dest = os.path.join(target, name)
        if os.path.isdir(dest) and not os.path.islink(dest):
            shutil.rmtree(dest)
        os.replace(os.path.join(staged, name), dest)
    os.rmdir(staged)


@contextmanager
def staged_directory(target: str, main: bool = True, barrier: Callable[[], None] = lambda: None) -> Iterator[str]:
    """Write into the yielded temporary folder beside `target`; on success its files are committed into `target`. On
    an exception the temporary folder stays behind (removed by the next run's start, under the lock)."""
    staged = os.path.join(target, FINAL_TMP)
    if main:
        shutil.rmtree(staged, ignore_errors=True)
        os.makedirs(staged)
    barrier()
    yield staged
    barrier()  # every process has written its part
    if main:
        commit_directory(staged, target)
    barrier()
