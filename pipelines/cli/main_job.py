"""`onegen main`: the README's first command. The whole pipeline on one machine: the local stack,
the data, then prepare, train, index, evaluate and promote as Ray jobs, and a final table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="smollm2-cpu", help="a preset (smollm2-cpu: ~13 min; smollm2-cpu-long: ~1 hour) or a YAML file")
    parser.add_argument("--stack-config", type=Path, default=Path("infra/stack.yaml"), help="ports and state dir of the local stack")


def run(args: argparse.Namespace) -> int:
    from pipelines.local.main_job import final_table, run_main

    report = run_main(args.config, args.stack_config if args.stack_config.is_file() else None)
    print(final_table(report), flush=True)
    if report.failed:
        print(f"\nthe {report.failed} stage failed; its log is above", file=sys.stderr)
        return 1
    return 0
