"""The commands that run a pipeline (main, prepare, train, index, eval, promote): `--config`
names a preset and every PipelineConfig field is a flag that overrides the preset's value.

    onegen train --config smollm2-cpu --train.optim.max_steps 40 --workers.num_workers 1

loads the preset (`load_config`: a preset name, a YAML file or an s3:// URI), lays over it only
the flags given, and validates the result once, as a PipelineConfig. This layer sits on top of
pydantic-settings because it validates a model as parsed, with each flag not given at its
field's *default*: every field but max_steps would lose the preset's value, and a rule across
fields (data.repeat must name data.train files) would be checked against the defaults.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field, ValidationError

from pipelines.cli.command import Command, UsageError, field_errors
from pipelines.cli.parsing import submodel
from pipelines.config import PipelineConfig, load_config

# The defaults the help shows for the config's flags are PipelineConfig's, not the preset's.
OVERRIDES = "the flags below override its values"


class PipelineCommand(Command, PipelineConfig):
    """This model is the flags' schema. An instance holds the command's own options (`config`,
    ...); its PipelineConfig fields stay at their defaults, unused: the config it runs is the one
    `pipeline_config` builds, handed to `run_pipeline`."""

    config: str = Field(description=f"a preset (tiny, smollm2-cpu, ...), a YAML file or an s3:// URI; {OVERRIDES}")

    @classmethod
    def run_cli(cls, values: dict[str, Any]) -> int:
        command, cfg = cls.resolve(values)
        return command.run_pipeline(cfg)

    @classmethod
    def resolve(cls, values: dict[str, Any]) -> tuple[PipelineCommand, PipelineConfig]:
        """(the command's own options, the config it runs) from the given flags' values."""
        overrides = {k: v for k, v in values.items() if k in PipelineConfig.model_fields}
        command = cls.from_cli({k: v for k, v in values.items() if k not in overrides})
        return command, command.pipeline_config(overrides)

    def pipeline_config(self, overrides: dict[str, Any]) -> PipelineConfig:
        try:
            preset = load_config(self.config)
        except ValidationError as err:  # the YAML file's own mistake
            raise UsageError(f"--config {self.config}:\n{field_errors(err)}") from None
        except (OSError, yaml.YAMLError) as err:  # no such preset or file, or not YAML
            raise UsageError(f"--config {self.config}: {err}") from None
        try:
            return PipelineConfig.model_validate(merge(PipelineConfig, preset.model_dump(), overrides))
        except ValidationError as err:
            raise UsageError(field_errors(err)) from None

    def run_pipeline(self, cfg: PipelineConfig) -> int:
        raise NotImplementedError(type(self).__name__)


def merge(model: type[Any], base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` laid over `base`, the values of `model`: into a sub-model field by field (a
    flag changes that one field); any other value, a list or a dict field such as data.repeat,
    is replaced whole, as the flag gave it."""
    merged = dict(base)
    for key, value in overrides.items():
        field = model.model_fields.get(key)
        sub = submodel(field.annotation) if field is not None else None
        if sub is not None and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(sub, merged[key], value)
        else:
            merged[key] = value
    return merged
