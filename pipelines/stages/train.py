"""train (Ray Train `TorchTrainer`, DeepSpeed ZeRO inside the worker loop): prepared shards → a
fine-tuned OneGen model in HF format.

    check MLflow ─▶ MLflow run (params) ─▶ TorchTrainer(train_worker.train_loop).fit()
        ─▶ last checkpoint's model.safetensors into a fresh model ─▶ save_pretrained (LoRA merged)
        ─▶ paths.model (local or s3://) and the MLflow run's `model/` artifacts

Checkpoints go to `paths.checkpoints/<name>` (see pipelines/checkpoints.py). Running the same
config again resumes from its latest checkpoint (Ray Train's rule for the same RunConfig name and
storage path); a run that already reached `optim.max_steps` only writes the model again. To
train afresh, change `name` or delete the checkpoints.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.data.aliases import Matcher
from components.data.screening import encode_examples
from components.generation.threshold import Calibration, calibrate_model, where_linkable
from components.model.base import materialize
from components.platform import storage, tracking
from components.tokens import ENTITY
from pipelines.checkout import torch_extensions_dir
from pipelines.config import PipelineConfig
from pipelines.errors import StageError
from pipelines.stages import checkpoints
from pipelines.stages.locations import data_file, knowledge_base, local_file
from pipelines.stages.train_worker import build_model, train_loop


@dataclass
class TrainReport:
    steps: int
    planned_steps: int
    resumed_from: int = 0  # the step this fit() started from (its last attempt, after any restart)
    steps_run: int = 0  # steps that attempt ran
    metrics: dict = field(default_factory=dict)  # the last checkpointed step's
    model: str = ""
    checkpoint: str = ""
    mlflow_run_id: str = ""
    tracking_uri: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        m = self.metrics
        losses = ", ".join(f"{k} {m[k]:.4f}" for k in ("loss", "lm_loss", "ret_loss") if k in m)
        rate = f"{m['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in m else "no step run"
        resumed = f"resumed at step {self.resumed_from}, " if self.resumed_from else ""
        return (f"trained {self.steps}/{self.planned_steps} steps ({resumed}{self.steps_run} in this run; {losses}; "
                f"{rate} at the last step); "
                f"model in {self.model}; checkpoint {self.checkpoint}; "
                f"MLflow run {self.mlflow_run_id} at {self.tracking_uri} ({self.seconds:.0f}s)")


# -- MLflow ----------------------------------------------------------------------------------------


def start_mlflow_run(cfg: PipelineConfig) -> str:
    """The model's run: named after the config, the whole config as params; returns its id."""
    from mlflow import MlflowClient

    try:
        tracking.check_reachable(cfg.mlflow.tracking_uri)  # before any worker starts
    except tracking.TrackingError as err:
        raise StageError(str(err)) from None
    return tracking.start_training_run(MlflowClient(cfg.mlflow.tracking_uri), cfg.mlflow.experiment, cfg.run_name,
                                       cfg.name, cfg.variant, cfg.model_dump(mode="json"))


# -- the trainer -----------------------------------------------------------------------------------


def _worker_env(cfg: PipelineConfig) -> dict:
    # Expanded here, on the driver; Ray expands ${PATH} in the worker. The environment's own ninja
    # comes first: a ninja of another version hashes the build commands differently and rebuilds
    # the op that infra/setup.sh compiled (measured: 85 s in every training run that did).
    env = {"TORCH_EXTENSIONS_DIR": str(torch_extensions_dir()), "PATH": f"{Path(sys.prefix) / 'bin'}:${{PATH}}"}
    if not cfg.workers.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    return {"env_vars": env}


def make_trainer(cfg: PipelineConfig, run_id: str, on_step=None):
    import pyarrow.fs as pafs
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    endpoint = cfg.storage.s3_endpoint_url
    data_fs, data_path = storage.filesystem(f"{cfg.paths.prepared}/train", endpoint)
    if data_fs.get_file_info(data_path).type == pafs.FileType.NotFound:
        raise StageError(f"no prepared data at {cfg.paths.prepared}/train: run `onegen prepare --config ...` first")
    ckpt_fs, ckpt_path = storage.filesystem(cfg.paths.checkpoints, endpoint)
    workers = cfg.workers
    resources = {"CPU": workers.cpus_per_worker, **({"GPU": 1} if workers.use_gpu else {})}
    return TorchTrainer(
        train_loop,
        train_loop_config={"pipeline": cfg.model_dump(mode="json"), "mlflow_run_id": run_id, "on_step": on_step},
        # Below one CPU a worker leaves Ray Data room to feed it (the deadlock in STACK_NOTES).
        scaling_config=ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu, resources_per_worker=resources,
                                     placement_strategy=workers.placement_strategy),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=ckpt_path,
            storage_filesystem=ckpt_fs if storage.is_remote(cfg.paths.checkpoints) else None,
            checkpoint_config=CheckpointConfig(num_to_keep=workers.keep_checkpoints),
            failure_config=FailureConfig(max_failures=workers.max_failures),
            worker_runtime_env=_worker_env(cfg),
        ),
        datasets={"train": ray.data.read_parquet(data_path, filesystem=data_fs)},
    )


def _checkpoint_error(err: BaseException) -> checkpoints.CheckpointError | None:
    """The CheckpointError behind a worker failure, if that is what it was."""
    for failure in getattr(err, "worker_failures", {}).values():
        cause = failure
        while cause is not None:
            if isinstance(cause, checkpoints.CheckpointError) or type(cause).__name__ == "CheckpointError":
                return cause
            cause = cause.__cause__
    return None


def publish_model(cfg: PipelineConfig, checkpoint, run_id: str) -> tuple[str, checkpoints.TrainState]:
    """The checkpoint's trainable weights in a fresh model, saved in HF format (LoRA merged) to
    paths.model and logged to the MLflow run as `model/`."""
    from mlflow import MlflowClient

    endpoint = cfg.storage.s3_endpoint_url
    with tempfile.TemporaryDirectory(prefix="onegen-model-") as tmp:
        ckpt = Path(tmp) / "checkpoint"
        where = checkpoints.fetch(checkpoint, [checkpoints.STATE, checkpoints.WEIGHTS], ckpt)
        state = checkpoints.read_state(ckpt, where)
        model = build_model(cfg.train)
        checkpoints.load_weights(ckpt, model, where)
        if cfg.variant == "onegen" and cfg.data.calibration is not None:
            calibration = calibrate_threshold(model, cfg, Path(tmp), cfg.data.calibration)
            model.retrieval_threshold = calibration.threshold
            log_calibration(cfg, state.mlflow_run_id or run_id, calibration, "retrieval_threshold", "calibration_")
        if cfg.variant == "onegen" and cfg.data.linking_train:
            calibration = calibrate_threshold(model, cfg, Path(tmp), *_link_calibration_rows(cfg), link=True)
            model.link_threshold = calibration.threshold
            log_calibration(cfg, state.mlflow_run_id or run_id, calibration, "link_threshold", "link_calibration_")
        out = model.save_pretrained(Path(tmp) / "model")
        fs, path = storage.filesystem(cfg.paths.model, endpoint)
        fs.delete_dir_contents(path, missing_dir_ok=True)  # no file of an older model stays beside it
        storage.copy_dir(str(out), cfg.paths.model, endpoint)
        # log_artifacts keeps `artifact_path` in MLflow 3 (only log_model renamed it to `name`).
        MlflowClient(cfg.mlflow.tracking_uri).log_artifacts(state.mlflow_run_id or run_id, str(out), artifact_path="model")
    return where, state


def _link_calibration_rows(cfg: PipelineConfig) -> tuple[str, str]:
    """(rows, knowledge base) [EL]'s τ is calibrated on: the named entities' where the preset has
    them, where every surface form may take an [EL] (a word-sense request allows one word)."""
    kb = "wikipedia" if "wikipedia" in cfg.data.linking_train else next(iter(cfg.data.linking_train))
    return cfg.data.linking_train[kb], kb


def calibrate_threshold(model, cfg: PipelineConfig, scratch: Path, name: str, kb: str | None = None, link: bool = False) -> Calibration:
    """τ of the threshold policy for the trained weights, on a seeded sample of training rows
    (`name`, in data.dir; never the evaluation split): [RQ] on walks, or with `link` [EL] on the
    linking rows of knowledge base `kb`, at the positions link mode lets the model write it."""
    path = local_file(data_file(cfg, name), cfg.storage.s3_endpoint_url, scratch)
    corpus = knowledge_base(cfg, kb or "wikipedia", scratch)  # what the rows name
    rows, _ = encode_examples(path, corpus, model.formatter, cfg.train.max_length)
    rows = [r for r in rows if r.query_positions]
    if not rows:
        raise StageError(f"calibration rows {path} have no {'[EL]' if link else '[RQ]'}: the threshold policy cannot be calibrated")
    sample = random.Random(cfg.train.optim.seed).sample(rows, min(cfg.data.calibration_rows, len(rows)))
    if not link:
        return calibrate_model(model, sample)
    entity, forms = model.formatter.special[ENTITY], Matcher.of(corpus)
    return calibrate_model(model, [where_linkable(r, model.tokenizer, forms, entity) for r in sample], token=entity)


def log_calibration(cfg: PipelineConfig, run_id: str, calibration: Calibration, threshold: str, prefix: str) -> None:
    from mlflow import MlflowClient

    values = {threshold: calibration.threshold, f"{prefix}f1": calibration.f1,
              f"{prefix}precision": calibration.precision, f"{prefix}recall": calibration.recall,
              f"{prefix}argmax_recall": calibration.argmax_recall, f"{prefix}retrievals": calibration.retrievals}
    client = MlflowClient(cfg.mlflow.tracking_uri)
    for key, value in values.items():
        client.log_metric(run_id, key, float(value))


def train(cfg: PipelineConfig, *, on_step=None) -> TrainReport:
    """Run the stage. `on_step(step, rank)`, if given, runs in every worker after each step."""
    from mlflow import MlflowClient

    started = time.perf_counter()
    run_id = start_mlflow_run(cfg)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    materialize(cfg.train.model.source)  # a fresh machine converts SmolLM2 here, once, not in every worker
    try:
        result = make_trainer(cfg, run_id, on_step).fit()
    except Exception as err:
        client.set_terminated(run_id, "FAILED")
        cause = _checkpoint_error(err)
        if cause is not None:
            raise StageError(str(cause)) from err
        raise
    if result.checkpoint is None:
        client.set_terminated(run_id, "FAILED")
        raise StageError(f"training {cfg.run_name} ended without a checkpoint in {cfg.paths.checkpoints}")
    where, state = publish_model(cfg, result.checkpoint, run_id)
    if state.mlflow_run_id and state.mlflow_run_id != run_id:
        # This run resumed an earlier one and logged into its MLflow run: drop the empty new one.
        client.set_terminated(run_id, "KILLED")
        client.delete_run(run_id)
    client.set_terminated(state.mlflow_run_id or run_id, "FINISHED")
    ran = result.return_value or {}  # rank 0's train_loop return value
    return TrainReport(
        steps=state.step,
        planned_steps=cfg.train.optim.max_steps,
        resumed_from=ran.get("start_step", 0),
        steps_run=ran.get("steps", 0),
        metrics=dict(result.metrics or {}),
        model=cfg.paths.model,
        checkpoint=where,
        mlflow_run_id=state.mlflow_run_id or run_id,
        tracking_uri=cfg.mlflow.tracking_uri,
        seconds=time.perf_counter() - started,
    )
