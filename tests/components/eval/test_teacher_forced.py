import torch

from components.eval.teacher_forced import teacher_forced
from tests.conftest import make_example


def test_batching_by_length_gives_each_rows_vectors_in_the_rows_order(tiny_model, small_corpus):
    """Rows of very different lengths, batched shortest first, equal each row run on its own."""
    texts = [
        ("Born where?[RQ] London. Father?[RQ] Byron.", [["ada"], ["byron"]]),
        ("Ada" + " and Ada" * 40 + "?[RQ] London.", [["london"]]),
        ("Paris?[RQ] France.", [["paris"]]),
        ("Where" + " exactly" * 15 + "?[RQ] London. Capital?[RQ] England. Poet?[RQ] Byron.", [["ada"], ["london"], ["byron"]]),
    ]
    rows = [tiny_model.formatter.example(make_example(t, p, example_id=f"r{i}"), small_corpus, 512) for i, (t, p) in enumerate(texts)]
    assert len({len(r.input_ids) for r in rows}) == 4 and sorted(rows, key=lambda r: len(r.input_ids)) != rows

    together = teacher_forced(tiny_model, rows, batch_size=2)
    alone = [teacher_forced(tiny_model, [row], batch_size=1) for row in rows]

    torch.testing.assert_close(together.queries, torch.cat([a.queries for a in alone]), atol=1e-5, rtol=1e-4)
    assert together.gold == [g for a in alone for g in a.gold] == [{"ada"}, {"byron"}, {"london"}, {"paris"}, {"ada"}, {"london"}, {"byron"}]
    mean = sum(a.lm_loss * a.lm_tokens for a in alone) / sum(a.lm_tokens for a in alone)
    assert together.lm_tokens == sum(a.lm_tokens for a in alone) and abs(together.lm_loss - mean) < 1e-4
