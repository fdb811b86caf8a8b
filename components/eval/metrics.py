"""Retrieval and answer metrics: Recall@k, MRR, and SQuAD-style exact match / F1."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence


def recall_at_k(ranked: Sequence[Sequence[str]], gold: Sequence[set[str]], k: int) -> float:
    """Fraction of queries with an acceptable document among their first k results."""
    hits = sum(bool(set(r[:k]) & g) for r, g in zip(ranked, gold, strict=True))
    return hits / max(len(gold), 1)


def mrr(ranked: Sequence[Sequence[str]], gold: Sequence[set[str]]) -> float:
    """Mean reciprocal rank of the first acceptable document (0 when none is in the list)."""
    total = 0.0
    for r, g in zip(ranked, gold, strict=True):
        total += next((1.0 / (i + 1) for i, d in enumerate(r) if d in g), 0.0)
    return total / max(len(gold), 1)


def retrieval_metrics(ranked: Sequence[Sequence[str]], gold: Sequence[set[str]], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k for each k and MRR over the lists given (MRR@max k when they hold max k)."""
    out = {f"recall@{k}": recall_at_k(ranked, gold, k) for k in ks}
    out["mrr"] = mrr(ranked, gold)
    out["queries"] = float(len(gold))
    return out


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the SQuAD convention)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref:
        return float(pred == ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)
