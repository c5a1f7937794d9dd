"""Adapters served without `mftcoder merge`: one merged in memory, or several unmerged and chosen per request by
the `model` field, each answering as `mftcoder generate --adapter` does, even when mixed in one batch."""
import asyncio

import httpx
import pytest
import torch

from mftcoder.infer.engine import GenerationSettings, generate_texts
from mftcoder.infer.prompts import render_messages
from mftcoder.model.inference import load_for_inference
from mftcoder.serve.loading import parse_adapters
from serve_helpers import chat_body, start_server

PROMPTS = ["Write a function that adds two numbers.", "Reverse a string.", "hello there"]


def make_adapter(base_dir: str, out_dir: str, seed: int) -> str:
    """A LoRA adapter with random (non-zero) weights, saved by peft with the base's tokenizer and chat template."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def adapters(tiny_chat_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_chat_model_dir, str(root / name), seed) for name, seed in (("sql", 1), ("py", 2))}


def expected(base_dir: str, adapter: str | None, max_tokens: int) -> list[str]:
    model, tok = load_for_inference(base_dir, adapter, threads=1)
    prompts = [render_messages(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    return [t[0] for t in generate_texts(model, tok, prompts, GenerationSettings(max_new_tokens=max_tokens),
                                         progress=False).texts]


async def ask_all(server, requests: list[tuple[str, str]], max_tokens: int) -> list[str]:
    async with httpx.AsyncClient(timeout=120) as http:
        async def one(model: str, prompt: str) -> str:
            reply = await http.post(f"{server.api}/chat/completions",
                                    json=chat_body(model, prompt, max_tokens=max_tokens, temperature=0))
            assert reply.status_code == 200, reply.text
            return reply.json()["choices"][0]["message"]["content"]

        return await asyncio.gather(*(one(m, p) for m, p in requests))


def test_named_adapters_are_chosen_per_request(tiny_chat_model_dir, adapters, tmp_path):
    args = ["--served_model_name", "base", "--batch_wait_ms", "50"]
    for name, path in adapters.items():
        args += ["--adapter", f"{name}={path}"]
    with start_server(tiny_chat_model_dir, *args, log_dir=str(tmp_path)) as server:
        names = [m["id"] for m in httpx.get(f"{server.api}/models", timeout=30).json()["data"]]
        assert names == ["base", "sql", "py"]
        mixed = [(name, prompt) for prompt in PROMPTS for name in names]  # interleaved: batches must split by model
        answers = asyncio.run(ask_all(server, mixed, max_tokens=12))
    reference = {"base": expected(tiny_chat_model_dir, None, 12)}
    reference |= {name: expected(tiny_chat_model_dir, path, 12) for name, path in adapters.items()}
    assert answers == [reference[name][PROMPTS.index(prompt)] for name, prompt in mixed]
    assert reference["sql"] != reference["base"] and reference["py"] != reference["sql"]  # the adapters matter


def test_one_plain_adapter_is_merged_and_named_after_its_folder(tiny_chat_model_dir, adapters, tmp_path):
    with start_server(tiny_chat_model_dir, "--adapter", adapters["py"], log_dir=str(tmp_path)) as server:
        names = [m["id"] for m in httpx.get(f"{server.api}/models", timeout=30).json()["data"]]
        answers = asyncio.run(ask_all(server, [("py", p) for p in PROMPTS], max_tokens=12))
    assert names == ["py"] and answers == expected(tiny_chat_model_dir, adapters["py"], 12)


def test_adapter_option_errors(tmp_path):
    (tmp_path / "a").mkdir()
    assert parse_adapters([]) == ({}, False)
    assert parse_adapters([str(tmp_path / "a")]) == ({"a": str(tmp_path / "a")}, False)
    assert parse_adapters(["x=d1", "y=d2"]) == ({"x": "d1", "y": "d2"}, True)
    with pytest.raises(ValueError, match="give every adapter as NAME=DIR"):
        parse_adapters(["x=d1", str(tmp_path / "a")])
    with pytest.raises(ValueError, match="several adapters need names"):
        parse_adapters(["d1", "d2"])
    with pytest.raises(ValueError, match="'x' is given twice"):
        parse_adapters(["x=d1", "x=d2"])
    with pytest.raises(ValueError, match="must be letters"):
        parse_adapters(["a b=d1"])
