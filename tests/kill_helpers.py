"""Killing a training process at a chosen moment and resuming it, for the resume tests: start `mftcoder/train.py`,
wait for a checkpoint or a step, SIGKILL it (also in the middle of a checkpoint save), resume with "latest", and
compare the metrics and weights with an uninterrupted run."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

THREADS = "1"  # the in-process reference runs (fixture one_thread) and the subprocesses: the same float reductions

def _write_json(cfg, path) -> str:
    with open(path, "w") as f:
        json.dump(cfg.model_dump(mode="json", exclude_none=True), f)
    return str(path)

def _start(cfg_path: str, log_path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "mftcoder/train.py", "--train_config", cfg_path, *args], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)

def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL

def _wait_for(proc, condition, what: str, timeout: float = 180.0, poll: float = 0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the training process ended (rc {proc.returncode}) before {what}")
        time.sleep(poll)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")

def _train_steps_written(out) -> int:
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.endswith("\n") and '"split"' not in line)

def _complete_checkpoints(out) -> list[str]:
    if not os.path.isdir(out):
        return []
    return [n for n in os.listdir(out) if n.startswith("checkpoint-")
            and os.path.isfile(os.path.join(out, n, "trainer_state.json"))]

def _temporary_checkpoints(out) -> list[str]:
    try:
        return [e.name for e in os.scandir(out) if e.name.startswith(".tmp-checkpoint-")]
    except FileNotFoundError:
        return []

def kill_at_random_step(cfg_path, out, log, total_steps: int, rng: random.Random) -> int:
    """Start a run, wait for its first checkpoint, then SIGKILL it somewhere inside a random later step."""
    proc = _start(cfg_path, log)
    _wait_for(proc, lambda: _complete_checkpoints(out), "the first checkpoint")
    target = rng.randint(_train_steps_written(out) + 1, total_steps - 4)  # leaves saves for the next kill
    _wait_for(proc, lambda: _train_steps_written(out) >= target, f"step {target}")
    time.sleep(rng.uniform(0.0, 0.03))  # anywhere inside the following step (or its evaluation / save)
    _kill(proc)
    return target

def kill_during_save(cfg_path, out, log, *args: str) -> str:
    """Start (or resume) a run and SIGKILL it while a checkpoint is being written; returns the half-written dir.
    A save that completes between the poll and the kill is not a save interrupted: then the next one is tried."""
    proc = _start(cfg_path, log, *args)
    while True:
        _wait_for(proc, lambda: _temporary_checkpoints(out), "a checkpoint save", poll=0.0005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        left = _temporary_checkpoints(out)
        if left:
            return left[0]
        # the kill landed just after the rename: resume and try again
        proc = _start(cfg_path, log, "--resume_from_checkpoint", "latest")

def resume_to_end(cfg_path, log) -> None:
    proc = _start(cfg_path, log, "--resume_from_checkpoint", "latest")
    assert proc.wait(timeout=600) == 0, open(log).read()[-3000:]

def assert_same_metrics(resumed: list[dict], reference: list[dict], tol: float = 1e-6) -> None:
    assert [(r["step"], r.get("split")) for r in resumed] == [(r["step"], r.get("split")) for r in reference]
    for a, b in zip(resumed, reference):
        where = (b["step"], b.get("split"))
        for key, v in b.items():
            if key in ("tokens_per_s", "tflops", "mfu"):  # timings
                continue
            if isinstance(v, dict):
                assert set(a[key]) == set(v), where
                for task, x in v.items():
                    y = a[key][task]
                    assert (x is None) == (y is None), (where, key, task)
                    if x is not None:
                        assert abs(y - x) <= tol * max(abs(x), 1e-12), (where, key, task, y, x)
            elif isinstance(v, float):
                assert abs(a[key] - v) <= tol * max(abs(v), 1e-12), (where, key, a[key], v)
            else:
                assert a[key] == v, (where, key)

def _same_weights(file_a: str, file_b: str) -> None:
    from safetensors.torch import load_file

    a, b = load_file(file_a), load_file(file_b)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)
