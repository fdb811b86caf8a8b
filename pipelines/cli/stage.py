"""`onegen prepare|train|eval|promote --config PRESET [--<field>.<field> VALUE ...]`: submit that
stage as a Ray job to the running Ray (see `onegen up`), stream its logs, exit non-zero if it
fails. The flags override the preset's values (pipeline.py); `train --plain-lm` trains the
plain-LM baseline of that config instead."""

from __future__ import annotations

from typing import ClassVar

from pydantic import AliasChoices, Field
from pydantic_settings import CliToggleFlag

from pipelines.cli.pipeline import PipelineCommand
from pipelines.config import PipelineConfig
from pipelines.local.jobs import submit  # no Ray until it is called


class StageCommand(PipelineCommand):
    stage: ClassVar[str]  # ray_jobs.<stage>

    address: str = Field("http://127.0.0.1:8265", description="the Ray dashboard (RAY_ADDRESS of `onegen status`)")
    no_wait: CliToggleFlag[bool] = Field(False, description="print the job id and return")

    def run_pipeline(self, cfg: PipelineConfig) -> int:
        return submit(self.stage, cfg, self.address, wait=not self.no_wait)


class Prepare(StageCommand):
    """Submit the prepare job (Ray Data: validate, tokenise, write Parquet shards)."""

    stage = "prepare"


class Train(StageCommand):
    """Submit the training job (Ray Train + DeepSpeed)."""

    stage = "train"

    # Not `plain_lm`, which would hide PipelineConfig.plain_lm(); the flag is spelt both ways.
    as_plain_lm: CliToggleFlag[bool] = Field(
        False, validation_alias=AliasChoices("plain_lm", "plain-lm"),
        description="train the plain-LM baseline instead (same rows and steps, λ_ret = 0) that evaluate compares with",
    )  # fmt: skip

    def pipeline_config(self, overrides: dict) -> PipelineConfig:
        cfg = super().pipeline_config(overrides)
        return cfg.plain_lm() if self.as_plain_lm else cfg


class Evaluate(StageCommand):
    """Submit the evaluate job: in-stream Recall@k vs MiniLM, answers, LM loss; to MLflow."""

    stage = "evaluate"


class Promote(StageCommand):
    """Submit the promote job: register the version, move @champion only if it wins."""

    stage = "promote"
