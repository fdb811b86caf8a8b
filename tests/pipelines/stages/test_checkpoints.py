"""The checkpoint format, without Ray: no pickle, a round trip, and clear errors for a checkpoint
that is corrupt, incomplete or from another layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.model.base import tiny_llama
from components.model.onegen import OneGenModel
from pipelines.stages import checkpoints


class ZeroLike:
    """A torch optimizer with a ZeRO optimizer's load_state_dict(list by rank, ...)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict_list, load_from_fp32_weights=False) -> None:
        self.optimizer.load_state_dict(state_dict_list[0])


@pytest.mark.timeout(60)
def test_checkpoint_round_trip_and_clear_errors_for_corrupt_checkpoints(tiny_model, base_tokenizer, small_corpus, tmp_path):
    import copy

    from components.data.collate import Collator
    from components.model.train_loop import train as train_steps
    from tests.conftest import make_example

    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-2)
    rows = [tiny_model.formatter.example(make_example("Who?[RQ] Ada.", [["ada"]], [["paris"]]), small_corpus, 256)]
    train_steps(tiny_model, optimizer, [Collator(tiny_model.formatter.pad_id)(rows)] * 2, max_steps=2)
    state = checkpoints.TrainState(2, 1, 1, "abc", {"last_epoch": 2}, "run-1")
    good = checkpoints.save(tmp_path / "good", tiny_model, ZeroLike(optimizer), state, rank=0)
    assert sorted(p.name for p in good.iterdir()) == ["model.safetensors", "optimizer-rank0.pt", "state.json"]

    # Round trip: weights into a fresh model, the optimizer's moments into a fresh optimizer.
    tokenizer = copy.deepcopy(base_tokenizer)
    fresh = OneGenModel.build(tiny_llama(tokenizer, seed=1), tokenizer)
    loaded = checkpoints.read_state(good)
    assert loaded == state
    checkpoints.check_compatible(loaded, world_size=1, zero_stage=1, config_hash="abc", balance=False, where="x")
    checkpoints.load_weights(good, fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), tiny_model.parameters()))
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    checkpoints.load_optimizer(good, ZeroLike(fresh_optimizer), 0, loaded)
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])

    def corrupt(name: str, damage) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        for f in good.iterdir():
            (directory / f.name).write_bytes(f.read_bytes())
        damage(directory)
        return directory

    truncated = corrupt("truncated", lambda d: (d / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:1000]))
    with pytest.raises(checkpoints.CheckpointError, match=f"checkpoint {truncated} is corrupt: model.safetensors is unreadable"):
        checkpoints.load_weights(truncated, fresh)
    no_optimizer = corrupt("no-optimizer", lambda d: (d / "optimizer-rank0.pt").unlink())
    with pytest.raises(checkpoints.CheckpointError, match=f"checkpoint {no_optimizer} is incomplete: it has no optimizer-rank0.pt"):
        checkpoints.load_optimizer(no_optimizer, ZeroLike(fresh_optimizer), 0, loaded)
    bad_state = corrupt("bad-state", lambda d: (d / "state.json").write_text('{"step": 2, "world_si'))
    with pytest.raises(checkpoints.CheckpointError, match=f"checkpoint {bad_state} is corrupt: state.json is unreadable"):
        checkpoints.read_state(bad_state)
    # A checkpoint of another layout names itself and what differs.
    with pytest.raises(checkpoints.CheckpointError, match="written by 1 workers with ZeRO stage 1; this run has 2 workers"):
        checkpoints.check_compatible(loaded, world_size=2, zero_stage=1, config_hash="abc", balance=False, where=str(good))
    with pytest.raises(checkpoints.CheckpointError, match="trained with train.loss.balance sum; this run has per_loss_rms"):
        checkpoints.check_compatible(loaded, world_size=1, zero_stage=1, config_hash="abc", balance=True, where=str(good))


def test_the_losses_running_rms_is_saved_and_restored_with_the_checkpoint(tmp_path):
    from torch import nn

    from components.model.balance import PerLossRMS

    model = nn.Linear(3, 2)
    balance = PerLossRMS(model.parameters())
    balance.gradients([model(torch.ones(1, 3)).sum(), model(torch.ones(1, 3)).square().sum()])
    state = checkpoints.TrainState(1, 1, 1, "abc", {"last_epoch": 1}, "run-1", balance=True)
    directory = checkpoints.save(tmp_path / "ckpt", model, ZeroLike(torch.optim.SGD(model.parameters(), lr=0.1)), state, 0, balance)
    assert checkpoints.read_state(directory).balance and (directory / "balance-rank0.pt").is_file()
    restored = PerLossRMS(model.parameters())
    checkpoints.load_balance(directory, restored, 0)
    assert restored.steps == 1 and all(torch.equal(a, b) for a, b in zip(restored.second_moments, balance.second_moments))
    (directory / "balance-rank0.pt").unlink()
    with pytest.raises(checkpoints.CheckpointError, match="is incomplete: it has no balance-rank0.pt"):
        checkpoints.load_balance(directory, restored, 0)
