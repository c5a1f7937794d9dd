"""Ctrl-C / SIGTERM during training: finish the step, save a checkpoint, say how to resume, exit 130 / 143.

`StopSignals` is a context manager around the training steps: the first SIGINT or SIGTERM only sets a flag (the loop
polls it after each step, agreed over all processes, since torchrun/accelerate deliver the signal to every rank at
slightly different moments); a second one aborts at once (a repeat within REPEAT_GRACE_S is the same Ctrl-C arriving
twice: from the terminal and forwarded by the launcher). The previous handlers come back on exit.
`TrainingInterrupted` is a SystemExit: it unwinds the run (closing files, releasing the lock) and ends the process
with its status, with no traceback.
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_GRACE_S = 1.0  # a repeat within this time is the same signal arriving by a second path, not a second Ctrl-C


class TrainingInterrupted(SystemExit):
    """Raised after the interrupted run saved its checkpoint; the exit status is 128 + the signal number."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message


class StopSignals:
    def __init__(self, announce: bool = True):
        self.announce = announce  # one process of many says it
        self.received: Optional[int] = None  # the signal this process received
        self.agreed: Optional[int] = None    # the signal any process received, once `requested` saw one
        self._previous: dict[int, object] = {}
        self._first_at = 0.0

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            if time.monotonic() - self._first_at < REPEAT_GRACE_S:
                return  # one Ctrl-C delivered twice: to the process group and forwarded by torchrun / accelerate
            _say(f"\n{name} again: aborting now, without saving this step\n")
            os._exit(128 + signum)
        self.received, self._first_at = signum, time.monotonic()
        if self.announce:
            _say(f"\n{name} received: finishing this step, then saving a checkpoint and stopping "
                 "(press Ctrl-C again to abort at once)\n")

    def requested(self, acc=None) -> Optional[int]:
        """The signal any process received (the same answer on every process: a collective call)."""
        flag = self.received or 0
        if acc is not None and acc.num_processes > 1:
            import torch

            t = torch.tensor([flag], dtype=torch.int64, device=acc.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = int(t.item())
        self.agreed = flag or None
        return self.agreed


def _say(text: str) -> None:
    try:
        os.write(2, text.encode())  # not print(): the handler may interrupt a write to sys.stderr (tqdm's bar)
    except OSError:
        pass  # stderr gone (a closed pipe): the checkpoint matters more than the message


# --- the resume command ------------------------------------------------------------------------------------------------

def _without_resume_option(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--resume_from_checkpoint":
            skip = True
        elif not a.startswith("--resume_from_checkpoint="):
            out.append(a)
    return out


def _cmdline(pid: int) -> Optional[list[str]]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _launcher_command() -> Optional[list[str]]:
    """The command the user typed when this process was started for them: one of our `launchers/*.sh` scripts, or
    else `accelerate launch ...` (Linux /proc; None elsewhere or when run directly)."""
    found, pid = None, os.getppid()
    for _ in range(6):  # worker <- torch agent / accelerate <- launcher script <- shell
        cmd = _cmdline(pid) if pid > 1 else None
        if not cmd:
            break
        if len(cmd) > 1 and os.path.basename(cmd[0]) in ("bash", "sh") and cmd[1].endswith(".sh") \
                and os.path.basename(os.path.dirname(os.path.abspath(cmd[1]))) == "launchers":
            return ["bash", *cmd[1:]]
        for i, arg in enumerate(cmd[:-1]):
            if found is None and arg == "launch" and i > 0 and os.path.basename(cmd[i - 1]) == "accelerate":
                found = ["accelerate", *cmd[i:]]
            elif found is None and arg == "-m" and cmd[i + 1] == "accelerate.commands.launch":
                found = ["accelerate", "launch", *cmd[i + 2:]]
        pid = _parent_of(pid)
    return found


def launch_command(argv: Optional[list[str]] = None, launcher: Optional[list[str]] = None) -> list[str]:
    """The command the user ran (the launcher's, under `accelerate launch` or our scripts), without any resume
    option."""
    launcher = launcher or (None if argv else _launcher_command())
    if launcher:
        head, args = launcher[:1], launcher[1:]
    else:
        argv = argv or list(sys.argv)
        head, args = _program(argv[0]), argv[1:]
    return head + _without_resume_option(args)


def resume_command(argv: Optional[list[str]] = None, launcher: Optional[list[str]] = None) -> str:
    """The command the user ran, with `--resume_from_checkpoint latest` in place of any earlier resume option."""
    return shlex.join(launch_command(argv, launcher) + ["--resume_from_checkpoint", "latest"])


def _program(prog: str) -> list[str]:
    if os.path.basename(prog) == "__main__.py":  # python -m mftcoder
        return [_python(), "-m", os.path.basename(os.path.dirname(prog))]
    if prog.endswith(".py"):
        return [_python(), prog]
    name = os.path.basename(prog)  # a console script such as `mftcoder`
    found = shutil.which(name)
    return [name if found and os.path.realpath(found) == os.path.realpath(prog) else prog]


def _python() -> str:
    found = shutil.which("python")
    return "python" if found and os.path.realpath(found) == os.path.realpath(sys.executable) else sys.executable


def stop_for_signal(signum: int, step: int, checkpoint: Optional[str], announce: bool = True) -> None:
    """The interrupted run's last word (after its checkpoint): what was saved, how to resume; then exit 128 + signum."""
    message = interrupted_message(signum, step, checkpoint, resume_command())
    if announce:
        _say(message + "\n")
    raise TrainingInterrupted(signum, message)


def interrupted_message(signum: int, step: int, checkpoint: Optional[str], command: str) -> str:
    name = signal.Signals(signum).name
    saved = f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint saved (no step finished)"
    return f"interrupted by {name} after step {step}; {saved}. Resume with:\n  {command}"


def exits_quietly_on_ctrl_c(fn):
    """Ctrl-C outside the training steps (setup, the final save): no traceback, exit 130, and the way back."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            message = ("interrupted by SIGINT outside the training steps (setup or final save); nothing new was "
                       f"saved. Resume (or start again) with:\n  {resume_command()}")
            _say("\n" + message + "\n")
            raise TrainingInterrupted(signal.SIGINT, message) from None

    return run
