"""ContinuousBatch: rows that join a decode in flight, at different steps and with different prompt lengths,
get exactly the tokens transformers' own greedy generate gives each of them alone; left columns nobody needs go."""
import pytest
import torch

from mftcoder.infer.continuous import ContinuousBatch, Row
from mftcoder.infer.engine import GenerationSettings
from mftcoder.model.inference import load_for_inference

PROMPTS = ["def add_1(a, b):\n" * 6, "The quick", "The quick brown fox number 7 jumps over", "def", "x = 1\ny = 2\n"]


def hf_greedy(model, tok, prompt: str, max_new_tokens: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                         pad_token_id=tok.pad_token_id)
    return out[0, ids.input_ids.shape[1]:].tolist()


@pytest.mark.parametrize("arch_dir", ["tiny_model_dir", "tiny_qwen2_dir"])
def test_rows_joining_at_different_steps_decode_as_alone(arch_dir, request):
    model, tok = load_for_inference(request.getfixturevalue(arch_dir), threads=1)
    lengths = [6, 14, 9, 12, 4]
    rows = [Row(tok(p, add_special_tokens=False)["input_ids"], GenerationSettings(max_new_tokens=n))
            for p, n in zip(PROMPTS, lengths)]
    batch = ContinuousBatch(model, eos_ids=[])
    joins_at = {0: [0, 1], 3: [2], 5: [3, 4]}  # step -> rows joining before it
    ended, widths = [], []
    with torch.inference_mode():
        for step in range(40):
            if step in joins_at:
                ended += batch.join([rows[i] for i in joins_at[step]])
            ended += batch.step()
            widths.append(None if batch.mask is None else batch.mask.shape[1])
    assert batch.size == 0 and sorted(map(id, ended)) == sorted(map(id, rows))
    for row, prompt, n in zip(rows, PROMPTS, lengths):
        assert row.ids == hf_greedy(model, tok, prompt, n) and row.reason == "length"
    # the long first prompt (60 tokens) leaves after its 6 tokens, at step 4: the padding it forced on the others
    # goes with it, and the cache is as wide as the longest row left
    assert widths[3] > 60 and widths[4] < 16


def test_eos_stop_and_tags(tiny_model_dir):
    model, tok = load_for_inference(tiny_model_dir, threads=1)
    prompt = tok(PROMPTS[1], add_special_tokens=False)["input_ids"]
    reference = hf_greedy(model, tok, PROMPTS[1], 8)
    batch = ContinuousBatch(model, eos_ids=[reference[3]])
    ends_at_eos = Row(prompt, GenerationSettings(max_new_tokens=8), tag="eos")
    stopped = Row(prompt, GenerationSettings(max_new_tokens=8), on_token=lambda ids: len(ids) == 2, tag="stop")
    with torch.inference_mode():
        done = batch.join([ends_at_eos, stopped])
        while batch.size:
            done += batch.step()
    assert [(r.tag, r.reason, r.ids) for r in done] == [("stop", "stop", reference[:2]),
                                                        ("eos", "eos", reference[:3])]
