"""Free-running evaluation: the model answers each question by itself, as the server runs it (the
in-stream decoder, its retrieval policy, the generation settings given), and what it retrieved
along the way is scored against the question's gold pages; beside it, the pipeline a user would
build instead: a separate retriever given the user's question, its top N documents.

    generations = answer(decoder, prompts, cfg)          # in-stream, batched, in the prompts' order
    ours = [retrieved(g) for g in generations]
    theirs = top_n(question_vectors, doc_vectors, doc_ids, budgets)   # MiniLM, N per question
    summary(ours, gold, generations) / evidence_recall per question
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from components.config import GenerationConfig
from components.eval.metrics import evidence_recall
from components.generation.decoder import Generation, InStreamDecoder
from components.retrieval.topk import top_k


def answer(decoder: InStreamDecoder, prompts: Sequence[Sequence[int]], cfg: GenerationConfig,
           batch_size: int = 16, progress: str | None = None) -> list[Generation]:
    """Every prompt answered; batches of similar prompt length decode together (a batch's
    forwards are as wide as its longest pending chunk). `progress` names a tqdm bar."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[Generation | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=progress, unit="answer", disable=progress is None) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, generation in zip(chunk, decoder.generate([prompts[i] for i in chunk], cfg)):
                out[i] = generation
            bar.update(len(chunk))
    return out  # type: ignore[return-value]


def retrieved(generation: Generation) -> list[str]:
    """Every document inserted while answering, hop by hop."""
    return [doc_id for hop in generation.hops for doc_id in hop.doc_ids]


def top_n(question_vectors: np.ndarray, doc_vectors: np.ndarray, doc_ids: Sequence[str],
          budgets: Sequence[int]) -> list[list[str]]:
    """Per question, the top `budgets[i]` documents for its vector (exact search)."""
    if len(budgets) == 0:
        return []
    _, positions = top_k(question_vectors, doc_vectors, max(max(budgets), 1))
    return [[doc_ids[p] for p in row[:n]] for row, n in zip(positions, budgets)]


def summary(prefix: str, found: Sequence[Sequence[str]], gold: Sequence[set[str]],
            generations: Sequence[Generation] | None = None) -> dict[str, float]:
    """Mean evidence recall over the questions; with the generations, also how often the model
    answered without retrieving and how many hops it made per answer."""
    n = max(len(gold), 1)
    out = {f"{prefix}_evidence_recall": sum(evidence_recall(f, g) for f, g in zip(found, gold, strict=True)) / n,
           f"{prefix}_documents_per_question": sum(len(f) for f in found) / n}
    if generations is not None:
        out[f"{prefix}_no_retrieval_rate"] = sum(not g.hops for g in generations) / n
        out[f"{prefix}_hops_per_answer"] = sum(len(g.hops) for g in generations) / n
        out[f"{prefix}_tokens_per_answer"] = sum(len(g.generated) for g in generations) / n
    return out
