"""Calibrating the threshold policy (GenerationConfig.retrieval_threshold): the τ above which
P([RQ]) makes the decoder retrieve, chosen for one model on rows it was trained on.

Teacher forcing gives P([RQ]) at every position of a gold walk that has a target; the positions
whose target IS [RQ] are where the walk retrieves. τ is the cut that best separates the two (the
best F1 of "P([RQ]) > τ" as a detector of those positions), so the decoder retrieves where the
walks do even when another token is a little likelier. The rows are training rows, never the
evaluation split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from components.data.collate import Collator
from components.data.tokenize import IGNORE, EncodedExample


@dataclass
class Calibration:
    threshold: float
    f1: float  # of the detector at τ
    precision: float
    recall: float
    positions: int  # target positions scored
    retrievals: int  # of which the target was [RQ]
    argmax_recall: float  # share of [RQ] targets where [RQ] was already the likeliest token


@torch.no_grad()
def rq_probabilities(model, rows: Sequence[EncodedExample], batch_size: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P([RQ]) at every target position of `rows`, whether the target was [RQ], and whether [RQ]
    was the likeliest token there."""
    collate, query = Collator(model.formatter.pad_id), model.formatter.query_id
    was_training = model.training
    model.eval()
    probs, is_rq, top = [], [], []
    for start in range(0, len(rows), batch_size):
        batch = collate(list(rows[start : start + batch_size])).to(model.device)
        hidden = model.hidden_states(batch.input_ids, batch.attention_mask)
        targets = batch.labels[:, 1:]
        keep = targets != IGNORE
        logits = model.hf.get_output_embeddings()(hidden[:, :-1][keep]).float()
        probs.append(torch.softmax(logits, dim=-1)[:, query].cpu())
        is_rq.append((targets[keep] == query).cpu())
        top.append((logits.argmax(dim=-1) == query).cpu())
    model.train(was_training)
    return tuple(torch.cat(x).numpy() if x else np.zeros(0) for x in (probs, is_rq, top))  # type: ignore[return-value]


def calibrate(probs: np.ndarray, is_rq: np.ndarray, argmax_rq: np.ndarray) -> Calibration:
    """The τ with the best F1, among the midpoints between consecutive distinct probabilities."""
    positives = int(is_rq.sum())
    if positives == 0:
        raise ValueError("no [RQ] target among the calibration rows: give rows that retrieve")
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


def calibrate_model(model, rows: Sequence[EncodedExample], batch_size: int = 8) -> Calibration:
    return calibrate(*rq_probabilities(model, rows, batch_size))
