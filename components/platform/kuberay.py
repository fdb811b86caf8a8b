"""A KubeRay client on the official `kubernetes` package (KubeRay's own Python client is not on
PyPI and has no RayService API).

RayCluster, RayJob and RayService are custom objects (`CustomObjectsApi`, group ray.io/v1); the
core kinds an overlay also holds (Namespace, ConfigMap, Secret, Service, PersistentVolumeClaim,
Deployment) go through their typed APIs, so `apply` takes a whole rendered overlay. The caller
injects the `ApiClient`: from a kubeconfig, in-cluster, or a plain URL (`kubectl proxy`, tests).

    kuberay = KubeRay(kubernetes.config.new_client_from_config(), namespace="onegen")
    kuberay.create(rayjob_manifest)
    job = kuberay.wait_for_job("onegen-train", timeout_s=3600)

Waiting watches the object (the operator writes its status through the status subresource);
the status fields are KubeRay's: RayJob `status.jobDeploymentStatus` (Initializing, Running,
Complete, Failed, ...) and `status.jobStatus` (Ray's PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED);
RayService `status.conditions[type=Ready]` and, deprecated but still written, `status.serviceStatus`
("Running" when ready).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core API
    version: str
    plural: str
    namespaced: bool = True


KINDS = {
    "RayCluster": Kind("ray.io", "v1", "rayclusters"),
    "RayJob": Kind("ray.io", "v1", "rayjobs"),
    "RayService": Kind("ray.io", "v1", "rayservices"),
    "Deployment": Kind("apps", "v1", "deployments"),
    "Namespace": Kind("", "v1", "namespaces", namespaced=False),
    "ConfigMap": Kind("", "v1", "configmaps"),
    "Secret": Kind("", "v1", "secrets"),
    "Service": Kind("", "v1", "services"),
    "PersistentVolumeClaim": Kind("", "v1", "persistentvolumeclaims"),
}
JOB_FINAL = {"Complete", "Failed"}  # jobDeploymentStatus values after which nothing changes
SUBMITTER_CONTAINER = "ray-job-submitter"  # in the K8s Job that KubeRay names after the RayJob


class KubeRayError(RuntimeError):
    """A request about a named resource failed; the message names it and says why."""


class KubeRayForbidden(KubeRayError):
    pass


class KubeRayNotFound(KubeRayError):
    pass


class KubeRayConflict(KubeRayError):
    pass


class KubeRayTimeout(KubeRayError):
    pass


_ERRORS = {
    403: (KubeRayForbidden, "forbidden: this identity lacks the RBAC permission (kubectl auth can-i {verb} {plural})"),
    404: (KubeRayNotFound, "not found (is the KubeRay operator installed, the namespace right?)"),
    409: (KubeRayConflict, "already exists or was changed meanwhile (delete it, or apply to patch it)"),
}


def job_finished(job: dict) -> bool:
    return job.get("status", {}).get("jobDeploymentStatus") in JOB_FINAL


def job_succeeded(job: dict) -> bool:
    """Complete alone is not success: KubeRay also completes a RayJob whose Ray job FAILED or STOPPED."""
    status = job.get("status", {})
    return status.get("jobDeploymentStatus") == "Complete" and status.get("jobStatus") == "SUCCEEDED"


def service_running(service: dict) -> bool:
    status = service.get("status", {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    return ready or status.get("serviceStatus") == "Running"


def summary(obj: dict) -> str:
    """One line: kind, namespace/name and what its status says."""
    kind, meta, status = obj.get("kind", "?"), obj.get("metadata", {}), obj.get("status", {})
    if kind == "RayJob":
        state = f"{status.get('jobDeploymentStatus') or 'New'} (job {status.get('jobStatus') or '-'})"
        state += f": {status['message']}" if status.get("message") else ""
    elif kind == "RayService":
        state = "Running" if service_running(obj) else "not ready"
    elif kind == "RayCluster":
        state = f"{status.get('state') or 'pending'}, {status.get('readyWorkerReplicas', 0)} ready workers"
    else:
        state = "present"
    return f"{kind} {meta.get('namespace', '')}/{meta.get('name', '?')}: {state}"


class KubeRay:
    def __init__(self, api_client: client.ApiClient, namespace: str = "onegen"):
        self.namespace = namespace
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)

    @cached_property
    def core(self) -> client.CoreV1Api:
        # Made on first use: its module takes seconds to import (pydantic wraps each of its
        # hundreds of methods), and most commands touch the KubeRay kinds only.
        return client.CoreV1Api(self.api_client)

    # -- create / get / list / patch / delete ---------------------------------------------------

    def create(self, body: dict) -> dict:
        kind, name, namespace = _identity(body, self.namespace)
        body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}  # watches match on it
        if not KINDS[kind].namespaced:
            body["metadata"].pop("namespace")
        with self._errors("create", kind, name, namespace):
            return self._call("create", kind, namespace, body=body)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict:
        namespace = namespace or self.namespace
        with self._errors("get", kind, name, namespace):
            return self._call("read", kind, namespace, name=name)

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        namespace = namespace or self.namespace
        with self._errors("list", kind, "*", namespace):
            return self._call("list", kind, namespace).get("items", [])

    def patch(self, kind: str, name: str, patch: dict, namespace: str | None = None) -> dict:
        """A JSON merge patch: the given fields replace the live ones, lists whole."""
        namespace = namespace or self.namespace
        with self._errors("patch", kind, name, namespace):
            return self._call("patch", kind, namespace, name=name, body=patch)

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        namespace = namespace or self.namespace
        with self._errors("delete", kind, name, namespace):
            self._call("delete", kind, namespace, name=name)

    def apply(self, body: dict) -> tuple[str, dict]:
        """Create, or when it exists merge-patch the manifest onto it: ("created"|"patched", object).
        Not kubectl's three-way apply: a field deleted from the manifest stays on the live object."""
        try:
            return "created", self.create(body)
        except KubeRayConflict:
            kind, name, namespace = _identity(body, self.namespace)
            patch = {k: v for k, v in body.items() if k != "status"}
            return "patched", self.patch(kind, name, patch, namespace)

    # -- waiting ----------------------------------------------------------------------------------

    def wait_for_job(self, name: str, timeout_s: float, on_change: Callable[[dict], None] | None = None) -> dict:
        """The RayJob once its jobDeploymentStatus is Complete or Failed (see `job_succeeded`)."""
        return self._wait("RayJob", name, job_finished, timeout_s, on_change, "Complete or Failed")

    def wait_for_service(self, name: str, timeout_s: float, on_change: Callable[[dict], None] | None = None) -> dict:
        """The RayService once it is ready to serve (Ready condition, or serviceStatus Running)."""
        return self._wait("RayService", name, service_running, timeout_s, on_change, "Running")

    def _wait(self, kind: str, name: str, done: Callable[[dict], bool], timeout_s: float,
              on_change: Callable[[dict], None] | None, goal: str) -> dict:
        """One get, then the watch's versions of the object until `done` says so, the deadline
        passes (KubeRayTimeout) or the object is deleted (KubeRayNotFound). No polling."""
        deadline = time.monotonic() + timeout_s
        obj = self.get(kind, name)  # a missing object fails now, not after the timeout
        seen = obj.get("status")
        if on_change:
            on_change(obj)
        while not done(obj):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KubeRayTimeout(f"{kind} {self.namespace}/{name}: not {goal} after {timeout_s:g} s; "
                                     f"last status {obj.get('status') or 'none'}")  # fmt: skip
            for obj in self._versions(kind, name, remaining):
                if on_change and obj.get("status") != seen:
                    seen = obj.get("status")
                    on_change(obj)
                if done(obj) or time.monotonic() >= deadline:
                    break
        return obj

    def _versions(self, kind: str, name: str, timeout_s: float) -> Iterator[dict]:
        """The object as the API server reports it (now, then each change) for at most `timeout_s`
        without news. Ends quietly on timeout; raises KubeRayNotFound if the object is deleted."""
        k = KINDS[kind]
        stream = watch.Watch().stream(
            self.custom.list_namespaced_custom_object, k.group, k.version, self.namespace, k.plural,
            field_selector=f"metadata.name={name}", timeout_seconds=max(1, int(timeout_s)),
            _request_timeout=timeout_s, deserialize=False,
        )  # fmt: skip
        with self._errors("watch", kind, name, self.namespace):
            try:
                for event in stream:
                    obj = event["object"]
                    if obj.get("metadata", {}).get("name") != name:
                        continue  # not every server honours the field selector
                    if event["type"] == "DELETED":
                        raise KubeRayNotFound(f"{kind} {self.namespace}/{name}: deleted while waiting")
                    yield obj
            except urllib3.exceptions.ReadTimeoutError:
                return  # no event for timeout_s: the caller's deadline decides
            finally:
                stream.close()  # and the HTTP response with it

    # -- logs -------------------------------------------------------------------------------------

    def job_logs(self, name: str) -> str:
        """The RayJob's submitter pod log: `ray job submit` following the job, so the driver's
        output. Only K8sJobMode has a submitter pod; it goes when the RayJob's cluster is deleted."""
        job = self.get("RayJob", name)
        label = f"batch.kubernetes.io/job-name={name}"  # KubeRay names the submitter Job after the RayJob
        with self._errors("list", "Pod", label, self.namespace):
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=label).items
        pods = [p for p in pods if (p.metadata.labels or {}).get("batch.kubernetes.io/job-name") == name]
        if not pods:
            mode = job.get("spec", {}).get("submissionMode", "K8sJobMode")
            dashboard = job.get("status", {}).get("dashboardURL", "-")
            raise KubeRayNotFound(f"RayJob {self.namespace}/{name}: no submitter pod ({mode}; gone once the "
                                  f"cluster is deleted). Dashboard: {dashboard}")  # fmt: skip
        pod = max(pods, key=lambda p: str(p.metadata.creation_timestamp or "")).metadata.name  # the latest try
        with self._errors("get logs of", "Pod", pod, self.namespace):
            return self.core.read_namespaced_pod_log(pod, self.namespace, container=SUBMITTER_CONTAINER)

    # -- plumbing ---------------------------------------------------------------------------------

    def _call(self, verb: str, kind: str, namespace: str, name: str | None = None, body: dict | None = None) -> dict:
        """One request: custom objects (KubeRay, apps) by group, core kinds by their typed method."""
        if kind not in KINDS:
            raise KubeRayError(f"{kind}: unsupported kind (one of {', '.join(KINDS)})")
        k = KINDS[kind]
        args = {"name": name, "body": body, "namespace": namespace if k.namespaced else None}
        args = {key: value for key, value in args.items() if value is not None}
        if verb == "patch":
            args["_content_type"] = "application/merge-patch+json"
        if k.group:
            method = getattr(self.custom, f"{_CUSTOM_VERBS[verb]}_namespaced_custom_object")
            return method(group=k.group, version=k.version, plural=k.plural, **args)
        scope = "namespaced_" if k.namespaced else ""
        method = getattr(self.core, f"{verb}_{scope}{_snake(kind)}")  # e.g. read_namespaced_config_map
        return self.api_client.sanitize_for_serialization(method(**args))  # typed model → plain dict

    @contextmanager
    def _errors(self, verb: str, kind: str, name: str, namespace: str):
        try:
            yield
        except ApiException as err:
            error, why = _ERRORS.get(err.status, (KubeRayError, f"HTTP {err.status} {err.reason}"))
            plural = KINDS[kind].plural if kind in KINDS else kind.lower() + "s"
            raise error(f"{verb} {kind} {namespace}/{name}: {why.format(verb=verb.split()[0], plural=plural)}"
                        f"{_api_message(err)}") from None  # fmt: skip


_CUSTOM_VERBS = {"create": "create", "read": "get", "list": "list", "patch": "patch", "delete": "delete"}


def _identity(body: dict, default_namespace: str) -> tuple[str, str, str]:
    meta = body.get("metadata") or {}
    if body.get("kind") not in KINDS or not meta.get("name"):
        raise KubeRayError(f"not a resource this client handles: kind {body.get('kind')!r}, name {meta.get('name')!r}")
    return body["kind"], meta["name"], meta.get("namespace") or default_namespace


def _snake(kind: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()


def _api_message(err: ApiException) -> str:
    """The API server's own message (a Status body), when it sent one."""
    try:
        message = json.loads(err.body or "").get("message")
    except (ValueError, AttributeError):
        return ""
    return f" — server says: {message}" if message else ""
