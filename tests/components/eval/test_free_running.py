import numpy as np
import pytest

from components.config import GenerationConfig
from components.eval.free_running import answer, retrieved, summary, top_n
from components.generation.decoder import InStreamDecoder
from components.retrieval.index import build_index


def test_answers_come_back_in_the_prompts_order_whatever_the_batching(trained_tiny):
    model = trained_tiny.model
    decoder = InStreamDecoder(model, build_index(model, trained_tiny.corpus))
    prompts = [model.formatter.prompt(e.prompt) for e in trained_tiny.examples[:6]]
    cfg = GenerationConfig(max_new_tokens=16)
    batched = answer(decoder, prompts, cfg, batch_size=4)
    alone = [decoder.generate([p], cfg)[0] for p in prompts]
    assert [g.generated for g in batched] == [g.generated for g in alone]
    assert [retrieved(g) for g in batched] == [[d for h in g.hops for d in h.doc_ids] for g in alone]


def test_top_n_takes_each_questions_own_budget():
    docs = np.eye(4, dtype=np.float32)
    questions = np.array([[1, 0.5, 0.2, 0], [0, 0, 0.3, 1]], dtype=np.float32)
    assert top_n(questions, docs, ["a", "b", "c", "d"], [2, 0]) == [["a", "b"], []]
    assert top_n(questions, docs, ["a", "b", "c", "d"], []) == []


def test_summary_averages_over_questions(trained_tiny):
    s = summary("x", [["a", "b"], []], [{"a", "z"}, {"q"}])
    assert s == {"x_evidence_recall": pytest.approx(0.25), "x_documents_per_question": 1.0}
