import copy

import pytest
import torch
from torch import nn

from components.config import LossConfig
from components.data.collate import Collator
from components.model.balance import PerLossRMS
from components.model.train_loop import train
from tests.conftest import make_example


def two_losses(model: nn.Linear, seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    """Two different losses of one small model, the second `scale` times larger."""
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(seed))
    out = model(x)
    return [out[:, 0].square().mean(), scale * (out[:, 1] - 1).abs().mean()]


def linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def test_the_first_step_gives_each_loss_about_the_sign_of_its_gradient():
    model = linear()
    g = [torch.autograd.grad(two_losses(model, seed=1)[k], list(model.parameters())) for k in range(2)]
    got = torch.cat(PerLossRMS(model.parameters()).gradients(two_losses(model, seed=1)))
    g0, g1 = (torch.cat([x.reshape(-1) for x in grads]) for grads in g)
    assert torch.allclose(got, g0.sign() + g1.sign(), atol=0.01)  # eps damps only what is 1000x below the mean


def test_a_loss_made_1000_times_larger_has_the_same_say():
    """The point of it: the balanced sum does not depend on either loss's scale; the plain sum does."""
    model = linear()
    plain, scaled = PerLossRMS(model.parameters()), PerLossRMS(model.parameters())
    for seed in range(4):
        a, b = plain.gradients(two_losses(model, seed)), scaled.gradients(two_losses(model, seed, scale=1000.0))
        assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(a, b)), seed
    sums = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(sum(two_losses(model, 0, s)), list(model.parameters()))])
            for s in (1.0, 1000.0)]
    assert not torch.allclose(sums[0] / sums[0].norm(), sums[1] / sums[1].norm(), atol=1e-2)


def test_the_surrogate_backpropagates_the_balanced_gradient_and_state_resumes():
    model = linear()
    balance = PerLossRMS(model.parameters())
    balance.gradients(two_losses(model, seed=0))
    resumed = PerLossRMS(model.parameters())
    resumed.load_state_dict(copy.deepcopy(balance.state_dict()))
    want = balance.gradients(two_losses(model, seed=1))
    resumed.surrogate(two_losses(model, seed=1)).backward()
    assert resumed.steps == 2
    for p, g in zip(model.parameters(), want):
        assert torch.allclose(p.grad, g.view_as(p))


@pytest.mark.parametrize("balance, same", [("per_loss_rms", True), ("sum", False)])
def test_training_with_balanced_losses_ignores_the_retrieval_weights_scale(tokenizer, small_corpus, balance, same):
    """Three AdamW steps of a tiny OneGen model with lambda_ret 1 and 0.001: balanced, the same
    weights (each loss's gradient is normalised by its own RMS); summed, different ones."""
    from components.model.base import tiny_llama
    from components.model.onegen import OneGenModel

    rows = [OneGenModel.build(tiny_llama(copy.deepcopy(tokenizer)), copy.deepcopy(tokenizer)).formatter.example(
        make_example("Ada was born in London.[RQ] Ada.", [["ada"]], [["paris"]]), small_corpus, 256)]
    trained = []
    for lambda_ret in (1.0, 0.001):
        model = OneGenModel.build(tiny_llama(copy.deepcopy(tokenizer)), copy.deepcopy(tokenizer))
        start = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        batch = Collator(model.formatter.pad_id)(rows)
        cfg = LossConfig(lambda_ret=lambda_ret, balance=balance)
        train(model, torch.optim.AdamW(model.parameters(), lr=1e-2), [batch] * 3, cfg, max_steps=3, grad_clip=None)
        trained.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - start)
    difference = float((trained[0] - trained[1]).norm() / trained[0].norm())
    print(f"{balance}: updates differ by {difference:.2e} of their norm")
    assert (difference < 0.05) is same
