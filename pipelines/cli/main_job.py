"""`onegen main [--config PRESET] [--<field>.<field> VALUE ...]`: the README's first command. The
whole pipeline on one machine: the local stack, the data, then prepare, train, index, evaluate and
promote as Ray jobs, and a final table. The flags override the preset's values (pipeline.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field

from pipelines.cli.pipeline import OVERRIDES, PipelineCommand
from pipelines.config import PipelineConfig


class MainJob(PipelineCommand):
    """Run the whole pipeline on this machine (the README's first command)."""

    config: str = Field(
        "smollm2-cpu", description=f"a preset (on 2 CPU cores: smollm2-cpu ~40 min; smollm2-cpu-long, which also trains the plain-LM baseline, over 2 hours), a YAML file or an s3:// URI; {OVERRIDES}"
    )
    stack_config: Path = Field(Path("infra/stack.yaml"), description="the local stack's ports and state dir, if the file exists")

    def run_pipeline(self, cfg: PipelineConfig) -> int:
        from pipelines.local.main_job import final_table, run_main

        report = run_main(cfg, self.stack_config if self.stack_config.is_file() else None)
        print(final_table(report), flush=True)
        if report.failed:
            print(f"\nthe {report.failed} stage failed; its log is above", file=sys.stderr)
            return 1
        return 0
