"""Shared by the tests of the bundled example data sets (test_examples_data.py, test_examples_preference.py):
loading a generator script by path and checking that it rewrites its committed files byte for byte."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_script(path: Path, name: str):
    """examples/ is not a package: load a generator by path, without leaving it in sys.modules."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def assert_regenerates(script: Path, data: Path, expected_files, out: Path, hash_seed: str) -> None:
    """Run `script --out out` and require exactly the committed files under `data`, with the same bytes."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}  # set iteration order must not leak into the output
    result = subprocess.run([sys.executable, str(script), "--out", str(out)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    committed = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
    generated = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert generated == committed == sorted(expected_files)
    for rel in committed:
        assert (out / rel).read_bytes() == (data / rel).read_bytes(), f"{rel} differs from a fresh generation"
