from math import comb

import pytest

from mftcoder.eval.passk import estimate_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (10, 3, 1, 0.3),  # pass@1 is the fraction correct
        (10, 3, 2, 1 - 21 / 45),  # 1 - C(7,2)/C(10,2)
        (10, 3, 8, 1.0),  # any 8 of 10 include one of the 3 correct
        (10, 0, 5, 0.0),
        (10, 10, 10, 1.0),
        (200, 1, 10, 0.05),  # 1 - C(199,10)/C(200,10) = 10/200
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    ],
)
def test_estimator_matches_hand_values(n, c, k, expected):
    assert estimate_pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_estimator_matches_binomial_formula_on_a_grid():
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - comb(n - c, k) / comb(n, k)
                assert estimate_pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


def test_average_over_problems_and_skipped_k():
    # two problems: 1/2 and 2/2 correct -> pass@1 = (0.5 + 1) / 2; pass@2 = (1 + 1) / 2; pass@10 impossible
    scores = pass_at_k([(2, 1), (2, 2)], [1, 2, 10])
    assert scores == {"pass@1": pytest.approx(0.75), "pass@2": pytest.approx(1.0)}


@pytest.mark.parametrize("n, c, k", [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_invalid_arguments_raise(n, c, k):
    with pytest.raises(ValueError):
        estimate_pass_at_k(n, c, k)


def test_zero_problems_raise():
    with pytest.raises(ValueError, match="zero problems"):
        pass_at_k([], [1])
