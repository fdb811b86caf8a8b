"""Fixtures for the KubeRay tests: the CRD schemas, a stand-in repository, and `kmock` (an
in-memory Kubernetes API) served over real HTTP from a thread of its own, so the synchronous
`kubernetes` client talks to it exactly as to an API server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import kmock
import pytest
from kubernetes import client

from components import k8s_validation

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
NAMESPACE = "onegen"


@pytest.fixture(scope="session")
def schemas() -> dict[str, dict]:
    if not k8s_validation.DEFAULT_SCHEMAS.is_dir():
        pytest.skip(f"no KubeRay CRD schemas at {k8s_validation.DEFAULT_SCHEMAS} (../shared/kuberay-crds)")
    return k8s_validation.load_schemas(k8s_validation.DEFAULT_SCHEMAS)


@pytest.fixture
def fake_repo(tmp_path) -> Path:
    """What the manifests name, and nothing else: the training stage and the Serve app builder."""
    repo = tmp_path / "repo"
    for path, text in {
        "ray_jobs/__init__.py": "",
        "ray_jobs/train.py": "import sys\n",
        "pipelines/__init__.py": "",
        "pipelines/serving/__init__.py": "",
        "pipelines/serving/app.py": "def build_app(args):\n    return args\n",
    }.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    return repo


class KubeAPI(kmock.KubernetesEmulator):
    """kmock answering a create with 201, as the API server does: the generated client decodes
    a create's body only for 201 (kmock says 200)."""

    async def _serve_create(self, request):
        return kmock.Response(status=201, payload=await super()._serve_create(request))


@dataclass
class Cluster:
    """The running emulator: its URL, its state (`handler.objects`), and a way to change it."""

    handler: KubeAPI
    url: str
    loop: asyncio.AbstractEventLoop

    def api_client(self) -> client.ApiClient:
        return client.ApiClient(client.Configuration(host=self.url))

    def in_loop(self, fn):
        """Run fn() on the emulator's event loop (its state is not thread-safe) and return its result."""
        future = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(lambda: future.set_result(fn()))
        return future.result(timeout=5)


@pytest.fixture
def cluster():
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future = concurrent.futures.Future()

    async def serve():
        async with KubeAPI() as handler, kmock.Server(handler) as server:
            # As if KubeRay's CRDs were installed: an empty list is [], not kmock's 404 for an
            # undeclared resource. Pods too, for the submitter-pod lookups.
            for group, plural in [("ray.io", "rayclusters"), ("ray.io", "rayjobs"), ("ray.io", "rayservices"), ("", "pods")]:
                handler.resources[kmock.resource(group, "v1", plural)] = {}
            stop = asyncio.Event()
            started.set_result((handler, str(server.url).rstrip("/"), stop))
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    handler, url, stop = started.result(timeout=10)
    yield Cluster(handler, url, loop)
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout=10)
    loop.close()


def operator(cluster: Cluster, plural: str, name: str, statuses: list[dict], every_s: float = 0.2) -> threading.Thread:
    """A thread standing in for the KubeRay operator: after each `every_s`, write the next status
    through the status subresource, as the operator does."""
    custom = client.CustomObjectsApi(cluster.api_client())

    def run():
        for status in statuses:
            time.sleep(every_s)
            custom.patch_namespaced_custom_object_status("ray.io", "v1", NAMESPACE, plural, name, {"status": status})

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
