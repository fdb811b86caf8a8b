import copy

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


def test_the_training_loop_balances_the_next_token_and_retrieval_losses_then_weighs_them(tokenizer, small_corpus):
    """Two AdamW steps of `train` with balance equal two steps taken by hand: the surrogate of
    [LM loss, retrieval loss] weighted by [lambda_gen, lambda_ret] after the normalisation."""
    from components.model.base import tiny_llama
    from components.model.losses import retrieval_loss
    from components.model.onegen import OneGenModel

    def fresh() -> OneGenModel:
        return OneGenModel.build(tiny_llama(copy.deepcopy(tokenizer)), copy.deepcopy(tokenizer))

    model, by_hand = fresh(), fresh()
    rows = [model.formatter.example(make_example("Ada was born in London.[RQ] Ada.", [["ada"]], [["paris"]]), small_corpus, 256)]
    batch = Collator(model.formatter.pad_id)(rows)
    cfg = LossConfig(lambda_ret=0.5, balance="per_loss_rms")
    train(model, torch.optim.AdamW(model.parameters(), lr=1e-2), [batch] * 2, cfg, max_steps=2, grad_clip=None)

    optimizer, balance = torch.optim.AdamW(by_hand.parameters(), lr=1e-2), PerLossRMS(by_hand.parameters())
    for _ in range(2):
        out = by_hand(batch)
        balance.surrogate([out.lm_loss, retrieval_loss(out.query_vectors, out.doc_vectors, batch, cfg)], [1.0, 0.5]).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), by_hand.parameters()))
    # and the weight counts: lambda_ret 0.5 is not lambda_ret 1
    other = fresh()
    train(other, torch.optim.AdamW(other.parameters(), lr=1e-2), [batch] * 2, LossConfig(balance="per_loss_rms"), max_steps=2,
          grad_clip=None)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), other.parameters()))
