"""TaskBalancedSampler: step contents independent of the batch factorisation, exact sharding, per-epoch task counts,
without-replacement streams, determinism, exact resume and clear errors."""
from collections import Counter

import pytest

from mftcoder.data.sampler import TaskBalancedSampler

UNITS = [13, 5, 22]  # 40 units; with a global batch of 8 that is 5 full steps per epoch
FACTORISATIONS = [(8, 1, 1), (2, 4, 1), (1, 8, 1), (4, 1, 2), (2, 2, 2), (1, 2, 4)]  # (micro, grad_accum, world)


def all_micro_batches(sampler, step, micro, ga, world):
    """{(rank, micro-batch index): units} for one step, as each rank would compute it on its own."""
    batch = sampler.global_batch(step)
    return {(r, j): mb for r in range(world) for j, mb in enumerate(sampler.shard(batch, r, world, micro, ga))}


@pytest.mark.parametrize("group_by_task", [False, True])
def test_step_contents_do_not_depend_on_the_factorisation(group_by_task):
    units = [13, 5, 23]  # 41 units: the last step of each epoch is padded
    reference = None
    for micro, ga, world in FACTORISATIONS:
        sampler = TaskBalancedSampler(units, 8, strategy="temperature", temperature=2.0, seed=7,
                                      group_by_task=group_by_task)
        steps = []
        for step in range(2 * sampler.steps_per_epoch() + 1):  # crosses two epoch boundaries
            shares = all_micro_batches(sampler, step, micro, ga, world)
            assert len(shares) == world * ga and all(len(mb) == micro for mb in shares.values())
            got = [u for mb in shares.values() for u in mb]
            # every unit of the global batch goes to exactly one (rank, micro-batch)
            assert Counter(got) == Counter(sampler.global_batch(step))
            steps.append(Counter(got))
        if reference is None:
            reference = steps
        assert steps == reference, (micro, ga, world)


def test_each_rank_takes_a_contiguous_disjoint_slice():
    sampler = TaskBalancedSampler(UNITS, 8, seed=3)
    batch = sampler.global_batch(2)
    assert len(set(batch)) == 8  # distinct units within a step under proportional sampling
    shares = [sampler.shard(batch, r, 4, 1, 2) for r in range(4)]
    assert [u for share in shares for mb in share for u in mb] == batch
    assert shares[1] == [[batch[2]], [batch[3]]]


def test_proportional_epoch_visits_every_unit_once_plus_reported_padding():
    units = [13, 5, 23]
    sampler = TaskBalancedSampler(units, 8, seed=5)
    assert sampler.task_probabilities == pytest.approx([13 / 41, 5 / 41, 23 / 41])
    assert sampler.steps_per_epoch() == 6
    for epoch in range(3):
        plan = sampler.epoch_plan(epoch)
        assert len(plan) == 6 and all(len(b) == 8 for b in plan)
        flat = [u for b in plan for u in b]
        pad = sampler.padded_units()
        assert pad == 48 - 41 == 7
        everything = {(k, i) for k, n in enumerate(units) for i in range(n)}
        assert set(flat[:41]) == everything and len(set(flat[:41])) == 41
        assert flat[41:] == flat[:pad]  # the last batch is completed from the start of the epoch's order
    assert TaskBalancedSampler(UNITS, 8).padded_units() == 0


def epoch_task_counts(sampler, epoch):
    flat = [u for b in sampler.epoch_plan(epoch) for u in b]
    return Counter(t for t, _ in flat[: sum(sampler.units_per_task)])  # without the padding


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # 40 units; uniform: 40/3 = 13.33 each, the largest remainder (a tie) goes to task 0
        (dict(strategy="uniform"), [14, 13, 13]),
        # n^(1/2) = 3.606, 2.236, 4.690 -> quotas 13.69, 8.49, 17.81 -> floors 13, 8, 17 plus the two largest
        # remainders (task 2, then task 0)
        (dict(strategy="temperature", temperature=2.0), [14, 8, 18]),
        # temperature 1 is proportional
        (dict(strategy="temperature", temperature=1.0), [13, 5, 22]),
        # weights 1:2:1 -> 10, 20, 10
        (dict(strategy="explicit", weights=[1.0, 2.0, 1.0]), [10, 20, 10]),
        # weights 3:1:1 -> 24, 8, 8
        (dict(strategy="explicit", weights=[3, 1, 1]), [24, 8, 8]),
    ],
)
def test_strategies_give_the_expected_counts_per_epoch(kwargs, expected):
    sampler = TaskBalancedSampler(UNITS, 8, seed=11, **kwargs)
    assert sampler.units_per_epoch() == expected
    assert sum(expected) == sum(UNITS)
    for epoch in range(3):
        assert [epoch_task_counts(sampler, epoch)[k] for k in range(3)] == expected


def test_temperature_probabilities():
    s = TaskBalancedSampler([100, 1], 4, strategy="temperature", temperature=2.0)
    assert s.task_probabilities == pytest.approx([10 / 11, 1 / 11])


def draws_of(sampler, epoch, task):
    flat = [u for b in sampler.epoch_plan(epoch) for u in b][: sum(sampler.units_per_task)]
    return [i for t, i in flat if t == task]


def test_down_sampled_task_sees_new_units_and_up_sampled_task_cycles_fully():
    # uniform over [13, 5, 22]: task 2 is down-sampled (13 of 22 per epoch), task 1 up-sampled (13 of 5 per epoch)
    sampler = TaskBalancedSampler(UNITS, 8, strategy="uniform", seed=2)
    e0, e1 = draws_of(sampler, 0, 2), draws_of(sampler, 1, 2)
    assert len(e0) == len(e1) == 13
    assert len(set(e0)) == 13  # epoch 0 lies inside the first permutation: no repeats
    # epochs 0 and 1 are positions 0..25 of task 2's stream: a full permutation of the 22 units, then 4 units of
    # the next one. So every unit is seen before any repeats: all 22 appear, and exactly 4 appear twice.
    counts = Counter(e0 + e1)
    assert set(counts) == set(range(22))
    assert sorted(counts.values()) == [1] * 18 + [2] * 4
    up = draws_of(sampler, 0, 1) + draws_of(sampler, 1, 1)  # 26 draws of 5 units, in stream order per epoch
    counts = Counter(up)
    assert set(counts) == set(range(5)) and max(counts.values()) - min(counts.values()) <= 1


def test_up_sampled_task_draws_whole_permutations():
    # 57 units, uniform: quotas 28.5 each, the tie goes to task 0 -> task 1 (7 units) gets 28 = 4 whole cycles
    sampler = TaskBalancedSampler([50, 7], 4, strategy="uniform", seed=9)
    assert sampler.units_per_epoch() == [29, 28]
    for epoch in range(3):
        assert Counter(draws_of(sampler, epoch, 1)) == {i: 4 for i in range(7)}


def test_deterministic_reseeded_each_epoch_and_seed_dependent():
    a = TaskBalancedSampler(UNITS, 8, seed=1)
    b = TaskBalancedSampler(UNITS, 8, seed=1)
    c = TaskBalancedSampler(UNITS, 8, seed=2)
    assert a.epoch_plan(0) == b.epoch_plan(0) and a.epoch_plan(3) == b.epoch_plan(3)
    assert a.epoch_plan(0) != c.epoch_plan(0)
    assert a.epoch_plan(0) != a.epoch_plan(1)
    # an epoch can be computed directly, without walking through the earlier ones
    fresh = TaskBalancedSampler(UNITS, 8, seed=1)
    assert fresh.global_batch(3 * a.steps_per_epoch() + 2) == a.epoch_plan(3)[2]


def test_resume_reproduces_the_uninterrupted_batches():
    # the sampler keeps no position: a fresh sampler (as after a resume) asked for step N gives the uninterrupted
    # run's batch N, across epoch boundaries and whatever steps were asked before
    uninterrupted = TaskBalancedSampler(UNITS, 8, strategy="uniform", seed=4)
    expected = [uninterrupted.global_batch(step) for step in range(17)]
    first = TaskBalancedSampler(UNITS, 8, strategy="uniform", seed=4)
    head = [first.global_batch(step) for step in range(7)]
    state = first.state_dict()
    assert "step" not in state  # the training loop's step is the one owner of the position
    resumed = TaskBalancedSampler(UNITS, 8, strategy="uniform", seed=4)
    resumed.load_state_dict(dict(state, step=7))  # older checkpoints also hold a step: accepted and ignored
    tail = [resumed.global_batch(step) for step in range(7, 17)]
    assert head + tail == expected
    assert [resumed.global_batch(step) for step in (16, 3, 16)] == [expected[16], expected[3], expected[16]]
    with pytest.raises(ValueError, match="global_batch_size=8 but this run has global_batch_size=16"):
        TaskBalancedSampler(UNITS, 16, strategy="uniform", seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        TaskBalancedSampler(UNITS, 8, strategy="uniform", seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="units_per_task"):
        TaskBalancedSampler([13, 5, 23], 8, strategy="uniform", seed=4).load_state_dict(state)


def test_group_by_task_makes_single_task_micro_batches_where_possible():
    sampler = TaskBalancedSampler([40, 25, 15], 16, seed=0, group_by_task=True)
    plain = TaskBalancedSampler([40, 25, 15], 16, seed=0)
    micro, ga, world = 2, 4, 2
    for step in range(sampler.steps_per_epoch()):
        batch = sampler.global_batch(step)
        assert batch == plain.global_batch(step)  # grouping never changes the step
        mbs = [mb for r in range(world) for mb in sampler.shard(batch, r, world, micro, ga)]
        assert Counter(u for mb in mbs for u in mb) == Counter(batch)
        single = sum(len({t for t, _ in mb}) == 1 for mb in mbs)
        counts = Counter(t for t, _ in batch)
        # the most any arrangement can have: floor(count_k / micro) chunks per task
        assert single == sum(c // micro for c in counts.values())
        # at most one mixed micro-batch per pair of task leftovers: fewer than the number of tasks
        assert len(mbs) - single < sampler.num_tasks
    # a hand example: micro 2 over tasks [0, 1, 0, 2, 1, 0, 2, 1] -> (0,0) (1,1) (2,2) and the mixed (0,1)
    example = [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2), (2, 1), (1, 2)]
    arranged = sampler.arrange_by_task(example, 2)
    chunks = [arranged[i : i + 2] for i in range(0, 8, 2)]
    assert chunks == [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(2, 0), (2, 1)], [(0, 2), (1, 2)]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="balanced"), "unknown sampling strategy 'balanced'; valid strategies: proportional, uniform, "
                                    "temperature, explicit"),
        (dict(strategy="explicit", weights=[1.0, 2.0]), "weights has 2 entries but there are 3 tasks"),
        (dict(strategy="explicit", weights=[1.0, 0.0, 2.0]), r"weights\[1\] = 0.0; task weights must be positive"),
        (dict(strategy="explicit", weights=[1.0, -1.0, 2.0]), r"weights\[1\] = -1.0"),
        (dict(strategy="explicit"), "strategy 'explicit' needs weights"),
        (dict(strategy="uniform", weights=[1, 1, 1]), "weights are only used by strategy 'explicit'"),
        (dict(strategy="temperature", temperature=0.0), "temperature must be a positive"),
    ],
)
def test_bad_sampler_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskBalancedSampler(UNITS, 8, **kwargs)


def test_bad_geometry_and_data_raise_clear_errors():
    sampler = TaskBalancedSampler(UNITS, 8)
    batch = sampler.global_batch(0)
    with pytest.raises(ValueError, match=r"global_batch_size=8 != micro_batch_size\(2\) x grad_accum\(2\) x "
                                         r"world_size\(1\) = 4"):
        sampler.shard(batch, 0, 1, 2, 2)
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        sampler.shard(batch, 2, 2, 2, 2)
    with pytest.raises(ValueError, match="batch has 7 units"):
        sampler.shard(batch[:7], 0, 1, 8, 1)
    with pytest.raises(ValueError, match="task 1 has 0 units"):
        TaskBalancedSampler([3, 0], 2)
    with pytest.raises(ValueError, match="global_batch_size must be a positive integer"):
        TaskBalancedSampler([3, 1], 0)
