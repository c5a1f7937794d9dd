"""Loss modes over the global batch: hand-computed values, the same loss and gradients for any split of a step into
micro-batches, and task weights that keep acting when every micro-batch holds one task (MFTCoder's flaw)."""
import numpy as np
import pytest
import torch

from mftcoder.data.collator import collate
from mftcoder.loss import (
    WEIGHTED_LOSS_MODES,
    StepCounts,
    count_micro_batch,
    micro_batch_loss,
    model_token_losses,
    sum_counts,
    task_means,
)

M = -100  # an untrained label
GARBAGE = 99.0  # token losses at untrained positions must not leak into any mode


def hand_step(dtype=torch.float64):
    """Two micro-batches, 3 tasks (task 2 absent from the step). Per sample (micro, sample: task, trained losses):
    A0: task 0 [1, 2]   A1: task 1 [4, 0.5]   A2: task 0, no trained token (ignored)
    B0: task 1 [3, 1, 2]   B1: task 0 [0.25, 0.75]
    Task 0: 4 tokens, sum 4, sample means 1.5 + 0.5.  Task 1: 5 tokens, sum 10.5, sample means 2.25 + 2."""
    a = {
        "labels": torch.tensor([[M, 5, 6, 7, 8], [M, M, M, M, M]]),
        "sample_ids": torch.tensor([[0, 0, 0, 1, 1], [2, 2, 2, -1, -1]]),
        "sample_task_ids": torch.tensor([0, 1, 0]),
        "task_ids": torch.tensor([0, 0]),
    }
    a_loss = torch.tensor([[GARBAGE, 1.0, 2.0, 4.0, 0.5], [GARBAGE] * 5], dtype=dtype, requires_grad=True)
    b = {
        "labels": torch.tensor([[5, 6, 7, M, 8, 9]]),
        "sample_ids": torch.tensor([[0, 0, 0, 0, 1, 1]]),
        "sample_task_ids": torch.tensor([1, 0]),
        "task_ids": torch.tensor([1]),
    }
    b_loss = torch.tensor([[3.0, 1.0, 2.0, GARBAGE, 0.25, 0.75]], dtype=dtype, requires_grad=True)
    return [(a, a_loss), (b, b_loss)]


W = [1.0, 2.0, 5.0]
COBA_W = [0.2, 0.3, 0.5]
EXPECTED = {  # by hand from the docstring of hand_step; task 2's weight (5 / 0.5) is not in any normaliser
    "case1": (4 + 10.5) / 9,
    "case2": (1.5 + 2.25 + 2.0 + 0.5) / 4,
    "case3": (1 * 4 / 4 + 2 * 10.5 / 5) / (1 + 2),
    "case4": (1 * (1.5 + 0.5) / 2 + 2 * (2.25 + 2.0) / 2) / (1 + 2),
    "coba": (0.2 * 4 / 4 + 0.3 * 10.5 / 5) / (0.2 + 0.3),
}


def step_loss(micro_batches, mode, weights, backward=False):
    counts = sum_counts([count_micro_batch(b, 3) for b, _ in micro_batches])
    total = 0.0
    for b, token_loss in micro_batches:
        micro = micro_batch_loss(token_loss, b, counts, mode, weights)
        if backward:
            micro.loss.backward()
        total = total + micro.loss.item()
    return total


@pytest.mark.parametrize("mode", WEIGHTED_LOSS_MODES)
def test_every_mode_matches_the_hand_computed_value(mode):
    weights = COBA_W if mode == "coba" else W
    assert abs(step_loss(hand_step(), mode, weights) - EXPECTED[mode]) < 1e-12
    assert abs(step_loss(hand_step(torch.float32), mode, weights) - EXPECTED[mode]) < 1e-6


def test_gradients_are_the_per_token_weights():
    """case3: d loss / d l = w_k / (N_k * sum of present weights); 0 on untrained tokens."""
    (a, a_loss), (b, b_loss) = steps = hand_step()
    step_loss(steps, "case3", W, backward=True)
    t0, t1 = 1 / (4 * 3), 2 / (5 * 3)
    assert torch.allclose(a_loss.grad, torch.tensor([[0, t0, t0, t1, t1], [0] * 5], dtype=torch.float64))
    assert torch.allclose(b_loss.grad, torch.tensor([[t1, t1, t1, 0, t0, t0]], dtype=torch.float64))


def test_counts_and_logging_sums():
    (a, a_loss), (b, b_loss) = hand_step()
    ca, cb = count_micro_batch(a, 3), count_micro_batch(b, 3)
    assert ca.task_tokens.tolist() == [2, 2, 0] and ca.task_samples.tolist() == [1, 1, 0]
    assert cb.task_tokens.tolist() == [2, 3, 0] and cb.task_samples.tolist() == [1, 1, 0]
    step = sum_counts([ca, cb])
    assert step.task_tokens.tolist() == [4, 5, 0] and step.task_samples.tolist() == [2, 2, 0]
    assert step.total_tokens.item() == 9 and step.total_samples.item() == 4
    # What the trainer all-reduces: one flat tensor; summing it over "ranks" is the same as sum_counts.
    flat = ca.to_tensor() + cb.to_tensor()
    assert flat.dtype == torch.float64 and flat.shape == (8,)
    assert torch.equal(StepCounts.from_tensor(flat).to_tensor(), step.to_tensor())

    ma = micro_batch_loss(a_loss, a, step, "case3", W)
    mb = micro_batch_loss(b_loss, b, step, "case3", W)
    assert ma.task_loss_sum.tolist() == [3.0, 4.5, 0.0] and mb.task_loss_sum.tolist() == [1.0, 6.0, 0.0]
    assert ma.task_sample_mean_sum.tolist() == [1.5, 2.25, 0.0] and mb.task_sample_mean_sum.tolist() == [0.5, 2.0, 0.0]
    assert not ma.task_loss_sum.requires_grad
    means, present = task_means(ma.task_loss_sum + mb.task_loss_sum, step.task_tokens)
    assert means[:2].tolist() == [1.0, 2.1] and torch.isnan(means[2]) and present.tolist() == [True, True, False]


@pytest.mark.parametrize("mode", WEIGHTED_LOSS_MODES)
def test_step_without_trained_tokens_gives_zero_not_nan(mode):
    (a, a_loss), _ = hand_step()
    a["labels"] = torch.full_like(a["labels"], M)
    counts = count_micro_batch(a, 3)
    micro = micro_batch_loss(a_loss, a, counts, mode, W)
    assert micro.loss.item() == 0.0
    micro.loss.backward()
    assert torch.equal(a_loss.grad, torch.zeros_like(a_loss))


def test_present_tasks_with_zero_weight_give_zero_loss():
    steps = hand_step()
    assert step_loss(steps, "case3", [0.0, 0.0, 1.0]) == 0.0


def test_rows_without_sample_ids_are_one_sample_each():
    batch = {"labels": torch.tensor([[5, 6, M], [M, 7, 8]]), "task_ids": torch.tensor([1, 0])}
    token_loss = torch.tensor([[1.0, 3.0, GARBAGE], [GARBAGE, 2.0, 6.0]], dtype=torch.float64)
    counts = count_micro_batch(batch, 2)
    assert counts.task_tokens.tolist() == [2, 2] and counts.task_samples.tolist() == [1, 1]
    assert micro_batch_loss(token_loss, batch, counts, "case3", [1.0, 3.0]).loss.item() == pytest.approx((4 + 3 * 2) / 4)


def test_bad_inputs_are_refused_with_a_clear_message():
    (a, a_loss), (b, b_loss) = hand_step()
    counts_a = count_micro_batch(a, 3)
    with pytest.raises(ValueError, match="case1, case2, case3, case4, coba"):
        micro_batch_loss(a_loss, a, counts_a, "case5", W)
    with pytest.raises(ValueError, match="2 entries for 3 tasks"):
        micro_batch_loss(a_loss, a, counts_a, "case3", [1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        micro_batch_loss(a_loss, a, counts_a, "case3", [1.0, -2.0, 1.0])
    with pytest.raises(ValueError, match="do not include this micro-batch"):
        micro_batch_loss(b_loss, b, StepCounts.from_tensor(torch.tensor([2.0, 0, 0, 1, 0, 0, 2, 1])), "case1", W)
    with pytest.raises(ValueError, match="task ids must be in 0..0"):
        count_micro_batch(a, 1)


def mftcoder_per_micro_case3(micro_batches, weights):
    """MFTCoder v0.5: case3 over the tasks of each micro-batch, then averaged over micro-batches (GA / DDP)."""
    losses = []
    for token_loss, tasks in micro_batches:
        present = sorted(set(tasks))
        num = sum(weights[k] * np.mean([l for l, t in zip(token_loss, tasks) if t == k]) for k in present)
        losses.append(num / sum(weights[k] for k in present))
    return float(np.mean(losses))


def test_case3_weights_act_in_one_task_micro_batches():
    """Weight 3 on task 0: with micro batch 1 x accumulation 2 and one task per micro-batch, the step loss is still
    (3 L0 + L1) / 4, as if task 0's data were counted three times. MFTCoder's formula gives (L0 + L1) / 2."""
    weights = [3.0, 1.0]
    mb0 = {"labels": torch.tensor([[5, 6]]), "task_ids": torch.tensor([0])}
    mb1 = {"labels": torch.tensor([[5, 6, 7, 8]]), "task_ids": torch.tensor([1])}
    l0 = torch.tensor([[2.0, 2.0]], dtype=torch.float64)  # L0 = 2
    l1 = torch.tensor([[1.0, 0.5, 1.5, 1.0]], dtype=torch.float64)  # L1 = 1
    counts = sum_counts([count_micro_batch(mb0, 2), count_micro_batch(mb1, 2)])
    ours = sum(micro_batch_loss(l, b, counts, "case3", weights).loss.item() for b, l in [(mb0, l0), (mb1, l1)])
    assert ours == pytest.approx((3 * 2 + 1 * 1) / 4)  # 1.75
    theirs = mftcoder_per_micro_case3([([2.0, 2.0], [0, 0]), ([1.0, 0.5, 1.5, 1.0], [1, 1, 1, 1])], weights)
    assert theirs == pytest.approx(1.5)  # the weights cancelled
    # The same step in a single micro-batch holding both tasks: both formulas agree there.
    both = {"labels": torch.tensor([[5, 6, M, M], [5, 6, 7, 8]]), "task_ids": torch.tensor([0, 1])}
    l_both = torch.cat([torch.cat([l0, torch.zeros(1, 2, dtype=torch.float64)], 1), l1])
    assert micro_batch_loss(l_both, both, count_micro_batch(both, 2), "case3", weights).loss.item() == pytest.approx(1.75)


# ---- invariance on a real (tiny) model ------------------------------------------------------------------------------
TASK_WEIGHTS = [1.0, 2.5, 0.5]


def global_units(seed=0, vocab=500):
    """8 single-task units (rows) of 3 tasks: packed pairs, lone samples, one sample without any trained token."""
    rng = np.random.default_rng(seed)

    def sample(n, prompt):
        return rng.integers(5, vocab, n), np.r_[np.zeros(prompt, int), np.ones(n - prompt, int)]

    units = [
        [sample(14, 4), sample(9, 2)], [sample(21, 5)], [sample(7, 7)], [sample(30, 12)],
        [sample(11, 3), sample(6, 1), sample(8, 2)], [sample(25, 20)], [sample(16, 4)], [sample(5, 1), sample(12, 6)],
    ]
    tasks = [0, 1, 1, 2, 0, 1, 0, 2]
    return units, tasks


def run_step(model, units, tasks, micro_size, mode):
    model.zero_grad(set_to_none=True)
    micro_batches = [
        collate(units[i : i + micro_size], tasks[i : i + micro_size], pad_id=1) for i in range(0, len(units), micro_size)
    ]
    counts = sum_counts([count_micro_batch(b, 3) for b in micro_batches])
    total = 0.0
    for b in micro_batches:
        micro = micro_batch_loss(model_token_losses(model, b, chunked=True, chunk_size=16), b, counts, mode, TASK_WEIGHTS)
        micro.loss.backward()
        total += micro.loss.item()
    return total, {n: p.grad.clone() for n, p in model.named_parameters()}


def reference_step_loss(model, units, tasks, mode):
    """Independent formula: plain per-sample forwards, Python loops over samples and tasks."""
    per_sample = []  # (task, list of token losses)
    with torch.no_grad():
        for unit, task in zip(units, tasks):
            for ids, mask in unit:
                b = collate([[(ids, mask)]], [task], pad_id=1)
                tl = model_token_losses(model, b, chunked=False)[b["labels"] != -100].tolist()
                if tl:
                    per_sample.append((task, tl))
    if mode == "case1":
        return sum(sum(t) for _, t in per_sample) / sum(len(t) for _, t in per_sample)
    if mode == "case2":
        return float(np.mean([np.mean(t) for _, t in per_sample]))
    present = sorted({k for k, _ in per_sample})
    if mode in ("case3", "coba"):
        task_loss = {k: np.mean([x for kk, t in per_sample if kk == k for x in t]) for k in present}
    else:
        task_loss = {k: np.mean([np.mean(t) for kk, t in per_sample if kk == k]) for k in present}
    return sum(TASK_WEIGHTS[k] * task_loss[k] for k in present) / sum(TASK_WEIGHTS[k] for k in present)


@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def tiny_model(request, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=request.param)


@pytest.mark.parametrize("mode", WEIGHTED_LOSS_MODES)
def test_loss_and_gradients_do_not_depend_on_the_micro_batch_split(tiny_model, mode):
    """8 x 1, 4 x 2, 2 x 4, 1 x 8: the same step loss and gradients (1e-6 relative in fp32; in fp64 only rounding
    is left, so any formula that depends on the split would show far above 1e-10)."""
    tol = 1e-6 if tiny_model.dtype == torch.float32 else 1e-10
    units, tasks = global_units()
    full_loss, full_grads = run_step(tiny_model, units, tasks, 8, mode)
    assert abs(full_loss - reference_step_loss(tiny_model, units, tasks, mode)) < 1e-5
    for micro_size in (4, 2, 1):
        loss, grads = run_step(tiny_model, units, tasks, micro_size, mode)
        assert abs(loss - full_loss) <= tol * abs(full_loss), (micro_size, loss, full_loss)
        for name, g in grads.items():
            diff = (g - full_grads[name]).abs().max().item()
            assert diff < tol, f"{mode} micro {micro_size}: grad of {name} differs by {diff}"
    assert max(g.abs().max().item() for g in full_grads.values()) > 1e-3
