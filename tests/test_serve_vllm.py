"""`mftcoder serve --engine vllm` where vLLM cannot run (no vllm, no CUDA GPU): a clear refusal before anything
loads; and the engine's pure parts (sampling fields, finish reasons, LoRA ranks, streamed texts, serving names).

The scheduler test drives VllmScheduler with a stand-in engine that speaks vLLM's documented async interface
(generate yields RequestOutput-shaped objects with cumulative texts; abort(request_id)); it checks our threading,
cancelling and admission, not vLLM itself, which needs a GPU (see mftcoder/serve/vllm_engine.py).
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from mftcoder.serve.scheduler import Delta, Failed, Finished, Job, QueueFull, Sampling
from mftcoder.serve.vllm_engine import (ChoiceStreams, Route, VllmScheduler, engine_kwargs, finish_reason,
                                        lora_rank_cap, sampling_fields, served_adapters, stop_ids, vllm_available)

NO_VLLM = vllm_available() is not None


@pytest.mark.skipif(not NO_VLLM, reason="vllm and a CUDA GPU are present here")
def test_serve_engine_vllm_refuses_with_one_error_line(tiny_chat_model_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mftcoder", "serve", "--model", tiny_chat_model_dir, "--port", "0",
                           "--engine", "vllm"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --engine vllm needs the vllm package and a CUDA GPU"), \
        done.stderr
    assert "pip install vllm" in lines[0] and "--engine transformers" in lines[0]
    assert "mftcoder serve:" not in done.stdout + done.stderr  # it never started serving
    assert time.monotonic() - started < 60


@pytest.mark.skipif(not NO_VLLM, reason="vllm and a CUDA GPU are present here")
def test_vllm_available_names_what_is_missing():
    import importlib.util

    import torch

    reason = vllm_available()
    assert "\n" not in reason and "--engine transformers" in reason and "NVIDIA GPU and CUDA" in reason
    assert ("vllm package is not installed" in reason) == (importlib.util.find_spec("vllm") is None)
    assert ("no CUDA GPU" in reason) == (not torch.cuda.is_available())


def test_sampling_fields_and_finish_reasons():
    sampling = Sampling(max_tokens=17, temperature=0.7, top_p=0.9, n=3, stop=("\n\n", "```"), seed=11)
    assert sampling_fields(sampling, (2, 7)) == {
        "n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 17, "stop": ["\n\n", "```"], "seed": 11,
        "stop_token_ids": [2, 7], "skip_special_tokens": True}
    assert sampling_fields(Sampling(max_tokens=1))["seed"] is None
    assert [finish_reason(r) for r in ("stop", "length", "abort")] == ["stop", "length", "cancelled"]
    with pytest.raises(ValueError, match="finish_reason 'error'; expected one of stop, length, abort"):
        finish_reason("error")
    assert stop_ids(5, [2, 5]) == [2, 5] and stop_ids(None, []) == []


def test_lora_rank_cap_rounds_up_to_a_rank_vllm_accepts():
    assert [lora_rank_cap([r]) for r in (1, 8, 9, 16, 33, 512)] == [8, 8, 16, 16, 64, 512]
    assert lora_rank_cap([4, 64, 16]) == 64
    with pytest.raises(ValueError, match="rank of 1024.*mftcoder merge"):
        lora_rank_cap([1024])


def test_choice_streams_send_certain_text_once_and_the_whole_answer_at_the_end():
    streams = ChoiceStreams(2, stops=("```",))
    events = []
    for index, text, tokens, reason in [(0, "def f", 2, None), (1, "x", 1, None), (0, "def f():`", 4, None),
                                        (0, "def f():`", 4, None), (1, "x\ufffd", 2, None),
                                        (0, "def f(): pass", 6, "stop"), (1, "xé", 3, "length"),
                                        (1, "ignored", 9, None)]:
        events += streams.update(index, text, tokens, reason)
    assert events == [Delta(0, "def f"), Delta(1, "x"), Delta(0, "():"), Delta(0, " pass"),
                      Finished(0, "stop", "def f(): pass", 6), Delta(1, "é"), Finished(1, "length", "xé", 3)]
    assert streams.close() == []


def test_choice_streams_close_cancels_what_vllm_left_open():
    streams = ChoiceStreams(3)
    streams.update(0, "a", 1, None)
    streams.update(1, "bb", 2, "abort")
    assert streams.close() == [Finished(0, "cancelled", "a", 1), Finished(2, "cancelled", "", 0)]


def _args(model, adapters=(), name=None):
    return argparse.Namespace(model=model, adapter=list(adapters), served_model_name=name, dtype="bfloat16")


def _adapter(tmp_path, name, rank):
    path = tmp_path / name
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    return str(path)


def test_served_names_and_engine_arguments_follow_the_transformers_engine(tmp_path):
    model = str(tmp_path / "base")
    sql, py = _adapter(tmp_path, "sql-run", 4), _adapter(tmp_path, "py-run", 32)
    assert served_adapters(_args(model)) == [("base", None)]
    assert served_adapters(_args(model, [sql], name="demo")) == [("demo", sql)]
    plan = served_adapters(_args(model, [f"sql={sql}", f"py={py}"]))
    assert plan == [("base", None), ("sql", sql), ("py", py)]
    assert engine_kwargs(_args(model, [f"sql={sql}", f"py={py}"]), plan) == {
        "model": model, "tokenizer": model, "dtype": "bfloat16", "enable_lora": True, "max_loras": 2,
        "max_lora_rank": 32}
    assert engine_kwargs(_args(model), [("base", None)]) == {"model": model, "tokenizer": model, "dtype": "bfloat16"}
    with pytest.raises(ValueError, match="the name 'base' is the base model's"):
        served_adapters(_args(model, [f"base={sql}"]))


# ---------------------------------------------------------------------------------------------- the scheduler
class StandInEngine:
    """vLLM's async interface, as documented: generate() yields outputs with each choice's cumulative text."""

    def __init__(self):
        self.aborted, self.requests = [], []
        self.release = asyncio.Event()

    def generate(self, prompt, params, request_id, lora_request=None):
        self.requests.append((prompt, params, lora_request))
        return self._outputs(params, request_id)

    async def _outputs(self, params, request_id):
        if params.get("max_tokens") == 99:  # a request that waits until released (or aborted)
            await self.release.wait()
        if params.get("max_tokens") == 13:
            raise RuntimeError("the engine fell over")
        for step in (1, 2):
            yield SimpleNamespace(outputs=[
                SimpleNamespace(index=i, text=f"c{i}" * step, token_ids=[0] * step,
                                finish_reason=None if step == 1 else "length") for i in range(params["n"])])

    async def abort(self, request_id):
        self.aborted.append(request_id)


class StandInScheduler(VllmScheduler):
    def sampling_params(self, job, route):
        return sampling_fields(job.sampling, route.stop_token_ids)


def _job(n=1, max_tokens=2):
    events, done = [], threading.Event()

    def sink(event):
        events.append(event)
        if isinstance(event, Failed) or sum(isinstance(e, Finished) for e in events) == n:
            done.set()

    job = Job(SimpleNamespace(name="tiny"), [1, 2, 3], Sampling(max_tokens=max_tokens, n=n), sink)
    return job, events, done


def test_vllm_scheduler_streams_cancels_fails_and_bounds_the_queue():
    engine = StandInEngine()
    scheduler = StandInScheduler(lambda: engine, max_pending=2).start()
    scheduler.routes["tiny"] = Route("lora-sql", (2,))
    try:
        job, events, done = _job(n=2)
        scheduler.submit(job)
        assert done.wait(10)
        assert events == [Delta(0, "c0"), Delta(1, "c1"), Delta(0, "c0"), Finished(0, "length", "c0c0", 2),
                          Delta(1, "c1"), Finished(1, "length", "c1c1", 2)]
        prompt, params, lora = engine.requests[0]
        assert prompt == {"prompt_token_ids": [1, 2, 3]} and params["stop_token_ids"] == [2] and lora == "lora-sql"

        waiting, waiting_events, waiting_done = _job(max_tokens=99)
        scheduler.submit(waiting)
        scheduler.submit(_job(max_tokens=99)[0])
        with pytest.raises(QueueFull, match="--max_queue 2"):
            scheduler.submit(_job()[0])
        waiting.cancel()
        assert waiting_done.wait(10) and waiting_events == [Finished(0, "cancelled", "", 0)]
        assert len(engine.aborted) == 1 and scheduler.pending == 1

        failing, failing_events, failing_done = _job(max_tokens=13)
        scheduler.submit(failing)
        assert failing_done.wait(10) and failing_events == [Failed("RuntimeError: the engine fell over")]
        scheduler._loop.call_soon_threadsafe(engine.release.set)
    finally:
        scheduler.stop(10)
    assert scheduler.pending == 0 and not scheduler._thread.is_alive()
    assert scheduler.stats() == {"pending": 0, "cancelled": 1, "engine": "vllm"}
    with pytest.raises(QueueFull, match="shutting down"):
        scheduler.submit(_job()[0])
