"""`onegen data`: build the datasets from the installed packages, or screen a JSONL file.

    onegen data build [--out data] [--dev_fraction F] [--negatives N] [--ict_limit N] [--seed N]
    onegen data validate --examples F --corpus F [--quarantine F] [--max_length N] [--tokenizer smollm2|DIR]

`build`'s flags are BuildConfig's fields. `validate` runs the same checks as training's prepare
stage, tokenisation included (so a row whose retrieval `--max_length` would cut is reported
here, not found later in a worker).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import CliSubCommand

from components.config import ModelConfig, TrainConfig
from components.datasets.config import BuildConfig
from pipelines.cli.command import Command, UsageError, chosen, field_errors, field_of


class Build(Command, BuildConfig):
    """Corpus, train and dev JSONL from the vital articles and FanOutQA dev; entity-linking files from them and WordNet."""

    out: Path = Field(Path("data"), description="output directory")

    @classmethod
    def run_cli(cls, values: dict[str, Any]) -> int:
        try:
            command = cls.model_validate(values)
        except ValidationError as err:  # exit 1 for bad options, as build_datasets' own check has always done
            print(f"onegen data build: {field_errors(err)}", file=sys.stderr)
            return 1
        return command.run()

    def run(self) -> int:
        from components.datasets.build import build_datasets

        try:
            report = build_datasets(self.out, BuildConfig(**self.model_dump(include=set(BuildConfig.model_fields))))
        except (ModuleNotFoundError, FileNotFoundError) as err:  # a missing data package
            print(f"onegen data build: {err}", file=sys.stderr)
            return 1
        print(report.summary())
        return 0


class Validate(Command):
    """Screen examples against a corpus; bad rows to a quarantine file."""

    examples: Path = Field(description="examples JSONL")
    corpus: Path = Field(description="documents JSONL")
    quarantine: Path | None = Field(None, description="where rejected rows go, with the reason")
    max_length: int = field_of(TrainConfig, "max_length")
    tokenizer: str = field_of(ModelConfig, "source")

    def run(self) -> int:
        from components.data.screening import encode_examples, load_corpus
        from components.data.tokenize import Formatter
        from components.model.base import load_tokenizer

        for path in (self.examples, self.corpus):
            if not path.is_file():
                print(f"onegen data validate: cannot read {path}", file=sys.stderr)
                return 1
        try:
            corpus, corpus_report = load_corpus(self.corpus, self.quarantine)
            formatter = Formatter(load_tokenizer(self.tokenizer))
            encoded, report = encode_examples(self.examples, corpus, formatter, self.max_length, self.quarantine)
        except OSError as err:  # unreadable (permissions, a directory, a vanished file)
            print(f"onegen data validate: {err}", file=sys.stderr)
            return 1
        print(corpus_report.summary())
        print(report.summary())
        if encoded:
            lengths = sorted(len(e.input_ids) for e in encoded)
            print(f"tokens per row: median {lengths[len(lengths) // 2]}, max {lengths[-1]} (max_length {self.max_length})")
        if self.quarantine is not None and (corpus_report.quarantined or report.quarantined):
            print(f"quarantined rows, with reasons: {self.quarantine}")
        return 0


class Data(Command):
    """Build the datasets from the installed packages; validate JSONL."""

    build: CliSubCommand[Build]
    validate_: CliSubCommand[Validate] = Field(alias="validate")  # `validate` is a BaseModel attribute

    @classmethod
    def run_cli(cls, values: dict[str, Any]) -> int:
        action = chosen(values, ACTIONS)
        if action is None:
            raise UsageError(f"give an action: {', '.join(ACTIONS)}")
        return ACTIONS[action].run_cli(values[action])


ACTIONS: dict[str, type[Command]] = {"build": Build, "validate": Validate}
