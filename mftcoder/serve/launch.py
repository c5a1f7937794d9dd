"""`mftcoder serve` as a child process, for tests and benchmarks: started on a free port, waited for until it
answers, stopped with SIGTERM (its graceful shutdown) when the `with` block ends."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

STARTED = re.compile(r"on (http://\S+) \(web chat")  # the line `mftcoder serve` prints once bound


@dataclass
class ServerProcess:
    url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen
    log_path: str
    startup_s: float

    @property
    def api(self) -> str:
        return self.url + "/v1"

    def log(self, last_chars: int | None = None) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        return text[-last_chars:] if last_chars else text


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False  # bound, but not serving yet


def _wait_until_ready(proc: subprocess.Popen, log_path: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                raise RuntimeError(f"mftcoder serve exited with {proc.returncode}:\n{f.read()[-3000:]}")
        if url is None:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                found = STARTED.search(f.read())
            url = found.group(1) if found else None
        if url is not None and _answers(url):
            return url
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"mftcoder serve did not answer within {timeout:.0f} s (log: {log_path})")


@contextlib.contextmanager
def running_server(model_dir: str, *extra_args: str, log_path: str, threads: int = 1, timeout: float = 300.0,
                   cwd: str | None = None):
    """`mftcoder serve --model model_dir --port 0 --threads N ...`; yields a ServerProcess that answers."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "mftcoder", "serve", "--model", model_dir, "--port", "0", "--threads", str(threads),
           *extra_args]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        url = _wait_until_ready(proc, log_path, timeout)
        yield ServerProcess(url, proc, log_path, time.perf_counter() - start)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
