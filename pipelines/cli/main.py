"""`onegen`: one CLI of subcommands, generated from typed models by pydantic-settings.

Each subcommand is a model in `pipelines/cli/<group>.py` (command.py says what a command is):
its fields are its flags, with the field's type, default and description, so a flag that sets a
config field is generated from that field (`--train.optim.max_steps`, `--max_new_tokens`), never
copied by hand. Command modules import only configs at the top, and torch, Ray or MLflow inside
`run`, so `--help` is fast.

    onegen train --config smollm2-cpu --train.optim.max_steps 40     # pipeline.py: flags over a preset
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pydantic_settings import BaseSettings, CliSubCommand, SettingsConfigDict

from pipelines.cli.ask import Ask
from pipelines.cli.command import Command, UsageError
from pipelines.cli.data import Data
from pipelines.cli.index import Index
from pipelines.cli.k8s import K8s
from pipelines.cli.link import Link
from pipelines.cli.main_job import MainJob
from pipelines.cli.parsing import cli_source, parse, submodel
from pipelines.cli.pipeline import PipelineCommand
from pipelines.cli.serve import Serve
from pipelines.cli.stack import Down, Status, Up
from pipelines.cli.stage import Evaluate, Prepare, Promote, Train
from pipelines.config import PipelineConfig


class Onegen(BaseSettings):
    """OneGen on Ray: one model that generates and retrieves."""

    # The CLI settings (never instantiated: parsing.py reads the flags' values from the source).
    model_config = SettingsConfigDict(
        cli_prog_name="onegen",
        cli_kebab_case=False,  # --train.optim.max_steps, as the field is named
        cli_avoid_json=True,  # a sub-model is set flag by flag, not as a JSON object
        cli_hide_none_type=True,
        cli_enforce_required=True,
        cli_use_class_docs_for_groups=True,  # a config section's docstring heads its flags
        cli_implicit_flags=False,  # --workers.use_gpu true|false: a flag may turn a preset's true off
    )

    main: CliSubCommand[MainJob]
    up: CliSubCommand[Up]
    down: CliSubCommand[Down]
    status: CliSubCommand[Status]
    data: CliSubCommand[Data]
    prepare: CliSubCommand[Prepare]
    train: CliSubCommand[Train]
    index: CliSubCommand[Index]
    eval: CliSubCommand[Evaluate]
    promote: CliSubCommand[Promote]
    serve: CliSubCommand[Serve]
    ask: CliSubCommand[Ask]
    link: CliSubCommand[Link]
    k8s: CliSubCommand[K8s]


COMMANDS: dict[str, type[Command]] = {name: submodel(field.annotation) for name, field in Onegen.model_fields.items()}


def command_line(argv: Sequence[str]) -> tuple[str, dict]:
    """(the subcommand named, the values of the flags given to it)."""
    values = parse(Onegen, argv)
    name = next((name for name, given in values.items() if given is not None), None)
    if name is None:
        cli_source(Onegen).root_parser.error("give a command")  # exits 2, as argparse does
    return name, values[name]


def main(argv: Sequence[str] | None = None) -> int:
    name, values = command_line(sys.argv[1:] if argv is None else argv)
    try:
        return COMMANDS[name].run_cli(values)
    except UsageError as err:
        print(f"onegen {name}: {err}", file=sys.stderr)
        return 2


def load_pipeline_config(argv: Sequence[str]) -> PipelineConfig:
    """The config a pipeline command line runs, without running it: `["train", "--config", "tiny",
    "--train.optim.max_steps", "40"]` → the tiny preset with max_steps 40 (`--plain-lm` applied).
    A bad flag exits 2 (SystemExit); a bad value raises UsageError naming the field."""
    name, values = command_line(argv)
    command = COMMANDS[name]
    if not issubclass(command, PipelineCommand):
        raise UsageError(f"onegen {name} runs no pipeline config")
    return command.resolve(values)[1]


if __name__ == "__main__":
    sys.exit(main())
