"""The HTTP face of `mftcoder serve`: OpenAI's routes on FastAPI, the web chat at `/`, and the guards.

Routes: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (both with `stream`: server-sent
events ending in `data: [DONE]`), `GET /health`, `GET /` (the chat page). Every error, ours or the framework's
(unknown route, malformed JSON, a field out of range), is answered with OpenAI's error body and a 4xx/5xx status.
Guards: with an API key, a /v1 request without `Authorization: Bearer KEY` gets 401; a body larger than
`max_request_bytes` gets 413; past the scheduler's queue, 429. No route reads or writes a file a request names.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from importlib import resources

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mftcoder.serve import protocol
from mftcoder.serve.protocol import APIError, ChatCompletionRequest, ChatShape, CompletionRequest, CompletionShape
from mftcoder.serve.scheduler import Delta, Failed, Finished, Job
from mftcoder.serve.service import Service

log = logging.getLogger(__name__)
DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks that its client is still there


# ---------------------------------------------------------------------------------------------- guards
def error_response(error: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status == 429 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class Guard:
    """ASGI middleware: the API key on /v1 routes and the request size cap, before any route runs."""

    def __init__(self, app, api_key: str | None, max_request_bytes: int):
        self.app, self.api_key, self.max_bytes = app, api_key, max_request_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope["path"], headers)
        if refusal is not None:
            return await error_response(refusal)(scope, receive, send)
        await self.app(scope, self._counting(receive), send)

    def _refusal(self, path: str, headers: dict) -> APIError | None:
        if self.api_key and path.startswith("/v1"):
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return APIError(401, "a valid API key is needed: send the header 'Authorization: Bearer <key>'",
                                code="invalid_api_key", type="authentication_error")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body is larger than {self.max_bytes} bytes (--max_request_bytes)",
                        code="request_too_large")

    def _counting(self, receive):
        """A body sent without Content-Length (chunked) is cut off at the cap too."""
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, self._too_large().message)
            return message

        return counted


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """(message, param) of the first problem, e.g. ("max_tokens: Input should be greater than or equal to 1")."""
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    path = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(path) or None
    return (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))), param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(APIError(400, message, param=param))

    @app.exception_handler(Exception)
    async def crash(request, exc: Exception):  # logged by the server; the client gets the error shape
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        message = exc.detail if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
        return error_response(APIError(exc.status_code, str(message)))


# ---------------------------------------------------------------------------------------------- the bridge
def submit(service: Service, served, prompt_ids: list[int], sampling, stream: bool) -> tuple[Job, asyncio.Queue]:
    """Admit a job; its events arrive on the returned queue (put there from the worker thread)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def sink(event):
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening any more
            loop.call_soon_threadsafe(events.put_nowait, event)

    job = Job(served, prompt_ids, sampling, sink, stream=stream)
    service.submit(job)
    return job, events


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Poll the connection of a non-streaming request; a client that went away cancels its job."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
    job.cancel()


async def collect(request: Request, job: Job, events: asyncio.Queue) -> list[Finished]:
    """Every choice's Finished event, in choice order; the job is cancelled if the client goes away first."""
    finished: dict[int, Finished] = {}
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
    try:
        while len(finished) < job.sampling.n:
            event = await events.get()
            if isinstance(event, Failed):
                raise APIError(500, f"generation failed: {event.message}")
            if isinstance(event, Finished):
                finished[event.choice] = event
    finally:
        watcher.cancel()
        if len(finished) < job.sampling.n:
            job.cancel()
    if job.cancelled.is_set():
        raise APIError(499, "the client closed the connection", code="client_closed_request")
    return [finished[i] for i in range(job.sampling.n)]


def sse(payload) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


async def stream_events(shape, rid: str, name: str, job: Job, events: asyncio.Queue, prompt_tokens: int,
                        include_usage: bool):
    """The server-sent events of one streaming request; leaving early (client gone) cancels the job."""
    try:
        if shape.opening:
            for index in range(job.sampling.n):
                yield sse(shape.opening(rid, name, index))
        done, tokens = 0, 0
        while done < job.sampling.n:
            event = await events.get()
            if isinstance(event, Failed):
                yield sse(APIError(500, f"generation failed: {event.message}").body())
                return
            if isinstance(event, Delta):
                yield sse(shape.delta(rid, name, event.choice, event.text))
            elif isinstance(event, Finished):
                done, tokens = done + 1, tokens + event.tokens
                yield sse(shape.closing(rid, name, event.choice, event.reason))
        if include_usage:
            yield sse(protocol.usage_chunk(rid, name, shape.object_name, protocol.usage(prompt_tokens, tokens)))
        yield sse("[DONE]")
    finally:
        job.cancel()  # a no-op once every choice has finished


async def answer(service: Service, shape, request, raw: Request, served, prompt_ids: list[int]):
    sampling = service.sampling(served, request, len(prompt_ids))
    job, events = submit(service, served, prompt_ids, sampling, request.stream)
    rid = protocol.new_id(shape.id_prefix)
    if request.stream:
        return StreamingResponse(stream_events(shape, rid, served.name, job, events, len(prompt_ids),
                                               request.include_usage()),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    finished = await collect(raw, job, events)
    use = protocol.usage(len(prompt_ids), sum(f.tokens for f in finished))
    return shape.response(rid, served.name, [f.text for f in finished], [f.reason for f in finished], use)


# ---------------------------------------------------------------------------------------------- the app
def chat_page() -> str:
    return (resources.files("mftcoder.serve") / "static" / "chat.html").read_text(encoding="utf-8")


def create_app(service: Service, api_key: str | None = None) -> FastAPI:
    """The app; the scheduler's worker runs while the app does (started and stopped by its lifespan)."""
    started = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.scheduler.start()
        yield
        await asyncio.to_thread(service.scheduler.stop)  # uvicorn has let in-flight requests finish first

    app = FastAPI(title="mftcoder serve", lifespan=lifespan, docs_url=None, redoc_url=None)  # docs pull CDN assets
    _install_error_handlers(app)
    app.add_middleware(Guard, api_key=api_key, max_request_bytes=service.limits.max_request_bytes)
    page = chat_page()

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": service.names, **service.scheduler.stats()}

    @app.get("/v1/models")
    async def models():
        return protocol.model_list(service.names, started)

    @app.post("/v1/chat/completions")
    async def chat(request: ChatCompletionRequest, raw: Request):
        served = service.model(request.model)
        return await answer(service, ChatShape, request, raw, served, service.chat_prompt(served, request))

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest, raw: Request):
        served = service.model(request.model)
        return await answer(service, CompletionShape, request, raw, served, service.text_prompt(served, request))

    return app
