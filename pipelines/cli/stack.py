"""`onegen up`, `onegen down`, `onegen status`: the local stack (pipelines/local/stack.py).

    onegen up      [--config FILE] [--state_dir DIR] [--ray_port N] [--mlflow_port N] [--num_cpus N] ...
    onegen down    [same options]
    onegen status  [same options] [--env]       eval "$(onegen status --env)"

A flag per StackConfig field. Settings: the defaults < `--config` (default infra/stack.yaml when
it exists) < the flags given. `status` exits 0 when every service is healthy, 1 otherwise.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError
from pydantic_settings import CliToggleFlag

from pipelines.cli.command import Command, UsageError, field_errors
from pipelines.local.stack import StackConfig, StackError, down, status, up

DEFAULT_CONFIG = Path("infra/stack.yaml")


class StackCommand(Command, StackConfig):
    """The flags' schema: an instance holds the command's own options; the stack's settings are
    the ones `stack_config` builds, handed to `run_stack`."""

    config: Path | None = Field(None, description=f"stack YAML; None: {DEFAULT_CONFIG} if present")

    @classmethod
    def run_cli(cls, values: dict[str, Any]) -> int:
        flags = {k: v for k, v in values.items() if k in StackConfig.model_fields}
        command = cls.from_cli({k: v for k, v in values.items() if k not in flags})
        cfg = command.stack_config(flags)
        try:
            return command.run_stack(cfg)
        except StackError as err:
            print(f"onegen {command.name}: {err}", file=sys.stderr)
            return 1

    def stack_config(self, flags: dict[str, Any]) -> StackConfig:
        path = self.config if self.config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
        try:
            return StackConfig.load(path, **flags)
        except ValidationError as err:
            raise UsageError(field_errors(err)) from None
        except (OSError, ValueError, yaml.YAMLError) as err:  # an unreadable or bad YAML file
            raise UsageError(str(err)) from None

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def run_stack(self, cfg: StackConfig) -> int:
        raise NotImplementedError(self.name)


class Up(StackCommand):
    """Start the local stack: Ray head and MLflow server on 127.0.0.1."""

    def run_stack(self, cfg: StackConfig) -> int:
        start = time.perf_counter()
        result = up(cfg)
        if result.started:
            print(f"started {', '.join(result.started)} in {time.perf_counter() - start:.1f}s")
        else:
            print("the stack is already up")
        print(result.report())
        return 0 if result.healthy else 1


class Down(StackCommand):
    """Stop the local stack."""

    def run_stack(self, cfg: StackConfig) -> int:
        stopped = down(cfg)
        print(", ".join(f"stopped {name} (pid {pid})" for name, pid in stopped.items()) or "the stack was not running")
        return 0


class Status(StackCommand):
    """Report the local stack's health and addresses."""

    env: CliToggleFlag[bool] = Field(False, description='print only `export` lines, for eval "$(onegen status --env)"')

    def run_stack(self, cfg: StackConfig) -> int:
        now = status(cfg)
        print("\n".join(now.env_lines(export=True)) if self.env else now.report())
        return 0 if now.healthy else 1
