"""Retrieval and answer metrics: Recall@k, MRR, evidence recall, SQuAD-style exact match and F1,
and FanOutQA's loose and strict accuracy."""

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


def recall_curve(ranked: Sequence[Sequence[str]], gold: Sequence[set[str]], depth: int) -> list[float]:
    """Recall@1 … Recall@depth."""
    return [recall_at_k(ranked, gold, k) for k in range(1, depth + 1)]


def evidence_recall(retrieved: Sequence[str], gold: set[str]) -> float:
    """Share of a question's gold pages among everything retrieved while answering it."""
    return len(set(retrieved) & gold) / len(gold) if gold else 0.0


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


def answer_in_text(reference, candidate: str) -> tuple[int, int]:
    """(found, total) answer strings of `reference` (a string, number, list or dict, as FanOutQA
    answers are) that occur in `candidate` between word boundaries, both normalised.

    FanOutQA's own string metric (`fanoutqa.eval.string.answer_in_text`) with one difference: it
    normalises with spaCy's lemmatiser, whose model is a download; here SQuAD's normalisation
    stands in (lower case, no punctuation or articles)."""
    if isinstance(reference, list):
        counts = [answer_in_text(r, candidate) for r in reference]
        return sum(f for f, _ in counts), sum(n for _, n in counts)
    if isinstance(reference, dict):
        return answer_in_text([*reference.keys(), *reference.values()], candidate)
    if isinstance(reference, bool):
        reference = "yes" if reference else "no"
    wanted = normalize_answer(str(reference))
    found = bool(wanted) and re.search(rf"\b{re.escape(wanted)}\b", normalize_answer(candidate)) is not None
    return int(found), 1


def loose_accuracy(reference, candidate: str) -> float:
    """FanOutQA's loose accuracy: the share of the reference's answer strings the text contains."""
    found, total = answer_in_text(reference, candidate)
    return found / total if total else 0.0


def strict_accuracy(reference, candidate: str) -> float:
    """FanOutQA's strict accuracy: 1 when the text contains every answer string of the reference."""
    found, total = answer_in_text(reference, candidate)
    return float(total > 0 and found == total)
