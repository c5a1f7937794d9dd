"""Training rows ("units") from the samples of ONE task.

A unit is a list of sample indices that share one row of the batch. A sample of n tokens fills n-1 input positions
(the collator shifts inputs and targets inside each sample), so a row holds at most `seq_length` positions.

- `padding`: one sample per unit (the collator pads each micro-batch to its longest row).
- `pack`:    best-fit decreasing bin packing of the samples of one task into rows of `seq_length` positions.
             It depends only on the lengths (deterministic), keeps the last partial row and never mixes tasks
             because it only ever sees one task's lengths. Samples stay isolated inside a row through
             per-sample `position_ids` (see collator.py).
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence

PACKING_MODES = ("padding", "pack")


def _positions(lengths: Sequence[int], seq_length: int) -> list[int]:
    """Input positions each sample needs (n-1), validated against the row capacity (seq_length itself is bounded by
    TrainConfig; the cache never hands over a sample longer than seq_length+1 tokens)."""
    need = []
    for i, n in enumerate(lengths):
        n = int(n)
        if n < 2:
            raise ValueError(f"sample {i} has {n} token(s); a training sample needs at least 2 (one input, one target)")
        if n - 1 > seq_length:
            raise ValueError(
                f"sample {i} has {n} tokens, i.e. {n - 1} input positions, more than seq_length={seq_length}; "
                "over-long samples must be truncated or dropped before packing"
            )
        need.append(n - 1)
    return need


def _best_fit_decreasing(need: list[int], capacity: int) -> list[list[int]]:
    # Longest first (ties by index, so the result depends only on the lengths). Each sample goes into the open row
    # with the least room that still fits it (ties: the oldest row); `open_rows` is a sorted list of
    # (room, row_id), so finding that row is one bisect.
    order = sorted(range(len(need)), key=lambda i: (-need[i], i))
    rows: list[list[int]] = []
    open_rows: list[tuple[int, int]] = []
    for i in order:
        size = need[i]
        at = bisect.bisect_left(open_rows, (size, -1))
        if at < len(open_rows):
            room, row_id = open_rows.pop(at)
        else:
            room, row_id = capacity, len(rows)
            rows.append([])
        rows[row_id].append(i)
        room -= size
        if room > 0:
            bisect.insort(open_rows, (room, row_id))
    return [sorted(row) for row in rows]


def build_units(lengths: Sequence[int], seq_length: int, mode: str) -> list[list[int]]:
    """Group the samples of one task (token counts `lengths`) into training rows.

    Returns a list of units, each a sorted list of sample indices; every index appears in exactly one unit.
    """
    if mode not in PACKING_MODES:
        raise ValueError(f"unknown packing mode {mode!r}; valid modes: {', '.join(PACKING_MODES)}")
    need = _positions(lengths, seq_length)
    if mode == "padding":
        return [[i] for i in range(len(need))]
    return _best_fit_decreasing(need, int(seq_length))


def packing_efficiency(lengths: Sequence[int], units: Sequence[Sequence[int]], seq_length: int) -> float:
    """Fraction of the row positions (len(units) rows of `seq_length`) that hold real input tokens."""
    if not units:
        return 1.0
    used = sum(int(lengths[i]) - 1 for unit in units for i in unit)
    return used / (len(units) * int(seq_length))
