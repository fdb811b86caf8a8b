"""`onegen`: one CLI of subcommands. Each lives in `pipelines/commands/<name>.py` with
`add_arguments(parser)` and `run(args) -> int`, imported only when called (so `--help` is fast)."""

from __future__ import annotations

import argparse
import importlib
import sys

# name → (module under pipelines.cli, or None while it is not built; one-line help)
COMMANDS: dict[str, tuple[str | None, str]] = {
    "main": ("main_job", "run the whole pipeline on the embedded default (the README's first command)"),
    "up": ("stack", "start the local stack: Ray head and MLflow server on 127.0.0.1"),
    "down": ("stack", "stop the local stack"),
    "status": ("stack", "report the local stack's health and addresses"),
    "data": ("data", "build the datasets from the installed packages; validate JSONL"),
    "prepare": ("stage", "submit the prepare job (Ray Data: validate, tokenise, write Parquet shards)"),
    "train": ("stage", "submit the training job (Ray Train + DeepSpeed)"),
    "index": ("index", "submit the index job (Ray Data), or build/search an index in-process"),
    "eval": ("stage", "submit the evaluate job: in-stream Recall@k vs MiniLM, answers, LM loss; to MLflow"),
    "promote": ("stage", "submit the promote job: register the version, move @champion only if it wins"),
    "serve": ("serve", "deploy the Serve app (OpenAI-compatible HTTP) on the local Ray"),
    "ask": ("ask", "ask a question; print the answer and the retrieval trace"),
    "bench": ("bench", "run the benchmarks in bench/"),
    "k8s": ("k8s", "KubeRay: validate, apply, submit-train, status, logs, delete"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onegen", description="OneGen on Ray: one model that generates and retrieves.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if module is not None and name == _requested(argv):
            importlib.import_module(f"pipelines.cli.{module}").add_arguments(p)
        p.set_defaults(_module=module, _name=name)
    return parser


def _requested(argv: list[str]) -> str | None:
    """The subcommand named on the command line: only its module is imported."""
    return next((a for a in argv if a in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if args._module is None:
        print(f"onegen {args._name}: not built yet", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"pipelines.cli.{args._module}").run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
