"""What a subcommand is: a pydantic model whose fields are its flags (pydantic-settings builds
them, help and default from each field) and whose `run` does the work.

`run_cli` receives the values of the flags given (parsing.py), validates them and runs. A bad
value is a `UsageError` naming the field, which `onegen` reports with exit code 2; a failure at
run time is reported by `run` itself, which returns 1.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo


class UsageError(Exception):
    """Bad input on the command line (exit code 2); the message names the flag or field."""


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def run_cli(cls, values: dict[str, Any]) -> int:
        return cls.from_cli(values).run()

    @classmethod
    def from_cli(cls, values: dict[str, Any]) -> Command:
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise UsageError(field_errors(err)) from None

    def run(self) -> int:
        raise NotImplementedError(type(self).__name__)


def chosen(values: dict[str, Any], subcommands: Iterable[str]) -> str | None:
    """Which of `subcommands` the command line chose (the parser files the others as None)."""
    return next((name for name in subcommands if values.get(name) is not None), None)


def field_errors(err: ValidationError) -> str:
    """One line per error, named by the field's path (the flag without its dashes):
    `train.optim.max_steps: Input should be greater than 0 (got 0)`."""
    lines = []
    for e in err.errors():
        got = "" if isinstance(e.get("input"), (dict, BaseModel)) else f" (got {e.get('input')!r})"
        lines.append(f"{'.'.join(map(str, e['loc'])) or err.title}: {e['msg']}{got}")
    return "\n".join(lines)


def field_of(model: type[BaseModel], name: str) -> FieldInfo:
    """A config field (its default, constraints and description) for a command's own field that
    means the same, e.g. `max_length: int = field_of(TrainConfig, "max_length")`."""
    return copy.copy(model.model_fields[name])
