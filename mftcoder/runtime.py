"""Process setup that must happen before the heavy libraries load, owned here and nowhere else.

- DeepSpeed picks its accelerator when it is first imported (by accelerate, transformers or peft, not by us) and on a
  machine without CUDA says so with a warning that its logger writes to *stdout*, where a command's data goes.
  `choose_deepspeed_accelerator` decides once, before anything imports DeepSpeed: `DS_ACCELERATOR=cpu` when torch sees
  no accelerator, unless the user set it. `mftcoder/__init__.py` calls it, so every entry point and test gets it.
- `configure_logging`: our logger ("mftcoder") at INFO on stderr; library logging goes to stderr too (DeepSpeed's
  included); the library noise a user can do nothing about (`NOISE`, one entry per message) is hidden unless
  `--verbose` or `MFTCODER_LOG_LEVEL=debug`. Our own warnings always show.
- `data_stdout`: for commands whose stdout is data (a path, jsonl, JSON): everything else written to stdout while the
  work runs (by any library, Python or C) goes to stderr; the data goes to the real stdout.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass

LOG_LEVEL_ENV = "MFTCODER_LOG_LEVEL"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# loggers of libraries that are chatty at INFO; they stay at WARNING unless verbose
LIBRARY_LOGGERS = ("accelerate", "bitsandbytes", "deepspeed", "DeepSpeed", "peft", "torch", "transformers")


def choose_deepspeed_accelerator(environ: dict | None = None) -> str | None:
    """Set DS_ACCELERATOR=cpu when no accelerator is visible and the user chose none; returns the value in force."""
    environ = os.environ if environ is None else environ
    if environ.get("DS_ACCELERATOR"):
        return environ["DS_ACCELERATOR"]
    try:
        import torch
    except ImportError:  # nothing can import DeepSpeed either
        return None
    has_accelerator = getattr(torch, "accelerator", None)
    present = has_accelerator.is_available() if has_accelerator else torch.cuda.is_available()
    if present:
        return None  # DeepSpeed detects CUDA (or another device) itself, without a warning
    environ["DS_ACCELERATOR"] = "cpu"
    return "cpu"


@dataclass(frozen=True)
class Noise:
    """One library message hidden on a normal run: who says it and a pattern of what it says."""
    name: str
    logger: str | None  # logging: the record's logger name starts with this; None: a Python warning
    pattern: str
    category: type[Warning] = Warning


NOISE = (
    # bitsandbytes (imported by peft/transformers) looks for an optional CPU kernel package on every import
    Noise("bitsandbytes-kernels", "bitsandbytes", r"kernels-community|pip install kernels"),
    # DeepSpeed's accelerator auto-detection, when DS_ACCELERATOR was set by someone else's environment to nothing
    Noise("deepspeed-accelerator", "DeepSpeed", r"Setting accelerator to CPU|Setting ds_accelerator to"),
    # deprecations inside transformers / peft / accelerate / torch that our calls do not cause
    Noise("library-futurewarning", None, r"(transformers|peft|accelerate|torch|deepspeed|bitsandbytes)(\.|$)",
          FutureWarning),
)


def verbosity(verbose: bool = False, environ: dict | None = None) -> int:
    """The level of our own logger: DEBUG with --verbose or MFTCODER_LOG_LEVEL=debug, else that level or INFO.
    Processes other than rank 0 of a launched run log warnings only (their INFO lines would repeat rank 0's)."""
    environ = os.environ if environ is None else environ
    if verbose:
        return logging.DEBUG
    name = environ.get(LOG_LEVEL_ENV, "").strip().upper()
    level = logging.getLevelName(name) if name else logging.INFO
    level = level if isinstance(level, int) else logging.INFO
    return level if environ.get("RANK", "0") == "0" else max(level, logging.WARNING)


class _HideNoise(logging.Filter):
    def __init__(self, noise: tuple[Noise, ...]):
        super().__init__()
        self.noise = [(n.logger, re.compile(n.pattern)) for n in noise if n.logger]

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name.startswith(who) and rx.search(record.getMessage()) for who, rx in self.noise)


class _ToHandler(logging.Filter):
    """On DeepSpeed's logger (which has its own stdout handler and does not propagate): hand each record to our
    stderr handler instead, and stop it reaching stdout."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.handler.level:
            self.handler.handle(record)
        return False


_HANDLER_NAME = "mftcoder-stderr"


def configure_logging(verbose: bool = False) -> logging.Handler:
    """Idempotent: one stderr handler on the root logger, the noise filters, the warning filters."""
    level = verbosity(verbose)
    quiet = level > logging.DEBUG
    root = logging.getLogger()
    handler = next((h for h in root.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    handler.filters.clear()
    if quiet:
        handler.addFilter(_HideNoise(NOISE))
    root.setLevel(min(level, logging.INFO))
    logging.getLogger("mftcoder").setLevel(level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if not quiet else logging.WARNING)
    ds = logging.getLogger("DeepSpeed")
    ds.filters[:] = [f for f in ds.filters if not isinstance(f, _ToHandler)]
    ds.addFilter(_ToHandler(handler))
    _filter_warnings(quiet)
    return handler


def _filter_warnings(quiet: bool) -> None:
    for n in NOISE:
        if n.logger is None:
            action = "ignore" if quiet else "default"
            warnings.filterwarnings(action, category=n.category, module=n.pattern)


@contextlib.contextmanager
def data_stdout():
    """Yield a stream for the command's data; anything else written to stdout meanwhile goes to stderr.

    File-descriptor level where stdout is a real file (catches C libraries and handlers that captured sys.stdout),
    Python level otherwise (tests capturing output)."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
        err_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None:
        real = sys.stdout
        with contextlib.redirect_stdout(sys.stderr):
            yield real
        return
    saved = os.dup(fd)
    data = os.fdopen(os.dup(saved), "w", encoding="utf-8", closefd=True)
    os.dup2(err_fd, fd)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield data
    finally:
        data.flush()
        data.close()
        sys.stdout.flush()
        os.dup2(saved, fd)
        os.close(saved)


def add_verbose_flag(parser) -> None:
    """--verbose on a command's parser (once, whoever adds it first)."""
    if "--verbose" not in parser._option_string_actions:
        parser.add_argument("--verbose", action="store_true",
                            help=f"show library warnings and debug logging (or set {LOG_LEVEL_ENV}=debug)")


def bf16_supported() -> bool:
    """bf16 compute in hardware: a CUDA GPU that has it, or a CPU with AVX512-BF16 or AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def settle_mixed_precision(environ: dict | None = None) -> str | None:
    """The shipped accelerate yamls say bf16 (yaml values are static); on hardware without bf16 the run uses no mixed
    precision instead, with one warning line. `accelerate launch` exports the choice as ACCELERATE_MIXED_PRECISION,
    which the Accelerator reads when it is created: call this before."""
    environ = os.environ if environ is None else environ
    asked = environ.get("ACCELERATE_MIXED_PRECISION")
    if asked != "bf16" or bf16_supported():
        return asked
    environ["ACCELERATE_MIXED_PRECISION"] = "no"
    if environ.get("LOCAL_RANK", "0") == "0":
        logging.getLogger("mftcoder").warning(
            "mixed_precision='bf16' but this %s has no bf16 support: training in fp32 (mixed_precision='no')",
            "GPU" if _cuda() else "CPU")
    return "no"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
