"""`mftcoder serve`: the OpenAI-compatible API and the web chat for a model directory (plus LoRA adapters).

The model is loaded once; requests that arrive together are decoded as one batch (`--max_batch_size` rows,
gathered for `--batch_wait_ms`); past `--max_queue` requests queued or running, new ones get 429. SIGTERM or
Ctrl-C stops taking connections, lets the requests in flight finish (up to `--graceful_timeout` seconds) and
releases the port.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

from mftcoder.errors import ArgumentParser, run_reporting_errors, with_example
from mftcoder.model.inference import DTYPE_CHOICES

EXAMPLE = """\
mftcoder serve --model runs/demo-merged --port 8000
mftcoder serve --model ~/models/base --adapter runs/demo --api_key "$MFTCODER_API_KEY" --max_batch_size 16
curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "demo-merged", "messages": [{"role": "user", "content": "Write a Python hello world."}]}'
"""
ENGINES = ("transformers", "vllm")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or ArgumentParser(prog="mftcoder serve", description=__doc__.split("\n\n")[0])
    with_example(parser, EXAMPLE)
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="model directory (a merged model or a base model)")
    model.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                       help="LoRA/QLoRA adapter on --model. One plain DIR is merged in memory and served alone; "
                            "NAME=DIR (repeatable) serves each adapter unmerged under its NAME, and the base under "
                            "the model name, chosen per request by the `model` field")
    model.add_argument("--served_model_name", default=None,
                       help="the name clients put in `model` (default: the folder name of the adapter or model)")
    model.add_argument("--engine", default="transformers", choices=ENGINES,
                       help="transformers (default, CPU or GPU) or vllm (needs the vllm package and a CUDA GPU)")
    model.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    model.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    model.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    model.add_argument("--force", action="store_true", help="apply adapters that look trained on another base")
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    net.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start)")
    net.add_argument("--api_key", default=os.environ.get("MFTCODER_API_KEY"),
                     help="require 'Authorization: Bearer KEY' on /v1 routes (default: $MFTCODER_API_KEY, else none)")
    net.add_argument("--graceful_timeout", type=float, default=30.0,
                     help="seconds in-flight requests get to finish after SIGTERM")
    limits = parser.add_argument_group("batching and limits")
    limits.add_argument("--max_batch_size", type=int, default=8, help="rows decoded together (1: no batching)")
    limits.add_argument("--batch_wait_ms", type=float, default=10.0,
                        help="how long the first request of a batch waits for others to join")
    limits.add_argument("--max_queue", type=int, default=64, help="requests queued or running before 429")
    limits.add_argument("--max_tokens", type=int, default=2048,
                        help="the most tokens a request may ask for (and the default when it asks for none)")
    limits.add_argument("--max_n", type=int, default=8, help="the most choices (n) per request")
    limits.add_argument("--max_prompt_tokens", type=int, default=None, help="default: the model's context length")
    limits.add_argument("--max_request_bytes", type=int, default=1 << 20, help="request body cap (413 past it)")
    parser.add_argument("--log_level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return parser


def run(args: argparse.Namespace) -> int:
    return run_reporting_errors(_run, args)


def bound_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so a taken port fails fast (and port 0 works)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    return sock


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from mftcoder.serve.app import create_app
    from mftcoder.serve.loading import build_service

    sock = bound_socket(args.host, args.port)
    service = build_service(args)
    app = create_app(service, api_key=args.api_key)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=args.graceful_timeout,
                            access_log=args.log_level == "debug")
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"mftcoder serve: {', '.join(service.names)} on http://{shown}:{port} (web chat at /, API at /v1)",
          file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
