"""`onegen k8s`: the pipeline on Kubernetes through the KubeRay operator (k8s/, README).

    onegen k8s validate [K8S_DIR] [--schemas DIR] [--no_render]   the manifests, offline (no cluster)
    onegen k8s apply (-k OVERLAY | -f FILE)                         create, or merge-patch what exists
    onegen k8s submit-train [--config PRESET] [-k OVERLAY | -f FILE] [--timeout S] [--no_wait]
    onegen k8s status [KIND [NAME]]
    onegen k8s logs RAYJOB
    onegen k8s delete KIND NAME

The cluster: the kubeconfig's current context (--context), the pod's service account inside a
cluster, or --server URL for an API server that needs no credentials (`kubectl proxy`).
"""

from __future__ import annotations

import copy
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import yaml
from pydantic import AliasChoices, Field, PositiveFloat, model_validator
from pydantic_settings import CliPositionalArg, CliSubCommand, CliToggleFlag

from pipelines.checkout import REPO
from pipelines.cli.command import Command, UsageError
from pipelines.config import PRESETS

if TYPE_CHECKING:
    from components.platform.kuberay import KubeRay

DEFAULT_OVERLAY = REPO / "k8s" / "overlays" / "gpu"
RAY_KINDS = ("RayCluster", "RayJob", "RayService")


class Action(Command):
    action: ClassVar[str]

    def run_on(self, k8s: K8s) -> int:
        raise NotImplementedError(self.action)


class Validate(Action):
    """Check k8s/ against the KubeRay CRD schemas (no cluster needed)."""

    action = "validate"

    k8s_dir: CliPositionalArg[Path | None] = Field(None, description="the manifests; None: k8s/ of this checkout")
    schemas: Path | None = Field(None, description="the KubeRay CRD schemas (*.v1.schema.json); None: ../shared/kuberay-crds")
    no_render: CliToggleFlag[bool] = Field(False, description="skip rendering the kustomizations")

    def run_on(self, k8s: K8s) -> int:
        from pipelines.k8s import validation

        argv = [str(self.k8s_dir)] if self.k8s_dir else []
        argv += ["--schemas", str(self.schemas)] if self.schemas else []
        return validation.main(argv + (["--no-render"] if self.no_render else []))


class Source(Action):
    """Resources from a kustomization folder or a file."""

    kustomize: Path | None = Field(None, validation_alias=AliasChoices("kustomize", "k"), description="a kustomization folder, e.g. k8s/overlays/gpu")  # fmt: skip
    file: Path | None = Field(None, validation_alias=AliasChoices("file", "f"), description="a YAML file of resources")

    @model_validator(mode="after")
    def _one_source(self) -> Source:
        if self.kustomize is not None and self.file is not None:
            raise ValueError("give -k OVERLAY or -f FILE, not both")
        return self

    def manifests(self, default: Path | None = None) -> list[dict]:
        from pipelines.k8s import validation

        if self.file is None:
            return validation.render(self.kustomize or default)
        return [d for d in yaml.safe_load_all(self.file.read_text()) if d is not None]


class Apply(Source):
    """Create each resource of an overlay or file, or merge-patch it if it exists."""

    action = "apply"

    @model_validator(mode="after")
    def _a_source(self) -> Apply:
        if self.kustomize is None and self.file is None:
            raise ValueError("give -k OVERLAY or -f FILE")
        return self

    def run_on(self, k8s: K8s) -> int:
        from pipelines.k8s import validation

        kuberay = k8s.connect()
        for doc in self.manifests():
            if doc.get("kind") == "Secret" and any(map(validation.is_placeholder, validation.secret_values(doc).values())):
                raise ValueError(f"Secret {doc['metadata']['name']} still holds <placeholders>: fill in a copy first")
            outcome, obj = kuberay.apply(doc)
            print(f"{outcome} {doc['kind']} {obj.get('metadata', {}).get('namespace', '')}/{doc['metadata']['name']}")
        return 0


class SubmitTrain(Source):
    """Create a training RayJob from the manifest, wait, print its status."""

    action = "submit-train"

    config: str | None = Field(None, description="a preset (llama2-7b-gpu, smollm2-cpu, ...) or an s3:// YAML; None: the manifest's")
    name: str | None = Field(None, description="the RayJob's name; None: the manifest's, time-stamped")
    timeout: PositiveFloat = Field(48 * 3600, description="seconds to wait for Complete or Failed")
    no_wait: CliToggleFlag[bool] = Field(False, description="create the RayJob and return")

    def run_on(self, k8s: K8s) -> int:
        from components.platform.kuberay import job_succeeded, summary

        if self.config is not None:
            check_config(self.config)
        jobs = [d for d in self.manifests(default=DEFAULT_OVERLAY) if d.get("kind") == "RayJob"]
        if len(jobs) != 1:
            raise ValueError(f"expected one RayJob in {self.file or self.kustomize or DEFAULT_OVERLAY}, found {len(jobs)}")
        job = training_job(jobs[0], self.config, self.name)
        kuberay = k8s.connect()
        kuberay.create(job)
        name = job["metadata"]["name"]
        print(f"created RayJob {kuberay.namespace}/{name}: {job['spec']['entrypoint']}", flush=True)
        if self.no_wait:
            return 0
        job = kuberay.wait_for_job(name, self.timeout, on_change=lambda obj: print(summary(obj), flush=True))
        print(f"logs: onegen k8s logs {name}")
        return 0 if job_succeeded(job) else 1


class Status(Action):
    """One line per RayCluster, RayJob and RayService."""

    action = "status"

    kind: CliPositionalArg[str | None] = Field(None, description="RayCluster, RayJob or RayService; None: all three")
    name: CliPositionalArg[str | None] = Field(None, description="one resource; None: every one of the kind")

    def run_on(self, k8s: K8s) -> int:
        from components.platform.kuberay import summary

        kuberay = k8s.connect()
        for kind in [kind_named(self.kind)] if self.kind else RAY_KINDS:
            for obj in [kuberay.get(kind, self.name)] if self.name else kuberay.list(kind):
                print(summary({"kind": kind, **obj}))
        return 0


class Logs(Action):
    """A RayJob's submitter pod log (the driver's output)."""

    action = "logs"

    name: CliPositionalArg[str] = Field(description="the RayJob")

    def run_on(self, k8s: K8s) -> int:
        print(k8s.connect().job_logs(self.name), end="")
        return 0


class Delete(Action):
    """Delete one resource."""

    action = "delete"

    kind: CliPositionalArg[str] = Field(description="e.g. rayjob, RayCluster")
    name: CliPositionalArg[str] = Field(description="its name")

    def run_on(self, k8s: K8s) -> int:
        kuberay, kind = k8s.connect(), kind_named(self.kind)
        kuberay.delete(kind, self.name)
        print(f"deleted {kind} {kuberay.namespace}/{self.name}")
        return 0


class K8s(Command):
    """KubeRay: validate, apply, submit-train, status, logs, delete."""

    namespace: str = Field("onegen", validation_alias=AliasChoices("namespace", "n"), description="the namespace")
    context: str | None = Field(None, description="a kubeconfig context; None: the current one")
    server: str | None = Field(None, description="an API server URL needing no credentials, e.g. kubectl proxy's")
    validate_: CliSubCommand[Validate] = Field(alias="validate")  # `validate` is a BaseModel attribute
    apply: CliSubCommand[Apply]
    submit_train: CliSubCommand[SubmitTrain] = Field(alias="submit-train")
    status: CliSubCommand[Status]
    logs: CliSubCommand[Logs]
    delete: CliSubCommand[Delete]

    def run(self) -> int:
        from kubernetes.config import ConfigException

        from components.platform.kuberay import KubeRayError
        from pipelines.k8s.validation import RenderError

        actions = (self.validate_, self.apply, self.submit_train, self.status, self.logs, self.delete)
        action = next((a for a in actions if a is not None), None)
        if action is None:
            raise UsageError("give an action: validate, apply, submit-train, status, logs, delete")
        try:
            return action.run_on(self)
        except (KubeRayError, RenderError, ConfigException, ValueError, OSError) as err:
            print(f"onegen k8s {action.action}: {err}", file=sys.stderr)
            return 1

    def connect(self) -> KubeRay:
        from kubernetes import client, config

        from components.platform.kuberay import KubeRay

        if self.server:
            api_client = client.ApiClient(client.Configuration(host=self.server))
        elif "KUBERNETES_SERVICE_HOST" in os.environ and self.context is None:  # inside a pod
            config.load_incluster_config()
            api_client = client.ApiClient()
        else:
            api_client = config.new_client_from_config(context=self.context)
        return KubeRay(api_client, namespace=self.namespace)


def training_job(job: dict, config: str | None, name: str | None) -> dict:
    """The manifest's RayJob (applied suspended, a template) as a run: a fresh name (a RayJob runs
    once), not suspended, running `config` if given."""
    job = copy.deepcopy(job)
    job.pop("status", None)
    meta = job["metadata"]
    meta["name"] = name or f"{meta['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    job["spec"]["suspend"] = False
    if config is not None:
        job["spec"]["entrypoint"] = with_config(job["spec"]["entrypoint"], config)
    return job


def with_config(entrypoint: str, config: str) -> str:
    """`python -m ray_jobs.train --config A` → `... --config B`."""
    words = shlex.split(entrypoint)
    if "--config" in words[:-1]:
        words[words.index("--config") + 1] = config
    else:
        words += ["--config", config]
    return shlex.join(words)


def check_config(config: str) -> None:
    """The job reads its config in the cluster: a preset baked into the image, a URI, or a path
    inside the image; a file on this machine is not there."""
    if (PRESETS / f"{config}.yaml").is_file() or "://" in config or Path(config).is_absolute():
        return
    presets = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise ValueError(f"--config {config}: not a preset ({presets}); the cluster cannot read a file on this "
                     "machine: upload it (s3://bucket/key.yaml) and pass the URI")  # fmt: skip


def kind_named(word: str) -> str:
    """rayjob, RayJob, rayjobs → RayJob."""
    from components.platform.kuberay import KINDS

    names = {k.lower(): k for k in KINDS} | {kind.plural: k for k, kind in KINDS.items()}
    if word.lower() not in names:
        raise ValueError(f"unknown kind {word!r} (one of {', '.join(KINDS)})")
    return names[word.lower()]
