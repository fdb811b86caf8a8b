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

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.platform import storage
from components.model.base import default_cache_dir
from pipelines.stages import checkpoints
from pipelines.config import PipelineConfig
from pipelines.local.jobs import StageError
from pipelines.stages.train_worker import build_model, train_loop


def torch_extensions_dir() -> Path:
    """Where JIT-compiled torch extensions (DeepSpeed ops) are kept: ~/.cache/onegen/torch_extensions.
    Every worker is pointed at it; infra/setup.sh fills it once (`warm_deepspeed_ops`)."""
    return default_cache_dir() / "torch_extensions"


def warm_deepspeed_ops() -> None:
    """Compile DeepSpeed's shared-memory comm op into torch_extensions_dir() now, so that no
    training run's first deepspeed.initialize spends a minute compiling it."""
    os.environ["TORCH_EXTENSIONS_DIR"] = str(torch_extensions_dir())
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator

    get_accelerator().create_op_builder("ShareMemCommBuilder").load()


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


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def check_tracking_server(uri: str, timeout_s: int = 5) -> None:
    """Fail before any worker starts when MLflow cannot be reached (MLflow's own retries would
    otherwise keep a failing job silent for minutes)."""
    from mlflow import MlflowClient

    with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout_s)):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as err:
            raise StageError(f"the MLflow tracking server {uri} is unreachable ({type(err).__name__}); start the "
                             "local stack with `onegen up` or set mlflow.tracking_uri in the config") from None


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def start_mlflow_run(cfg: PipelineConfig) -> str:
    """A run named after the config with the whole config as params; returns its id."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.mlflow.experiment)
    run = client.create_run(experiment_id, run_name=cfg.run_name, tags={"onegen.stage": "train", "onegen.run": cfg.name,
                                                                     "onegen.variant": cfg.variant})
    params = [Param(k, v) for k, v in flatten(cfg.model_dump(mode="json")).items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    return run.info.run_id


# -- the trainer -----------------------------------------------------------------------------------


def _worker_env(cfg: PipelineConfig) -> dict:
    env = {"TORCH_EXTENSIONS_DIR": str(torch_extensions_dir())}  # expanded here, on the driver
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
        scaling_config=ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu, resources_per_worker=resources),
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
        out = model.save_pretrained(Path(tmp) / "model")
        fs, path = storage.filesystem(cfg.paths.model, endpoint)
        fs.delete_dir_contents(path, missing_dir_ok=True)  # no file of an older model stays beside it
        storage.copy_dir(str(out), cfg.paths.model, endpoint)
        # log_artifacts keeps `artifact_path` in MLflow 3 (only log_model renamed it to `name`).
        MlflowClient(cfg.mlflow.tracking_uri).log_artifacts(state.mlflow_run_id or run_id, str(out), artifact_path="model")
    return where, state


def train(cfg: PipelineConfig, *, on_step=None) -> TrainReport:
    """Run the stage. `on_step(step, rank)`, if given, runs in every worker after each step."""
    from mlflow import MlflowClient

    started = time.perf_counter()
    check_tracking_server(cfg.mlflow.tracking_uri)
    run_id = start_mlflow_run(cfg)
    client = MlflowClient(cfg.mlflow.tracking_uri)
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
