"""A training checkpoint that is never loaded with pickle (a project rule: weights come back through
safetensors, everything else through `torch.load(weights_only=True)` or JSON).

DeepSpeed's own `save_checkpoint`/`load_checkpoint` load with `torch.load(weights_only=False)`, a
full unpickle, so they are not used. A checkpoint directory holds:

    model.safetensors     the trainable parameters, whole (gathered under ZeRO-3)    written by rank 0
    optimizer-rank{r}.pt  rank r's ZeRO optimizer partition, `engine.optimizer.state_dict()`;
                          tensors and plain data plus three DeepSpeed types (SAFE_TYPES)  by rank r
    balance-rank{r}.pt    with loss.balance per_loss_rms: the losses' running RMS
                          (`PerLossRMS.state_dict()`, the same on every rank)            by rank r
    state.json            step, world size, ZeRO stage, LR scheduler state, the config
                          config_hash and the MLflow run id                           by rank 0

Every rank writes its files into a directory of its own and reports it with `ray.train.report`;
Ray Train copies each rank's directory into the same `checkpoint_<step>` directory in storage
(one name, synced across ranks) and registers the checkpoint only when every rank has reported,
so all the files are there once the checkpoint exists.

Resume: `load_weights` before `deepspeed.initialize` (the engine partitions what it is given),
`load_optimizer` after it. A checkpoint from another world size or ZeRO stage, or with a
missing or unreadable file, is a `CheckpointError` that names the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from pipelines.errors import StageError

WEIGHTS = "model.safetensors"
STATE = "state.json"


def optimizer_file(rank: int) -> str:
    return f"optimizer-rank{rank}.pt"


def balance_file(rank: int) -> str:
    return f"balance-rank{rank}.pt"


class CheckpointError(StageError):
    """A checkpoint that cannot be resumed from; the message names it and what is wrong."""


@dataclass
class TrainState:
    step: int
    world_size: int
    zero_stage: int
    config_hash: str  # of the config the weights depend on: another config cannot resume them
    scheduler: dict  # the LR scheduler's state_dict() (plain numbers for a LambdaLR)
    mlflow_run_id: str | None = None
    balance: bool = False  # whether each rank wrote balance_file(rank): the losses' running RMS


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _safe_types() -> list[type]:
    """The only non-tensor classes a ZeRO optimizer's state_dict() holds (checked with
    `torch.serialization.get_unsafe_globals_in_checkpoint` for stages 1, 2 and 3)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


# -- saving --------------------------------------------------------------------------------------


def trainable_state(model: nn.Module, zero3: bool, rank: int) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, on CPU, on rank 0 (empty elsewhere). Under ZeRO-3 every
    rank must call this: each parameter is gathered from its shards, one at a time so that no
    rank ever holds more than one whole parameter on the device. Tied weights appear once."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not zero3:
        return {name: p.detach().cpu().clone() for name, p in named} if rank == 0 else {}
    import deepspeed

    out = {}
    for name, p in named:
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            if rank == 0:
                out[name] = p.detach().cpu().clone()
    return out


def save(directory: str | Path, model: nn.Module, optimizer, state: TrainState, rank: int, balance=None) -> Path:
    """Write this rank's files of the checkpoint into `directory` (see the module docstring);
    `balance`: a `PerLossRMS`, whose state is written when `state.balance`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = trainable_state(model, state.zero_stage == 3, rank)
    torch.save(optimizer.state_dict(), directory / optimizer_file(rank))
    if state.balance:
        torch.save(balance.state_dict(), directory / balance_file(rank))
    if rank == 0:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / WEIGHTS))
        (directory / STATE).write_text(json.dumps(asdict(state), indent=2) + "\n")
    return directory


# -- loading -------------------------------------------------------------------------------------


def read_state(directory: str | Path, where: str | None = None) -> TrainState:
    where = where or str(directory)
    path = Path(directory) / STATE
    try:
        raw = json.loads(path.read_text())
        names = {f.name for f in fields(TrainState)}
        return TrainState(**{k: v for k, v in raw.items() if k in names})
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {where} is incomplete: it has no {STATE}") from None
    except (ValueError, TypeError, AttributeError) as err:  # bad JSON, a missing field, not an object
        raise CheckpointError(f"checkpoint {where} is corrupt: {STATE} is unreadable ({err})") from None


def check_compatible(state: TrainState, *, world_size: int, zero_stage: int, config_hash: str, balance: bool,
                     where: str) -> None:
    """ZeRO partitions are per rank and per stage: they only load into the same layout. The losses'
    balance is part of the optimisation: a run does not switch it on or off halfway."""
    if (state.world_size, state.zero_stage) != (world_size, zero_stage):
        raise CheckpointError(
            f"checkpoint {where} was written by {state.world_size} workers with ZeRO stage {state.zero_stage}; "
            f"this run has {world_size} workers with ZeRO stage {zero_stage}. Resume with the same "
            "workers.num_workers and workers.deepspeed.zero_stage, or train under another name."
        )
    if state.config_hash != config_hash:
        raise CheckpointError(
            f"checkpoint {where} was trained with another model config (hash {state.config_hash}, "
            f"this run {config_hash}): its weights do not fit; train under another name."
        )
    if state.balance != balance:
        raise CheckpointError(
            f"checkpoint {where} was trained with train.loss.balance {'per_loss_rms' if state.balance else 'sum'}; "
            f"this run has {'per_loss_rms' if balance else 'sum'}. Resume with the same train.loss.balance, "
            "or train under another name."
        )


def load_weights(directory: str | Path, model: nn.Module, where: str | None = None) -> None:
    """Copy the checkpoint's trainable parameters into `model` (a plain, unpartitioned one)."""
    from safetensors.torch import load_file

    where = where or str(directory)
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"checkpoint {where} is incomplete: it has no {WEIGHTS}")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error type for a truncated or bad header
        raise CheckpointError(f"checkpoint {where} is corrupt: {WEIGHTS} is unreadable ({err})") from None
    params = dict(model.named_parameters())
    trainable = {name for name, p in params.items() if p.requires_grad}
    missing, unknown = sorted(trainable - tensors.keys()), sorted(tensors.keys() - params.keys())
    if missing or unknown:
        raise CheckpointError(f"checkpoint {where}: {WEIGHTS} does not fit this model "
                              f"(missing {_few(missing)}; unknown {_few(unknown)})")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                raise CheckpointError(f"checkpoint {where}: {name} has shape {tuple(tensor.shape)} in {WEIGHTS}, "
                                      f"{tuple(params[name].shape)} in this model")
            params[name].copy_(tensor)


def load_optimizer(directory: str | Path, optimizer, rank: int, state: TrainState, where: str | None = None) -> None:
    """Load rank `rank`'s optimizer partition into `engine.optimizer` (after deepspeed.initialize)."""
    where = where or str(directory)
    name = optimizer_file(rank)
    path = Path(directory) / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {where} is incomplete: it has no {name}")
    try:
        with torch.serialization.safe_globals(_safe_types()):
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {where} is corrupt: {name} is unreadable ({err})") from None
    try:
        if state.zero_stage == 0:
            optimizer.load_state_dict(saved)
        else:
            # A ZeRO optimizer takes every rank's state_dict, indexed by data-parallel rank, and with
            # the world size unchanged (check_compatible) reads only its own; None marks the others.
            saved_by_rank = [saved if r == rank else None for r in range(state.world_size)]
            optimizer.load_state_dict(saved_by_rank, load_from_fp32_weights=True)
    except (KeyError, ValueError, RuntimeError, IndexError) as err:
        raise CheckpointError(f"checkpoint {where}: {name} does not fit this optimizer ({err})") from None


def load_balance(directory: str | Path, balance, rank: int, where: str | None = None) -> None:
    """Restore a `PerLossRMS` from rank `rank`'s balance file."""
    where = where or str(directory)
    name = balance_file(rank)
    try:
        balance.load_state_dict(torch.load(Path(directory) / name, map_location="cpu", weights_only=True))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {where} is incomplete: it has no {name}") from None
    except Exception as err:
        raise CheckpointError(f"checkpoint {where} is corrupt: {name} is unreadable ({err})") from None


def fetch(checkpoint, names: Iterable[str], directory: str | Path) -> str:
    """Copy the named files of a `ray.train.Checkpoint` (local or in S3) into `directory`; return
    the checkpoint's location for messages. A rank fetches only what it loads: on S3 it does not
    download the other ranks' optimizer partitions."""
    import pyarrow.fs as pafs

    fs, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
    where = f"s3://{root}" if isinstance(fs, pafs.S3FileSystem) else root
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        if fs.get_file_info(f"{root}/{name}").type != pafs.FileType.File:
            raise CheckpointError(f"checkpoint {where} is incomplete: it has no {name}")
        pafs.copy_files(f"{root}/{name}", str(directory / name), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
    return where


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "") if names else "none"
