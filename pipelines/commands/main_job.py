"""`onegen main`: the README's first command. Runs the pipeline's stages in order on the embedded
default; stages that are not built yet are named, not faked."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

PENDING = ["train (Ray Train + DeepSpeed)", "index (Ray Data)", "evaluate", "promote (MLflow)"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data"), help="where the datasets are written")


def run(args: argparse.Namespace) -> int:
    from components.datasets.build import build_datasets

    started = time.perf_counter()
    print("== stage 1/5: data build (FanOutQA dev + vital articles + inverse cloze)", flush=True)
    print(build_datasets(args.data).summary(), flush=True)
    print(f"== done in {time.perf_counter() - started:.0f}s. Not built yet, so not run: {', '.join(PENDING)}.")
    return 0
