"""Serving load test: `mftcoder serve` with dynamic batching on (baseline: off), side by side.

    python benchmarks/bench_serve.py [--model tiny|smollm2|DIR] [--requests 64] [--max-tokens 32] [--rounds 2]
                                     [--max-batch-size 16] [--batch-wait-ms MS] [--threads 1] [--json out.json]

Each run starts a fresh `mftcoder serve` subprocess on a free localhost port: `--max_batch_size 1` (batching off,
the baseline) or `--max_batch_size 16` (batching on, the server's default --batch_wait_ms unless --batch-wait-ms is
given). One client process (httpx.AsyncClient + asyncio) then sends --requests streaming chat completions at once,
each with a distinct prompt, temperature 0 and a fixed max_tokens, and reads the server-sent events. The two
configurations alternate over --rounds (on, off; then off, on; ...), so neither always runs first.

Reported per configuration (the median over rounds): requests/s and completion tokens/s over the wall time from the
first request sent to the last answer received, p50/p95 latency (request sent -> `data: [DONE]`), p50 time to first
token (request sent -> the first chunk with text), errors (HTTP status, error chunks, missing [DONE]; must be 0),
and answers that differ from the single-request answer. Those reference answers are computed once per prompt,
sequentially and without streaming, on the first batching-off server before its load run. The server's own
counters (GET /health: the largest batch in rows, and how often rows started or joined a batch) show that batching
happened.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for _p in (REPO, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench_training import _fmt, machine, ratio, write_results  # noqa: E402  (shared helpers)

from mftcoder.serve.launch import running_server  # noqa: E402

CONFIGS = ("off", "on")  # baseline first in every table
LANGS = ("Python", "JavaScript", "Go", "Rust", "C", "Java", "SQL", "Bash")
TASKS = ("reverses a string", "sums a list of numbers", "checks whether a number is prime",
         "counts the words in a sentence", "merges two sorted lists", "parses a date",
         "computes a factorial", "removes duplicates from a list")


def prompts(n: int) -> list[str]:
    """n distinct prompts of slightly different lengths (so batched rows are padded differently)."""
    return [f"Task {i}: write a {LANGS[i % len(LANGS)]} function that {TASKS[(i // len(LANGS)) % len(TASKS)]}."
            for i in range(n)]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): a value that was measured, never interpolated."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# ---------------------------------------------------------------------------------------------------------------------
# the server


def model_dir(name: str, workdir: str) -> str:
    """tiny: the test suite's tiny Llama with MFTCoder's chat template, built here; smollm2: the converted cache."""
    if name == "smollm2":
        from mftcoder.model.smollm2 import smollm2_path

        return smollm2_path()
    if name != "tiny":
        return name
    from transformers import AutoTokenizer

    from mftcoder.data.template import attach_chat_template, get_template
    from mftcoder.testing import build_tiny_model

    out = build_tiny_model(os.path.join(workdir, "tiny"), arch="llama")
    tokenizer = AutoTokenizer.from_pretrained(out)
    attach_chat_template(tokenizer, get_template("mftcoder", tokenizer))
    tokenizer.save_pretrained(out)
    return out


def server_args(args, batch_size: int) -> list[str]:
    extra = ["--max_batch_size", str(batch_size), "--max_queue", str(max(64, args.requests)),
             "--max_tokens", str(max(2048, args.max_tokens))]
    if args.batch_wait_ms is not None:
        extra += ["--batch_wait_ms", str(args.batch_wait_ms)]
    return extra


def health(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/health", timeout=30).json()


# ---------------------------------------------------------------------------------------------------------------------
# the client


def chat_body(model: str, prompt: str, max_tokens: int, stream: bool) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def reference_answers(url: str, model: str, texts: list[str], max_tokens: int, timeout: float) -> dict:
    """Each prompt alone (sequential, not streamed): the answers every load run must reproduce."""
    import httpx

    answers, tokens, start = [], 0, time.perf_counter()
    with httpx.Client(timeout=timeout) as client:
        for text in texts:
            r = client.post(f"{url}/v1/chat/completions", json=chat_body(model, text, max_tokens, False))
            r.raise_for_status()
            body = r.json()
            answers.append(body["choices"][0]["message"]["content"])
            tokens += body["usage"]["completion_tokens"]
    return {"answers": answers, "seconds": time.perf_counter() - start, "completion_tokens": tokens}


async def one_stream(client, url: str, body: dict) -> dict:
    """One streaming request: its text, timings and usage, or the error that ended it."""
    out = {"text": "", "error": None, "ttft_s": None, "latency_s": None, "completion_tokens": 0}
    start, done = time.perf_counter(), False
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                out["error"] = f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}"
                return out
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out["error"] = f"error chunk: {chunk['error'].get('message')}"
                    return out
                _read_chunk(chunk, out, start)
    except Exception as e:  # a broken connection or a timeout is an error of this request, not of the run
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    out["latency_s"] = time.perf_counter() - start
    if not done:
        out["error"] = "the stream ended without data: [DONE]"
    return out


def _read_chunk(chunk: dict, out: dict, start: float) -> None:
    if chunk.get("usage"):
        out["completion_tokens"] = chunk["usage"]["completion_tokens"]
    for choice in chunk.get("choices", []):
        text = choice.get("delta", {}).get("content") or ""
        if out["ttft_s"] is None and (text or choice.get("finish_reason")):
            out["ttft_s"] = time.perf_counter() - start  # the opening chunk (role, empty content) is no token
        out["text"] += text


async def load(url: str, model: str, texts: list[str], max_tokens: int, timeout: float) -> tuple[list[dict], float]:
    """Every prompt sent at once from one client; (per-request results, wall seconds)."""
    import httpx

    limits = httpx.Limits(max_connections=len(texts), max_keepalive_connections=len(texts))
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, chat_body(model, t, max_tokens, True))
                                         for t in texts))
        return list(results), time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------------------
# one run, and the summary


def summarise(results: list[dict], wall: float, reference: list[str]) -> dict:
    ok = [r for r in results if r["error"] is None]
    latencies = [r["latency_s"] for r in ok]
    tokens = sum(r["completion_tokens"] for r in ok)
    mismatched = [i for i, r in enumerate(results) if r["error"] is None and r["text"] != reference[i]]
    return {"requests": len(results), "errors": len(results) - len(ok),
            "error_messages": sorted({r["error"] for r in results if r["error"]})[:5],
            "mismatches": len(mismatched), "mismatched_prompts": mismatched[:10], "wall_s": wall,
            "requests_per_s": len(ok) / wall, "completion_tokens": tokens, "completion_tokens_per_s": tokens / wall,
            "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
            "ttft_p50_s": percentile([r["ttft_s"] for r in ok if r["ttft_s"] is not None], 50)}


def run_config(args, model_path: str, config: str, round_no: int, texts: list[str], state: dict) -> dict:
    """Start a server for `config`, (first batching-off run only) compute the references, run the load, stop it."""
    batch_size = args.max_batch_size if config == "on" else 1
    log_path = os.path.join(state["workdir"], f"serve-{config}-{round_no}.log")
    with running_server(model_path, *server_args(args, batch_size), log_path=log_path, threads=args.threads,
                        cwd=REPO) as server:
        url, startup_s = server.url, server.startup_s
        import httpx

        model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        if state.get("reference") is None and config == "off":
            state["reference"] = reference_answers(url, model, texts, args.max_tokens, args.timeout)
        else:  # the same warm-up as the reference run gives: the first request's lazy setup is not timed
            reference_answers(url, model, texts[:2], args.max_tokens, args.timeout)
        before = health(url)
        results, wall = asyncio.run(load(url, model, texts, args.max_tokens, args.timeout))
        after = health(url)
    run = {"config": config, "round": round_no, "max_batch_size": batch_size, "startup_s": startup_s,
           **summarise(results, wall, state["reference"]["answers"]), **server_counters(before, after)}
    print(f"  round {round_no}, batching {config}: {run['requests_per_s']:.2f} requests/s, "
          f"{run['errors']} errors, {run['mismatches']} mismatches, largest batch {run['largest_batch']}", flush=True)
    return run


def server_counters(before: dict, after: dict) -> dict:
    """What GET /health says about the load run: the largest batch (rows decoding at once, since the server started:
    the warm-up and reference requests ran one at a time) and how often rows started a batch or joined one."""
    joins = after["joins"] - before["joins"] if "joins" in after else None
    return {"largest_batch": after.get("largest_batch"), "joins": joins, "health_after": after}


def combine(runs: list[dict]) -> dict:
    """One configuration over its rounds: timings as medians, errors and mismatches summed."""
    median = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    out = {key: median(key) for key in ("requests_per_s", "completion_tokens_per_s", "latency_p50_s",
                                          "latency_p95_s", "ttft_p50_s") if None not in [r[key] for r in runs]}
    largest = [r["largest_batch"] for r in runs if r["largest_batch"] is not None]
    out.update(errors=sum(r["errors"] for r in runs), mismatches=sum(r["mismatches"] for r in runs),
               largest_batch=max(largest) if largest else None,
               joins=[r["joins"] for r in runs], rounds=len(runs))
    return out


ROWS = (  # (label, key, better)
    ("requests/s", "requests_per_s", "higher"),
    ("completion tokens/s", "completion_tokens_per_s", "higher"),
    ("latency p50 (s)", "latency_p50_s", "lower"),
    ("latency p95 (s)", "latency_p95_s", "lower"),
    ("time to first token p50 (s)", "ttft_p50_s", "lower"),
)


def report(results: dict) -> str:
    s, off, on = results["settings"], results["configs"]["off"], results["configs"]["on"]
    rows = [(label, off.get(key), on.get(key), ratio(on.get(key) or 0, off.get(key) or 0), better)
            for label, key, better in ROWS]
    rows += [("errors", off["errors"], on["errors"], None, "0"),
             ("answers != single-request answer", off["mismatches"], on["mismatches"], None, "0"),
             ("server: joins per run", _joined(off["joins"]), _joined(on["joins"]), None, "-"),
             ("largest batch (rows)", off["largest_batch"], on["largest_batch"], None, "-")]
    head = ("metric", "batching off", f"batching on ({s['max_batch_size']})", "on/off", "better")
    cells = [head] + [tuple(_fmt(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa
    title = (f"== serving {results['model']}: {s['requests']} concurrent streaming chat requests, max_tokens "
             f"{s['max_tokens']}, temperature 0; median of {s['rounds']} round(s), {s['threads']} server thread(s)")
    return "\n".join([title, line(head), "-" * (sum(widths) + 2 * (len(head) - 1))] + [line(r) for r in cells[1:]])


def _joined(values: list) -> str:
    return ", ".join("-" if v is None else str(v) for v in values)


# ---------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny",
                    help="tiny (default: a ~140k-parameter Llama with a chat template, built in a temp dir), "
                         "smollm2 (SmolLM2-135M-Instruct, converted once and cached) or a model directory")
    ap.add_argument("--requests", type=int, default=64, help="concurrent requests per run (default 64)")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request (default 32)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each configuration, order alternating (default 2)")
    ap.add_argument("--max-batch-size", type=int, default=16, help="--max_batch_size of the batching-on server")
    ap.add_argument("--batch-wait-ms", type=float, default=None,
                    help="--batch_wait_ms of both servers (default: the server's default)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each server (default 1: shared machine)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take (default 600)")
    ap.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    args = ap.parse_args(argv)
    for flag, low in (("requests", 1), ("max_tokens", 1), ("rounds", 1), ("max_batch_size", 2), ("threads", 1)):
        if getattr(args, flag) < low:
            ap.error(f"--{flag.replace('_', '-')} must be >= {low}, got {getattr(args, flag)}")
    if args.batch_wait_ms is not None and args.batch_wait_ms < 0:
        ap.error(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")
    if args.timeout <= 0:
        ap.error(f"--timeout must be > 0, got {args.timeout}")
    if args.model not in ("tiny", "smollm2") and not os.path.isfile(os.path.join(args.model, "config.json")):
        ap.error(f"--model {args.model}: not tiny, smollm2 or a model directory (no config.json there)")
    return args


def order(round_no: int) -> tuple[str, str]:
    """off, on in odd rounds; on, off in even ones (round 1's batching-off server computes the references)."""
    return ("off", "on") if round_no % 2 else ("on", "off")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = tempfile.mkdtemp(prefix="mftcoder-bench-serve-")
    texts = prompts(args.requests)
    settings = {k: getattr(args, k) for k in ("requests", "max_tokens", "rounds", "max_batch_size", "batch_wait_ms",
                                               "threads")}
    results: dict = {"command": " ".join(["python", "benchmarks/bench_serve.py"] + (argv or sys.argv[1:])),
                     "model": args.model, "settings": settings, "machine": machine(args)}
    state = {"workdir": workdir, "reference": None}
    try:
        results["model_path"] = model_path = model_dir(args.model, workdir)
        runs = []
        for round_no in range(1, args.rounds + 1):
            for config in order(round_no):
                runs.append(run_config(args, model_path, config, round_no, texts, state))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    reference = state["reference"]
    results["reference"] = {k: reference[k] for k in ("seconds", "completion_tokens")}
    results["runs"] = runs
    results["configs"] = {c: combine([r for r in runs if r["config"] == c]) for c in CONFIGS}
    print()
    print(report(results))
    write_results(results, args.json)
    failed = sum(results["configs"][c]["errors"] + results["configs"][c]["mismatches"] for c in CONFIGS)
    if failed:
        print(f"error: {failed} request(s) failed or differ from the single-request answer (see --json)",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
