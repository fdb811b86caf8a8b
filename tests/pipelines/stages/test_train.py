"""The train stage for real: Ray Train workers running DeepSpeed ZeRO-3 on CPU (gloo), checkpoints
and the model in S3 (moto), MLflow on a real server, a worker killed and resumed. A fit() costs a
minute or more on 2 cores, so one test checks all it can; the e2e test runs ZeRO-1 on SmolLM2 with
local storage, and the checkpoint format's errors are tested without Ray."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient

from components.model.onegen import OneGenModel
from pipelines.config import PipelineConfig, load_config
from pipelines.errors import StageError
from pipelines.stages.prepare import ENCODED
from pipelines.stages.train import train
from pipelines.stages.train_worker import build_model
from tests.conftest import synthetic_retrieval


def tiny_config(root: str, tracking_uri: str, *, zero_stage: int = 1, max_steps: int = 6, warmup_steps: int = 0,
                **storage) -> PipelineConfig:
    base = load_config("tiny").model_dump()
    base["name"] = f"t-{uuid.uuid4().hex[:6]}"
    base["storage"] = {"root": root, **storage}
    base["mlflow"] = {"tracking_uri": tracking_uri, "experiment": f"train-{uuid.uuid4().hex[:8]}"}  # the server is shared
    base["train"]["optim"].update(max_steps=max_steps, warmup_steps=warmup_steps)
    base["workers"].update(num_workers=2, checkpoint_every=2, keep_checkpoints=2, max_failures=1)
    base["workers"]["deepspeed"]["zero_stage"] = zero_stage
    return PipelineConfig.model_validate(base)


def prepared_table(cfg: PipelineConfig) -> pa.Table:
    """`synthetic_retrieval` encoded as the prepare stage would: 32 rows, 16 per worker, 4 batches of 4."""
    model = build_model(cfg.train)
    corpus, examples = synthetic_retrieval()
    rows = [model.formatter.example(e, corpus, cfg.train.max_length).to_row() for e in examples]
    return pa.Table.from_pylist(rows, schema=ENCODED)


def write_prepared(cfg: PipelineConfig, directory: Path) -> None:
    table = prepared_table(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.slice(0, 16), directory / "part-0.parquet")
    pq.write_table(table.slice(16), directory / "part-1.parquet")


def metric_steps(tracking_uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, key))


def mlflow_runs(cfg: PipelineConfig) -> list:
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    return client.search_runs([experiment.experiment_id])


@pytest.mark.timeout(600)
def test_zero3_on_s3_logs_checkpoints_resumes_a_killed_worker_and_writes_the_model(ray_cluster, mlflow_server, s3_server,
                                                                                  tmp_path, monkeypatch):
    """Data, checkpoints and the model in S3 (moto), as on a cluster. Rank 1's process dies
    (os._exit) after step 3, once; Ray Train restarts the worker group, which resumes from
    checkpoint 2 read back from S3 (weights, every rank's ZeRO-3 partition, the LR schedule).
    ZeRO-1 with local storage is what the e2e test runs."""
    import boto3

    from components.platform import storage

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)  # the AWS credential chain, as in a cluster
    root = f"s3://{s3_server.bucket}/runs-{uuid.uuid4().hex[:6]}"
    cfg = tiny_config(root, mlflow_server, zero_stage=3, max_steps=6, warmup_steps=3, s3_endpoint_url=s3_server.endpoint_url)
    write_prepared(cfg, tmp_path / "prepared")
    s3 = boto3.client("s3", **s3_server.boto3_kwargs())
    prefix = root.removeprefix(f"s3://{s3_server.bucket}/")
    for part in ("part-0.parquet", "part-1.parquet"):
        s3.upload_file(str(tmp_path / "prepared" / part), s3_server.bucket, f"{prefix}/prepared/{cfg.name}/train/{part}")
    marker = tmp_path / "killed"

    def kill_once(step: int, rank: int) -> None:  # pickled by value into the workers
        if step == 3 and rank == 1 and not marker.exists():
            import ray.train

            # Wait until Ray Train has committed checkpoint 2: a worker that dies before the
            # controller has collected its last report loses that checkpoint (the run would then
            # restart from an earlier one, here from scratch).
            ray.train.get_all_reported_checkpoints(ray.train.CheckpointConsistencyMode.COMMITTED)
            marker.touch()
            os._exit(1)

    report = train(cfg, on_step=kill_once)

    print(report.summary())
    assert marker.exists() and report.steps == 6 and "model in" in report.summary()
    assert (report.resumed_from, report.steps_run) == (2, 4)  # the restarted attempt: steps 3–6
    # One MLflow run (rank 0 logs), the config as params, every step logged; the model as artifacts.
    (run,) = mlflow_runs(cfg)
    assert run.info.run_id == report.mlflow_run_id and run.info.status == "FINISHED"
    assert run.data.params["workers.deepspeed.zero_stage"] == "3"
    steps = metric_steps(mlflow_server, run.info.run_id, "loss")
    assert metric_steps(mlflow_server, run.info.run_id, "resumed_from_step") == [2], steps
    # Every step logged once, by rank 0; step 3 perhaps twice (rank 0 may log it before rank 1 dies).
    once = ([1, 2, 3, 4, 5, 6], [1, 2, 3, 3, 4, 5, 6])
    assert steps in once
    for key in ("lm_loss", "ret_loss", "lr", "tokens_per_s"):
        assert metric_steps(mlflow_server, run.info.run_id, key) in once, key
    # The LR schedule continued from the checkpoint: warmup factors 2/4, 3/4, then 1 (restarted: 1/4 again).
    client = MlflowClient(mlflow_server)
    lrs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "lr")}
    base = cfg.train.optim.lr
    assert [round(lrs[s] / base, 4) for s in range(1, 7)] == [0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    # Cross-worker negatives: each query was scored against rank 1's documents as well as rank 0's.
    history = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in ("documents", "documents_scored")}
    assert all(scored > local > 0 for scored, local in zip(history["documents_scored"], history["documents"]))
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "model")]
    assert "model/model.safetensors" in artifacts and "model/onegen.json" in artifacts
    # Checkpoints on S3: the last two kept, each rank's optimizer partition beside the weights.
    keys = [o["Key"].removeprefix(prefix + "/") for o in s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)["Contents"]
            if not o["Key"].endswith("/")]  # pyarrow's directory markers
    run_dir = f"checkpoints/{cfg.name}"
    assert sorted({k.split("/")[2] for k in keys if k.startswith(f"{run_dir}/checkpoint_0")}) == ["checkpoint_000004", "checkpoint_000006"]
    ckpt = f"{run_dir}/checkpoint_000006"
    assert sorted(k.removeprefix(ckpt + "/") for k in keys if k.startswith(ckpt + "/")) == \
        ["model.safetensors", "optimizer-rank0.pt", "optimizer-rank1.pt", "state.json"]
    state = json.loads(storage.read_bytes(f"{root}/{ckpt}/state.json", s3_server.endpoint_url))
    assert (state["step"], state["world_size"], state["zero_stage"], state["mlflow_run_id"]) == (6, 2, 3, run.info.run_id)
    assert report.model == f"{root}/models/{cfg.name}" and report.checkpoint == f"{root}/{ckpt}"
    # The final model loads in HF format and has moved away from the initial weights.
    storage.copy_dir(report.model, str(tmp_path / "model"), s3_server.endpoint_url)
    trained = OneGenModel.from_pretrained(tmp_path / "model")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(trained.hf.state_dict()[name], build_model(cfg.train).hf.state_dict()[name])
    assert trained.base == cfg.train.model.source  # what int4 decoding rounds


@pytest.mark.timeout(30)
def test_an_unreachable_mlflow_server_stops_the_stage_before_training(tmp_path):
    from pipelines.local.processes import free_ports

    (port,) = free_ports(1)  # nothing listens there
    cfg = tiny_config(str(tmp_path / "storage"), f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    with pytest.raises(StageError, match=f"MLflow tracking server http://127.0.0.1:{port} is unreachable"):
        train(cfg)  # no ray_cluster: it must fail before anything touches Ray
    assert time.perf_counter() - started < 15
    assert not (tmp_path / "storage").exists()
