"""A served model's life: the bounded queue answers 429, a client that disconnects frees its slot, SIGTERM lets
the request in flight finish and releases the port, and a taken port fails at start with a clear error."""
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx

from serve_helpers import chat_body, post, start_server


def health(server) -> dict:
    return httpx.get(server.url + "/health", timeout=30).json()


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_queue_limit_gives_429_and_a_disconnect_frees_the_slot(tiny_chat_model_dir, tmp_path):
    with start_server(tiny_chat_model_dir, "--served_model_name", "tiny", "--max_queue", "1",
                      "--max_batch_size", "1", "--max_n", "32", log_dir=str(tmp_path)) as server:
        body = chat_body("tiny", "hi", max_tokens=470, temperature=0, stream=True)  # greedy runs to 470 tokens
        with httpx.stream("POST", f"{server.api}/chat/completions", json=body, timeout=60) as long:
            lines = long.iter_lines()
            assert next(lines).startswith("data: ")  # the long answer is being decoded
            refused = post(server, "chat/completions", chat_body("tiny", "hi", max_tokens=2))
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            error = refused.json()["error"]
            assert error["type"] == "rate_limit_error" and "--max_queue 1" in error["message"]
        # the client has gone mid-answer: its row leaves the batch and its slot is free again
        assert wait_for(lambda: health(server)["pending"] == 0)
        assert health(server)["cancelled"] == 1
        ok = post(server, "chat/completions", chat_body("tiny", "hi", max_tokens=2, temperature=0))
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
        # a non-streaming client that gives up while its answer is decoding is noticed too
        body = json.dumps(chat_body("tiny", "hi", max_tokens=470, n=32, temperature=0.5)).encode()
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert wait_for(lambda: health(server)["pending"] == 1)
        assert wait_for(lambda: health(server)["pending"] == 0)
        assert health(server)["cancelled"] == 2


def _read_stream(server, body: dict, got_first: threading.Event, result: dict) -> None:
    data = []
    try:
        with httpx.stream("POST", f"{server.api}/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data.append(line[6:])
                    got_first.set()
    except httpx.HTTPError as e:
        result["error"] = repr(e)
    result["data"] = data


def test_sigterm_lets_the_request_in_flight_finish_and_releases_the_port(tiny_chat_model_dir, tmp_path):
    with start_server(tiny_chat_model_dir, "--served_model_name", "tiny", log_dir=str(tmp_path)) as server:
        body = chat_body("tiny", "hi", max_tokens=470, temperature=0, stream=True,  # greedy runs to 470 tokens
                         stream_options={"include_usage": True})
        got_first, result = threading.Event(), {}
        reader = threading.Thread(target=_read_stream, args=(server, body, got_first, result))
        reader.start()
        assert got_first.wait(60)
        server.proc.send_signal(signal.SIGTERM)
        reader.join(60)
        # uvicorn shuts down gracefully, then re-raises SIGTERM so a supervisor sees how the process ended
        assert server.proc.wait(60) == -signal.SIGTERM
        assert "error" not in result and result["data"][-1] == "[DONE]"
        assert json.loads(result["data"][-2])["usage"]["completion_tokens"] == 470  # the whole answer arrived
        port = int(server.url.rsplit(":", 1)[1])
        with socket.socket() as probe:  # released: the port can be bound again at once
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
        assert "Finished server process" in server.log()


def test_a_taken_port_is_a_clear_error_before_the_model_loads(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "mftcoder", "serve", "--model", str(tmp_path / "none"),
                               "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (f"error: --host 127.0.0.1 --port {port}: cannot listen there "
                                                    "(Address already in use)")
