"""Batches of rows of similar length (HF's `group_by_length`), so that a batch pads little.

Rows of a batch are padded to its longest. The smollm2-cpu mix holds rows of 118 to 500+ tokens
(inverse-cloze rows ~150, FanOutQA walks up to 512): four rows drawn at random padded to 1.56x
their real tokens; sorted by length within 16 batches' worth of rows, 1.07x. Sorting only within
a group keeps the order random across groups, and the group's batches are shuffled, so a step's
length says little about where in the epoch it is.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence


def length_grouped(rows: Sequence[Mapping], batch_size: int, rng: random.Random) -> Iterator[list[Mapping]]:
    """The rows cut into batches of `batch_size` (the last may be smaller) after sorting them by
    `len(row["input_ids"])`, the batches in a random order. Every row is in exactly one batch."""
    ordered = sorted(rows, key=lambda r: len(r["input_ids"]))
    cut = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    rng.shuffle(cut)
    yield from cut
