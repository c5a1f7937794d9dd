"""A real `mftcoder serve` process for tests: started on a free port, waited for, stopped with SIGTERM."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

STARTED = re.compile(r"on (http://\S+) \(web chat")


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen
    log_path: str

    @property
    def api(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


def _wait_for_start(proc: subprocess.Popen, log_path: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        found = STARTED.search(text)
        if found and "Application startup complete" in text:
            return found.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"mftcoder serve exited with {proc.returncode}:\n{text}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"mftcoder serve did not start within {timeout} s")


@contextlib.contextmanager
def start_server(model_dir: str, *extra_args: str, timeout: float = 120.0, log_dir: str | None = None):
    """`mftcoder serve --model model_dir --port 0 ...` as a subprocess; yields a ServerProcess."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    log_path = os.path.join(log_dir or os.environ.get("TMPDIR", "/tmp"), f"serve-{os.getpid()}-{time.time_ns()}.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mftcoder", "serve", "--model", model_dir, "--port", "0",
                                 "--threads", "1", *extra_args], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield ServerProcess(_wait_for_start(proc, log_path, timeout), proc, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def chat_body(model: str, content: str, **fields) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def post(server: ServerProcess, route: str, body, timeout: float = 60, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.api}/{route}", json=body, timeout=timeout, **kwargs)
