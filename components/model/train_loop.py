"""The training loop: plain PyTorch, no Ray. The Ray Train worker calls the same function with a
DeepSpeed engine as the model and a `DeepSpeedUpdate` as the optimizer.

    result = train(model, torch.optim.AdamW(model.parameters(), lr=1e-4), batches, LossConfig(), max_steps=100)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from components.config import LossConfig
from components.data.collate import Batch
from components.model.balance import PerLossRMS
from components.model.gather import Gather, local_gather
from components.model.losses import contrastive_loss, for_averaged_gradients, gathered, joint_loss


@runtime_checkable
class Update(Protocol):
    """Backward + optimizer step for one loss; owns clipping, scheduling and zeroing grads."""

    def __call__(self, loss: torch.Tensor) -> None: ...

    @property
    def lr(self) -> float: ...


class TorchUpdate:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None = 1.0, scheduler=None):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.grad_clip, self.scheduler = optimizer, grad_clip, scheduler

    def __call__(self, loss: torch.Tensor) -> None:
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


class DeepSpeedUpdate:
    """DeepSpeed's engine does clipping, ZeRO partitioning and zeroing inside backward/step."""

    def __init__(self, engine):
        self.engine = engine

    def __call__(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    @property
    def lr(self) -> float:
        return self.engine.get_lr()[0]


@dataclass
class StepMetrics:
    step: int
    loss: float
    lm_loss: float
    ret_loss: float
    lr: float
    queries: int
    tokens: int  # real tokens processed (generation + document rows)
    seconds: float
    documents: int  # this worker's document rows
    documents_scored: int  # every worker's: what each query was scored against (cross-worker negatives)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass
class TrainResult:
    steps: list[StepMetrics] = field(default_factory=list)

    def mean(self, name: str, first: int | None = None, last: int | None = None) -> float:
        """Mean of one metric over the first or last n steps (or all)."""
        rows = self.steps[:first] if first else self.steps[-last:] if last else self.steps
        return sum(getattr(s, name) for s in rows) / max(len(rows), 1)


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | Update,
    batches: Iterable[Batch],
    loss_cfg: LossConfig = LossConfig(),
    *,
    max_steps: int,
    start_step: int = 0,
    grad_clip: float | None = 1.0,
    scheduler=None,
    gather: Gather = local_gather,
    device: torch.device | str | None = None,
    on_step: Callable[[StepMetrics], None] | None = None,
    balance: PerLossRMS | None = None,
) -> TrainResult:
    """Run steps `start_step+1 … max_steps` (fewer if `batches` runs out) and return their metrics.

    `model(batch)` must return `model.Output` (a OneGenModel, or a DeepSpeed engine around one).
    `on_step` sees each step's metrics after the update: log, checkpoint, report from there.
    With `loss_cfg.balance` "per_loss_rms" the losses' gradients are balanced by `balance` (the
    caller's, to checkpoint it and reduce across workers; by default a new one-process one).
    """
    update = optimizer if isinstance(optimizer, Update) else TorchUpdate(model, optimizer, grad_clip, scheduler)
    balance = (balance or PerLossRMS(model.parameters())) if loss_cfg.balanced else None
    model.train()
    result = TrainResult()
    step = start_step
    for batch in batches:
        if step >= max_steps:
            break
        step += 1
        started = time.perf_counter()
        if loss_cfg.lambda_ret == 0:  # no retrieval loss: no document rows to embed either
            batch = batch.generation_only()
        if device is not None:
            batch = batch.to(device)
        out = model(batch)
        scored = gathered(out.query_vectors, out.doc_vectors, batch, loss_cfg, gather)  # a collective
        ret_loss = contrastive_loss(scored, loss_cfg)  # the global batch's mean: logged as it is
        loss = joint_loss(out.lm_loss, ret_loss, loss_cfg)
        lm_loss = out.lm_loss + (loss_cfg.emission_weight - 1) * out.emission_loss  # [RQ] targets weighed up
        terms, weights = [lm_loss, for_averaged_gradients(ret_loss, scored.workers)], [loss_cfg.lambda_gen, loss_cfg.lambda_ret]
        update(balance.surrogate(terms, weights) if balance is not None else joint_loss(*terms, loss_cfg))
        metrics = StepMetrics(
            step=step,
            loss=loss.item(),
            lm_loss=out.lm_loss.item(),
            ret_loss=ret_loss.item(),
            lr=update.lr,
            queries=int(batch.query_rows.numel()),
            tokens=batch.num_tokens,
            seconds=time.perf_counter() - started,
            documents=int(out.doc_vectors.shape[0]),
            documents_scored=int(scored.documents.shape[0]),
        )
        result.steps.append(metrics)
        if on_step is not None:
            on_step(metrics)
    return result
