"""Exact top-k by dot product over a matrix of unit vectors: what a Flat index returns, for the
places that rank a matrix they hold in memory (hard-negative mining, evaluation)."""

from __future__ import annotations

import numpy as np


def top_k(query_vecs: np.ndarray, doc_vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product: (scores, row positions in doc_vecs), best first, each (n, k)."""
    k = min(k, doc_vecs.shape[0])
    scores = query_vecs @ doc_vecs.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(top, order, axis=1)
