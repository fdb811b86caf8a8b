"""components.platform.kuberay against kmock over HTTP: the lifecycle of each KubeRay kind, waiting on status
that a stand-in operator writes, logs, and the errors a user meets (403, 404, 409, timeout)."""

from __future__ import annotations

import threading
import time

import kmock
import pytest
import yaml

from components.platform.kuberay import (
    KINDS,
    KubeRay,
    KubeRayConflict,
    KubeRayForbidden,
    KubeRayNotFound,
    KubeRayTimeout,
    job_succeeded,  # fmt: skip
)
from pipelines.k8s import validation as k8s_validation
from tests.fixtures.kube import K8S, NAMESPACE, operator

PLURALS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}


def manifest(kind: str) -> dict:
    files = {"RayCluster": "raycluster.yaml", "RayJob": "rayjob-train.yaml", "RayService": "rayservice.yaml"}
    return yaml.safe_load((K8S / "base" / files[kind]).read_text())


@pytest.fixture
def kuberay(cluster) -> KubeRay:
    return KubeRay(cluster.api_client(), namespace=NAMESPACE)


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob", "RayService"])
def test_create_get_list_patch_delete(kuberay, kind):
    body = manifest(kind)
    name = body["metadata"]["name"]

    created = kuberay.create(body)
    assert created["metadata"] == {"name": name, "namespace": NAMESPACE}
    assert kuberay.get(kind, name)["spec"] == body["spec"]
    assert [o["metadata"]["name"] for o in kuberay.list(kind)] == [name]

    kuberay.patch(kind, name, {"metadata": {"labels": {"stage": "test"}}})
    assert kuberay.get(kind, name)["metadata"]["labels"] == {"stage": "test"}

    kuberay.delete(kind, name)
    assert kuberay.list(kind) == []
    with pytest.raises(KubeRayNotFound):
        kuberay.get(kind, name)


def test_apply_creates_then_patches(kuberay):
    body = manifest("RayJob")
    assert kuberay.apply(body)[0] == "created"
    body["spec"]["entrypoint"] = "python -m ray_jobs.train --config smollm2-cpu"
    outcome, obj = kuberay.apply(body)
    assert outcome == "patched"
    assert kuberay.get("RayJob", "onegen-train")["spec"]["entrypoint"].endswith("--config smollm2-cpu")


@pytest.mark.skipif(not k8s_validation.can_render(), reason="needs kubectl or kustomize to render the overlay")
def test_apply_a_rendered_overlay_creates_every_kind(kuberay, cluster):
    # All but the Namespace: kmock 0.8 cannot parse /api/v1/namespaces, a cluster-scoped core path
    # (its parser expects a namespace name after "namespaces" and answers 500).
    docs = [d for d in k8s_validation.render(K8S / "overlays" / "dev-cpu") if d["kind"] != "Namespace"]
    assert {d["kind"] for d in docs} >= {"ConfigMap", "Deployment", "Service", "PersistentVolumeClaim", *PLURALS}
    outcomes = [kuberay.apply(doc)[0] for doc in docs]
    assert outcomes == ["created"] * len(docs)
    stored = {(res.plural, name) for res, _, name in cluster.in_loop(lambda: list(cluster.handler.objects))}
    assert stored == {(KINDS[d["kind"]].plural, d["metadata"]["name"]) for d in docs}
    assert kuberay.get("ConfigMap", "onegen-config")["data"]["MLFLOW_TRACKING_URI"] == "http://mlflow.onegen.svc:5000"


def test_wait_for_job_follows_the_operator_to_complete(kuberay, cluster):
    kuberay.create(manifest("RayJob"))
    writer = operator(cluster, "rayjobs", "onegen-train", [
        {"jobDeploymentStatus": "Initializing"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
    ])  # fmt: skip
    seen = []

    def record(obj):
        seen.append(obj.get("status", {}).get("jobDeploymentStatus"))

    job = kuberay.wait_for_job("onegen-train", timeout_s=10, on_change=record)
    writer.join(timeout=5)
    assert job["status"] == {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    assert job_succeeded(job)
    # Every change seen once, in order (a change made before the watch opened may fold into the next).
    assert seen[0] is None and seen[-1] == "Complete"
    assert seen == [s for s in [None, "Initializing", "Running", "Complete"] if s in seen]


def test_wait_for_job_returns_a_failed_job_as_finished_not_succeeded(kuberay, cluster):
    kuberay.create(manifest("RayJob"))
    operator(cluster, "rayjobs", "onegen-train", [
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"},
    ])  # fmt: skip
    job = kuberay.wait_for_job("onegen-train", timeout_s=10)
    assert job["status"]["jobDeploymentStatus"] == "Failed"
    assert not job_succeeded(job)


def test_complete_with_a_failed_ray_job_is_not_success():
    assert not job_succeeded({"status": {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}})


def test_wait_for_service_returns_once_ready(kuberay, cluster):
    kuberay.create(manifest("RayService"))
    operator(cluster, "rayservices", "onegen-serve", [
        {"conditions": [{"type": "Ready", "status": "False", "reason": "Initializing"}]},
        {"conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}],
         "serviceStatus": "Running", "numServeEndpoints": 2},
    ])  # fmt: skip
    service = kuberay.wait_for_service("onegen-serve", timeout_s=10)
    assert service["status"]["serviceStatus"] == "Running"
    assert service["status"]["numServeEndpoints"] == 2


def test_wait_times_out_naming_the_job_and_its_last_status(kuberay, cluster):
    kuberay.create(manifest("RayJob"))
    operator(cluster, "rayjobs", "onegen-train", [{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}], every_s=0.1)
    start = time.monotonic()
    with pytest.raises(KubeRayTimeout, match=r"RayJob onegen/onegen-train: not Complete or Failed after 1 s.*RUNNING"):
        kuberay.wait_for_job("onegen-train", timeout_s=1)
    assert 1 <= time.monotonic() - start < 3


def test_wait_for_a_missing_job_fails_at_once(kuberay):
    start = time.monotonic()
    with pytest.raises(KubeRayNotFound, match="RayJob onegen/nope"):
        kuberay.wait_for_job("nope", timeout_s=30)
    assert time.monotonic() - start < 2


def test_a_job_deleted_while_waiting_is_not_found(kuberay, cluster):
    kuberay.create(manifest("RayJob"))
    other = KubeRay(cluster.api_client(), namespace=NAMESPACE)
    threading.Timer(0.3, other.delete, args=("RayJob", "onegen-train")).start()
    with pytest.raises(KubeRayNotFound, match="deleted while waiting"):
        kuberay.wait_for_job("onegen-train", timeout_s=10)


def test_creating_twice_is_a_conflict_naming_the_resource(kuberay):
    kuberay.create(manifest("RayCluster"))
    with pytest.raises(KubeRayConflict, match=r"create RayCluster onegen/onegen: already exists"):
        kuberay.create(manifest("RayCluster"))


def test_a_missing_resource_is_not_found_naming_it(kuberay):
    with pytest.raises(KubeRayNotFound, match=r"get RayService onegen/missing: not found"):
        kuberay.get("RayService", "missing")
    with pytest.raises(KubeRayNotFound, match=r"delete RayJob onegen/missing"):
        kuberay.delete("RayJob", "missing")


def test_forbidden_names_the_resource_the_permission_and_the_server_message(kuberay, cluster):
    denial = kmock.KubernetesError(status=403, reason="Forbidden",
                                   message='rayjobs.ray.io is forbidden: User "dev" cannot list resource "rayjobs"')  # fmt: skip
    cluster.in_loop(lambda: cluster.handler[kmock.resource("ray.io", "v1", "rayjobs")] << denial)
    with pytest.raises(KubeRayForbidden) as caught:
        kuberay.list("RayJob")
    message = str(caught.value)
    assert "list RayJob onegen/*: forbidden" in message
    assert "kubectl auth can-i list rayjobs" in message
    assert 'User "dev" cannot list resource "rayjobs"' in message


def test_job_logs_read_the_submitter_pod(kuberay, cluster):
    kuberay.create(manifest("RayJob"))
    pods = kmock.resource("", "v1", "pods")

    def add_pods():
        for name, job in [("onegen-train-x7k2p", "onegen-train"), ("unrelated", "other-job")]:
            cluster.handler.objects[pods, NAMESPACE, name] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"batch.kubernetes.io/job-name": job}},
            }  # fmt: skip
        text = kmock.headers({"Content-Type": "text/plain"})  # as the API server sends logs
        cluster.handler[f"get /api/v1/namespaces/{NAMESPACE}/pods/onegen-train-x7k2p/log"] << text << b"step 40: loss 1.23\n"
        cluster.handler[f"get /api/v1/namespaces/{NAMESPACE}/pods/unrelated/log"] << text << b"not this one\n"

    cluster.in_loop(add_pods)
    assert kuberay.job_logs("onegen-train") == "step 40: loss 1.23\n"


def test_job_logs_without_a_submitter_pod_say_why(kuberay):
    kuberay.create(manifest("RayJob"))
    with pytest.raises(KubeRayNotFound, match=r"RayJob onegen/onegen-train: no submitter pod \(K8sJobMode"):
        kuberay.job_logs("onegen-train")
