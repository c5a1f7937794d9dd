"""The sandbox of compiled and non-Python programs (bubblewrap + limits) against hostile C++ and JavaScript programs:
the counterparts of the Python sandbox's hostile samples. The batch finishes, each is failed or timed out, nothing
outside its work folder changes, no process survives, no connection leaves."""
import os
import socket
import time

import pytest

from mftcoder.eval.languages import LANGUAGES, missing_requirements
from mftcoder.eval.native_sandbox import NativeProgram, bwrap_path, run_jobs
from mftcoder.eval.sandbox import COMPILE_ERROR, FAILED, PASSED, TIMED_OUT, SandboxLimits

FAST = SandboxLimits(timeout_s=5.0, memory_mb=256, file_size_mb=4)
MARK = "31.4159"  # the sleep argument that tells a leftover child of ours in the process list

needs_bwrap = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not installed")


def _needs(lang: str, harness: str = "humaneval-x"):
    missing = missing_requirements(LANGUAGES[lang], harness)
    return pytest.mark.skipif(bool(missing) or bwrap_path() is None,
                              reason=f"{lang} toolchain missing: {', '.join(missing) or 'bwrap'}")


def _leftovers() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if MARK.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary.txt"
    path.write_text("still here")
    os.chmod(tmp_path, 0o777)  # even a folder anyone may write to stays untouched
    return path


@pytest.fixture
def listener():
    """A local port that counts the connections it receives (the sandbox has no network, not even loopback)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _accepted(server) -> int:
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


CPP = {
    "good": "#include<vector>\n#include<algorithm>\n#include<cassert>\nint main(){ std::vector<int> v{3,1,2};"
            " std::sort(v.begin(), v.end()); assert(v[0]==1 && v[2]==3); return 0; }",
    "infinite_loop": "int main(){ volatile unsigned long x = 0; for(;;) x++; }",
    "sleep_forever": "#include<unistd.h>\nint main(){ sleep(1000); return 0; }",
    "memory_bomb": "#include<cstdlib>\n#include<cstring>\nint main(){ for(;;){ char* p = (char*)malloc(64<<20);"
                   " if(!p) return 1; memset(p, 1, 64<<20); } }",
    "fork_bomb": "#include<unistd.h>\nint main(){ for(;;) fork(); }",
    "write_outside": "#include<cstdio>\nint main(){ FILE* f = fopen(\"{canary}\", \"w\"); if(!f) return 3;"
                     " fputs(\"gone\", f); fclose(f); return 0; }",
    "remove_outside": "#include<cstdio>\nint main(){ return remove(\"{canary}\") == 0 ? 0 : 4; }",
    "write_host_tmp": "#include<cstdio>\nint main(){ FILE* f = fopen(\"/tmp/mftcoder-escaped-{pid}\", \"w\");"
                      " if(!f) return 3; fputs(\"x\", f); fclose(f); return 7; }",
    "orphan_child": "#include<unistd.h>\nint main(){ if(fork()==0){ setsid(); execl(\"/bin/sleep\", \"sleep\","
                    " \"" + MARK + "\", (char*)0); } return 0; }",
    "output_flood": "#include<cstdio>\n#include<string>\nint main(){ std::string s(1<<20, 'x');"
                    " for(;;) fputs(s.c_str(), stdout); }",
    "network": "#include<sys/socket.h>\n#include<netinet/in.h>\n#include<arpa/inet.h>\nint main(){"
               " int s = socket(AF_INET, SOCK_STREAM, 0); sockaddr_in a{}; a.sin_family = AF_INET;"
               " a.sin_port = htons({port}); inet_pton(AF_INET, \"127.0.0.1\", &a.sin_addr);"
               " return connect(s, (sockaddr*)&a, sizeof a) == 0 ? 0 : 5; }",
    "kill_everyone": "#include<signal.h>\nint main(){ kill(-1, SIGKILL); return 6; }",
    "good_after_hostiles": "#include<cmath>\n#include<cassert>\nint main(){ assert(std::fabs(std::sqrt(2.0)*std::sqrt(2.0)-2)<1e-9); }",
}

JS = {
    "good": "const assert = require('node:assert');\nassert.deepEqual([3, 1, 2].sort(), [1, 2, 3]);",
    "infinite_loop": "while (true) {}",
    "sleep_forever": "setTimeout(() => {}, 1e9);",
    "memory_bomb": "const hog = [];\nwhile (true) hog.push(new Array(1e6).fill(1.5));",
    "fork_bomb": "const { spawn } = require('child_process');\nwhile (true) spawn('/bin/sleep', ['1000']);",
    "write_outside": "require('fs').writeFileSync('{canary}', 'gone');",
    "remove_outside": "require('fs').unlinkSync('{canary}');",
    "write_host_tmp": "require('fs').writeFileSync('/tmp/mftcoder-escaped-{pid}', 'x'); process.exit(7);",
    "orphan_child": "const { spawn } = require('child_process');\n"
                    "spawn('/bin/sleep', ['" + MARK + "'], { detached: true, stdio: 'ignore' }).unref();",
    "output_flood": "const s = 'x'.repeat(1 << 20);\nwhile (true) process.stdout.write(s);",
    "network": "const net = require('net');\nconst c = net.connect({port}, '127.0.0.1', () => process.exit(0));\n"
               "c.on('error', () => process.exit(5));",
    "kill_everyone": "process.kill(-1, 'SIGKILL'); process.exit(6);",
    "good_after_hostiles": "console.assert(Math.abs(Math.sqrt(2) ** 2 - 2) < 1e-9);",
}


def _hostile_batch(lang: str, sources: dict, canary, listener) -> dict:
    fill = {"{canary}": str(canary), "{pid}": str(os.getpid()), "{port}": str(listener.getsockname()[1])}
    programs = []
    for source in sources.values():
        for key, value in fill.items():
            source = source.replace(key, value)
        programs.append(NativeProgram(lang, "humaneval-x", source + "\n"))
    start = time.monotonic()
    results = dict(zip(sources, run_jobs(programs, FAST, workers=2)))
    elapsed = time.monotonic() - start
    time.sleep(0.2)
    assert canary.read_text() == "still here"
    assert not os.path.exists(f"/tmp/mftcoder-escaped-{os.getpid()}")
    assert _leftovers() == [], "a child outlived its sandbox"
    assert _accepted(listener) == 0, "a connection left the sandbox"
    assert elapsed < 60, f"the hostile batch took {elapsed:.1f} s"
    return results


def _check_common(results: dict) -> None:
    for name in ("good", "good_after_hostiles"):
        assert results[name].status == PASSED, (name, results[name])
    for name in ("infinite_loop", "sleep_forever"):
        assert results[name].status == TIMED_OUT, (name, results[name])
    for name, res in results.items():
        if not name.startswith("good") and name not in ("infinite_loop", "sleep_forever", "orphan_child"):
            assert res.status == FAILED, (name, res)
    assert "processes, more than the limit" in results["fork_bomb"].error
    assert len(results["output_flood"].output) <= 4000


@_needs("cpp")
def test_hostile_cpp_programs_are_contained(canary, listener):
    results = _hostile_batch("cpp", CPP, canary, listener)
    _check_common(results)
    # the orphan's parent exited 0: it passes, but its child died with the sandbox (checked above)
    assert results["orphan_child"].status == PASSED
    assert results["write_outside"].error == "exit status 3"
    assert results["remove_outside"].error == "exit status 4"
    assert results["write_host_tmp"].error == "exit status 7"  # it wrote to the sandbox's own /tmp
    assert results["network"].error == "exit status 5"
    assert results["memory_bomb"].error == "exit status 1"  # malloc failed at the data limit
    assert "SIGXFSZ" in results["output_flood"].error
    assert results["kill_everyone"].error == "exit status 6"


@_needs("js")
def test_hostile_js_programs_are_contained(canary, listener):
    results = _hostile_batch("js", JS, canary, listener)
    _check_common(results)
    assert results["orphan_child"].status == PASSED
    # the host's /tmp is not even visible (the sandbox has its own); elsewhere the file system is read-only
    for name in ("write_outside", "remove_outside"):
        assert any(code in results[name].error for code in ("ENOENT", "EROFS", "EACCES")), results[name]
    assert results["write_host_tmp"].error == "exit status 7"
    assert results["network"].error.startswith("exit status 5")
    bomb = results["memory_bomb"]  # V8 aborts at the data limit; its message follows a GC trace of varying length
    assert "SIGABRT" in bomb.error and "JavaScript heap out of memory" in bomb.output + bomb.error, bomb
    # node queues writes it cannot finish: it stops at the file-size limit or, queueing, at the memory limit
    assert any(s in results["output_flood"].error for s in ("EFBIG", "SIGXFSZ", "Allocation failed")), results["output_flood"]


@_needs("cpp")
def test_compile_errors_and_compile_time_are_statuses_of_their_own():
    ok, broken, assert_fails = run_jobs([
        NativeProgram("cpp", "humaneval-x", "int main(){ return 0; }\n"),
        NativeProgram("cpp", "humaneval-x", "int main(){ return undeclared; }\n"),
        NativeProgram("cpp", "humaneval-x", "#include<cassert>\nint main(){ assert(1 == 2); }\n"),
    ], FAST, workers=2)
    assert ok.status == PASSED
    assert broken.status == COMPILE_ERROR and "undeclared" in broken.error
    assert assert_fails.status == FAILED and "SIGABRT" in assert_fails.error and "1 == 2" in assert_fails.error


@pytest.mark.parametrize("lang,good,bad", [
    ("java", "public class Main { public static void main(String[] a) { if (1 + 1 != 2) throw new AssertionError(); } }",
     "public class Main { public static void main(String[] a) { if (1 + 1 != 3) throw new AssertionError(); } }"),
    ("rust", "fn main() {}\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() { assert_eq!(1 + 1, 2); }\n}",
     "fn main() {}\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() { assert_eq!(1 + 1, 3); }\n}"),
    ("go", 'package main\n\nimport (\n    "testing"\n    "github.com/stretchr/testify/assert"\n)\n\n'
           "func TestX(t *testing.T) {\n    assert.New(t).Equal(2, 1+1)\n}",
     'package main\n\nimport (\n    "testing"\n    "github.com/stretchr/testify/assert"\n)\n\n'
     "func TestX(t *testing.T) {\n    assert.New(t).Equal(3, 1+1)\n}"),
])
def test_each_compiled_language_tells_pass_from_fail(lang, good, bad):
    if missing_requirements(LANGUAGES[lang], "humaneval-x") or bwrap_path() is None:
        pytest.skip(f"{lang} toolchain missing: {missing_requirements(LANGUAGES[lang], 'humaneval-x')}")
    ok, wrong, broken = run_jobs([NativeProgram(lang, "humaneval-x", good + "\n"),
                                  NativeProgram(lang, "humaneval-x", bad + "\n"),
                                  NativeProgram(lang, "humaneval-x", good.replace("(", "((", 1) + "\n")],
                                 SandboxLimits(timeout_s=20), workers=2)
    assert (ok.status, wrong.status, broken.status) == (PASSED, FAILED, COMPILE_ERROR), (ok, wrong, broken)
