"""One retriever's ranked documents for a list of queries (teacher-forced hops), with their gold
pages: Recall@k, MRR, each query's rank, the recall curve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from components.eval.metrics import recall_curve, retrieval_metrics
from components.retrieval.index import DocumentIndex
from components.retrieval.topk import top_k

RANK_DEPTH = 100  # each query's rank is looked up this deep; a gold page further down is "> 100"


@dataclass
class Ranking:
    queries: list[tuple[str, int]]  # (example id, hop index)
    gold: list[set[str]]
    ranked: list[list[str]]  # doc ids, best first, RANK_DEPTH deep

    def metrics(self, ks: Sequence[int]) -> dict[str, float]:
        """Recall@k and MRR over the top max(ks) (MRR@10 by default)."""
        return retrieval_metrics([r[: max(ks)] for r in self.ranked], self.gold, ks)

    def ranks(self) -> list[int | None]:
        """1-based rank of each query's first gold page; None when deeper than RANK_DEPTH."""
        return [next((i + 1 for i, d in enumerate(r) if d in g), None) for r, g in zip(self.ranked, self.gold)]

    def curve(self, depth: int) -> list[float]:
        return recall_curve(self.ranked, self.gold, depth)

    def subset(self, keep: Sequence[int]) -> Ranking:
        return Ranking([self.queries[i] for i in keep], [self.gold[i] for i in keep], [self.ranked[i] for i in keep])


def search_index(index: DocumentIndex, queries: np.ndarray, depth: int = RANK_DEPTH) -> list[list[str]]:
    """Document ids, best first, as the served index ranks them."""
    if len(queries) == 0:
        return []
    _, positions = index.search_arrays(np.ascontiguousarray(queries, dtype=np.float32), depth)
    return [[index.corpus.at(int(p)).id for p in row if p >= 0] for row in positions]


def search_matrix(queries: np.ndarray, doc_vectors: np.ndarray, doc_ids: Sequence[str], depth: int = RANK_DEPTH) -> list[list[str]]:
    """Document ids, best first, by exact dot product against an embedded corpus."""
    if len(queries) == 0:
        return []
    _, positions = top_k(queries, doc_vectors, depth)
    return [[doc_ids[p] for p in row] for row in positions]
