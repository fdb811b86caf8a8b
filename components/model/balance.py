"""Each loss's gradient divided by its own running RMS, weight by weight, before they are summed.

On smollm2-cpu the retrieval loss's gradient is 5 to 20 times the next-token loss's (README, "Where
the LM-loss gap comes from"). AdamW divides each weight's update by the RMS of the *summed*
gradient, so the larger loss sets every shared weight's step and the next-token loss barely moves
the model: in 24 steps the joint model took the other tokens' cross-entropy from 2.28 nats (the
base model) to 2.08, where the plain-LM fine-tune reached 1.59. Dividing each loss's gradient by
its own RMS first (a second moment per loss, as Adam keeps one per weight) gives each loss a
unit-scale say in every weight. The optimizer then steps on the sum as before, so DeepSpeed's
partitioning, clipping and schedule are unchanged. The cost is one more backward through the
generation rows per step.

    balance = PerLossRMS(model.parameters(), reduce=all_reduce_mean)
    update(balance.surrogate([lm_loss, ret_loss], [λ_gen, λ_ret]))   # its gradient: the balanced sum

The weights apply after the normalisation: they set each loss's say, which its scale no longer does.

Measured on smollm2-cpu (README): held-out LM loss ×1.15 of the plain LM where the sum gives ×1.55,
but teacher-forced R@1 0.485 where the sum gives 0.772: the same trade as λ_ret 0.25 on the sum,
at the cost of the second backward. So "sum" stays the default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]  # a flat gradient → its mean over the workers


def local_mean(flat: torch.Tensor) -> torch.Tensor:
    """One process: its gradient is the world's."""
    return flat


class PerLossRMS:
    def __init__(self, params: Iterable[torch.nn.Parameter], beta2: float = 0.999, eps: float = 1e-3,
                 reduce: Reduce = local_mean):  # fmt: skip
        self.params = [p for p in params if p.requires_grad]
        self.beta2, self.eps, self.reduce = beta2, eps, reduce
        self.steps = 0
        self.second_moments: list[torch.Tensor] = []  # per loss: flat, over self.params

    def gradients(self, losses: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> list[torch.Tensor]:
        """Σ_k w_k · g_k / (RMS_k + eps·mean RMS_k) per weight, g_k each loss's gradient averaged over
        the workers (a collective when `reduce` is one: every rank, every step, the same number of
        losses); w_k 1 unless given."""
        weights = [1.0] * len(losses) if weights is None else weights
        flats = [self.reduce(self._flat_gradient(loss, retain=i < len(losses) - 1)) for i, loss in enumerate(losses)]
        if not self.second_moments:
            self.second_moments = [torch.zeros_like(f) for f in flats]
        if len(flats) != len(self.second_moments):
            raise ValueError(f"{len(flats)} losses given, {len(self.second_moments)} before")
        self.steps += 1
        correction = 1 - self.beta2**self.steps  # Adam's bias correction: the first step is sign(g_k)
        total = torch.zeros_like(flats[0])
        for flat, moment, weight in zip(flats, self.second_moments, weights):
            moment.mul_(self.beta2).addcmul_(flat, flat, value=1 - self.beta2)
            rms = (moment / correction).sqrt()
            # eps relative to the loss's mean RMS over all weights, so that nothing depends on its
            # scale: a weight whose gradient is under 1/1000 of the loss's typical one (rounding
            # noise, where the true gradient is 0) is damped instead of taking a full-size step.
            total += weight * flat / (rms + self.eps * rms.mean().clamp_min(torch.finfo(rms.dtype).tiny))
        return list(torch.split(total, [p.numel() for p in self.params]))

    def surrogate(self, losses: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
        """A scalar whose gradient with respect to the parameters is the balanced sum: what the
        optimizer (or a DeepSpeed engine) backpropagates in place of the losses' sum."""
        grads = self.gradients(losses, weights)
        return sum((p * g.view_as(p)).sum() for p, g in zip(self.params, grads))

    def _flat_gradient(self, loss: torch.Tensor, retain: bool) -> torch.Tensor:
        grads = torch.autograd.grad(loss, self.params, retain_graph=retain, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, self.params)])

    def state_dict(self) -> dict:
        return {"steps": self.steps, "second_moments": [m.cpu() for m in self.second_moments]}

    def load_state_dict(self, state: dict) -> None:
        device = self.params[0].device
        self.steps = int(state["steps"])
        self.second_moments = [m.to(device) for m in state["second_moments"]]
