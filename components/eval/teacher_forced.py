"""In-stream retrieval quality, teacher-forced: one forward over each gold sequence (the answer
text with the gold passages already inserted) gives the query vector at every `[RQ]` exactly as
the decoder would see it when it reaches that point; each is ranked against the corpus."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from components.data.collate import Collator
from components.data.tokenize import EncodedExample
from components.model.onegen import OneGenModel


@dataclass
class TeacherForced:
    queries: torch.Tensor  # [Q, H] unit query vectors at every [RQ]
    gold: list[set[str]]  # each query's acceptable document ids
    lm_loss: float  # mean next-token cross-entropy over the GEN tokens (token-weighted)
    lm_tokens: int


@torch.no_grad()
def teacher_forced(model: OneGenModel, rows: Sequence[EncodedExample], batch_size: int = 8) -> TeacherForced:
    """One forward per batch of gold sequences gives both the query vectors and the LM loss.

    Rows are batched shortest first (dev rows range from tens to over a thousand tokens: in file
    order half the compute went to padding); the vectors come back in the rows' order."""
    collate = Collator(model.formatter.pad_id)
    was_training = model.training
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    vectors: list[torch.Tensor | None] = [None] * len(rows)
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(order), batch_size):
        picked = order[start : start + batch_size]
        batch = collate([rows[i] for i in picked]).to(model.device)
        hidden = model.hidden_states(batch.input_ids, batch.attention_mask)
        found = torch.nn.functional.normalize(hidden[batch.query_rows, batch.query_cols].float(), dim=-1).cpu()
        for j, i in enumerate(picked):  # a row's queries, in the order of its [RQ]s
            vectors[i] = found[batch.query_rows.cpu() == j]
        loss, n = model.lm_loss(hidden, batch.labels)
        loss_sum, tokens = loss_sum + float(loss) * n, tokens + n
    model.train(was_training)
    gold = [{row.doc_ids[i] for i in positives} for row in rows for positives in row.positives]
    queries = torch.cat(vectors) if vectors else torch.zeros((0, model.hidden_size))
    return TeacherForced(queries, gold, loss_sum / max(tokens, 1), tokens)
