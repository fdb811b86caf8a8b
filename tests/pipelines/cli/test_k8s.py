"""`onegen k8s` end to end against kmock over HTTP (--server, as with `kubectl proxy`)."""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client

from pipelines.cli.k8s import with_config
from pipelines.cli.main import main
from tests.fixtures.kube import K8S, NAMESPACE

RAYJOB = str(K8S / "base/rayjob-train.yaml")


def onegen_k8s(cluster, *args: str) -> int:
    return main(["k8s", "--server", cluster.url, *args])


def operator_for_new_job(cluster, final: dict) -> threading.Thread:
    """Stand in for the operator: wait for a RayJob to appear, take it to Running, then to `final`."""
    custom = client.CustomObjectsApi(cluster.api_client())

    def run():
        for _ in range(100):
            jobs = custom.list_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayjobs")["items"]
            if jobs:
                break
            time.sleep(0.05)
        name = jobs[0]["metadata"]["name"]
        for status in ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, final):
            time.sleep(0.2)
            custom.patch_namespaced_custom_object_status("ray.io", "v1", NAMESPACE, "rayjobs", name, {"status": status})

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def stored_jobs(cluster) -> list[dict]:
    custom = client.CustomObjectsApi(cluster.api_client())
    return custom.list_namespaced_custom_object("ray.io", "v1", NAMESPACE, "rayjobs")["items"]


def test_submit_train_swaps_the_config_in_waits_and_succeeds(cluster, capsys):
    operator_for_new_job(cluster, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    code = onegen_k8s(cluster, "submit-train", "-f", RAYJOB, "--config", "smollm2-cpu", "--timeout", "10")
    out = capsys.readouterr().out
    assert code == 0, out
    (job,) = stored_jobs(cluster)
    assert job["metadata"]["name"].startswith("onegen-train-")  # time-stamped: a RayJob runs once
    assert job["spec"]["entrypoint"] == "python -m ray_jobs.train --config smollm2-cpu"
    assert job["spec"]["suspend"] is False  # the applied manifest is a suspended template
    assert f"created RayJob onegen/{job['metadata']['name']}" in out
    assert "Running (job RUNNING)" in out and "Complete (job SUCCEEDED)" in out


def test_submit_train_exits_non_zero_when_the_job_fails(cluster, capsys):
    operator_for_new_job(cluster, {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "message": "driver exited 1"})
    code = onegen_k8s(cluster, "submit-train", "-f", RAYJOB, "--name", "t1", "--timeout", "10")
    assert code == 1
    assert "Complete (job FAILED): driver exited 1" in capsys.readouterr().out


def test_submit_train_refuses_a_config_file_the_cluster_cannot_read(cluster, capsys):
    code = onegen_k8s(cluster, "submit-train", "-f", RAYJOB, "--config", "my-run.yaml", "--no_wait")
    assert code == 1
    assert "the cluster cannot read a file on this machine" in capsys.readouterr().err
    assert stored_jobs(cluster) == []


def test_submit_train_times_out(cluster, capsys):
    code = onegen_k8s(cluster, "submit-train", "-f", RAYJOB, "--name", "slow", "--timeout", "0.5")
    assert code == 1
    assert "RayJob onegen/slow: not Complete or Failed after 0.5 s" in capsys.readouterr().err


def test_apply_creates_then_patches_and_status_and_delete_follow(cluster, capsys):
    manifest = str(K8S / "base/raycluster.yaml")
    assert onegen_k8s(cluster, "apply", "-f", manifest) == 0
    assert onegen_k8s(cluster, "apply", "-f", manifest) == 0
    assert capsys.readouterr().out.splitlines() == ["created RayCluster onegen/onegen", "patched RayCluster onegen/onegen"]

    assert onegen_k8s(cluster, "status") == 0
    assert capsys.readouterr().out.splitlines() == ["RayCluster onegen/onegen: pending, 0 ready workers"]

    assert onegen_k8s(cluster, "delete", "raycluster", "onegen") == 0
    assert onegen_k8s(cluster, "status", "RayCluster", "onegen") == 1
    captured = capsys.readouterr()
    assert captured.out == "deleted RayCluster onegen/onegen\n"
    assert "get RayCluster onegen/onegen: not found" in captured.err


def test_apply_refuses_the_secret_template(cluster, capsys):
    assert onegen_k8s(cluster, "apply", "-f", str(K8S / "base/secret.template.yaml")) == 1
    assert "Secret onegen-s3 still holds <placeholders>" in capsys.readouterr().err


@pytest.mark.parametrize("entrypoint, expected", [
    ("python -m ray_jobs.train --config llama2-7b-gpu", "python -m ray_jobs.train --config tiny"),
    ("python -m ray_jobs.train", "python -m ray_jobs.train --config tiny"),
])  # fmt: skip
def test_with_config_replaces_or_adds_the_config(entrypoint, expected):
    assert with_config(entrypoint, "tiny") == expected
