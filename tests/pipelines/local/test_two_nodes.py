"""Two Ray nodes on this machine (`onegen up --workers 1`): the worker node joins the head, shows
in `onegen status`, takes work (a training worker; a Serve replica and its FAISS actor), and
`onegen down` stops it. Nothing goes through the driver's disk: the training job's code travels
with the job, its data, checkpoints and model through the storage root, here S3 (moto)."""

from __future__ import annotations

import re
import shutil
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from pipelines.cli.main import main
from pipelines.cli.serve import CONFIG
from pipelines.local.jobs import submit
from pipelines.local.processes import free_ports
from pipelines.local.stack import StackConfig, ray_state, ray_temp_dir, status
from tests.fixtures.servers import stack_on_free_ports
from tests.pipelines.serving.conftest import saved
from tests.pipelines.stages.test_train import tiny_config, write_prepared


@pytest.fixture(autouse=True)
def keep_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main rewrites sys.argv


def upload_prepared(cfg, s3_server, local: Path) -> None:
    """The tiny preset's prepared rows where the train stage reads them: `<root>/prepared/<name>/train`."""
    import boto3

    write_prepared(cfg, local)
    prefix = cfg.storage.root.removeprefix(f"s3://{s3_server.bucket}/")
    for part in sorted(local.iterdir()):
        boto3.client("s3", **s3_server.boto3_kwargs()).upload_file(str(part), s3_server.bucket, f"{prefix}/prepared/{cfg.name}/train/{part.name}")


@pytest.mark.timeout(900)
def test_a_worker_node_joins_trains_serves_a_replica_and_stops_with_the_stack(tmp_path, capsys, monkeypatch, trained_tiny, s3_server):
    # Each node fits one replica with its FAISS actor (1.5 + 0.5 CPUs): the two replicas must spread.
    cfg = StackConfig.model_validate({**stack_on_free_ports(tmp_path / "state").model_dump(), "workers": 1, "num_cpus": 2,
                                      "worker_cpus": 2})  # fmt: skip
    config_file = tmp_path / "stack.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    argv = ["--config", str(config_file)]
    dashboard = f"http://127.0.0.1:{cfg.dashboard_port}"
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)  # the stack's nodes, and the jobs they run, inherit the credentials
    # Serve's proxy sends every request to a replica on its own node while that one has room: to see
    # both replicas answer through the one proxy, this test turns the preference off.
    monkeypatch.setenv("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", "0")
    try:
        assert main(["up", *argv]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.startswith("started ray, ray-worker-1, mlflow in ")
        up = status(cfg)
        assert up.healthy and up.workers[0].pid and up.workers[0].name == "ray-worker-1"
        nodes = [n for n in ray_state(dashboard, "nodes") if n["state"] == "ALIVE"]
        assert len(nodes) == 2 and sorted(n["is_head_node"] for n in nodes) == [False, True]

        # Training: one worker per node (STRICT_SPREAD), everything through S3.
        run = tiny_config(f"s3://{s3_server.bucket}/two-nodes-{uuid.uuid4().hex[:6]}", f"http://127.0.0.1:{cfg.mlflow_port}",
                          max_steps=4, s3_endpoint_url=s3_server.endpoint_url)  # fmt: skip
        run = run.model_copy(update={"workers": run.workers.model_copy(update={"placement_strategy": "STRICT_SPREAD"})})
        upload_prepared(run, s3_server, tmp_path / "prepared")
        assert submit("train", run, dashboard) == 0, capsys.readouterr().out[-4000:]
        assert "model in s3://" in capsys.readouterr().out
        actors = ray_state(dashboard, "actors", detail="true")  # finished ones too: the training job has ended
        workers = [a for a in actors if a["class_name"] == "RayTrainWorker"]
        assert {a["node_id"] for a in workers} == {n["node_id"] for n in nodes}, [(a["class_name"], a["node_id"], a["state"]) for a in actors]

        (port,) = free_ports(1)  # `onegen serve` with a Serve config of two replicas, one per node
        serve_yaml = yaml.safe_load(CONFIG.read_text())
        serve_yaml["applications"][0]["args"].update(num_replicas=2, replica_cpus=1.5, faiss_cpus=0.5, max_tokens_limit=64, api_key_env=None)
        (tmp_path / "serve.yaml").write_text(yaml.safe_dump(serve_yaml))
        dirs = saved(trained_tiny, tmp_path)
        code_root = f"s3://{s3_server.bucket}/code-{uuid.uuid4().hex[:6]}"  # the app's code travels through S3 too
        assert main(["serve", "--config", str(tmp_path / "serve.yaml"), "--model", dirs["model_dir"], "--index", dirs["index_dir"],
                     "--port", str(port), "--address", dashboard, "--code_root", code_root]) == 0, capsys.readouterr().err  # fmt: skip
        deployed = httpx.get(f"{dashboard}/api/serve/applications/", timeout=30, trust_env=False).json()["applications"]["onegen"]
        assert deployed["deployed_app_config"]["runtime_env"]["working_dir"].startswith(f"{code_root}/code/onegen-")
        printed = capsys.readouterr().out
        url, served = f"http://127.0.0.1:{port}", re.search(r'"model": "([^"]+)"', printed).group(1)  # the curl it prints
        seen = {}
        with httpx.Client(timeout=60, trust_env=False) as http:
            for _ in range(100):  # the proxy spreads requests over both replicas
                health = http.get(f"{url}/healthz").json()
                seen[health["replica"]] = health
                if len(seen) == 2:
                    break
            body = {"model": served, "messages": [{"role": "user", "content": "What is the green cat called?"}], "max_tokens": 16}
            answers = [http.post(f"{url}/v1/chat/completions", json=body) for _ in range(4)]
        assert {h["node_id"] for h in seen.values()} == {n["node_id"] for n in nodes}, (seen, nodes)  # a replica on each node
        assert all(a.status_code == 200 and a.json()["retrieval"] for a in answers)  # each replica searches its own FAISS actor
    finally:  # without --workers, as a user who forgot it: the worker node is found by its pid file
        assert main(["down", *argv, "--workers", "0"]) == 0
        shutil.rmtree(ray_temp_dir(cfg.root), ignore_errors=True)
    assert "stopped ray-worker-1" in capsys.readouterr().out
    after = status(cfg)
    assert after.workers[0].pid is None and not after.healthy
    assert not psutil.pid_exists(up.workers[0].pid) or psutil.Process(up.workers[0].pid).status() == psutil.STATUS_ZOMBIE
