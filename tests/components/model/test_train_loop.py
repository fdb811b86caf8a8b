import torch

from components.data.collate import Collator
from components.model.train_loop import train
from tests.conftest import make_example


def test_tiny_llama_learns_to_generate_and_retrieve(trained_tiny):
    """The session's `trained_tiny` fixture is this test's training run (300 steps, batch 8)."""
    result, chance = trained_tiny.result, 1 / len(trained_tiny.corpus)
    print(f"recall@1 before {trained_tiny.recall_before:.3f} after {trained_tiny.recall_after:.3f} (chance {chance:.3f}); "
          f"lm loss {result.mean('lm_loss', first=10):.2f} → {result.mean('lm_loss', last=10):.2f}")
    assert [s.step for s in result.steps] == list(range(1, 301))
    assert result.mean("lm_loss", last=10) < 0.2 * result.mean("lm_loss", first=10)
    assert result.mean("ret_loss", last=10) < 0.5 * result.mean("ret_loss", first=10)
    assert trained_tiny.recall_before < 3 * chance
    assert trained_tiny.recall_after >= 10 * chance  # well above chance: 0.31 with 32 documents


def test_train_resumes_counting_from_start_step_and_stops_at_max_steps(tiny_model, small_corpus):
    rows = [tiny_model.formatter.example(make_example("Who?[RQ] Ada.", [["ada"]], [["paris"]]), small_corpus, 256)]
    batch = Collator(tiny_model.formatter.pad_id)(rows)
    seen = []
    result = train(tiny_model, torch.optim.SGD(tiny_model.parameters(), lr=0.1), [batch] * 10,
                   max_steps=7, start_step=4, on_step=seen.append)
    assert [s.step for s in result.steps] == [5, 6, 7] and seen == result.steps
    assert all(s.tokens == batch.num_tokens and s.queries == 1 and s.tokens_per_s > 0 for s in seen)


def test_with_no_retrieval_weight_no_document_row_is_embedded(tiny_model, small_corpus):
    from components.config import LossConfig

    rows = [tiny_model.formatter.example(make_example("Who?[RQ] Ada.", [["ada"]], [["paris"]]), small_corpus, 256)]
    batch = Collator(tiny_model.formatter.pad_id)(rows)
    widths = []
    decoder = tiny_model.hf.get_decoder()
    hook = decoder.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        result = train(tiny_model, torch.optim.SGD(tiny_model.parameters(), lr=0.1), [batch], LossConfig(lambda_ret=0.0), max_steps=1)
    finally:
        hook.remove()
    assert widths == [tuple(batch.input_ids.shape)]  # the generation rows only
    assert result.steps[0].ret_loss == 0.0 and result.steps[0].tokens == int(batch.attention_mask.sum())
