"""Hard negatives: the documents MiniLM ranks highest for a query that are not its gold page.
They look right to a plain retriever, so they teach the contrastive loss what "almost" means."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from components.datasets.vital_articles import VitalArticles
from components.retrieval.minilm import MiniLMRetriever, corpus_matrix, document_text
from components.retrieval.topk import top_k


def embed_articles(retriever: MiniLMRetriever, articles: VitalArticles, cache_dir: Path | None = None) -> np.ndarray:
    """MiniLM vectors of "title: description" for every article, row i = articles.documents[i]."""
    ids = [d.id for d in articles.documents]
    texts = [document_text(d, articles.descriptions.get(d.id, "")) for d in articles.documents]
    return corpus_matrix(retriever, ids, texts, cache_dir)


class MiniLMNegatives:
    """A `fanoutqa.NegativeMiner` over an embedded corpus (rows of `doc_vecs` are `doc_ids`)."""

    def __init__(self, retriever: MiniLMRetriever, doc_ids: Sequence[str], doc_vecs: np.ndarray, k: int):
        self.retriever, self.doc_ids, self.doc_vecs, self.k = retriever, list(doc_ids), doc_vecs, k

    def __call__(self, queries: Sequence[str], gold: Sequence[str]) -> list[list[str]]:
        if self.k == 0 or not queries:
            return [[] for _ in queries]
        _, top = top_k(self.retriever.encode(queries), self.doc_vecs, self.k + 1)  # +1: the gold page may be among them
        ranked = [[self.doc_ids[p] for p in row] for row in top]
        return [[d for d in ids if d != g][: self.k] for ids, g in zip(ranked, gold)]
