"""CoBa on hand-built validation-loss histories: direction of the weights, floor, warmup, state round trip, the
original's crash cases (W > H, W not a multiple of I, absent tasks), and values pinned by an independent numpy
implementation of the formula."""
import json
import math

import numpy as np
import pytest
import torch

from mftcoder.loss.coba import CoBa, least_squares_slope

EPS = 1e-12


def feed(coba, steps, losses, present=None):
    """Record each (step, losses) and return {step: weights used for the next step} from the first update on."""
    out = {}
    for i, (step, row) in enumerate(zip(steps, losses)):
        mask = [True] * len(row) if present is None else present[i]
        coba.record(step, torch.tensor(row, dtype=torch.float64), torch.tensor(mask))
        if coba.current is not None:
            out[step] = coba.weights(step + 1)
    return out


def linear(start, slope, steps):
    return [start + slope * s for s in steps]


def columns(*curves):
    return [list(r) for r in zip(*curves)]


def test_uniform_before_warmup_and_before_the_first_update():
    coba = CoBa(num_tasks=3, warmup_steps=4, history_length=10, tau=5, update_interval=1)
    coba.set_initial(torch.tensor([2.0, 3.0, 4.0]), torch.ones(3, dtype=torch.bool))
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    assert torch.equal(coba.weights(0), uniform)
    for step in (1, 2, 3):
        coba.record(step, torch.tensor([2.0 - 0.5 * step, 3.0, 4.0 + step]), torch.ones(3, dtype=torch.bool))
        assert coba.current is None  # no update before warmup
        assert torch.equal(coba.weights(step), uniform)
    assert torch.equal(coba.weights(4), uniform)  # warmup reached but the step-4 signal is not recorded yet
    coba.record(4, torch.tensor([0.0, 3.0, 8.0]), torch.ones(3, dtype=torch.bool))
    assert not torch.equal(coba.weights(5), uniform)


def test_slower_converging_task_gains_weight():
    """Both tasks fall steadily; task 1 five times slower. The slow one is weighted up, stably."""
    steps = list(range(1, 31))
    coba = CoBa(2, warmup_steps=5, history_length=10, tau=5, update_interval=1)
    coba.set_initial(torch.tensor([1.0, 1.0]), torch.ones(2, dtype=torch.bool))  # V0 = 1: slopes stay -0.02, -0.004
    weights = feed(coba, steps, columns(linear(1.0, -0.02, steps), linear(1.0, -0.004, steps)))
    for step, w in weights.items():
        assert w[1] > w[0] + 0.3, (step, w)
    # Constant slopes: DF = 1 and ACS is uniform, so w = softmax(K * RCS) with RCS = softmax(K a / sum|a|).
    rcs = torch.softmax(torch.tensor([-0.02, -0.004], dtype=torch.float64) * 2 / 0.024, 0)
    assert torch.allclose(weights[30], torch.softmax(2 * rcs, 0), atol=1e-9)


def test_task_whose_loss_turns_upward_loses_weight():
    """Both fall until step 15, then task 1 rises (over-fits) while task 0 keeps falling: the divergence factor
    switches to the absolute score and task 1 is weighted down."""
    steps = list(range(1, 31))
    rising = [1.0 - 0.03 * s if s <= 15 else 1.0 - 0.45 + 0.02 * (s - 15) for s in steps]
    weights = feed(
        CoBa(2, warmup_steps=5, history_length=10, tau=5, update_interval=1),
        steps, columns(linear(1.0, -0.03, steps), rising),
    )
    assert all(abs(w[0] - 0.5) < 1e-6 for s, w in weights.items() if s <= 15)  # identical curves so far
    assert weights[22][1] < 0.25 and weights[30][1] < 0.25  # weighted down once the rise shows in the window
    assert all(weights[s][1] < weights[s - 1][1] + 1e-3 for s in range(17, 24))


def test_weights_sum_to_one_and_respect_the_floor():
    """10 tasks, one rising sharply and nine flat: softmax alone would leave the flat ones ~4e-4 < 1/(10K)."""
    K = 10
    steps = list(range(1, 21))
    curves = [linear(1.0, 0.05, steps)] + [[1.0] * len(steps) for _ in range(K - 1)]
    weights = feed(CoBa(K, warmup_steps=3, history_length=8, tau=5, update_interval=1), steps, columns(*curves))
    floor = 1 / (10 * K)
    for w in weights.values():
        assert abs(w.sum().item() - 1) < 1e-12
        assert w.min().item() >= floor - 1e-15
    last = weights[20]
    assert last.min().item() < floor * 1.1  # the floor is what holds the flat tasks up
    assert last[0] > 0.8


def test_all_zero_slopes_give_uniform_weights_without_nan():
    steps = list(range(1, 12))
    weights = feed(CoBa(3, warmup_steps=2, history_length=5, tau=5, update_interval=1), steps, [[1.0, 2.0, 3.0]] * 11)
    for w in weights.values():
        assert torch.allclose(w, torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-12)


def test_slope_keeps_x_and_y_pairs_together():
    # Task absent at step 2. MFTCoder's fit kept x[:3] = (1, 2, 3) for y = (1, 3, 4): slope 1.5. Right: 1.
    assert least_squares_slope([1, 2, 3, 4], [1.0, 0.0, 3.0, 4.0], [True, False, True, True]) == pytest.approx(1.0)
    assert least_squares_slope([5, 9], [1.0, 2.0], [True, False]) == 0.0
    assert least_squares_slope([2, 4, 6], [3.0, 2.0, 4.0], [True] * 3) == pytest.approx(np.polyfit([2, 4, 6], [3, 2, 4], 1)[0])


def test_warmup_longer_than_history_and_not_a_multiple_of_the_interval():
    """W=7 > H=3 and W % I != 0 (I=2): MFTCoder crashed on both; here the first update is at step 8."""
    coba = CoBa(2, warmup_steps=7, history_length=3, tau=5, update_interval=2)
    steps = [s for s in range(1, 21) if coba.should_update(s)]
    assert steps == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    weights = feed(coba, steps, columns(linear(1.0, -0.02, steps), linear(1.0, -0.005, steps)))
    assert sorted(weights) == [8, 10, 12, 14, 16, 18, 20]
    assert len(coba.steps) == 3 and len(coba.slopes) == 3 and len(coba.worst_slopes) == 7
    for w in weights.values():
        assert torch.isfinite(w).all() and abs(w.sum().item() - 1) < 1e-12 and w[1] > w[0]


def test_normalisation_by_v0_makes_the_loss_scale_irrelevant():
    steps = list(range(1, 16))
    base = columns(linear(1.0, -0.02, steps), linear(2.0, -0.01, steps))
    scaled = [[a, 100 * b] for a, b in base]
    w = []
    for rows, v0 in ((base, [1.0, 2.0]), (scaled, [1.0, 200.0])):
        coba = CoBa(2, warmup_steps=4, history_length=6, tau=5, update_interval=1)
        coba.set_initial(torch.tensor(v0), torch.ones(2, dtype=torch.bool))
        w.append(feed(coba, steps, rows))
    for s in w[0]:
        assert torch.allclose(w[0][s], w[1][s], atol=1e-12)
    # A task missing from the initial pass takes its first recorded loss as V0.
    coba = CoBa(2, warmup_steps=4, history_length=6, tau=5, update_interval=1)
    coba.set_initial(torch.tensor([1.0, 0.0]), torch.tensor([True, False]))
    feed(coba, steps, base)
    assert coba.v0 == [1.0, base[0][1]]


# ---- independent numpy implementation of the formula, to pin the values -----------------------------------------------
def numpy_coba(steps, losses, present, v0, W, H, tau):
    losses, present, v0 = np.asarray(losses, float), np.asarray(present, bool), np.asarray(v0, float)
    K = losses.shape[1]
    norm = np.where(present, losses / v0, 0.0)

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    def slope(x, y):
        return float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 else 0.0

    A, A_max, out, raw_df = [], [], {}, []
    for r, t in enumerate(steps):
        if t < W:
            continue
        lo = max(0, r + 1 - H)
        x, Y, P = np.asarray(steps[lo : r + 1], float), norm[lo : r + 1], present[lo : r + 1]
        alpha = np.array([slope(x[P[:, k]], Y[P[:, k], k]) for k in range(K)])
        any_present = P.any(axis=1)
        worst = np.array([Y[i][P[i]].max() for i in range(len(x)) if any_present[i]])
        A = (A + [alpha])[-H:]
        A_max.append(slope(x[any_present], worst))
        rcs = softmax(K * alpha / (np.abs(alpha).sum() + EPS))
        hist = np.array(A)
        acs = softmax(-len(hist) * alpha / (np.abs(hist).sum(axis=0) + EPS))
        am = np.array(A_max)
        raw_df.append(len(am) * softmax(-tau * len(am) * am / (np.abs(am).sum() + EPS))[-1])
        df = float(np.clip(raw_df[-1], 0.0, 1.0))
        w = softmax(K * (df * rcs + (1 - df) * acs))
        m = 1 / (10 * K)
        if (w < m).any():
            w = (1 - K * m) * w + m
        out[t] = w
    return out, raw_df


def noisy_history():
    """3 tasks, I = 2: task 0 falls fast, task 1 falls then climbs, task 2 is noisy and missing at some records."""
    rng = np.random.default_rng(7)
    steps = list(range(2, 62, 2))
    losses, present = [], []
    for s in steps:
        t1 = 3.0 - 0.04 * s if s < 30 else 1.8 + 0.03 * (s - 30)
        losses.append([2.0 * math.exp(-s / 20), t1, 1.5 - 0.005 * s + 0.05 * rng.standard_normal()])
        present.append([True, True, s not in (10, 12, 24, 40, 42, 44)])
    return steps, losses, present


def test_weights_pinned_by_an_independent_numpy_implementation():
    steps, losses, present = noisy_history()
    v0 = [2.2, 3.1, 1.6]
    W, H, tau = 9, 6, 5.0
    coba = CoBa(3, warmup_steps=W, history_length=H, tau=tau, update_interval=2)
    coba.set_initial(torch.tensor(v0, dtype=torch.float64), torch.ones(3, dtype=torch.bool))
    ours = feed(coba, steps, losses, present)
    ref, raw_df = numpy_coba(steps, losses, present, v0, W, H, tau)
    assert max(raw_df) > 1.5 and min(raw_df) < 0.5  # the clamp of DF to [0, 1] matters on this history
    assert sorted(ours) == sorted(ref) == steps[4:]
    for s in ref:
        assert np.allclose(ours[s].numpy(), ref[s], rtol=0, atol=1e-10), (s, ours[s], ref[s])
    spread = np.ptp(np.array(list(ref.values())), axis=0)
    assert (spread > 0.05).all()  # the weights really move over this history, so the pin is not trivial


def test_state_round_trip_gives_identical_weights():
    steps, losses, present = noisy_history()
    first = CoBa(3, warmup_steps=9, history_length=6, tau=5, update_interval=2)
    first.set_initial(torch.tensor([2.2, 3.1, 1.6]), torch.ones(3, dtype=torch.bool))
    feed(first, steps[:15], losses[:15], present[:15])
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints may store it as JSON

    resumed = CoBa(3, warmup_steps=9, history_length=6, tau=5, update_interval=2)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.weights(31), first.weights(31))
    rest = (steps[15:], losses[15:], present[15:])
    a, b = feed(first, *rest), feed(resumed, *rest)
    assert a.keys() == b.keys() and all(torch.equal(a[s], b[s]) for s in a)
    with pytest.raises(ValueError, match="3 tasks, this run has 2"):
        CoBa(2, 9, 6, 5, 2).load_state_dict(state)


def test_bad_arguments_name_the_setting():
    with pytest.raises(ValueError, match="coba_history_length"):
        CoBa(2, warmup_steps=1, history_length=1, tau=5, update_interval=1)
    with pytest.raises(ValueError, match="coba_update_interval"):
        CoBa(2, warmup_steps=1, history_length=4, tau=5, update_interval=0)
    coba = CoBa(2, warmup_steps=1, history_length=4, tau=5, update_interval=1)
    with pytest.raises(ValueError, match="expects 2 task losses"):
        coba.record(1, torch.tensor([1.0, 2.0, 3.0]), torch.ones(3, dtype=torch.bool))
    coba.record(2, torch.tensor([1.0, 2.0]), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="increasing steps"):
        coba.record(2, torch.tensor([1.0, 2.0]), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="non-finite"):
        coba.record(3, torch.tensor([float("nan"), 2.0]), torch.ones(2, dtype=torch.bool))
    assert not coba.should_update(0) and coba.should_update(1)
