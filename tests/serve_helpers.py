"""A real `mftcoder serve` process for tests (mftcoder.serve.launch), and small request helpers."""
from __future__ import annotations

import contextlib
import os
import time

import httpx

from mftcoder.serve.launch import ServerProcess, running_server

__all__ = ["ServerProcess", "start_server", "chat_body", "post"]


@contextlib.contextmanager
def start_server(model_dir: str, *extra_args: str, timeout: float = 120.0, log_dir: str | None = None):
    """`mftcoder serve --model model_dir --port 0 --threads 1 ...` as a subprocess; yields a ServerProcess."""
    log_path = os.path.join(log_dir or os.environ.get("TMPDIR", "/tmp"), f"serve-{os.getpid()}-{time.time_ns()}.log")
    with running_server(model_dir, *extra_args, log_path=log_path, threads=1, timeout=timeout) as server:
        yield server


def chat_body(model: str, content: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def post(server: ServerProcess, route: str, body, timeout: float = 60, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.api}/{route}", json=body, timeout=timeout, **kwargs)
