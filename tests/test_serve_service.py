"""The model side of a request, in-process: prompts rendered as training renders them, limits named in errors."""
import pytest

from mftcoder.infer.prompts import render_messages
from mftcoder.model.tokenizer import load_tokenizer
from mftcoder.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest
from mftcoder.serve.scheduler import Scheduler
from mftcoder.serve.service import Limits, ServedModel, Service


class Config:
    max_position_embeddings = 512


class Model:  # only the config is read before a job is submitted
    config = Config()


def service(model_dir: str, **limits) -> Service:
    return Service([ServedModel("m", Model(), load_tokenizer(model_dir, padding_side="left"))], Scheduler(),
                   Limits(**limits))


def chat(content, **fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": content}], **fields)


def test_chat_prompt_is_the_training_rendering(tiny_chat_model_dir):
    svc = service(tiny_chat_model_dir)
    tok = svc.models["m"].tokenizer
    request = ChatCompletionRequest(model="m", messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Sort "}, {"type": "text", "text": "a list."}]}])
    text = render_messages(tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort a list."}])
    assert svc.chat_prompt(svc.models["m"], request) == tok(text, add_special_tokens=False)["input_ids"]
    assert text.startswith("<s>system\nBe brief.\n<s>human\nSort a list.")


def test_chat_needs_a_template_and_a_user_turn_last(tiny_model_dir, tiny_chat_model_dir):
    with pytest.raises(APIError, match="no chat template.*/v1/completions") as info:
        plain = service(tiny_model_dir)
        plain.chat_prompt(plain.models["m"], chat("hi"))
    assert info.value.status == 400 and info.value.param == "messages"
    svc = service(tiny_chat_model_dir)
    reply_last = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": "hello"}])
    with pytest.raises(APIError, match="the last message must be the user's"):
        svc.chat_prompt(svc.models["m"], reply_last)
    with pytest.raises(APIError, match="empty"):
        svc.chat_prompt(svc.models["m"], chat("   "))


def test_limits_name_the_option_and_default_max_tokens(tiny_chat_model_dir):
    svc = service(tiny_chat_model_dir, max_tokens=100, max_n=2)
    capped = service(tiny_chat_model_dir, max_prompt_tokens=50)
    served = svc.models["m"]
    assert svc.sampling(served, chat("hi"), 20).max_tokens == 100  # none asked: the cap
    assert svc.sampling(served, chat("hi"), 480).max_tokens == 32  # ... or what the context leaves
    for where, request, prompt, pattern in [
            (svc, chat("hi", max_tokens=101), 5, r"at most 100 \(--max_tokens\)"),
            (svc, chat("hi", n=3, temperature=1), 5, r"at most 2 \(--max_n\)"),
            (capped, chat("hi"), 51, r"at most 50 \(--max_prompt_tokens\)"),
            (svc, chat("hi"), 512, "leaves no room for an answer in the model's context of 512"),
            (svc, chat("hi", max_tokens=40), 480, "exceeds the model's context of 512")]:
        with pytest.raises(APIError, match=pattern) as info:
            where.sampling(served, request, prompt)
        assert info.value.status == 400
    with pytest.raises(ValueError, match="--max_n must be >= 1"):
        Limits(max_n=0)


def test_refused_openai_fields_are_named():
    for fields, pattern in [({"presence_penalty": 0.5}, "presence_penalty is not supported"),
                            ({"logit_bias": {"5": 1}}, "logit_bias is not supported"),
                            ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4 stop sequences"),
                            ({"temperature": 3}, "less than or equal to 2"),
                            ({"logprobs": True}, "logprobs is not supported"),
                            ({"tools": [{"type": "function"}]}, "tools is not supported"),
                            ({"tool_choice": "required"}, "tool calls are not supported"),
                            ({"response_format": {"type": "json_object"}}, "'json_object' is not supported")]:
        with pytest.raises(ValueError, match=pattern):
            chat("hi", **fields)
    assert chat("hi", presence_penalty=0, frequency_penalty=0, user="u1", logprobs=False, tools=[],
                tool_choice="none", response_format={"type": "text"}).stop is None
    with pytest.raises(ValueError, match="one prompt per request"):
        CompletionRequest(model="m", prompt=["a", "b"])
