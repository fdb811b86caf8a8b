"""The function every Ray Train worker runs: `components.model.train_loop.train` with a DeepSpeed engine.

    shard of paths.prepared/train ─iter_batches─▶ Collator ─▶ engine (ZeRO 1/2/3) ─▶ joint loss
        over the global batch (all_gather of every worker's queries and documents) ─▶ MLflow (rank 0)
        ─every checkpoint_every steps and at the end─▶ ray.train.report(checkpoint)

It lives in the package, not in the driver's module, so that workers can import it. Resuming is
Ray Train's: after a worker failure (or when the same RunConfig runs again) `get_checkpoint()`
returns the latest checkpoint and the loop carries on from its step.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import ray.train
import torch
import torch.distributed as dist

from components.config import OptimConfig, TrainConfig
from components.data.collate import Batch, Collator, pad_multiple
from components.data.grouping import length_grouped
from components.model.balance import PerLossRMS
from components.model.base import load_base
from components.model.gather import all_gather, all_reduce_mean
from components.model.onegen import OneGenModel
from components.model.train_loop import DeepSpeedUpdate, StepMetrics, train
from pipelines.config import PipelineConfig
from pipelines.stages import checkpoints

# Logged as they are (ret_loss is already the global batch's); tokens/s is the world's. `documents` is
# this worker's, `documents_scored` every worker's: what each query was scored against.
STEP_METRICS = ("loss", "lm_loss", "ret_loss", "lr", "documents", "documents_scored")


def build_model(cfg: TrainConfig) -> OneGenModel:
    """The base model with OneGen's tokens and LoRA, as the config says. The seed makes LoRA's
    random init the same on every worker and in the driver."""
    torch.manual_seed(cfg.optim.seed)
    lm, tokenizer = load_base(cfg.model.source, dtype=getattr(torch, cfg.model.dtype))
    model = OneGenModel.build(lm, tokenizer, cfg.model.format, cfg.model.lora)
    model.base = cfg.model.source  # saved with it: what int4 decoding rounds (DecoderConfig.matmul_dtype)
    return model


def weights_config_hash(cfg: TrainConfig) -> str:
    """What the weights depend on; optimiser settings (lr, max_steps) may change on resume."""
    return checkpoints.config_hash({"model": cfg.model.model_dump(mode="json"), "max_length": cfg.max_length})


def warmup_then_constant(warmup_steps: int) -> Callable[[int], float]:
    """LR factor: linear warmup over `warmup_steps` updates (the first one already moves), then
    constant. Constant rather than cosine so that raising max_steps and resuming stays sound."""
    return lambda step: min(1.0, (step + 1) / (warmup_steps + 1))


def deepspeed_config(cfg: PipelineConfig) -> dict:
    ds, optim = cfg.workers.deepspeed, cfg.train.optim
    zero: dict = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.workers.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": optim.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": optim.grad_clip or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.bf16 and cfg.workers.use_gpu},  # CPU workers train in float32
        "zero_allow_untested_optimizer": True,  # a torch optimizer: naming one here JIT-compiles fused_adam
        "steps_per_print": 10**9,  # the loop logs; DeepSpeed's own step log is noise
    }


def make_optimizer(model: OneGenModel, cfg: PipelineConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    optim = cfg.train.optim
    if cfg.workers.deepspeed.offload_optimizer:
        # ZeRO-Offload steps on the CPU: DeepSpeed's vectorised Adam, not torch's (far too slow there).
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=optim.lr, weight_decay=optim.weight_decay, adamw_mode=True)
    return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)


def initialize(model: OneGenModel, cfg: PipelineConfig):
    """The DeepSpeed engine around the model; Ray Train has already set up torch.distributed."""
    import deepspeed

    if cfg.train.model.gradient_checkpointing:
        model.checkpoint_activations(cfg.train.model.checkpoint_every_n_layers)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_constant(cfg.train.optim.warmup_steps))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg))
    return engine


def batches(shard, optim: OptimConfig, pad_id: int, seed: int, device: torch.device) -> Iterator[Batch]:
    """Batches of the worker's shard, epoch after epoch, each epoch in a new shuffled order, rows of
    similar length batched together (`optim.length_groups`). Shards are split equally (Ray Train's
    default), so every worker starts its next epoch on the same step: the shard's epochs are a
    collective and must not straddle one."""
    collate = Collator(pad_id, pad_multiple(device))
    group = optim.batch_size * optim.length_groups
    epoch = 0
    while True:
        n = 0
        rng = random.Random(seed + epoch)
        for table in shard.iter_batches(batch_size=group, batch_format="pyarrow",
                                        local_shuffle_buffer_size=max(16 * optim.batch_size, group),
                                        local_shuffle_seed=seed + epoch):
            for rows in length_grouped(table.to_pylist(), optim.batch_size, rng):
                n += 1
                yield collate(rows)
        if n == 0:
            raise RuntimeError("this worker's shard of the training data is empty: prepare more rows than workers")
        epoch += 1


def world_tokens_per_s(m: StepMetrics, device) -> float:
    """All workers' real tokens over the slowest worker's step time (a collective: every rank)."""
    tokens = torch.tensor([float(m.tokens)], device=device)
    seconds = torch.tensor([m.seconds], device=device)
    dist.all_reduce(tokens, op=dist.ReduceOp.SUM)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return float(tokens) / max(float(seconds), 1e-9)


def mlflow_logger(tracking_uri: str, run_id: str) -> Callable[[int, dict], None]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri)

    def log(step: int, values: dict) -> None:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    return log


@contextmanager
def fetched_checkpoint(rank: int):
    """(directory, location, TrainState) of the latest checkpoint with the files this rank needs
    (its state says which), or None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="onegen-resume-") as tmp:
        where = checkpoints.fetch(checkpoint, [checkpoints.STATE], tmp)
        state = checkpoints.read_state(tmp, where)
        names = [checkpoints.WEIGHTS, checkpoints.optimizer_file(rank)]
        checkpoints.fetch(checkpoint, names + ([checkpoints.balance_file(rank)] if state.balance else []), tmp)
        yield tmp, where, state


class Progress:
    """One line per step on rank 0, readable in a job's log (where a redrawn bar is not)."""

    def __init__(self, start: int, total: int):
        self.start, self.total, self.began = start, total, time.perf_counter()

    def __call__(self, step: int, values: dict) -> None:
        elapsed = time.perf_counter() - self.began
        left = elapsed / (step - self.start) * (self.total - step)
        # Not print(): Ray Train v2 routes print through its logger, which shows it twice in a job log.
        sys.stdout.write(f"step {step}/{self.total}  loss {values['loss']:.3f} (lm {values['lm_loss']:.3f}, "
                         f"ret {values['ret_loss']:.3f})  {values['tokens_per_s']:.0f} tok/s  "
                         f"{elapsed:.0f}s elapsed, ~{left:.0f}s left\n")
        sys.stdout.flush()


def start_engine(cfg: PipelineConfig, rank: int, world: int, config_hash: str):
    """(engine, PerLossRMS or None, TrainState or None): a fresh start, or the latest checkpoint
    restored: weights before deepspeed.initialize (the engine partitions what it is given), then
    this rank's optimizer partition, the LR schedule and the losses' running RMS."""
    model = build_model(cfg.train)
    balanced = cfg.train.loss.balanced
    with fetched_checkpoint(rank) as found:
        if found is None:
            engine = initialize(model, cfg)
            return engine, balance_for(engine, balanced), None
        directory, where, state = found
        checkpoints.check_compatible(state, world_size=world, zero_stage=cfg.workers.deepspeed.zero_stage,
                                     config_hash=config_hash, balance=balanced, where=where)
        checkpoints.load_weights(directory, model, where)
        engine = initialize(model, cfg)
        checkpoints.load_optimizer(directory, engine.optimizer, rank, state, where)
        engine.lr_scheduler.load_state_dict(state.scheduler)
        balance = balance_for(engine, balanced)
        if balance is not None:
            checkpoints.load_balance(directory, balance, rank, where)
        return engine, balance, state


def balance_for(engine, balanced: bool) -> PerLossRMS | None:
    """The losses' gradient balance (LossConfig.balance), reducing across the workers."""
    return PerLossRMS(engine.module.parameters(), reduce=all_reduce_mean) if balanced else None


def train_loop(config: dict) -> dict:
    """The worker loop. `config`: {"pipeline": PipelineConfig as JSON, "mlflow_run_id": str,
    "on_step": optional callable(step, rank), run on every worker after each step (tests use it
    to kill a worker)}."""
    cfg = PipelineConfig.model_validate(config["pipeline"])
    optim, workers = cfg.train.optim, cfg.workers
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    stage = workers.deepspeed.zero_stage
    config_hash = weights_config_hash(cfg.train)

    engine, balance, state = start_engine(cfg, rank, world, config_hash)
    start = state.step if state else 0
    run_id = state.mlflow_run_id if state and state.mlflow_run_id else config["mlflow_run_id"]
    log = mlflow_logger(cfg.mlflow.tracking_uri, run_id) if rank == 0 else None
    if log and state:
        log(start, {"resumed_from_step": start})

    def save_and_report(m: StepMetrics, values: dict) -> None:
        train_state = checkpoints.TrainState(m.step, world, stage, config_hash, engine.lr_scheduler.state_dict(), run_id,
                                             balance=balance is not None)
        with tempfile.TemporaryDirectory(prefix="onegen-ckpt-") as tmp:
            checkpoints.save(tmp, engine.module, engine.optimizer, train_state, rank, balance)
            # Every rank reports its own directory under one name: Ray Train merges them.
            ray.train.report({"step": m.step, **values}, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_{m.step:06d}")

    progress = Progress(start, optim.max_steps) if rank == 0 else None

    def after_step(m: StepMetrics) -> None:
        values = {**{k: getattr(m, k) for k in STEP_METRICS}, "tokens_per_s": world_tokens_per_s(m, engine.device)}
        if log:
            log(m.step, values)
        if progress:
            progress(m.step, values)
        if m.step % workers.checkpoint_every == 0 or m.step == optim.max_steps:
            save_and_report(m, values)
        if config.get("on_step"):
            config["on_step"](m.step, rank)

    shard = ray.train.get_dataset_shard("train")
    data = batches(shard, optim, engine.module.formatter.pad_id, optim.seed + start, engine.device)
    result = train(engine, DeepSpeedUpdate(engine), data, cfg.train.loss, max_steps=optim.max_steps, start_step=start,
                   gather=all_gather, device=engine.device, on_step=after_step, balance=balance)
    return {"start_step": start, "steps": len(result.steps), "mlflow_run_id": run_id}
