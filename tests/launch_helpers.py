"""Running training in real processes for the multi-process tests: the shipped launchers with 2 processes, the
single-process reference, and the comparison of their metrics (tolerances explained in test_distributed.py)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LAUNCHER = {"ddp": "ddp.sh", "ds_zero2": "ds_single.sh", "ds_zero3": "ds_zero3.sh", "fsdp2": "fsdp.sh"}

BACKENDS = list(LAUNCHER)

LOSS_TOL = 2e-4       # absolute, on losses around 4-6 (see the module docstring)

NORM_RTOL = 1e-3      # relative, on grad norms

LOGIT_TOL = 1e-3      # absolute, on logits of the saved final models (|logit| up to ~10)

RUN_TIMEOUT = 420

def write_task(folder: Path, lines: list[dict]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.jsonl", "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return str(folder)

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def run_env(log_file: Path, **extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               MASTER_PORT=str(free_port()), LOG_FILE=str(log_file), PYTHON=sys.executable, DEVICE="cpu")
    env.update({k: str(v) for k, v in extra.items()})
    return env

def _fail(what: str, log_file: Path, rc) -> None:
    tail = log_file.read_text(errors="replace")[-6000:] if log_file.exists() else "(no log)"
    pytest.fail(f"{what} failed (exit {rc}); log tail:\n{tail}")

def launch(launcher: str, cfg: Path, out: Path, nproc: int = 2, extra_args=(), **env) -> Path:
    log_file = out.parent / f"{out.name}.log"
    cmd = ["bash", str(REPO / "launchers" / launcher), str(cfg), str(nproc), "--output_dir", str(out), *extra_args]
    try:
        proc = subprocess.run(cmd, env=run_env(log_file, **env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        _fail(f"{launcher} (timeout {RUN_TIMEOUT}s)", log_file, "timeout")
    if proc.returncode != 0:
        _fail(launcher, log_file, proc.returncode)
    return out

def single(cfg: Path, out: Path, micro: int = 4) -> Path:
    log_file = out.parent / f"{out.name}.log"
    with open(log_file, "w") as log:
        proc = subprocess.run([sys.executable, str(REPO / "mftcoder" / "train.py"), "--train_config", str(cfg),
                               "--output_dir", str(out), "--micro_batch_size", str(micro)],
                              env=run_env(log_file), stdout=log, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT)
    if proc.returncode != 0:
        _fail("single-process run", log_file, proc.returncode)
    return out

def read_metrics(out: Path) -> list[dict]:
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]

MEASURED: dict = {}

def assert_same_metrics(ref: list[dict], got: list[dict], loss_tol=LOSS_TOL, norm_rtol=NORM_RTOL, label=""):
    """Same records in the same order: per-step loss, per-task losses, weights, lr, tokens, grad norm; validation."""
    assert [(r["step"], r.get("split")) for r in got] == [(r["step"], r.get("split")) for r in ref]
    worst = 0.0
    for a, b in zip(ref, got):
        where = f"{label} step {a['step']} {a.get('split', 'train')}"
        if a.get("split") is None:
            assert b["tokens"] == a["tokens"], where
            assert b["lr"] == pytest.approx(a["lr"], rel=1e-9), where
            assert b["loss"] == pytest.approx(a["loss"], abs=loss_tol), where
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=norm_rtol), where
            assert b["task_weight"] == pytest.approx(a["task_weight"], abs=loss_tol), where
            worst = max(worst, abs(b["loss"] - a["loss"]))
        assert a["task_loss"].keys() == b["task_loss"].keys()
        for task, v in a["task_loss"].items():
            assert (b["task_loss"][task] is None) == (v is None), f"{where} task {task}"
            if v is not None:
                assert b["task_loss"][task] == pytest.approx(v, abs=loss_tol), f"{where} task {task}"
                worst = max(worst, abs(b["task_loss"][task] - v))
    MEASURED[label] = worst
    print(f"max |difference| of losses {label}: {worst:.2e}")  # shown with pytest -s / -rP
    return worst
