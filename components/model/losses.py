"""The joint loss: λ_gen · next-token cross-entropy + λ_ret · contrastive loss on RET vectors.

Scores are dot products of L2-normalised vectors. Each query is scored against every document in
the batch (its own positives and hard negatives, the other rows' documents as in-batch
negatives) and, through a pluggable all-gather, the other workers' documents too. Documents that
are also positives of a query (another acceptable page, the same page fetched by another row or
worker) are never counted as its negatives.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F

from components.config import LossConfig
from components.data.collate import Batch


class Gather(Protocol):
    def __call__(self, local: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Concatenate `local` [n, ...] from every worker; return it and where `local` starts."""


def local_gather(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One process: the batch is the whole world."""
    return local, 0


def all_gather(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Across a torch.distributed group. Rows may differ in number per worker; this worker's rows
    keep their gradient, the others' arrive detached (as in DPR / GritLM). Every rank must call
    it, also with no rows, or the collective hangs."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return local_gather(local)
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=local.device))
    sizes = [int(s) for s in sizes]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.shape[0]] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts = [p[:n] for p, n in zip(parts, sizes)]
    parts[rank] = local
    return torch.cat(parts), sum(sizes[:rank])


def info_nce(scores: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the target among the non-excluded columns of `scores / τ`."""
    logits = scores.masked_fill(exclude, float("-inf")) / temperature
    return F.cross_entropy(logits, target)


def bpr(scores: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: mean of -log σ(s_pos − s_neg) over every (query, negative)."""
    rows = torch.arange(scores.shape[0], device=scores.device)
    negative = ~exclude
    negative[rows, target] = False
    margins = scores[rows, target].unsqueeze(1) - scores
    terms = -F.logsigmoid(margins[negative])
    return terms.mean() if terms.numel() else scores.sum() * 0.0


def retrieval_loss(
    queries: torch.Tensor, documents: torch.Tensor, batch: Batch, cfg: LossConfig, gather: Gather = local_gather
) -> torch.Tensor:
    """Contrastive loss of `queries` [Q, H] against `documents` [D, H] (both normalised)."""
    if not cfg.cross_worker_negatives:
        gather = local_gather
    all_docs, offset = gather(documents)  # collective: called even when this worker has no query
    all_keys, _ = gather(batch.doc_keys)
    if queries.shape[0] == 0:
        return queries.sum() * 0.0 + documents.sum() * 0.0
    target = batch.positive + offset
    scores = queries @ all_docs.T
    rows = torch.arange(queries.shape[0], device=queries.device)

    exclude = (all_keys[None, None, :] == batch.positive_keys[:, :, None]).any(dim=1)
    if not cfg.in_batch_negatives:
        candidate = torch.zeros_like(exclude)
        q, h = torch.nonzero(batch.hard_negatives >= 0, as_tuple=True)
        candidate[q, batch.hard_negatives[q, h] + offset] = True
        exclude |= ~candidate
    exclude[rows, target] = False

    if cfg.kind == "bpr":
        return bpr(scores, target, exclude)
    return info_nce(scores, target, exclude, cfg.temperature)


def joint_loss(lm_loss: torch.Tensor, ret_loss: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    return cfg.lambda_gen * lm_loss + cfg.lambda_ret * ret_loss
