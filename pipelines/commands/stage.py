"""`onegen prepare|train|eval|promote --config PRESET`: submit that stage as a Ray job to the
running Ray (see `onegen up`), stream its logs, exit non-zero if it fails."""

from __future__ import annotations

import argparse

from pipelines.jobs import add_submit_arguments, submit

STAGE_OF_COMMAND = {"prepare": "prepare", "train": "train", "eval": "evaluate", "promote": "promote"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_submit_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.config is None:
        print(f"onegen {args._name}: --config PRESET is required (e.g. --config smollm2-cpu)")
        return 2
    return submit(STAGE_OF_COMMAND[args._name], args.config, args.address, wait=not args.no_wait)
