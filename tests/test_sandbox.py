"""The execution sandbox against hostile programs: the run finishes, they are marked failed or timed out,
and nothing outside their temporary directory is harmed."""
import os
import re
import time

import pytest

from mftcoder.eval.sandbox import FAILED, PASSED, TIMED_OUT, SandboxLimits, check_sandbox, run_program, run_programs

FAST = SandboxLimits(timeout_s=5.0, memory_mb=256, file_size_mb=4)


def _alive(pid: int) -> bool:
    """True if pid runs (zombies waiting for a reaper count as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary.txt"
    path.write_text("still here")
    return path


def test_sandbox_self_check_and_plain_outcomes():
    check_sandbox(FAST)
    ok, wrong, crash = run_programs(
        ["def f(x):\n    return x + 1\nassert f(1) == 2\n", "def f(x):\n    return x\nassert f(1) == 2\n",
         "import faulthandler\nfaulthandler._sigsegv()\n"], FAST, workers=2)
    assert ok.status == PASSED and ok.error is None
    assert wrong.status == FAILED and wrong.error.startswith("AssertionError (line 3: assert f(1) == 2)")
    assert crash.status == FAILED and "SIGSEGV" in crash.error


def test_hostile_batch_finishes_and_only_good_programs_pass(canary):
    c = str(canary)
    programs = {
        "good": "assert sorted([3, 1, 2]) == [1, 2, 3]",
        "infinite_loop": "while True:\n    pass",
        "sleep_forever": "import time\ntime.sleep(1000)",
        "memory_bomb": "hog = []\nwhile True:\n    hog.append(bytearray(50 * 2**20))",
        "fork_bomb": "import os\nwhile True:\n    os.fork()",
        "multiprocessing": "import multiprocessing\nmultiprocessing.Process(target=print).start()",
        "subprocess": "import subprocess\nsubprocess.run(['rm', '-f', %r])" % c,
        "os_system": "import os\nos.system('rm -f %s')" % c,
        "remove_canary": "import os\nos.remove(%r)" % c,
        "unlink_canary": "import pathlib\npathlib.Path(%r).unlink()" % c,
        "rmtree_dir": "import shutil\nshutil.rmtree(%r)" % os.path.dirname(c),
        "rename_canary": "import os\nos.rename(%r, %r)" % (c, c + ".moved"),
        "truncate_canary": "open(%r, 'w').write('gone')" % c,
        "os_open_canary": "import os\nos.open(%r, os.O_WRONLY | os.O_TRUNC)" % c,
        "exit_before_asserts": "import sys\nsys.exit(0)\nassert False",
        "os_exit_before_asserts": "import os\nos._exit(0)\nassert False",
        "raise_systemexit": "raise SystemExit(0)",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "killpg_parent": "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
        "huge_file": "with open('huge.bin', 'wb') as f:\n    while True:\n        f.write(b'0' * 2**20)",
        "ctypes_escape": "import ctypes\nctypes.CDLL(None).fork()",
        "network": "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=30)",
        "raw_socket": "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))",
        "raw_c_socket": "import _socket\n_socket.socket().connect(('127.0.0.1', 9))",
        "good_stdlib_imports": "import urllib.request, http.client, asyncio, logging.handlers, json\nassert json",
        "good_after_hostiles": "import math\nassert math.isclose(math.sqrt(2) ** 2, 2)",
    }
    start = time.monotonic()
    results = dict(zip(programs, run_programs(list(programs.values()), FAST, workers=2)))
    elapsed = time.monotonic() - start

    assert canary.read_text() == "still here" and not os.path.exists(c + ".moved")
    assert os.getpid() > 0  # we were not killed
    assert elapsed < 30, f"the hostile batch took {elapsed:.1f} s"
    for name in ("good", "good_stdlib_imports", "good_after_hostiles"):
        assert results[name].status == PASSED, results[name]
    for name in ("infinite_loop", "sleep_forever"):
        assert results[name].status == TIMED_OUT, results[name]
    for name, res in results.items():
        if not name.startswith("good") and name not in ("infinite_loop", "sleep_forever"):
            assert res.status == FAILED, (name, res)
    assert "MemoryError" in results["memory_bomb"].error
    assert "os.fork is disabled" in results["fork_bomb"].error
    assert "os.remove is disabled" in results["remove_canary"].error
    assert "outside the sandbox directory" in results["truncate_canary"].error
    assert "SystemExit: 0" in results["exit_before_asserts"].error
    assert "before the end of the program" in results["os_exit_before_asserts"].error
    assert "os.kill is disabled" in results["kill_parent"].error
    assert "File too large" in results["huge_file"].error
    assert "ctypes" in results["ctypes_escape"].error
    assert "socket.create_connection is disabled" in results["network"].error
    assert "socket.connect is disabled" in results["raw_socket"].error
    assert "_socket" in results["raw_c_socket"].error


def test_fresh_private_working_directory_clean_environment(monkeypatch):
    monkeypatch.setenv("MFTCODER_TEST_SECRET", "do-not-leak")
    program = (
        "import os\n"
        "assert 'MFTCODER_TEST_SECRET' not in os.environ\n"
        "assert sorted(os.listdir('.')) == ['.output'], os.listdir('.')\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "os.makedirs('sub/dir')\n"
        "print('CWD=' + os.getcwd())\n"
    )
    a, b = run_programs([program, program], FAST, workers=2)
    assert a.passed and b.passed, (a, b)
    cwd_a, cwd_b = (re.search(r"CWD=(\S+)", r.output).group(1) for r in (a, b))
    assert cwd_a != cwd_b
    assert not os.path.exists(cwd_a) and not os.path.exists(cwd_b)  # removed afterwards


def test_forged_success_message_without_nonce_fails():
    program = (
        "import os, sys, json\n"
        "fd = int(sys.argv[1])\n"
        "os.write(fd, (json.dumps({'nonce': 'guess', 'status': 'passed'}) + '\\n').encode())\n"
        "os._exit(0)\n"
    )
    res = run_program(program, FAST)
    assert res.status == FAILED


def test_process_group_is_killed_when_the_program_ends():
    # Outer layer only (guard off): the program leaves a sleeping child behind and exits cleanly.
    program = (
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(120)\n"
        "    os._exit(0)\n"
        "print('CHILD=%d' % pid, flush=True)\n"
    )
    res = run_program(program, SandboxLimits(timeout_s=5, guard=False))
    assert res.passed, res
    child = int(re.search(r"CHILD=(\d+)", res.output).group(1))
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_fork_bomb_bounded_by_the_watchdog_without_the_guard():
    # Outer layer only: 2**5 = 32 processes against a limit of 6; as root RLIMIT_NPROC would not stop it.
    program = (
        "import os, time\n"
        "for _ in range(5):\n"
        "    os.fork()\n"
        "print('PID=%d' % os.getpid(), flush=True)\n"
        "time.sleep(120)\n"
    )
    start = time.monotonic()
    res = run_program(program, SandboxLimits(timeout_s=20, max_processes=6, guard=False))
    assert time.monotonic() - start < 10
    assert res.status == FAILED and "more than the limit of 6" in res.error, res
    pids = [int(p) for p in re.findall(r"PID=(\d+)", res.output)]
    assert pids
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_cpu_limit_stops_a_busy_loop_before_the_wall_timeout():
    # RLIMIT_CPU: SIGXCPU at 1 s of CPU; a loop that ignores it is SIGKILLed by the kernel one second later.
    for program in ("while True:\n    pass\n",
                    "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"):
        start = time.monotonic()
        res = run_program(program, SandboxLimits(timeout_s=30, cpu_s=1))
        assert time.monotonic() - start < 15
        assert res.status == TIMED_OUT and "CPU time limit" in res.error, res


def test_invalid_limits_are_rejected():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
