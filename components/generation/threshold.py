"""Calibrating the threshold policy (GenerationConfig.retrieval_threshold): the τ above which
P([RQ]) makes the decoder retrieve, chosen for one model on rows it was trained on.

Teacher forcing gives P([RQ]) at every position of a gold walk that has a target; the positions
whose target IS [RQ] are where the walk retrieves. τ is the cut that best separates the two (the
best F1 of "P([RQ]) > τ" as a detector of those positions), so the decoder retrieves where the
walks do even when another token is a little likelier. The rows are training rows, never the
evaluation split.

The same for `[EL]` (GenerationConfig.link_threshold) on linking rows, at the positions where link
mode lets the model write it: where the text since the previous `[EL]` ends with a surface form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from components.data.aliases import Matcher
from components.data.collate import Collator
from components.data.tokenize import IGNORE, EncodedExample


@dataclass
class Calibration:
    threshold: float
    f1: float  # of the detector at τ
    precision: float
    recall: float
    positions: int  # target positions scored
    retrievals: int  # of which the target was the token ([RQ] or [EL])
    argmax_recall: float  # share of those targets where the token was already the likeliest


@torch.no_grad()
def token_probabilities(model, rows: Sequence[EncodedExample], token: int, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(token) at every target position of `rows`, whether the target was that token, and whether
    it was the likeliest token there."""
    collate = Collator(model.formatter.pad_id)
    was_training = model.training
    model.eval()
    probs, is_rq, top = [], [], []
    for start in range(0, len(rows), batch_size):
        batch = collate(list(rows[start : start + batch_size])).to(model.device)
        hidden = model.hidden_states(batch.input_ids, batch.attention_mask)
        targets = batch.labels[:, 1:]
        keep = targets != IGNORE
        logits = model.hf.get_output_embeddings()(hidden[:, :-1][keep]).float()
        probs.append(torch.softmax(logits, dim=-1)[:, token].cpu())
        is_rq.append((targets[keep] == token).cpu())
        top.append((logits.argmax(dim=-1) == token).cpu())
    model.train(was_training)
    return tuple(torch.cat(x).numpy() if x else np.zeros(0) for x in (probs, is_rq, top))  # type: ignore[return-value]


def calibrate(probs: np.ndarray, is_rq: np.ndarray, argmax_rq: np.ndarray) -> Calibration:
    """The τ with the best F1, among the midpoints between consecutive distinct probabilities."""
    positives = int(is_rq.sum())
    if positives == 0:
        raise ValueError("no target is the token among the calibration rows: give rows that retrieve (or link)")
    order = np.argsort(-probs, kind="stable")
    sorted_p, hits = probs[order], is_rq[order].astype(np.int64)
    true_pos = np.cumsum(hits)  # retrieving at the top n positions
    n = np.arange(1, len(sorted_p) + 1)
    f1 = 2 * true_pos / (n + positives)
    last = np.r_[sorted_p[1:] < sorted_p[:-1], True]  # cut only between distinct values
    best = int(np.argmax(np.where(last, f1, -1)))
    below = sorted_p[best + 1] if best + 1 < len(sorted_p) else 0.0
    return Calibration(
        threshold=float((sorted_p[best] + below) / 2), f1=float(f1[best]), precision=float(true_pos[best] / n[best]),
        recall=float(true_pos[best] / positives), positions=len(probs), retrievals=positives,
        argmax_recall=float((argmax_rq & is_rq).sum() / positives),
    )


def calibrate_model(model, rows: Sequence[EncodedExample], batch_size: int = 8, token: int | None = None) -> Calibration:
    """τ for `token` ([RQ] unless given) on `rows`."""
    return calibrate(*token_probabilities(model, rows, model.formatter.query_id if token is None else token, batch_size))


def where_linkable(row: EncodedExample, tokenizer, forms: Matcher, entity: int) -> EncodedExample:
    """`row` with only the targets at which link mode lets the model write `[EL]` (`entity`): the
    text written since the previous `[EL]` ends with a surface form. Label t is input t, predicted
    from the inputs before it."""
    labels = list(row.labels)
    start = next((t for t, label in enumerate(labels) if label != IGNORE), len(labels))  # the answer's first token
    for t in range(start, len(labels)):
        if labels[t] != IGNORE and forms.ending(tokenizer.decode(row.input_ids[start:t], skip_special_tokens=True)) is None:
            labels[t] = IGNORE
        if row.input_ids[t] == entity:
            start = t + 1
    return dataclasses.replace(row, labels=labels)
