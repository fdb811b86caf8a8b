"""The joint loss: λ_gen · next-token cross-entropy + λ_ret · contrastive loss on RET vectors.

Scores are dot products of L2-normalised vectors. Each query is scored against every document of
the global batch (`gather.world_batch`): its own positives and hard negatives, the other rows' and
the other workers' documents as in-batch negatives. Documents that are also positives of a query
(another acceptable page, the same page fetched by another row or worker) are never counted as
its negatives; without in-batch negatives a query is scored against its own hard negatives only.

Under data parallelism every worker computes the loss of the global batch, differentiable through
its own rows only; `for_averaged_gradients` scales what is backpropagated so that the average of
the workers' gradients (DDP, DeepSpeed) is the gradient of the global batch's mean loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.config import LossConfig
from components.data.collate import Batch
from components.model.gather import Gather, WorldBatch, local_gather, world_batch


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


def excluded(scored: WorldBatch, in_batch_negatives: bool) -> torch.Tensor:
    """[Q, D] True where a document is not a negative of a query: one of its acceptable positives
    (matched by key, so also another worker's copy), or, without in-batch negatives, anything but
    its own hard negatives. The target column itself is never excluded."""
    exclude = (scored.doc_keys[None, None, :] == scored.positive_keys[:, :, None]).any(dim=1)
    if not in_batch_negatives:
        candidate = torch.zeros_like(exclude)
        q, h = torch.nonzero(scored.hard_negatives >= 0, as_tuple=True)
        candidate[q, scored.hard_negatives[q, h]] = True
        exclude |= ~candidate
    exclude[torch.arange(scored.queries.shape[0], device=exclude.device), scored.target] = False
    return exclude


def contrastive_loss(scored: WorldBatch, cfg: LossConfig) -> torch.Tensor:
    """The mean loss over every query of `scored` (its value is the same on every worker)."""
    if scored.queries.shape[0] == 0:
        return scored.queries.sum() * 0.0 + scored.documents.sum() * 0.0
    scores = scored.queries @ scored.documents.T
    exclude = excluded(scored, cfg.in_batch_negatives)
    if cfg.kind == "bpr":
        return bpr(scores, scored.target, exclude)
    return info_nce(scores, scored.target, exclude, cfg.temperature)


def gathered(
    queries: torch.Tensor, documents: torch.Tensor, batch: Batch, cfg: LossConfig, gather: Gather = local_gather
) -> WorldBatch:
    """The global batch, or this worker's batch alone when cross-worker negatives are off."""
    return world_batch(queries, documents, batch, gather if cfg.cross_worker_negatives else local_gather)


def retrieval_loss(
    queries: torch.Tensor, documents: torch.Tensor, batch: Batch, cfg: LossConfig, gather: Gather = local_gather
) -> torch.Tensor:
    """Contrastive loss of `queries` [Q, H] against `documents` [D, H] (both normalised): the mean
    over the global batch's queries, differentiable through this worker's rows."""
    return contrastive_loss(gathered(queries, documents, batch, cfg, gather), cfg)


def for_averaged_gradients(loss: torch.Tensor, workers: int) -> torch.Tensor:
    """What to backpropagate of a global-batch loss when the gradients of `workers` workers are then
    averaged. Each worker's gradient of the global mean flows through its own rows only, so the
    workers' gradients *sum* to the global mean's gradient; averaging divides by `workers`, which
    this multiplies back. The value to log is `loss` itself."""
    return loss * workers if workers > 1 else loss


def joint_loss(lm_loss: torch.Tensor, ret_loss: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    return cfg.lambda_gen * lm_loss + cfg.lambda_ret * ret_loss
