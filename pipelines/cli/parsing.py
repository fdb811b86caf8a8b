"""argv → the values of the flags the user gave, nested like the command models.

pydantic-settings' CLI support (`CliSettingsSource`) builds the argparse tree from the models,
a flag per field with the field's type, default and description, and parses argv. Its values are
taken *before* any model is validated: `CliApp.run` would validate each command as parsed, every
flag not given set to its field's default, but a stage command must lay only the given flags over
a preset (`pipelines/cli/pipeline.py`), and each command chooses how a bad value exits
(`pipelines/cli/command.py`). So this returns only what argv said, e.g. for
`onegen train --config tiny --train.optim.max_steps 40`:

    {"train": {"config": "tiny", "train": {"optim": {"max_steps": 40}}}, "main": None, ...}

(a subcommand not chosen is None).
"""

from __future__ import annotations

import json
from argparse import RawDescriptionHelpFormatter
from collections.abc import Sequence
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, CliSettingsSource

MANY_FLAGS = 12  # above this, a command's usage line says [options] instead of listing them


def parse(root: type[BaseSettings], argv: Sequence[str]) -> dict[str, Any]:
    """The given flags' values under `root` (its `model_config` holds the CLI settings). A usage
    error or --help exits here, as argparse does (SystemExit 2 or 0)."""
    return typed(root, cli_source(root)(args=list(argv))())


def cli_source(root: type[BaseSettings]) -> CliSettingsSource:
    """The argparse tree of `root`, built from its fields (`.root_parser`), ready to parse."""
    return CliSettingsSource(root, formatter_class=UsageFormatter)


def typed(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """Each string the parser left as typed, read as its field's type where it reads as one:
    lax first ('007' stays a str), then as JSON ('2' for `Literal[0, 1, 2, 3]`, which lax
    validation refuses), as pydantic-settings' own env coercion does. A string that reads as
    neither is left for the model's validation to report, naming the field."""
    fields = cli_fields(model)
    out = {}
    for key, value in values.items():
        field = fields.get(key)
        sub = submodel(field.annotation) if field is not None else None
        if sub is not None and isinstance(value, dict):
            out[key] = typed(sub, value)
        elif field is not None and isinstance(value, str):
            out[key] = _read_as(field.annotation, value)
        else:
            out[key] = value
    return out


def _read_as(annotation: Any, text: str) -> Any:
    adapter = TypeAdapter(annotation)
    for read in (adapter.validate_python, adapter.validate_json):
        try:
            return read(text)
        except (ValidationError, json.JSONDecodeError):
            pass
    return text


def cli_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """`model`'s fields by every name the parser may file a value under: the name and its aliases."""
    fields = {}
    for name, field in model.model_fields.items():
        aliases = field.validation_alias.choices if isinstance(field.validation_alias, AliasChoices) else [field.validation_alias]
        for key in [name, field.alias, *aliases]:
            if isinstance(key, str):
                fields[key] = field
    return fields


def submodel(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (`TrainConfig`, `LoraConfig | None`), or None for any other type."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


class UsageFormatter(RawDescriptionHelpFormatter):
    """A command with many flags (a stage has one per PipelineConfig field) gets a short usage
    line, `onegen train [options] --config str`: the flags are listed below it anyway."""

    def _format_usage(self, usage, actions, groups, prefix):
        if usage is None and sum(1 for a in actions if a.option_strings) > MANY_FLAGS:
            kept = [a for a in actions if not a.option_strings or a.required]
            return super()._format_usage(None, kept, [], prefix).replace(self._prog, f"{self._prog} [options]", 1)
        return super()._format_usage(usage, actions, groups, prefix)
