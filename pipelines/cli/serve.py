"""`onegen serve`: deploy the Serve app (infra/serve.yaml) on the running local Ray, like
`serve deploy infra/serve.yaml -a http://127.0.0.1:8265`, and wait until it answers
(pipelines/serving/deploy.py does both)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import yaml
from pydantic import Field

from pipelines.checkout import REPO
from pipelines.cli.command import Command

CONFIG = REPO / "infra" / "serve.yaml"


class Serve(Command):
    """Deploy the Serve app (OpenAI-compatible HTTP) on the local Ray."""

    config: Path = Field(CONFIG, description="a Serve config YAML")
    model_uri: str | None = Field(None, description="models:/<name>@<alias>; None: the config's (models:/onegen@champion)")
    model: Path | None = Field(None, description="a local OneGen model directory instead of the registry")
    index: Path | None = Field(None, description="its index directory (with --model)")
    port: int | None = Field(None, description="HTTP port; None: the config's (8000)")
    address: str = Field("http://127.0.0.1:8265", description="the Ray dashboard (RAY_ADDRESS of `onegen status`)")
    code_root: str | None = Field(None, description="upload this checkout as a zip under this s3:// prefix and run the app from "
                                                    "it (nodes on other machines); None: run it in place (local://)")
    timeout: float = Field(600, description="seconds to wait for the app to run")

    def run(self) -> int:
        from pipelines.serving.deploy import DeployError, deploy, package_code, serve_config

        code = package_code(self.code_root) if self.code_root else None
        config = serve_config(yaml.safe_load(self.config.read_text()), model_uri=self.model_uri,
                              model_dir=str(self.model.resolve()) if self.model else None,
                              index_dir=str(self.index.resolve()) if self.index else None, port=self.port, code_uri=code)  # fmt: skip
        app = config["applications"][0]
        print(f"deploying {app['name']} ({app['args']}) to {self.address}", flush=True)
        try:
            url = deploy(config, self.address, self.timeout)
        except DeployError as err:
            print(str(err), file=sys.stderr)
            return 1
        served = httpx.get(f"{url}/healthz", timeout=30, trust_env=False).json()["model"]  # the name clients give as `model`
        print(f"{app['name']} is running at {url}/v1 serving {served!r} (OpenAI-compatible; OpenAPI spec at {url}/openapi.json)")
        print(f'  curl {url}/v1/chat/completions -H "Content-Type: application/json" '
              f"-d '{{\"model\": \"{served}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Who wrote Hamlet?\"}}]}}'")  # fmt: skip
        return 0
