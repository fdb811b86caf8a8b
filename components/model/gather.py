"""The global batch of the contrastive loss: every data-parallel worker's queries and documents.

Each worker gathers the queries and documents of all workers (its own rows keep their gradient,
the others' arrive detached, as in DPR and GritLM) with what is needed to score them: each
query's target and hard negatives re-indexed into the gathered documents, its positive keys
padded to a common width. Every worker then computes the loss of the *global* batch, so a local
document is pushed by every worker's queries, not only by its own.

    scored = world_batch(queries, documents, batch, all_gather)   # a collective: every rank, every step
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F

from components.data.collate import PAD_KEY, Batch

NO_DOCUMENT = -1  # padding in `hard_negatives`


class Gather(Protocol):
    def __call__(self, local: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Concatenate `local` [n, ...] from every worker; return it and where `local` starts."""


def local_gather(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One process: the batch is the whole world."""
    return local, 0


def all_gather(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Across a torch.distributed group. Rows may differ in number per worker, the other dimensions
    may not; this worker's rows keep their gradient, the others' arrive detached. Every rank must
    call it, also with no rows, or the collective hangs."""
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


def all_reduce_mean(flat: torch.Tensor) -> torch.Tensor:
    """The mean of `flat` over the workers of a torch.distributed group (a collective)."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return flat
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return flat / dist.get_world_size()


@dataclass
class WorldBatch:
    """What the contrastive loss scores: the queries and documents of every worker, in rank order."""

    queries: torch.Tensor  # [Q, H]
    documents: torch.Tensor  # [D, H]
    doc_keys: torch.Tensor  # [D]
    target: torch.Tensor  # [Q] index into `documents`
    positive_keys: torch.Tensor  # [Q, P] keys of each query's acceptable positives, PAD_KEY-padded
    hard_negatives: torch.Tensor  # [Q, N] indices into `documents`, NO_DOCUMENT-padded
    workers: int  # data-parallel workers that contributed (1 with local_gather)


def _pad_columns(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[1]), value=value) if x.shape[1] < width else x


def world_batch(queries: torch.Tensor, documents: torch.Tensor, batch: Batch, gather: Gather = local_gather) -> WorldBatch:
    """Gather the scoring inputs of every worker. A collective: every rank calls it every step, also
    with no queries or no documents, and in the same order of gathers."""
    device = batch.doc_keys.device
    # One row per worker: the widths its ragged columns need, so that every worker pads alike.
    widths, _ = gather(torch.tensor([[batch.positive_keys.shape[1], batch.hard_negatives.shape[1]]], device=device))
    positive_width, negative_width = (int(w) for w in widths.max(dim=0).values)

    all_documents, offset = gather(documents)
    doc_keys, _ = gather(batch.doc_keys)
    all_queries, _ = gather(queries)
    target, _ = gather(batch.positive + offset)
    positive_keys, _ = gather(_pad_columns(batch.positive_keys, positive_width, PAD_KEY))
    local_negatives = torch.where(batch.hard_negatives >= 0, batch.hard_negatives + offset, batch.hard_negatives)
    hard_negatives, _ = gather(_pad_columns(local_negatives, negative_width, NO_DOCUMENT))
    return WorldBatch(all_queries, all_documents, doc_keys, target, positive_keys, hard_negatives, workers=widths.shape[0])
