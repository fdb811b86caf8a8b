"""`onegen prepare|train|eval|promote --config PRESET`: submit that stage as a Ray job to the
running Ray (see `onegen up`), stream its logs, exit non-zero if it fails."""

from __future__ import annotations

import argparse

from pipelines.local.jobs import add_submit_arguments, submit

STAGE_OF_COMMAND = {"prepare": "prepare", "train": "train", "eval": "evaluate", "promote": "promote"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_submit_arguments(parser)
    if parser.prog.endswith(" train"):
        parser.add_argument("--plain-lm", action="store_true",
                            help="train the plain-LM baseline instead (same rows and steps, λ_ret = 0) that evaluate compares with")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from pipelines.config import load_config

    if args.config is None:
        print(f"onegen {args._name}: --config PRESET is required (e.g. --config smollm2-cpu)")
        return 2
    config = load_config(args.config).plain_lm() if getattr(args, "plain_lm", False) else args.config
    return submit(STAGE_OF_COMMAND[args._name], config, args.address, wait=not args.no_wait)
