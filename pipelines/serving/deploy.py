"""Deploying the Serve app to a running Ray through its dashboard's Serve REST API, what
`serve deploy config.yaml -a http://127.0.0.1:8265` does: PUT the config to
`/api/serve/applications/`, then poll the same route until the application runs or fails.

    config = serve_config(yaml.safe_load(Path("infra/serve.yaml").read_text()), model_uri="models:/onegen@champion")
    url = deploy(config, "http://127.0.0.1:8265", timeout_s=600)
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from pipelines.checkout import REPO

ROUTE = "/api/serve/applications/"


class DeployError(RuntimeError):
    """The application could not be deployed or did not start; the message says why."""


def serve_config(config: dict, *, model_uri: str | None = None, model_dir: str | None = None,
                 index_dir: str | None = None, port: int | None = None, code_uri: str | None = None) -> dict:
    """`config` (a Serve config, e.g. infra/serve.yaml) with a model source and port applied, running
    `code_uri` (a zip of this checkout, `package_code`) or else this checkout in place: a Serve
    config, unlike `ray job submit`, takes no local path to upload, and `local://` works where every
    node runs on this machine, where the checkout is."""
    config = copy.deepcopy(config)
    app = config["applications"][0]
    if model_dir is not None:
        app["args"].pop("model_uri", None)
        app["args"].update(model_dir=model_dir, index_dir=index_dir)
    elif model_uri is not None:
        app["args"]["model_uri"] = model_uri
    if port is not None:
        config["http_options"]["port"] = port
    # Every node of the local stack is on this machine: a proxy per node would bind the same port.
    config["proxy_location"] = "HeadOnly"
    app["runtime_env"] = {**app.get("runtime_env", {}), "working_dir": code_uri or f"local://{REPO}"}
    return config


# What a replica never needs: this machine's state, data and results (top-level directories), and
# caches anywhere (Ray leaves .git and .venv out of its own packages too).
SKIP_TOP = {".onegen", "data", "mlruns", "bench/results"}
SKIP_ANYWHERE = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}


def package_code(root: str, endpoint_url: str | None = None) -> str:
    """Zip this checkout under `root` (s3://bucket/prefix, or a directory every node can read) and
    return its URI for a Serve `working_dir`: on a cluster of several machines, the code every
    replica runs comes from there, not from this machine's disk. Named by its content's hash, so an
    unchanged checkout is uploaded once."""
    import hashlib
    import io
    import zipfile

    from components.platform import storage

    files = []
    for directory, subdirs, names in os.walk(REPO):
        here = Path(directory).relative_to(REPO)
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_ANYWHERE and not d.endswith(".egg-info")
                            and (here / d).as_posix() not in SKIP_TOP)  # fmt: skip
        files += [Path(directory) / n for n in sorted(names)]
    digest, buffer = hashlib.sha1(), io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            name = path.relative_to(REPO).as_posix()
            data = path.read_bytes()
            digest.update(name.encode() + b"\0" + data)
            archive.writestr(f"onegen/{name}", data)  # Ray unpacks the one top-level directory's contents
    location = f"{root.rstrip('/')}/code/onegen-{digest.hexdigest()[:16]}.zip"
    if not storage.exists(location, endpoint_url):
        storage.write_bytes(location, buffer.getvalue(), endpoint_url)
    return location


def application_url(config: dict) -> str:
    return f"http://{config['http_options']['host']}:{config['http_options']['port']}"


def deploy(config: dict, address: str, timeout_s: float, on_status: Callable[[str], None] | None = None) -> str:
    """Deploy and wait until the first application is RUNNING; returns its URL."""
    name = config["applications"][0]["name"]
    with httpx.Client(base_url=address.rstrip("/"), timeout=30, trust_env=False) as client:
        answer = client.put(ROUTE, json=config)
        if not answer.is_success:
            raise DeployError(f"{address} refused the Serve config ({answer.status_code}): {answer.text.strip()}")
        deadline, status = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            app = client.get(ROUTE).json().get("applications", {}).get(name, {})
            if app.get("status") != status and on_status is not None:
                on_status(app.get("status", "NOT_STARTED"))
            status = app.get("status")
            if status == "RUNNING":
                return application_url(config)
            if status == "DEPLOY_FAILED":
                raise DeployError(f"{name} failed to deploy:\n{app.get('message', '')}")
            time.sleep(2)
    raise DeployError(f"{name} was not running after {timeout_s:.0f}s (status {status}); see `serve status -a {address}`")


def wait_healthy(url: str, timeout_s: float = 300) -> None:
    """Wait until the app at `url` answers `GET /healthz` with 200 (a replica is up and decoding)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise DeployError(f"{url}/healthz did not answer 200 within {timeout_s:.0f}s")
