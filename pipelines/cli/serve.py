"""`onegen serve`: deploy the Serve app (infra/serve.yaml) on the running local Ray, like
`serve deploy infra/serve.yaml -a http://127.0.0.1:8265`, and wait until it answers."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from pipelines.checkout import REPO

CONFIG = REPO / "infra" / "serve.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=CONFIG, help="a Serve config YAML (default infra/serve.yaml)")
    parser.add_argument("--model-uri", default=None, help="models:/<name>@<alias> (default: the config's, models:/onegen@champion)")
    parser.add_argument("--model", type=Path, default=None, help="a local OneGen model directory instead of the registry")
    parser.add_argument("--index", type=Path, default=None, help="its index directory (with --model)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's, 8000)")
    parser.add_argument("--address", default="http://127.0.0.1:8265", help="the Ray dashboard (RAY_ADDRESS of `onegen status`)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the app to run")


def serve_config(args: argparse.Namespace) -> dict:
    """The config file with the command line applied, and this checkout as the working dir."""
    config = yaml.safe_load(args.config.read_text())
    app = config["applications"][0]
    if args.model is not None:
        app["args"].pop("model_uri", None)
        app["args"].update(model_dir=str(args.model.resolve()), index_dir=str(args.index.resolve()) if args.index else None)
    elif args.model_uri is not None:
        app["args"]["model_uri"] = args.model_uri
    if args.port is not None:
        config["http_options"]["port"] = args.port
    # A Serve config (unlike `ray job submit`) takes no local path to upload: on the local stack the
    # checkout is already on the only node, so the replicas run from it in place.
    app["runtime_env"] = {**app.get("runtime_env", {}), "working_dir": f"local://{REPO}"}
    return config


def run(args: argparse.Namespace) -> int:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    config = serve_config(args)
    client = ServeSubmissionClient(args.address)
    client.deploy_applications(config)
    name = config["applications"][0]["name"]
    url = f"http://{config['http_options']['host']}:{config['http_options']['port']}"
    print(f"deploying {name} ({config['applications'][0]['args']}) to {args.address}", flush=True)
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        app = client.get_serve_details().get("applications", {}).get(name, {})
        status = app.get("status")
        if status == "RUNNING":
            print(f"{name} is running at {url}/v1 (OpenAI-compatible; OpenAPI spec at {url}/openapi.json)")
            print(f'  curl {url}/v1/chat/completions -H "Content-Type: application/json" '
                  f"-d '{{\"model\": \"onegen\", \"messages\": [{{\"role\": \"user\", \"content\": \"Who wrote Hamlet?\"}}]}}'")
            return 0
        if status == "DEPLOY_FAILED":
            print(f"{name} failed to deploy:\n{app.get('message', '')}", file=sys.stderr)
            return 1
        time.sleep(2)
    print(f"{name} was not running after {args.timeout:.0f}s (status {status}); see `serve status -a {args.address}`", file=sys.stderr)
    return 1
