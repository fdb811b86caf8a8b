"""Hard negatives: MiniLM's top documents that are not the gold page."""

from __future__ import annotations

import numpy as np

from components.datasets.negatives import MiniLMNegatives


def test_minilm_negatives_rank_by_score_and_drop_the_gold_page():
    class Fixed:  # stands in for MiniLMRetriever: query i has vector e_i
        def encode(self, texts):
            return np.eye(3, dtype=np.float32)[: len(texts)]

    doc_vecs = np.array([[0.9, 0, 0], [0.5, 0, 0], [0.7, 0, 0], [0, 1, 0]], dtype=np.float32)
    mine = MiniLMNegatives(Fixed(), ["A", "B", "C", "D"], doc_vecs, k=2)
    # Query 0 ranks A, C, B; A is gold → C, B. Query 1 ranks D first; D is not gold → D then a tie.
    negatives = mine(["q0", "q1"], ["A", "X"])
    assert negatives[0] == ["C", "B"]
    assert negatives[1][0] == "D" and len(negatives[1]) == 2
    assert MiniLMNegatives(Fixed(), ["A"], doc_vecs[:1], k=0)(["q"], ["A"]) == [[]]


# --- vital articles and inverse cloze -------------------------------------------------------------
