"""`onegen serve`: deploy the Serve app (infra/serve.yaml) on the running local Ray, like
`serve deploy infra/serve.yaml -a http://127.0.0.1:8265`, and wait until it answers."""

from __future__ import annotations

import argparse
import sys
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


def run(args: argparse.Namespace) -> int:
    from pipelines.serving.deploy import DeployError, deploy, serve_config

    config = serve_config(yaml.safe_load(args.config.read_text()), model_uri=args.model_uri,
                          model_dir=str(args.model.resolve()) if args.model else None,
                          index_dir=str(args.index.resolve()) if args.index else None, port=args.port)
    app = config["applications"][0]
    print(f"deploying {app['name']} ({app['args']}) to {args.address}", flush=True)
    try:
        url = deploy(config, args.address, args.timeout)
    except DeployError as err:
        print(str(err), file=sys.stderr)
        return 1
    print(f"{app['name']} is running at {url}/v1 (OpenAI-compatible; OpenAPI spec at {url}/openapi.json)")
    print(f'  curl {url}/v1/chat/completions -H "Content-Type: application/json" '
          f"-d '{{\"model\": \"onegen\", \"messages\": [{{\"role\": \"user\", \"content\": \"Who wrote Hamlet?\"}}]}}'")
    return 0
