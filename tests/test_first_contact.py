"""A new user's first commands: stdout that is data holds only the data, a normal run is quiet (library noise hidden,
our own log shown), DeepSpeed's accelerator is chosen without the user's help, and the demo's first run (empty model
cache: the bundled SmolLM2 is converted) trains.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from mftcoder import runtime

REPO = Path(__file__).resolve().parents[1]
# what a normal run must not show (the three kinds of noise of issue 9)
NOISY = ("kernels-community", "Setting accelerator to CPU", "FutureWarning")


def fresh_env(**extra) -> dict:
    """The environment of a new user's shell: nothing of ours or of the test session pre-set."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DS_ACCELERATOR", runtime.LOG_LEVEL_ENV, "ACCELERATE_USE_CPU", "PYTHONWARNINGS")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(args, env=None, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=REPO, env=env or fresh_env(), capture_output=True, text=True,
                          timeout=timeout, **kw)


# ---- DeepSpeed's accelerator: decided once, by us --------------------------------------------------------------------

def test_deepspeed_accelerator_is_cpu_without_a_gpu_unless_the_user_chose():
    import torch

    env = {}
    chosen = runtime.choose_deepspeed_accelerator(env)
    if torch.cuda.is_available():
        assert chosen is None and env == {}  # DeepSpeed finds CUDA itself
    else:
        assert chosen == "cpu" and env == {"DS_ACCELERATOR": "cpu"}
    env = {"DS_ACCELERATOR": "xpu"}
    assert runtime.choose_deepspeed_accelerator(env) == "xpu" and env == {"DS_ACCELERATOR": "xpu"}


def test_importing_mftcoder_then_deepspeed_prints_nothing_on_stdout():
    code = ("import mftcoder, os, deepspeed; from deepspeed.utils import logger; "
            "from mftcoder.runtime import configure_logging; configure_logging(); "
            "logger.warning('a deepspeed warning'); print(os.environ['DS_ACCELERATOR'], file=__import__('sys').stderr)")
    r = run([sys.executable, "-c", code], timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # DeepSpeed's logger writes to stdout by itself: routed to stderr
    assert "a deepspeed warning" in r.stderr and "Setting accelerator to CPU" not in r.stderr


# ---- the noise filters, one by one -----------------------------------------------------------------------------------

def _record(name: str, message: str, level=logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@pytest.mark.parametrize("name,message", [
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community: No module named "
                                      "'kernels'. Please make sure you already `pip install kernels`"),
    ("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."),
])
def test_library_noise_is_hidden_unless_verbose(name, message):
    hide = runtime._HideNoise(runtime.NOISE)
    assert not hide.filter(_record(name, message))
    assert hide.filter(_record("mftcoder.model.load", message))  # our own logger says what it says
    assert hide.filter(_record(name, "something else went wrong"))  # only the known message is hidden


@pytest.fixture
def restore_logging():
    """configure_logging changes process-wide state: put it back for the tests that follow."""
    names = ("", "mftcoder", "DeepSpeed", *runtime.LIBRARY_LOGGERS)
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers), list(logging.getLogger(n).filters))
             for n in names}
    yield
    for n, (level, handlers, filters) in saved.items():
        logger = logging.getLogger(n)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.filters[:] = filters


def test_library_future_warnings_are_hidden_ours_are_not(monkeypatch, restore_logging):
    monkeypatch.delenv(runtime.LOG_LEVEL_ENV, raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # pytest's own config ignores FutureWarning: start from Python's default
        runtime.configure_logging(verbose=False)
        for module in ("transformers.modeling_utils", "peft.tuners.lora", "mftcoder.trainer.loop"):
            warnings.warn_explicit("`x` is deprecated", FutureWarning, "f.py", 1, module=module)
        warnings.warn_explicit("a user warning", UserWarning, "f.py", 2, module="transformers.x")
    assert [(str(w.message), w.category) for w in seen] == [("`x` is deprecated", FutureWarning),
                                                           ("a user warning", UserWarning)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        runtime.configure_logging(verbose=True)
        warnings.warn_explicit("`y` is deprecated", FutureWarning, "f.py", 3, module="transformers.modeling_utils")
    assert len(seen) == 1


def test_log_level_from_flag_or_environment():
    assert runtime.verbosity(True, {}) == logging.DEBUG
    assert runtime.verbosity(False, {}) == logging.INFO
    assert runtime.verbosity(False, {runtime.LOG_LEVEL_ENV: "debug"}) == logging.DEBUG
    assert runtime.verbosity(False, {runtime.LOG_LEVEL_ENV: "warning"}) == logging.WARNING
    assert runtime.verbosity(False, {runtime.LOG_LEVEL_ENV: "chatty"}) == logging.INFO
    # other ranks of a launched run do not repeat rank 0's info lines, but keep their warnings
    assert runtime.verbosity(False, {"RANK": "1"}) == logging.WARNING
    assert runtime.verbosity(False, {"RANK": "0"}) == logging.INFO
    assert runtime.verbosity(True, {"RANK": "1"}) == logging.DEBUG


def test_bf16_from_the_yaml_falls_back_where_the_hardware_lacks_it(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "bf16_supported", lambda: False)
    env = {"ACCELERATE_MIXED_PRECISION": "bf16"}
    with caplog.at_level(logging.WARNING, logger="mftcoder"):
        assert runtime.settle_mixed_precision(env) == "no"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"
    assert [r.getMessage() for r in caplog.records] == [
        f"mixed_precision='bf16' but this {'GPU' if runtime._cuda() else 'CPU'} has no bf16 support: training in fp32 "
        "(mixed_precision='no')"]
    monkeypatch.setattr(runtime, "bf16_supported", lambda: True)
    env = {"ACCELERATE_MIXED_PRECISION": "bf16"}
    assert runtime.settle_mixed_precision(env) == "bf16" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert runtime.settle_mixed_precision({"ACCELERATE_MIXED_PRECISION": "fp16"}) == "fp16"


# ---- stdout that is data ---------------------------------------------------------------------------------------------

def test_data_stdout_sends_everything_else_to_stderr():
    code = """
import logging, os, sys
from mftcoder.runtime import data_stdout
early = logging.StreamHandler(sys.stdout)  # a library's handler made before the command ran
logging.getLogger("lib").addHandler(early)
with data_stdout() as out:
    print("python noise")
    os.write(1, b"c-level noise\\n")
    logging.getLogger("lib").warning("logged noise")
    late = logging.StreamHandler(sys.stdout)  # one made while it runs
    logging.getLogger("lib2").addHandler(late)
    logging.getLogger("lib2").warning("late noise")
    print("/the/data", file=out)
print("after")
"""
    r = run([sys.executable, "-c", code], timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "/the/data\nafter\n"
    for noise in ("python noise", "c-level noise", "late noise"):
        assert noise in r.stderr
    # a handler that grabbed stdout's *file object* before still writes through fd 1: now stderr
    assert "logged noise" in r.stderr


def test_smollm2_path_command_prints_exactly_the_path(tmp_path):
    target = tmp_path / "smollm2-135m-instruct"
    target.mkdir()
    (target / ".mftcoder-complete").write_text("x\n")
    for args in ([], ["--cache_dir", tmp_path]):
        env = fresh_env(MFTCODER_CACHE=tmp_path) if not args else fresh_env()
        r = run([sys.executable, "-m", "mftcoder.model.smollm2", *args], env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{target}\n"


def test_config_schema_stdout_is_the_schema():
    from mftcoder.config import schema_text

    r = run([sys.executable, "-m", "mftcoder.cli", "config-schema"], timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == schema_text() + "\n"


# ---- a normal run is quiet -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quiet_cfg(tmp_path_factory, tiny_model_dir):
    sys.path.insert(0, str(REPO / "tests"))
    from train_helpers import write_tasks

    root = tmp_path_factory.mktemp("quiet")
    tasks = write_tasks(root / "data", {"code": 16, "text": 12})
    cfg = root / "train.json"
    cfg.write_text(json.dumps(dict(
        data_paths=tasks, output_dir=str(root / "unused"), pretrained_model_path=tiny_model_dir, seq_length=64,
        per_device_train_batch_size=2, max_train_steps=2, evaluation_steps=None, checkpointing_steps=None,
        data_split="80,20,0", peft_type="lora", lora_rank=4, lora_alpha=8, num_warmup_steps=0)))
    return root, cfg


def test_train_run_is_quiet_but_says_what_it_does(quiet_cfg):
    root, cfg = quiet_cfg
    r = run([sys.executable, "mftcoder/train.py", "--train_config", cfg, "--output_dir", root / "quiet"])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert [n for n in NOISY if n in out] == []
    assert "INFO mftcoder: attention: sdpa | backend: DistributedType.NO x1" in r.stderr  # our own log is shown
    assert "finished after 2 steps" in r.stdout


def test_verbose_shows_the_library_noise(quiet_cfg):
    pytest.importorskip("bitsandbytes")
    root, cfg = quiet_cfg
    r = run([sys.executable, "mftcoder/train.py", "--train_config", cfg, "--output_dir", root / "verbose", "--verbose"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "finished after 2 steps" in r.stdout
    # the kernels message exists only where bitsandbytes runs on CPU without the optional `kernels` package
    import importlib.util

    import torch

    if not torch.cuda.is_available() and importlib.util.find_spec("kernels") is None:
        assert "kernels-community" in r.stderr


# ---- the demo's first run: empty model cache, a fresh shell, a couple of steps ---------------------------------------

@pytest.mark.slow
def test_demo_first_run_with_an_empty_model_cache(tmp_path):
    from mftcoder.model.smollm2 import gguf_path

    try:
        gguf_path()  # the package is located, never imported (its __init__ needs `llm`)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    cache, out = tmp_path / "cache", tmp_path / "demo"
    r = run(["bash", "launchers/demo.sh"], env=fresh_env(MFTCODER_CACHE=cache, OUT=out, MAX_STEPS=2, OMP_NUM_THREADS=2),
            timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert (cache / "smollm2-135m-instruct" / ".mftcoder-complete").is_file()  # converted by this run
    assert "Setting accelerator to CPU" not in log and "kernels-community" not in log
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    steps = [rec for rec in records if rec.get("split") is None]
    assert [rec["step"] for rec in steps] == [1, 2]
    assert all(isinstance(rec["loss"], float) and rec["loss"] == rec["loss"] for rec in steps)
    assert (out / "adapter_model.safetensors").is_file()
    assert "finished after 2 steps" in log


# ---- the example configs run as written: the built-in model ----------------------------------------------------------

def test_builtin_model_path_resolves_to_the_converted_smollm2(tmp_path, monkeypatch, tiny_model_dir):
    import shutil

    from mftcoder.config import ConfigError, check_environment, load_config
    from mftcoder.model.smollm2 import BUILTIN, SUBDIR

    converted = tmp_path / SUBDIR  # stands in for a finished conversion (the slow demo test does a real one)
    shutil.copytree(tiny_model_dir, converted)
    (converted / ".mftcoder-complete").write_text("x\n")
    monkeypatch.setenv("MFTCODER_CACHE", str(tmp_path))
    cfg = load_config(str(REPO / "configs" / "example_lora.json"))
    assert cfg.pretrained_model_path == BUILTIN
    check_environment(cfg)
    assert cfg.pretrained_model_path == str(converted)
    cfg = load_config(str(REPO / "configs" / "example_lora.json"), overrides={"pretrained_model_path": "builtin:gpt5"})
    with pytest.raises(ConfigError, match="'builtin:gpt5' is not a built-in model; the one built-in is "
                                          "'builtin:smollm2-135m-instruct'"):
        check_environment(cfg)


@pytest.mark.slow
def test_the_readme_launch_line_runs_as_written(tmp_path, tiny_model_dir):
    """The design card's line with the shipped yaml (num_processes auto, bf16) and example config; only the model
    (tiny, to stay fast), the step count and the output folder are overridden."""
    out = tmp_path / "out"
    r = run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/ds_zero2.yaml",
             "--main_process_port", "0", "mftcoder/train.py", "--train_config", "configs/example_lora.json",
             "--pretrained_model_path", tiny_model_dir, "--max_train_steps", 2, "--micro_batch_size", 1,
             "--output_dir", out], env=fresh_env(), timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    import torch

    procs = torch.cuda.device_count() or len(os.sched_getaffinity(0))  # torchrun's 'auto'
    assert f"backend: DistributedType.DEEPSPEED x{procs}" in log
    steps = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [rec["step"] for rec in steps if rec.get("split") is None] == [1, 2]
    assert (out / "adapter_model.safetensors").is_file()
