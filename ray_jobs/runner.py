"""The body of every `python -m ray_jobs.<stage> --config FILE`: parse, connect to Ray, run the
stage, print its summary, and exit non-zero on failure (a StageError's message alone: it says what
to do; anything else with its traceback)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

from pipelines.config import PipelineConfig, load_config
from pipelines.errors import StageError


def run_stage(stage: str, fn: Callable[[PipelineConfig], object], argv: list[str] | None = None) -> int:
    """The body of `ray_jobs.<stage>`: parse, connect, run `fn(config)`, exit code."""
    parser = argparse.ArgumentParser(prog=f"python -m ray_jobs.{stage}")
    parser.add_argument("--config", required=True, help="a preset name or a YAML file")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        import ray

        ray.init(log_to_driver=True)  # inside a Ray job: its cluster; run directly: a local one
        use_every_core()
        result = fn(cfg)
        summary = getattr(result, "summary", None)
        print(summary() if callable(summary) else result if result is not None else f"{stage}: done", flush=True)
        return 0
    except StageError as err:
        print(f"{stage} failed: {err}", file=sys.stderr, flush=True)
        return 1
    except Exception:  # anything else: the traceback is the message
        traceback.print_exc()
        return 1


def use_every_core() -> None:
    """Give torch every core this process may run on. Ray starts a job's entrypoint with
    OMP_NUM_THREADS=1 (inherited from its job supervisor, which reserves no CPU), so the model work
    a stage does in its own process (evaluate's answers, train's calibration after the workers are
    done) would run on one core while the others idle; the workers and actors a stage starts get
    their threads from their own `num_cpus`."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
