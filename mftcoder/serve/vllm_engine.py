"""`mftcoder serve --engine vllm`: the same routes, decoded by vLLM's async engine (continuous batching, paged KV).

The HTTP side does not change: the Service renders and tokenises every prompt exactly as for the transformers
engine, and `VllmScheduler` hands each Job to vLLM as token ids, then turns vLLM's outputs into the same
Delta/Finished/Failed events. vLLM batches on its own, continuously, so `--max_batch_size` and `--batch_wait_ms` do
not apply; `--max_queue` still bounds admission (429 past it). LoRA adapters go through vLLM's LoRA support: one
plain `--adapter DIR` is served under its folder name, `--adapter NAME=DIR` each under NAME (and the base under the
model's name), every adapter its own LoRARequest. vLLM applies only the low-rank matrices, so an adapter that also
trained whole modules (modules_to_save, resized embeddings) needs `mftcoder merge` first.

Verified (on a CPU machine without vllm): the capability check and the start-up refusal
(`error: ...`, exit 2, before anything loads), and the pure helpers that map sampling fields, finish reasons,
LoRA ranks and streamed texts (tests/test_serve_vllm.py). Not verified: the GPU path (building the engine,
generate, abort, LoRA requests). It is written against vLLM's stable names (`AsyncLLMEngine.from_engine_args`,
`AsyncEngineArgs`, `SamplingParams`, `LoRARequest(name, int_id, path)`, `generate(prompt, params, request_id,
lora_request=...)`, `abort(request_id)`, `RequestOutput.outputs[i].index/.text/.token_ids/.finish_reason`) as
documented for vLLM 0.4 through the V1 engine, but it has not been run against vLLM.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from mftcoder.serve.scheduler import Admission, Delta, Failed, Finished, Job, Sampling, held_back
from mftcoder.serve.service import Limits, ServedModel, Service

log = logging.getLogger(__name__)

FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "cancelled"}  # vLLM's -> ours (OpenAI's)
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
CANCEL_POLL_S = 0.05  # how often a running job looks at its cancelled flag (a threading.Event)
FALLBACK = "or use the default --engine transformers, which works everywhere (CPU or GPU)"


# ---------------------------------------------------------------------------------------------- capability
def vllm_available() -> str | None:
    """None when vllm imports and torch sees a CUDA GPU; else one line saying what is missing and how to get it."""
    import torch

    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("the vllm package is not installed")
    if not torch.cuda.is_available():
        missing.append("torch sees no CUDA GPU")
    if missing:
        return (f"--engine vllm needs the vllm package and a CUDA GPU, but {' and '.join(missing)}: run "
                f"`pip install vllm` on a machine with an NVIDIA GPU and CUDA, "
                f"{FALLBACK}")
    try:
        importlib.import_module("vllm")
    except Exception as e:  # installed but broken (a torch/CUDA mismatch, say)
        return (f"--engine vllm: vllm is installed but does not import ({type(e).__name__}: {e}); reinstall it with "
                f"`pip install vllm` on a machine with an NVIDIA GPU and CUDA, {FALLBACK}")
    return None


# ---------------------------------------------------------------------------------------------- pure helpers
def finish_reason(vllm_reason: str | None) -> str:
    """Ours ("stop" | "length" | "cancelled") for vLLM's finish_reason; ValueError for one we cannot report."""
    if vllm_reason not in FINISH_REASONS:
        raise ValueError(f"vLLM ended a choice with finish_reason {vllm_reason!r}; expected one of "
                         f"{', '.join(FINISH_REASONS)}")
    return FINISH_REASONS[vllm_reason]


def sampling_fields(sampling: Sampling, stop_token_ids: Sequence[int] = ()) -> dict:
    """The keyword arguments of vllm.SamplingParams for a job's sampling (vLLM derives the n choices' randomness
    from the one seed; None: a fresh draw per request)."""
    return {"n": sampling.n, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens, "stop": list(sampling.stop), "seed": sampling.seed,
            "stop_token_ids": list(stop_token_ids), "skip_special_tokens": True}


def lora_rank_cap(ranks: Iterable[int]) -> int:
    """vLLM's max_lora_rank for adapters of these ranks: the smallest value it accepts that covers them all."""
    top = max(ranks, default=1)
    for cap in LORA_RANKS:
        if cap >= top:
            return cap
    raise ValueError(f"--adapter: a LoRA rank of {top} is more than vLLM serves (at most {LORA_RANKS[-1]}); "
                     "merge it with `mftcoder merge` and serve the merged model")


def adapter_rank(adapter_dir: str) -> int:
    path = os.path.join(adapter_dir, "adapter_config.json")
    with open(path, encoding="utf-8") as f:
        rank = json.load(f).get("r")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{path}: `r` (the LoRA rank) must be a positive integer, got {rank!r}")
    return rank


def generation_eos(model_dir: str) -> list[int]:
    """eos ids of the model's generation_config.json (vLLM may not read it; the transformers engine does)."""
    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        eos = json.load(f).get("eos_token_id")
    eos = eos if isinstance(eos, list) else [eos]
    return [i for i in eos if isinstance(i, int)]


def stop_ids(tokenizer_eos: int | None, generation_ids: Sequence[int]) -> list[int]:
    """The token ids that end an answer: the tokenizer's eos (the chat template's end of turn after training) plus
    the generation config's, as the transformers engine stops on both."""
    return sorted({*generation_ids, *([tokenizer_eos] if isinstance(tokenizer_eos, int) else [])})


class ChoiceStreams:
    """The n choices of one job as vLLM reports them. Each output carries a choice's whole text so far: what is new
    and certain becomes a Delta (a possible stop-string start or a broken UTF-8 character waits), and its
    finish_reason a Finished carrying the whole answer."""

    def __init__(self, n: int, stops: Sequence[str] = ()):
        self.stops = stops
        self.sent = [""] * n
        self.tokens = [0] * n
        self.open = set(range(n))

    def update(self, index: int, text: str, tokens: int, reason: str | None) -> list:
        if index not in self.open:
            return []
        self.tokens[index] = tokens
        if reason is None:
            return self._extend(index, text[:len(text) - held_back(text, self.stops)])
        ours = finish_reason(reason)
        events = self._extend(index, text)
        self.open.discard(index)
        return events + [Finished(index, ours, text, tokens)]

    def _extend(self, index: int, text: str) -> list:
        sent = self.sent[index]
        if len(text) <= len(sent) or not text.startswith(sent):
            return []
        self.sent[index] = text
        return [Delta(index, text[len(sent):])]

    def close(self) -> list:
        """Finished("cancelled") for every choice vLLM left open (an aborted request's stream may just end)."""
        events = [Finished(i, "cancelled", self.sent[i], self.tokens[i]) for i in sorted(self.open)]
        self.open.clear()
        return events


# ---------------------------------------------------------------------------------------------- the scheduler
@dataclass(frozen=True)
class Route:
    """What a served name means to vLLM: its LoRARequest (None: the base) and the token ids that end an answer."""

    lora: Any
    stop_token_ids: tuple[int, ...]


@dataclass(frozen=True)
class VllmModelConfig:
    max_position_embeddings: int


@dataclass(frozen=True)
class VllmModel:
    """ServedModel.model for vLLM: the Service reads only the context length (vLLM's max_model_len)."""

    config: VllmModelConfig


class VllmScheduler:
    """Scheduler's interface over vLLM's async engine, which runs on its own asyncio loop in its own thread."""

    def __init__(self, make_engine: Callable[[], Any], max_pending: int = 64):
        self.routes: dict[str, Route] = {}
        self._lock = threading.RLock()  # _forget may run inside submit
        self.admission = Admission(max_pending, self._lock)
        self._futures: set[concurrent.futures.Future] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mftcoder-vllm", daemon=True)
        self._thread.start()
        try:  # built on its loop, so whatever vLLM binds to the running loop binds to this one
            self.engine = self._on_loop(_call_async(make_engine))
        except BaseException:
            self._close_loop(None)
            raise

    def _on_loop(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def pending(self) -> int:
        return self.admission.pending

    def stats(self) -> dict:
        """What GET /health reports (vLLM keeps its own batching statistics)."""
        return {"pending": self.admission.pending, "cancelled": self.admission.cancelled, "engine": "vllm"}

    def context_length(self) -> int:
        config = getattr(self.engine, "model_config", None)  # AsyncLLM (V1); the older engine answers on its loop
        if config is None:
            config = self._on_loop(self.engine.get_model_config())
        return int(config.max_model_len)

    def start(self) -> "VllmScheduler":
        return self  # the loop already runs (the engine was built on it)

    def submit(self, job: Job) -> None:
        with self._lock:
            self.admission.admit(job)
            future = asyncio.run_coroutine_threadsafe(self._run(job), self._loop)
            self._futures.add(future)  # under the lock: stop() waits for every job it admitted
            future.add_done_callback(self._forget)

    def _forget(self, future) -> None:
        with self._lock:
            self._futures.discard(future)

    async def _run(self, job: Job) -> None:
        streams = ChoiceStreams(job.sampling.n, job.sampling.stop)
        request_id = uuid.uuid4().hex
        consumer = asyncio.ensure_future(self._consume(job, request_id, streams))
        try:
            while not consumer.done():
                if job.cancelled.is_set():
                    consumer.cancel()  # vLLM aborts a request whose generate() is cancelled; abort() makes sure
                    with contextlib.suppress(Exception):
                        await self.engine.abort(request_id)
                    break
                await asyncio.wait({consumer}, timeout=CANCEL_POLL_S)
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        except Exception as e:  # one failed request must not end the loop: its client gets the error
            log.exception("vLLM request %s failed", request_id)
            job.sink(Failed(f"{type(e).__name__}: {e}"))
            return
        for event in streams.close():
            job.sink(event)

    async def _consume(self, job: Job, request_id: str, streams: ChoiceStreams) -> None:
        route = self.routes[job.model.name]
        outputs = self.engine.generate({"prompt_token_ids": list(job.prompt_ids)}, self.sampling_params(job, route),
                                       request_id, lora_request=route.lora)
        async for output in outputs:
            for choice in output.outputs:
                for event in streams.update(choice.index, choice.text, len(choice.token_ids), choice.finish_reason):
                    job.sink(event)

    def sampling_params(self, job: Job, route: Route):
        from vllm import SamplingParams

        return SamplingParams(**sampling_fields(job.sampling, route.stop_token_ids))

    def stop(self, timeout: float | None = None) -> None:
        """Finish the jobs already admitted, then shut the engine and its loop down."""
        with self._lock:
            self.admission.stopping = True
            futures = list(self._futures)
        concurrent.futures.wait(futures, timeout)
        self._close_loop(timeout)

    def _close_loop(self, timeout: float | None) -> None:
        shutdown = getattr(getattr(self, "engine", None), "shutdown", None)
        if shutdown is not None:
            with contextlib.suppress(Exception):
                shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)


async def _call_async(function: Callable[[], Any]) -> Any:
    return function()


# ---------------------------------------------------------------------------------------------- loading
def served_adapters(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(served name, adapter dir or None for the base) in serving order, named as the transformers engine names."""
    from mftcoder.model.adapters import find_adapter_dir
    from mftcoder.serve.loading import folder_name, parse_adapters

    adapters, named = parse_adapters(args.adapter)
    if not named:
        if not adapters:
            return [(args.served_model_name or folder_name(args.model), None)]
        return [(args.served_model_name or folder_name(args.adapter[0]), find_adapter_dir(args.adapter[0]))]
    base = args.served_model_name or folder_name(args.model)
    if base in adapters:
        raise ValueError(f"--adapter: the name {base!r} is the base model's; choose another or set "
                         "--served_model_name")
    return [(base, None)] + [(name, find_adapter_dir(path)) for name, path in adapters.items()]


def engine_kwargs(args: argparse.Namespace, plan: list[tuple[str, str | None]]) -> dict:
    """AsyncEngineArgs' keyword arguments. A single adapter with its own tokenizer lends it to vLLM too."""
    from mftcoder.model.tokenizer import has_tokenizer_files

    adapter_dirs = [d for _, d in plan if d]
    tokenizer = adapter_dirs[0] if len(plan) == 1 and adapter_dirs and has_tokenizer_files(adapter_dirs[0]) \
        else args.model
    kwargs = {"model": args.model, "tokenizer": tokenizer, "dtype": args.dtype}
    if adapter_dirs:
        kwargs.update(enable_lora=True, max_loras=len(adapter_dirs),
                      max_lora_rank=lora_rank_cap(adapter_rank(d) for d in adapter_dirs))
    return kwargs


def vllm_service(args: argparse.Namespace, limits: Limits) -> Service:
    problem = vllm_available()
    if problem:
        raise ValueError(problem)
    if args.device not in ("auto", "cuda"):
        raise ValueError(f"--device {args.device}: --engine vllm runs on the GPUs vLLM is given; use --device auto "
                         "and choose GPUs with CUDA_VISIBLE_DEVICES")
    from vllm import AsyncEngineArgs, AsyncLLMEngine
    from vllm.lora.request import LoRARequest

    from mftcoder.model.tokenizer import load_tokenizer

    plan = served_adapters(args)
    tokenizers = [load_tokenizer(args.model, adapter=d, padding_side="left", require_fast=False) for _, d in plan]
    engine_args = AsyncEngineArgs(**engine_kwargs(args, plan))
    scheduler = VllmScheduler(lambda: AsyncLLMEngine.from_engine_args(engine_args), max_pending=args.max_queue)
    model = VllmModel(VllmModelConfig(scheduler.context_length()))
    eos = generation_eos(args.model)
    served = []
    for lora_id, ((name, adapter), tokenizer) in enumerate(zip(plan, tokenizers), start=1):
        lora = LoRARequest(name, lora_id, adapter) if adapter else None
        scheduler.routes[name] = Route(lora, tuple(stop_ids(tokenizer.eos_token_id, eos)))
        served.append(ServedModel(name, model, tokenizer, adapter=name if adapter else None))
    return Service(served, scheduler, limits)
