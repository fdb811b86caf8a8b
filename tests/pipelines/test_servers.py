"""The shared server fixtures work: a run logged to `mlflow_server`, an object through `s3_server`."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest


@pytest.mark.timeout(120)
def test_mlflow_server_logs_a_run_with_a_served_artifact(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment(f"fixture-{uuid.uuid4().hex[:8]}")  # the server is shared by the test run
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "loss", 0.5)
    client.log_text(run.info.run_id, "hello", "note.txt")
    client.set_terminated(run.info.run_id)

    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # the server stores and serves them
    assert Path(client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path))).read_text() == "hello"


@pytest.mark.timeout(60)
def test_s3_server_puts_and_gets_through_boto3(s3_server):
    import boto3

    s3 = boto3.client("s3", **s3_server.boto3_kwargs())
    s3.put_object(Bucket=s3_server.bucket, Key="a/b.txt", Body=b"onegen")
    assert s3.get_object(Bucket=s3_server.bucket, Key="a/b.txt")["Body"].read() == b"onegen"

    # env() alone is enough for another process (a subprocess, a Ray job's runtime_env).
    get = f"boto3.client('s3').get_object(Bucket='{s3_server.bucket}', Key='a/b.txt')"
    read = f"import boto3; print({get}['Body'].read().decode())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | s3_server.env()
    out = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, timeout=50)
    assert out.stdout.strip() == "onegen", out.stderr
