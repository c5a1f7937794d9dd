"""Packing: every sample in exactly one single-task row within capacity, little waste, and packed samples that
cannot see each other in the model (packed forward == per-sample forward)."""
import numpy as np
import pytest
import torch

from mftcoder.data.collator import collate
from mftcoder.data.packing import build_units, packing_efficiency


def skewed_lengths(seed, count=300, seq_length=512, median=120):
    """Token counts (n, i.e. n-1 input positions) from a lognormal, clipped to [20, seq_length + 1]."""
    rng = np.random.default_rng(seed)
    raw = np.exp(rng.normal(np.log(median), 0.9, count)).astype(int)
    return np.clip(raw, 20, seq_length + 1).tolist()


def check_partition(units, count):
    flat = sorted(i for unit in units for i in unit)
    assert flat == list(range(count)), "every sample must be in exactly one unit"


@pytest.mark.parametrize("seed", range(5))
def test_pack_partitions_respects_capacity_and_wastes_little(seed):
    seq_length = 512
    lengths = skewed_lengths(seed, seq_length=seq_length)
    assert max(lengths) == seq_length + 1 and min(lengths) == 20  # both extremes are exercised
    units = build_units(lengths, seq_length, "pack")
    check_partition(units, len(lengths))
    for unit in units:
        assert sum(lengths[i] - 1 for i in unit) <= seq_length
    eff = packing_efficiency(lengths, units, seq_length)
    assert eff > 0.95, eff
    # the same samples one per row waste most of the row
    assert packing_efficiency(lengths, build_units(lengths, seq_length, "padding"), seq_length) < 0.5


def test_pack_is_deterministic_and_keeps_last_partial_row():
    lengths = [9, 5, 5, 4, 3, 2]  # positions 8, 4, 4, 3, 2, 1 = 22 into rows of 8
    units = build_units(lengths, 8, "pack")
    assert units == build_units(list(lengths), 8, "pack")
    check_partition(units, len(lengths))
    assert units == [[0], [1, 2], [3, 4, 5]]  # best-fit decreasing; the last row (6 of 8) is kept
    assert packing_efficiency(lengths, units, 8) == pytest.approx(22 / 24)


def test_padding_mode_is_one_sample_per_unit():
    assert build_units([3, 7, 2], 8, "padding") == [[0], [1], [2]]
    assert packing_efficiency([3, 7, 2], [[0], [1], [2]], 8) == pytest.approx((2 + 6 + 1) / 24)


def test_packs_never_mix_tasks():
    # packing is called per task, so a unit's indices always refer to that one task's samples
    per_task = {k: skewed_lengths(10 + k, count=60, seq_length=256) for k in range(3)}
    for k, lengths in per_task.items():
        units = build_units(lengths, 256, "pack")
        check_partition(units, len(lengths))
        assert all(0 <= i < len(lengths) for u in units for i in u)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="valid modes: padding, pack"):
        build_units([3], 8, "concat")
    with pytest.raises(ValueError, match="sample 1 has 10 tokens.*seq_length=8"):
        build_units([3, 10], 8, "pack")
    with pytest.raises(ValueError, match="sample 0 has 1 token"):
        build_units([1], 8, "padding")


# ---- the key invariant: samples packed into one row do not see each other --------------------------------------
def _samples(vocab, pad_id, lengths, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = rng.integers(4, vocab, n).astype(np.int32)  # ids 0..3 are the special tokens
        assert pad_id < 4
        mask = np.ones(n, dtype=np.uint8)
        mask[: n // 3] = 0  # an untrained prompt part
        out.append((ids, mask))
    return out


def _per_sample_ce(logits, labels):
    return torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_qwen2_dir"])
def test_packed_forward_equals_per_sample_forward(fixture, request):
    from transformers import AutoModelForCausalLM

    model_dir = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad_id = model.config.pad_token_id
    lengths = [23, 9, 31, 14, 6]
    samples = _samples(model.config.vocab_size, pad_id, lengths)
    rows = build_units(lengths, 64, "pack")
    # two rows: a packed row of three samples and a row of two (shorter, so it is right-padded)
    assert rows == [[0, 1, 2], [3, 4]]
    batch = collate([[samples[i] for i in row] for row in rows], task_ids=[1, 1], pad_id=pad_id)
    assert batch["input_ids"].shape == (2, 22 + 8 + 30)
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=None, use_cache=False
        ).logits
        order = [i for row in rows for i in row]  # sample id s in the batch is sample order[s]
        worst = 0.0
        for s, i in enumerate(order):
            ids = torch.from_numpy(samples[i][0]).long()
            alone = model(input_ids=ids[None, :-1], use_cache=False).logits[0]
            where = batch["sample_ids"] == s
            worst = max(worst, (packed[where] - alone).abs().max().item())
            # the loss of each sample is the same too
            labels_alone = torch.where(torch.from_numpy(samples[i][1][1:]) == 1, ids[1:], -100)
            assert torch.equal(batch["labels"][where], labels_alone)
            torch.testing.assert_close(
                _per_sample_ce(packed[where], batch["labels"][where]),
                _per_sample_ce(alone, labels_alone),
                atol=1e-5,
                rtol=1e-6,
            )
        assert worst < 1e-5, worst

        # the regressions this test is here to catch: an all-ones attention mask, or use_cache left on,
        # let later samples of a row attend to earlier ones
        real = batch["sample_ids"] >= 0
        for kwargs in (
            dict(attention_mask=torch.ones_like(batch["input_ids"]), use_cache=False),
            dict(attention_mask=None, use_cache=True),
        ):
            leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **kwargs).logits
            leak = (leaky[real] - packed[real]).abs().max().item()
            assert leak > 1e-2, (kwargs, leak)  # measured ~0.6 on both tiny models
