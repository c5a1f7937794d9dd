"""The languages of the code benchmarks: what a model is told, how its answers look, and how a program is built and
run, per harness (HumanEval-X builds C++ as C++11 and links OpenSSL; MultiPL-E builds C++17 and runs Java with -ea
and javatuples on the class path), as the published harnesses do.

A `Build` is a list of argv templates filled with `{src}` (the program file), `{exe}` (the binary) and `{heap_mb}`
(the JVM heap, from the sandbox memory limit); `{rust_crates}` stands for the `--extern` arguments of the crates
HumanEval-X's Rust declarations import (`rust_crates.py`), present only when the program uses them. Tools are
resolved to absolute paths before they run in the sandbox.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache

JAVATUPLES = "/usr/share/java/javatuples.jar"  # Debian's libjavatuples-java (MultiPL-E's Java imports org.javatuples)
GO_PATH = "/usr/share/gocode"  # Debian's golang-github-stretchr-testify-dev (HumanEval-X's Go tests use testify)


@dataclass(frozen=True)
class Build:
    source: str  # file name of the program in the working directory
    compile: tuple[tuple[str, ...], ...] = ()  # compiler argv templates, run in order
    run: tuple[str, ...] = ()  # argv template of the test run
    stderr_fails: bool = False  # JS: console.assert only prints, so anything on stderr is a failure
    env: tuple[tuple[str, str], ...] = ()
    files: tuple[str, ...] = ()  # files the build needs besides the tools (javatuples)


@dataclass(frozen=True)
class Language:
    key: str  # python | cpp | java | js | go | rust
    display: str  # as written in prompts: "# language: Python", "// language: C++"
    comment: str  # line comment of the language
    aliases: tuple[str, ...]  # lower-case names in task_id prefixes and MultiPL-E language codes
    fences: tuple[str, ...]  # info strings of its ``` blocks
    tools: tuple[str, ...]  # executables the builds need
    packages: str  # Debian packages providing them (said when one is missing)
    builds: dict[str, Build] = field(default_factory=dict)  # harness -> build; "default" for any other

    @property
    def tag(self) -> str:
        """The language line of CodeFuse/CodeGeeX prompts, in the language's own comment syntax."""
        return f"{self.comment} language: {self.display}\n"

    def build(self, harness: str) -> Build:
        return self.builds.get(harness) or self.builds["default"]


_JAVA_RUN = ("java", "-Xmx{heap_mb}m", "-Xss16m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
_GO_ENV = (("GO111MODULE", "off"), ("GOPATH", GO_PATH), ("CGO_ENABLED", "0"))

LANGUAGES: dict[str, Language] = {
    lang.key: lang
    for lang in [
        Language("python", "Python", "#", ("python", "py", "python3"), ("python", "py", "python3", "py3"),
                 (), "python3", {"default": Build("main.py")}),
        Language("cpp", "C++", "//", ("cpp", "c++", "cxx"), ("cpp", "c++", "cc", "cxx", "c"),
                 ("g++",), "g++ libssl-dev libboost-dev", {
                     "humaneval-x": Build("main.cpp", (("g++", "-std=c++11", "{src}", "-o", "{exe}", "-lcrypto",
                                                        "-lssl"),), ("{exe}",)),
                     "default": Build("main.cpp", (("g++", "-std=c++17", "{src}", "-o", "{exe}"),), ("{exe}",)),
                 }),
        Language("java", "Java", "//", ("java",), ("java",), ("javac", "java"), "default-jdk-headless", {
            "humaneval-x": Build("Main.java", (("javac", "-encoding", "UTF-8", "{src}"),), _JAVA_RUN + ("-cp", ".", "Main")),
            "default": Build("Problem.java", (("javac", "-encoding", "UTF-8", "-cp", JAVATUPLES, "{src}"),),
                             _JAVA_RUN + ("-ea", "-cp", "." + os.pathsep + JAVATUPLES, "Problem"),
                             files=(JAVATUPLES,)),
        }),
        Language("js", "JavaScript", "//", ("js", "javascript", "node"), ("javascript", "js", "node", "jsx"),
                 ("node",), "nodejs", {
                     "humaneval-x": Build("main.js", (), ("node", "{src}"), stderr_fails=True),
                     "default": Build("main.js", (), ("node", "{src}")),
                 }),
        Language("go", "Go", "//", ("go", "golang", "go_test.go"), ("go", "golang"), ("go",),
                 "golang-go golang-github-stretchr-testify-dev", {
                     "default": Build("main_test.go", (("go", "test", "-c", "-o", "{exe}", "{src}"),), ("{exe}",),
                                      env=_GO_ENV),
                 }),
        Language("rust", "Rust", "//", ("rust", "rs"), ("rust", "rs"), ("rustc",), "rustc", {
            "humaneval-x": Build("main.rs", (("rustc", "--edition", "2021", "--test", "-C", "debuginfo=0", "{src}",
                                              "-o", "{exe}", "{rust_crates}"),), ("{exe}", "--test-threads=1")),
            "default": Build("main.rs", (("rustc", "--edition", "2021", "-C", "debuginfo=0", "{src}", "-o", "{exe}"),),
                             ("{exe}",)),
        }),
    ]
}


def language_for(name: str) -> Language:
    """The language named by a task_id prefix ("CPP/3"), a MultiPL-E code ("go_test.go") or a fence ("c++")."""
    wanted = name.strip().lower()
    for lang in LANGUAGES.values():
        if wanted == lang.key or wanted in lang.aliases:
            return lang
    known = sorted({a for lang in LANGUAGES.values() for a in (lang.key, *lang.aliases)})
    raise ValueError(f"unknown language {name!r}; known: {', '.join(known)}")


@lru_cache(maxsize=None)
def tool_path(tool: str) -> str | None:
    """Absolute path of a tool as the sandbox must call it (it gets a bare PATH and another HOME). rustup's
    `rustc` is a proxy that needs the user's HOME, so the real compiler of its default toolchain is used."""
    found = shutil.which(tool)
    if found is None:
        return None
    if tool == "rustc":
        try:
            sysroot = subprocess.run([found, "--print", "sysroot"], capture_output=True, text=True, timeout=60,
                                     check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        real = os.path.join(sysroot, "bin", "rustc")
        return real if os.access(real, os.X_OK) else None
    return os.path.realpath(found) if tool == "go" else found


def missing_requirements(lang: Language, harness: str) -> list[str]:
    """What this machine lacks to run `lang` programs of `harness`, each with how to install it; [] when ready."""
    if lang.key == "python":
        return []
    missing = [f"`{tool}` (apt-get install {lang.packages})" for tool in lang.tools if tool_path(tool) is None]
    build = lang.build(harness)
    missing += [f"{path} (apt-get install libjavatuples-java)" for path in build.files if not os.path.exists(path)]
    if lang.key == "go" and harness == "humaneval-x" and not os.path.isdir(
            os.path.join(GO_PATH, "src", "github.com", "stretchr", "testify")):
        missing.append(f"testify under {GO_PATH} (apt-get install golang-github-stretchr-testify-dev)")
    return missing
