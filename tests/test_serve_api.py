"""`mftcoder serve` over real HTTP, with the official openai client and httpx: the answers equal `mftcoder
generate`'s, streaming equals non-streaming, sampling fields work, bad requests get OpenAI's error shape with a
4xx status, the server keeps serving, and 64 concurrent streams each get their own single-request answer."""
import asyncio
import json

import httpx
import openai
import pytest

from mftcoder.infer import generate as generate_cli
from mftcoder.infer.engine import GenerationSettings, generate_texts
from mftcoder.infer.prompts import render_messages
from mftcoder.model.inference import load_for_inference
from serve_helpers import chat_body, post, start_server

KEY = "sk-test-1234"
NAME = "tiny"


@pytest.fixture(scope="module")
def server(tiny_chat_model_dir, tmp_path_factory):
    args = ("--served_model_name", NAME, "--api_key", KEY, "--max_batch_size", "16", "--batch_wait_ms", "20",
            "--max_prompt_tokens", "200", "--max_request_bytes", "20000", "--max_tokens", "256")
    with start_server(tiny_chat_model_dir, *args, log_dir=str(tmp_path_factory.mktemp("serve"))) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.api, api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(tiny_chat_model_dir):
    return load_for_inference(tiny_chat_model_dir, threads=1)


def auth():
    return {"Authorization": f"Bearer {KEY}"}


def single_answer(local, content: str, max_tokens: int) -> tuple[str, int]:
    model, tok = local
    prompt = render_messages(tok, [{"role": "user", "content": content}])
    out = generate_texts(model, tok, [prompt], GenerationSettings(max_new_tokens=max_tokens, batch_size=1),
                         progress=False)
    return out.texts[0][0], out.new_tokens


def test_models_and_greedy_chat_equal_mftcoder_generate(server, client, local, tiny_chat_model_dir, tmp_path):
    assert [m.id for m in client.models.list().data] == [NAME]
    question = "Write a function that reverses a string."
    reply = client.chat.completions.create(model=NAME, messages=[{"role": "system", "content": "Be brief."},
                                                                 {"role": "user", "content": question}],
                                           max_tokens=24, temperature=0)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"system": "Be brief.", "prompt": question}) + "\n")
    assert generate_cli.main(["--model", tiny_chat_model_dir, "--input", str(src), "--output", str(out),
                              "--max_new_tokens", "24", "--no_progress"]) == 0
    assert reply.choices[0].message.content == json.loads(out.read_text())["output"]
    model, tok = local
    rendered = render_messages(tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}])
    assert reply.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert reply.usage.completion_tokens == single_answer(local, question, 24)[1]


def test_text_completion_equals_generate_raw(client, local):
    model, tok = local
    out = generate_texts(model, tok, ["def add_3(a, b):\n"], GenerationSettings(max_new_tokens=20), progress=False,
                         add_special_tokens=True)
    reply = client.completions.create(model=NAME, prompt="def add_3(a, b):\n", max_tokens=20, temperature=0)
    assert reply.choices[0].text == out.texts[0][0]
    assert reply.usage.completion_tokens == out.new_tokens


def test_streaming_equals_non_streaming_and_reports_usage(client):
    messages = [{"role": "user", "content": "List three sorting algorithms."}]
    whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=30, temperature=0)
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=30, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3 and "".join(pieces) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    text = list(client.completions.create(model=NAME, prompt="def", max_tokens=12, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in text) == client.completions.create(
        model=NAME, prompt="def", max_tokens=12, temperature=0).choices[0].text


def test_n_seed_and_stop(client):
    ask = dict(model=NAME, messages=[{"role": "user", "content": "Name a color."}], max_tokens=12)
    first = client.chat.completions.create(n=3, temperature=0.9, top_p=0.95, seed=42, **ask)
    again = client.chat.completions.create(n=3, temperature=0.9, top_p=0.95, seed=42, **ask)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1 and first.usage.completion_tokens == again.usage.completion_tokens <= 36
    greedy = client.chat.completions.create(temperature=0, **ask).choices[0].message.content
    stop = greedy[4:7]
    assert stop.strip() and greedy.find(stop) >= 4
    cut = client.chat.completions.create(temperature=0, stop=[stop, "never-seen"], **ask).choices[0]
    assert cut.message.content == greedy[:greedy.find(stop)] and cut.finish_reason == "stop"


@pytest.mark.parametrize("call, status, code", [
    (lambda c: c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}]), 404,
     "model_not_found"),
    (lambda c: c.chat.completions.create(model="../../etc/passwd", messages=[{"role": "user", "content": "hi"}]),
     404, "model_not_found"),  # a model is a served name, never a path the request names
    (lambda c: c.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=-5),
     400, None),
    (lambda c: c.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "word " * 400}]), 400,
     "context_length_exceeded"),
    (lambda c: c.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=9999),
     400, None),
    (lambda c: c.chat.completions.create(model=NAME, messages=[{"role": "assistant", "content": "hi"}]), 400, None),
    (lambda c: c.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], n=50,
                                         temperature=1), 400, None),
])
def test_bad_requests_get_the_openai_error_shape_and_the_server_goes_on(client, call, status, code):
    with pytest.raises(openai.APIStatusError) as info:
        call(client)
    assert info.value.status_code == status
    assert info.value.body["message"] and info.value.body["type"]
    assert info.value.body["code"] == code
    ok = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                        temperature=0)  # greedy "hi" runs on (sampled, eos may come first)
    assert ok.usage.completion_tokens == 2


def test_malformed_json_oversized_body_and_api_key(server):
    bad = httpx.post(f"{server.api}/chat/completions", content=b'{"model": "tiny", "messages": [', timeout=30,
                     headers=auth() | {"Content-Type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    huge = post(server, "chat/completions", chat_body(NAME, "x" * 30000), headers=auth())
    assert huge.status_code == 413 and "--max_request_bytes" in huge.json()["error"]["message"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        refused = post(server, "chat/completions", chat_body(NAME, "hi"), headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.api}/models", timeout=30).status_code == 401
    assert httpx.get(server.url + "/", timeout=30).status_code == 200  # the page itself holds no secret
    missing = httpx.get(f"{server.api}/engines", headers=auth(), timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "no route GET /v1/engines"


async def _stream_all(server, prompts: list[str], max_tokens: int) -> list[str]:
    async def one(http: httpx.AsyncClient, content: str) -> str:
        body = chat_body(NAME, content, max_tokens=max_tokens, temperature=0, stream=True)
        pieces, data = [], []
        async with http.stream("POST", f"{server.api}/chat/completions", json=body, headers=auth()) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    data.append(line[6:])
        assert data[-1] == "[DONE]"
        for payload in data[:-1]:
            pieces.append(json.loads(payload)["choices"][0]["delta"].get("content") or "")
        return "".join(pieces)

    limits = httpx.Limits(max_connections=len(prompts))
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        return await asyncio.gather(*(one(http, p) for p in prompts))


def test_64_concurrent_streams_each_get_their_single_request_answer(server, local):
    prompts = [f"Task {i}: write function number {i * 7 % 23} in Python." for i in range(64)]
    answers = asyncio.run(_stream_all(server, prompts, max_tokens=10))
    expected = [single_answer(local, p, 10)[0] for p in prompts]
    assert len(answers) == 64
    mismatched = [i for i, (a, e) in enumerate(zip(answers, expected)) if a != e]
    assert not mismatched
    assert len(set(answers)) > 10  # independent answers, not one answer copied around
    health = httpx.get(server.url + "/health", timeout=30).json()
    assert health["pending"] == 0 and health["largest_batch"] == 16  # they were decoded in dynamic batches
