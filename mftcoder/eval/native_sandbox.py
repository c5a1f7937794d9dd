"""Compile and run untrusted programs in C++, Java, JavaScript, Go and Rust so that none of them can harm the run or
the machine. Python programs keep their own sandbox (`sandbox.py`); `run_jobs` runs a mixed batch of both.

Every compiler run and every test run happens inside bubblewrap (`bwrap`, the sandbox Flatpak uses):
  * the whole file system is mounted read-only, except the program's fresh working directory; /tmp, /var/tmp and
    /dev/shm are small private tmpfs mounts, so nothing can be written outside the work folder;
  * new PID, network, IPC and UTS namespaces: no network at all, and when the sandbox's first process dies the kernel
    kills every process in it, so no child outlives the program (not even one that called setsid);
  * limits set with `prlimit` before it starts: data segment (memory blow-ups fail to allocate; unlike an
    address-space limit it lets the JVM, V8 and Go reserve address space they never touch), CPU seconds, file size
    (output floods stop at the limit), open files, no core dumps; the test run drops to the user `nobody` when we are
    root, so that the process-count limit binds (it never binds root);
  * in the parent: a wall-clock timeout, a watchdog that kills a program holding more processes than allowed, and
    a SIGKILL to the whole sandbox when the program ends or times out.
Statuses: passed (exit 0, and for harnesses that fail on stderr, nothing on stderr), failed, timed out, and
compile error (the compiler's exit status was not 0; its message is in `error`). Like `sandbox.py` this guards
against accidents of generated code; it is not a jail against a determined attacker.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

from mftcoder.eval.languages import Build, language_for, tool_path
from mftcoder.eval.rust_crates import crate_args, needs_crates
from mftcoder.eval.sandbox import (COMPILE_ERROR, FAILED, PASSED, TIMED_OUT, ExecResult, SandboxLimits, _kill_group,
                                   _nproc_limit, _tail, run_parallel, run_program,
                                   user_tasks, watch)

NOBODY = 65534
_TMPFS_BYTES = 64 << 20
_OUTPUT_TAIL = 2000
_THREADS_PER_PROGRAM = 256  # the JVM, V8 and Go runtimes start dozens of threads; RLIMIT_NPROC counts threads
_COMPILE_PROCESSES = 64  # `go test -c` runs the compiler and linker as children


@dataclass(frozen=True)
class NativeProgram:
    """A whole program in a compiled (or non-Python) language, built and run as `harness` does."""
    language: str
    harness: str
    source: str


@dataclass(frozen=True)
class _Step:
    argv: list[str]
    timeout_s: float
    memory_mb: int
    cpu_s: int
    max_processes: int
    file_size_mb: int
    as_nobody: bool
    env: dict[str, str]
    binds: tuple[str, ...] = ()  # extra writable directories (the Go build cache, for the compiler only)
    read_only: tuple[str, ...] = ()  # directories to show again above the private /tmp (the Rust crates)


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _descendants(root: int) -> list[int]:
    """Live processes below `root` (orphans inside the sandbox are re-parented to its init, itself a descendant)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[-1].split()
        except OSError:
            continue
        if fields and fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _sandbox_argv(workdir: str, step: _Step) -> list[str]:
    argv = [bwrap_path() or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for tmp in ("/tmp", "/var/tmp", "/dev/shm"):
        argv += ["--perms", "1777", "--size", str(_TMPFS_BYTES), "--tmpfs", tmp]
    argv += ["--bind", workdir, workdir]
    for path in step.binds:
        argv += ["--bind", path, path]
    for path in step.read_only:
        argv += ["--ro-bind", path, path]
    # Not --unshare-all: as root that would add a user namespace, in which the process-count limit never binds.
    argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session", "--chdir", workdir, "--clearenv"]
    for key, value in step.env.items():
        argv += ["--setenv", key, value]
    if os.getuid() == 0 and step.as_nobody:  # setpriv needs CAP_SETUID; changing the uid then drops every capability
        argv += ["--", shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                 "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    elif os.getuid() == 0:  # compilers run as root with one capability: writing into nobody's work folder
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_DAC_OVERRIDE"]
    return argv + ["--", *step.argv]


def _limits_argv(step: _Step, limits: SandboxLimits, nproc: int | None) -> list[str]:
    mib = 1024 * 1024
    argv = [shutil.which("prlimit") or "prlimit", f"--data={step.memory_mb * mib}", f"--cpu={step.cpu_s}:{step.cpu_s + 1}",
            f"--fsize={step.file_size_mb * mib}", f"--nofile={limits.max_open_files}", "--core=0"]
    if nproc is not None and step.as_nobody:
        argv.append(f"--nproc={nproc}")
    return argv + ["--"]


def _relative(text: str | None, workdir: str) -> str | None:
    """Messages name the program's files as `main.cpp:3:5`, not by their temporary path (so reruns compare equal)."""
    return text.replace(workdir + os.sep, "") if text else text


def _first(text: str, limit: int) -> str:
    """The start of a message: compilers and runtimes name the first error first. Very long lines (a linker's
    command line) are shortened, so the lines after them still show."""
    text = "\n".join(line if len(line) <= 300 else line[:300] + " ..." for line in text.strip().splitlines())
    return text if len(text) <= limit else text[:limit] + " ..."


def _head(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(_OUTPUT_TAIL).decode("utf-8", "replace")
    except OSError:
        return ""


_EXEC_RETRIES = 3  # setpriv's exec refused with EAGAIN: nobody's shared task budget is momentarily spent


def _run_step(workdir: str, outdir: str, step: _Step, limits: SandboxLimits, nproc: int | None):
    """(status or None, error, exit code, stdout tail, stderr tail) of one command in the sandbox.

    RLIMIT_NPROC counts every task of the user `nobody`, so a fork-happy program running beside this one (until the
    watchdog kills it) can make this program's exec fail with EAGAIN before it ran at all; that is retried, so one
    sample's fork bomb never fails another sample."""
    for attempt in range(_EXEC_RETRIES + 1):
        result = _run_step_once(workdir, outdir, step, limits, nproc)
        if not (result[2] == 126 and "Resource temporarily unavailable" in result[4]) or attempt == _EXEC_RETRIES:
            return result
        time.sleep(0.5 * (attempt + 1))
    return result


def _run_step_once(workdir: str, outdir: str, step: _Step, limits: SandboxLimits, nproc: int | None):
    out_path, err_path = os.path.join(outdir, "stdout"), os.path.join(outdir, "stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(_limits_argv(step, limits, nproc) + _sandbox_argv(workdir, step),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
    try:
        # bwrap and its init are two of the processes; the limit is on the program's own
        status, error = watch(proc, time.monotonic() + step.timeout_s, step.timeout_s, step.max_processes,
                              lambda: len(_descendants(proc.pid)) - 1)
    finally:
        for pid in _descendants(proc.pid):  # also after a normal exit: nothing it started may outlive it
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _kill_group(proc.pid)
        proc.wait()
    return status, error, proc.returncode, _tail(out_path), _head(err_path)


def _describe_exit(rc: int, cpu_s: int, duration: float) -> tuple[str, str]:
    if rc == -signal.SIGXCPU or rc == 128 + signal.SIGXCPU or (rc in (-signal.SIGKILL, 128 + signal.SIGKILL)
                                                               and duration >= cpu_s):
        return TIMED_OUT, f"CPU time limit of {cpu_s} s exceeded"
    if rc < 0:
        return FAILED, f"killed by {signal.Signals(-rc).name}"
    if rc > 128 and rc - 128 in signal.valid_signals():  # bwrap reports its child's signal as 128 + n
        return FAILED, f"killed by {signal.Signals(rc - 128).name}"
    return FAILED, f"exit status {rc}"


def _fill(template: Sequence[str], src: str, exe: str, heap_mb: int, crates: Sequence[str] = ()) -> list[str]:
    argv: list[str] = []
    for part in template:
        argv += list(crates) if part == "{rust_crates}" else [part.format(src=src, exe=exe, heap_mb=heap_mb)]
    if not argv[0].startswith(("/", "./")):
        argv[0] = tool_path(argv[0]) or argv[0]
    return argv


def _base_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "GOMAXPROCS": "2"}


def _steps(build: Build, workdir: str, limits: SandboxLimits, go_cache: str | None,
           crates: Sequence[str] = ()) -> tuple[list[_Step], _Step]:
    src, exe = os.path.join(workdir, build.source), os.path.join(workdir, "main.bin")
    env = _base_env(workdir) | dict(build.env)
    heap_mb = max(64, limits.memory_mb * 3 // 4)
    compile_env = env | ({"GOCACHE": go_cache} if go_cache else {})
    compiles = [_Step(_fill(argv, src, exe, heap_mb, crates), limits.compile_timeout_s, limits.compile_memory_mb,
                      max(1, int(limits.compile_timeout_s + 0.999)), _COMPILE_PROCESSES, limits.compile_file_size_mb,
                      False, compile_env,
                      (go_cache,) if go_cache else (), _crate_dirs(crates)) for argv in build.compile]
    run = _Step(_fill(build.run, src, exe, heap_mb), limits.timeout_s, limits.memory_mb, limits.cpu_seconds,
                limits.max_processes, limits.file_size_mb, True, env)
    return compiles, run


def _crate_dirs(crates: Sequence[str]) -> tuple[str, ...]:
    """The `-L dependency=DIR` directories (they may lie under /tmp, which the sandbox replaces)."""
    return tuple(arg.split("=", 1)[1] for arg in crates if arg.startswith("dependency="))


def run_native(program: NativeProgram, limits: SandboxLimits = SandboxLimits(), nproc: int | None = None,
               go_cache: str | None = None) -> ExecResult:
    """Build (if the language compiles) and run `program` in the sandbox; passed only on a clean exit."""
    build = language_for(program.language).build(program.harness)
    workdir = tempfile.mkdtemp(prefix="mftcoder-sandbox-")
    outdir = tempfile.mkdtemp(prefix="mftcoder-output-")  # outside the work folder: the program cannot touch it
    start = time.monotonic()
    try:
        if os.getuid() == 0:
            os.chown(workdir, NOBODY, NOBODY)  # the test run is `nobody` and may write only here
        with open(os.path.join(workdir, build.source), "w", encoding="utf-8") as f:
            f.write(program.source)
        crates = crate_args()[0] if program.language == "rust" and needs_crates(program.source) else ()
        compiles, run = _steps(build, workdir, limits, go_cache if program.language == "go" else None, crates)
        for step in compiles:
            status, error, rc, out, err = _run_step(workdir, outdir, step, limits, nproc)
            if status is None and rc != 0:
                status, error = COMPILE_ERROR, _first(err or out, 1000) or f"compiler exit status {rc}"
            elif status == TIMED_OUT:
                error = f"compiling: {error}"
            if status is not None:
                return ExecResult(status, _relative(error, workdir), round(time.monotonic() - start, 4),
                                  _relative(out + err, workdir)[-_OUTPUT_TAIL:])
        run_start = time.monotonic()
        status, error, rc, out, err = _run_step(workdir, outdir, run, limits, nproc)
        if status is None:
            if rc == 0 and not (build.stderr_fails and err.strip()):
                status = PASSED
            elif rc == 0:
                status, error = FAILED, f"wrote to stderr: {_first(err, 500)}"
            else:
                status, error = _describe_exit(rc, run.cpu_s, time.monotonic() - run_start)
                if err.strip():
                    error += f": {_first(err, 500)}"
        return ExecResult(status, _relative(error, workdir), round(time.monotonic() - start, 4),
                          _relative(out + err, workdir)[-_OUTPUT_TAIL:])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(outdir, ignore_errors=True)


def run_jobs(
    jobs: Sequence[str | NativeProgram],
    limits: SandboxLimits = SandboxLimits(),
    workers: int | None = None,
    progress: Callable[[int, ExecResult], None] | None = None,
) -> list[ExecResult]:
    """Run each job in its own sandbox, `workers` at a time; results in input order. Python sources go to the
    Python sandbox, `NativeProgram`s to bubblewrap."""
    workers = max(1, workers or os.cpu_count() or 1)
    python_nproc = _nproc_limit(limits.max_processes, workers)
    native_nproc = _native_nproc_limit(workers)
    go_cache = _go_cache() if any(isinstance(j, NativeProgram) and j.language == "go" for j in jobs) else None

    def one(i: int) -> ExecResult:
        job = jobs[i]
        if isinstance(job, NativeProgram) and job.language != "python":
            return run_native(job, limits, native_nproc, go_cache)
        return run_program(job.source if isinstance(job, NativeProgram) else job, limits, python_nproc)

    return run_parallel(len(jobs), one, workers, progress)


@lru_cache(maxsize=None)
def _go_cache() -> str:
    """One Go build cache per process (testify and the standard library compile once, not once per program),
    written by the compiler only; removed when the process ends."""
    path = tempfile.mkdtemp(prefix="mftcoder-gocache-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _native_nproc_limit(workers: int) -> int:
    """RLIMIT_NPROC of test runs: what their user (`nobody` for root, else ourselves) already runs, plus room for
    every worker's runtime threads. It stops a fork bomb early; the watchdog enforces max_processes exactly."""
    return user_tasks(NOBODY if os.getuid() == 0 else os.getuid()) + workers * _THREADS_PER_PROGRAM


def check_native_sandbox() -> None:
    """Fail loudly if bubblewrap cannot start a sandbox here (e.g. user namespaces disabled for non-root)."""
    done = subprocess.run(_sandbox_argv(tempfile.gettempdir(), _Step(["/bin/true"], 10, 256, 10, 4, 1, True, {})),
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"the sandbox of compiled languages (bubblewrap) does not start here: {done.stderr.strip()} "
                           "(as non-root it needs unprivileged user namespaces: sysctl kernel.unprivileged_userns_clone=1)")
