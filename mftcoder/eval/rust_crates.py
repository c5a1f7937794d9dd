"""The crates HumanEval-X's Rust problems import (`use rand::Rng; use regex::Regex; use md5;` in every declaration),
built once from Debian's packaged crate sources (librust-{rand,regex,md5}-dev, no network) with cargo, cached
per rustc version under $MFTCODER_CACHE/rust-crates, and passed to rustc as `--extern` libraries.

The build runs outside the sandbox: it compiles packaged crate sources, never model output.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache

REGISTRY = "/usr/share/cargo/registry"  # where Debian's librust-*-dev packages put crate sources
CRATES = {"rand": "0.8", "regex": "1", "md5": "0.7"}
INSTALL = "apt-get install cargo librust-rand-dev librust-regex-dev librust-md5-dev"
USES = ("use rand", "use regex", "use md5")


def needs_crates(source: str) -> bool:
    return any(use in source for use in USES)


def _manifest() -> str:
    deps = "".join(f'{name} = "{version}"\n' for name, version in CRATES.items())
    return f'[package]\nname = "mftcoder_rust_crates"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n{deps}'


def _config() -> str:
    return (f'[source.crates-io]\nreplace-with = "packaged"\n[source.packaged]\ndirectory = "{REGISTRY}"\n'
            "[net]\noffline = true\n")


def _rustc_identity(rustc: str) -> str:
    version = subprocess.run([rustc, "-vV"], capture_output=True, text=True, timeout=60, check=True).stdout
    return hashlib.sha256(version.encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def crate_args() -> tuple[tuple[str, ...], str | None]:
    """(rustc arguments that make the crates importable, None) or ((), why they are unavailable)."""
    from mftcoder.eval.languages import tool_path
    from mftcoder.model.smollm2 import default_cache_dir

    rustc, cargo = tool_path("rustc"), shutil.which("cargo")
    missing = [name for name in CRATES if not glob.glob(os.path.join(REGISTRY, f"{name}-*"))]
    if rustc is None or cargo is None or missing:
        return (), f"the crates {', '.join(CRATES)} of HumanEval-X's Rust declarations ({INSTALL})"
    root = os.path.join(default_cache_dir(), "rust-crates", _rustc_identity(rustc))
    deps = os.path.join(root, "target", "debug", "deps")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, also across processes
        if not _built(deps):
            error = _build(root, cargo, rustc)
            if error:
                return (), f"the crates {', '.join(CRATES)} did not build: {error}"
    args = ["-L", f"dependency={deps}"]
    for name in CRATES:
        args += ["--extern", f"{name}={_built(deps)[name]}"]
    return tuple(args), None


def _built(deps: str) -> dict[str, str]:
    found = {name: sorted(glob.glob(os.path.join(deps, f"lib{name}-*.rlib"))) for name in CRATES}
    return {name: paths[-1] for name, paths in found.items() if paths} if all(found.values()) else {}


def _build(root: str, cargo: str, rustc: str) -> str | None:
    work = tempfile.mkdtemp(prefix="build-", dir=root)
    try:
        os.makedirs(os.path.join(work, "src"))
        os.makedirs(os.path.join(work, ".cargo"))
        for name, text in (("Cargo.toml", _manifest()), ("src/lib.rs", ""), (".cargo/config.toml", _config())):
            with open(os.path.join(work, name), "w") as f:
                f.write(text)
        env = dict(os.environ, RUSTC=rustc, CARGO_TARGET_DIR=os.path.join(root, "target"))
        done = subprocess.run([cargo, "build", "--offline", "--quiet"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)
        return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["cargo failed"])[-1]
    finally:
        shutil.rmtree(work, ignore_errors=True)
