import random

from components.data.grouping import length_grouped


def _rows(lengths):
    return [{"id": i, "input_ids": [0] * n} for i, n in enumerate(lengths)]


def test_every_row_lands_in_exactly_one_batch_of_the_asked_size():
    rows = _rows(random.Random(0).choices(range(1, 500), k=62))
    batches = list(length_grouped(rows, 4, random.Random(1)))
    assert sorted(r["id"] for b in batches for r in b) == list(range(62))
    assert sorted(len(b) for b in batches) == [2] + [4] * 15  # the last batch takes what is left


def test_grouped_batches_pad_far_less_than_batches_drawn_at_random():
    rng = random.Random(0)
    rows = _rows([rng.choice([120, 150, 150, 300, 500]) + rng.randrange(30) for _ in range(64)])

    def padded_over_real(batches):
        return sum(max(len(r["input_ids"]) for r in b) * len(b) for b in batches) / sum(len(r["input_ids"]) for b in batches for r in b)

    drawn = [rows[i : i + 4] for i in range(0, 64, 4)]  # as the shuffled stream gives them
    grouped = list(length_grouped(rows, 4, random.Random(1)))
    assert padded_over_real(grouped) < 1.1 < 1.3 < padded_over_real(drawn)


def test_the_batch_order_is_random_and_follows_the_seed():
    rows = _rows(range(1, 65))
    order = [b[0]["id"] for b in length_grouped(rows, 4, random.Random(7))]
    assert order == [b[0]["id"] for b in length_grouped(rows, 4, random.Random(7))]
    assert order != sorted(order)  # not shortest first: a step's length says little about the epoch
