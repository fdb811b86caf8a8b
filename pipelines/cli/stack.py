"""`onegen up`, `onegen down`, `onegen status`: the local stack (pipelines/stack.py).

    onegen up      [--config FILE] [--state-dir DIR] [--ray-port N] [--dashboard-port N] [--mlflow-port N] [--num-cpus N]
    onegen down    [same options]
    onegen status  [same options] [--env]       eval "$(onegen status --env)"

Settings: the defaults < `--config` (default infra/stack.yaml when it exists) < the flags.
`status` exits 0 when every service is healthy, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from pipelines.local.stack import StackConfig, StackError, down, status, up

DEFAULT_CONFIG = Path("infra/stack.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help=f"stack YAML (default: {DEFAULT_CONFIG} if present)")
    parser.add_argument("--state-dir", type=Path, default=None, help="pid files, logs, MLflow db and artifacts, storage")
    parser.add_argument("--ray-port", type=int, default=None, help="Ray's GCS port")
    parser.add_argument("--dashboard-port", type=int, default=None, help="Ray's dashboard and jobs API port")
    parser.add_argument("--mlflow-port", type=int, default=None, help="MLflow server port")
    parser.add_argument("--num-cpus", type=int, default=None, help="logical CPUs Ray schedules")
    if parser.prog.split()[-1] == "status":  # cli.build_parser names a sub-parser "onegen <command>"
        parser.add_argument("--env", action="store_true", help="print only `export` lines, for eval")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = _config(args)
    except (OSError, ValueError, yaml.YAMLError) as err:  # an unreadable or bad YAML file, a bad flag
        print(f"onegen {args._name}: {err}", file=sys.stderr)
        return 2
    try:
        return {"up": _up, "down": _down, "status": _status}[args._name](cfg, args)
    except StackError as err:
        print(f"onegen {args._name}: {err}", file=sys.stderr)
        return 1


def _config(args: argparse.Namespace) -> StackConfig:
    path = args.config if args.config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    flags = {k: getattr(args, k) for k in ("state_dir", "ray_port", "dashboard_port", "mlflow_port", "num_cpus")}
    return StackConfig.load(path, **flags)


def _up(cfg: StackConfig, args: argparse.Namespace) -> int:
    start = time.perf_counter()
    result = up(cfg)
    if result.started:
        print(f"started {', '.join(result.started)} in {time.perf_counter() - start:.1f}s")
    else:
        print("the stack is already up")
    print(result.report())
    return 0 if result.healthy else 1


def _down(cfg: StackConfig, args: argparse.Namespace) -> int:
    stopped = down(cfg)
    print(", ".join(f"stopped {name} (pid {pid})" for name, pid in stopped.items()) or "the stack was not running")
    return 0


def _status(cfg: StackConfig, args: argparse.Namespace) -> int:
    now = status(cfg)
    print("\n".join(now.env_lines(export=True)) if args.env else now.report())
    return 0 if now.healthy else 1
