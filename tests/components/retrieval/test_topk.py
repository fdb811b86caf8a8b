import numpy as np

from components.retrieval.topk import top_k


def test_search_returns_top_k_best_first():
    docs = np.array([[1, 0], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32)
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    scores, top = top_k(queries, docs, k=2)
    assert top.tolist() == [[0, 1], [2, 1]]
    np.testing.assert_allclose(scores, [[1, 0.6], [1, 0.8]])
    assert top_k(queries, docs, k=10)[1].shape == (2, 4)  # k is capped at the corpus size
