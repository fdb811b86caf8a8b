"""`onegen k8s`: the pipeline on Kubernetes through the KubeRay operator (k8s/, README).

    onegen k8s validate [--schemas DIR] [--no-render]     the manifests, offline (no cluster)
    onegen k8s apply (-k OVERLAY | -f FILE)                create, or merge-patch what exists
    onegen k8s submit-train [--config PRESET] [-k OVERLAY | -f FILE] [--timeout S] [--no-wait]
    onegen k8s status [KIND [NAME]]
    onegen k8s logs RAYJOB
    onegen k8s delete KIND NAME

The cluster: the kubeconfig's current context (--context), the pod's service account inside a
cluster, or --server URL for an API server that needs no credentials (`kubectl proxy`).
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import sys
import time
from pathlib import Path

import yaml
from kubernetes.config import ConfigException

from components.platform.kuberay import KINDS, KubeRay, KubeRayError, job_succeeded, summary
from pipelines.checkout import REPO
from pipelines.config import PRESETS
from pipelines.k8s import validation as k8s_validation

DEFAULT_OVERLAY = REPO / "k8s" / "overlays" / "gpu"
RAY_KINDS = ("RayCluster", "RayJob", "RayService")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", default="onegen")
    parser.add_argument("--context", default=None, help="a kubeconfig context (default: the current one)")
    parser.add_argument("--server", default=None, help="an API server URL needing no credentials, e.g. kubectl proxy's")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser("validate", help="check k8s/ against the KubeRay CRD schemas (no cluster needed)")
    p.add_argument("k8s_dir", nargs="?", type=Path, default=REPO / "k8s")
    p.add_argument("--schemas", type=Path, default=k8s_validation.DEFAULT_SCHEMAS)
    p.add_argument("--no-render", action="store_true", help="skip rendering the kustomizations")

    p = sub.add_parser("apply", help="create each resource of an overlay or file, or merge-patch it if it exists")
    _add_source(p, required=True)

    p = sub.add_parser("submit-train", help="create a training RayJob from the manifest, wait, print its status")
    _add_source(p, required=False)
    p.add_argument("--config", default=None, help="a preset (llama2-7b-gpu, smollm2-cpu, ...) or an s3:// YAML")
    p.add_argument("--name", default=None, help="the RayJob's name (default: the manifest's, time-stamped)")
    p.add_argument("--timeout", type=float, default=48 * 3600, help="seconds to wait for Complete or Failed")
    p.add_argument("--no-wait", action="store_true", help="create the RayJob and return")

    p = sub.add_parser("status", help="one line per RayCluster, RayJob and RayService")
    p.add_argument("kind", nargs="?", default=None)
    p.add_argument("name", nargs="?", default=None)

    p = sub.add_parser("logs", help="a RayJob's submitter pod log (the driver's output)")
    p.add_argument("name")

    p = sub.add_parser("delete", help="delete one resource")
    p.add_argument("kind")
    p.add_argument("name")


def _add_source(parser: argparse.ArgumentParser, required: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("-k", dest="kustomize", type=Path, help="a kustomization folder, e.g. k8s/overlays/gpu")
    source.add_argument("-f", dest="file", type=Path, help="a YAML file of resources")


def run(args: argparse.Namespace) -> int:
    try:
        return ACTIONS[args.action](args)
    except (KubeRayError, k8s_validation.RenderError, ConfigException, ValueError, OSError) as err:
        print(f"onegen k8s {args.action}: {err}", file=sys.stderr)
        return 1


def validate(args: argparse.Namespace) -> int:
    argv = [str(args.k8s_dir), "--schemas", str(args.schemas)] + (["--no-render"] if args.no_render else [])
    return k8s_validation.main(argv)


def apply(args: argparse.Namespace) -> int:
    kuberay = connect(args)
    for doc in manifests(args):
        if doc.get("kind") == "Secret" and any(map(k8s_validation.is_placeholder, k8s_validation.secret_values(doc).values())):
            raise ValueError(f"Secret {doc['metadata']['name']} still holds <placeholders>: fill in a copy first")
        outcome, obj = kuberay.apply(doc)
        print(f"{outcome} {doc['kind']} {obj.get('metadata', {}).get('namespace', '')}/{doc['metadata']['name']}")
    return 0


def submit_train(args: argparse.Namespace) -> int:
    if args.config is not None:
        check_config(args.config)
    if args.kustomize is None and args.file is None:
        args.kustomize = DEFAULT_OVERLAY
    jobs = [d for d in manifests(args) if d.get("kind") == "RayJob"]
    if len(jobs) != 1:
        raise ValueError(f"expected one RayJob in {args.kustomize or args.file}, found {len(jobs)}")
    job = training_job(jobs[0], args.config, args.name)
    kuberay = connect(args)
    kuberay.create(job)
    name = job["metadata"]["name"]
    print(f"created RayJob {kuberay.namespace}/{name}: {job['spec']['entrypoint']}", flush=True)
    if args.no_wait:
        return 0
    job = kuberay.wait_for_job(name, args.timeout, on_change=lambda obj: print(summary(obj), flush=True))
    print(f"logs: onegen k8s logs {name}")
    return 0 if job_succeeded(job) else 1


def status(args: argparse.Namespace) -> int:
    kuberay = connect(args)
    kinds = [kind_named(args.kind)] if args.kind else RAY_KINDS
    for kind in kinds:
        for obj in [kuberay.get(kind, args.name)] if args.name else kuberay.list(kind):
            print(summary({"kind": kind, **obj}))
    return 0


def logs(args: argparse.Namespace) -> int:
    print(connect(args).job_logs(args.name), end="")
    return 0


def delete(args: argparse.Namespace) -> int:
    kuberay, kind = connect(args), kind_named(args.kind)
    kuberay.delete(kind, args.name)
    print(f"deleted {kind} {kuberay.namespace}/{args.name}")
    return 0


ACTIONS = {"validate": validate, "apply": apply, "submit-train": submit_train, "status": status, "logs": logs,
           "delete": delete}  # fmt: skip


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


def manifests(args: argparse.Namespace) -> list[dict]:
    if args.kustomize is not None:
        return k8s_validation.render(args.kustomize)
    return [d for d in yaml.safe_load_all(args.file.read_text()) if d is not None]


def kind_named(word: str) -> str:
    """rayjob, RayJob, rayjobs → RayJob."""
    names = {k.lower(): k for k in KINDS} | {kind.plural: k for k, kind in KINDS.items()}
    if word.lower() not in names:
        raise ValueError(f"unknown kind {word!r} (one of {', '.join(KINDS)})")
    return names[word.lower()]


def connect(args: argparse.Namespace) -> KubeRay:
    from kubernetes import client, config

    if args.server:
        api_client = client.ApiClient(client.Configuration(host=args.server))
    elif "KUBERNETES_SERVICE_HOST" in os.environ and args.context is None:  # inside a pod
        config.load_incluster_config()
        api_client = client.ApiClient()
    else:
        api_client = config.new_client_from_config(context=args.context)
    return KubeRay(api_client, namespace=args.namespace)
