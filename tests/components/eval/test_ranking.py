import numpy as np

from components.data.corpus import Corpus
from components.data.schema import Document
from components.eval.ranking import Ranking, search_index, search_matrix
from components.retrieval.index import build_from_vectors


def test_the_index_and_the_matrix_rank_alike_and_ranks_are_one_based():
    corpus = Corpus(Document(id=f"d{i}", title="", text=f"doc {i}") for i in range(5))
    vectors = np.eye(5, dtype=np.float32)
    queries = np.array([[0.1, 0.9, 0.3, 0, 0.05], [0.1, 0.05, 0, 0.2, 1]], dtype=np.float32)  # no ties in the top 3
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    by_index = search_index(build_from_vectors(vectors, corpus, "f"), queries, depth=3)
    assert by_index == search_matrix(queries, vectors, corpus.ids, depth=3) == [["d1", "d2", "d0"], ["d4", "d3", "d0"]]
    ranking = Ranking([("q", 0), ("q", 1)], [{"d2"}, {"d9"}], by_index)
    assert ranking.ranks() == [2, None] and ranking.metrics([1, 3])["recall@3"] == 0.5
    assert ranking.subset([1]).queries == [("q", 1)] and ranking.curve(3) == [0.0, 0.5, 0.5]
