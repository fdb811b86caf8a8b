"""The main job: the whole pipeline on one machine, as a user would run it by hand.

    onegen up                          Ray head + MLflow on 127.0.0.1 (reused if running)
    onegen data build                  the datasets from the installed packages
    onegen prepare|train|index|eval|promote --config <preset>   each a `ray job submit`

then a table of what came out: in-stream Recall@k beside MiniLM's, the promotion decision and
the time each stage took, read back from MLflow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from components.platform import storage, tracking
from pipelines.config import PipelineConfig, load_config, resolve_local_paths
from pipelines.local.jobs import submit

STAGES = ("prepare", "train", "index", "evaluate", "promote")


@dataclass
class MainReport:
    config: PipelineConfig
    seconds: dict[str, float] = field(default_factory=dict)
    failed: str | None = None


def run_main(config: str | PipelineConfig, stack_config: Path | None = None) -> MainReport:
    """The whole pipeline for `config`: a preset, a YAML file, or a config (with a user's flags)."""
    from pipelines.local.stack import StackConfig, up

    cfg = resolve_local_paths(config if isinstance(config, PipelineConfig) else load_config(config), Path.cwd())
    report = MainReport(cfg)
    plan = [(stage, "onegen") for stage in STAGES]
    if cfg.evaluate.plain_lm_baseline:  # evaluate compares generation with it: train it first
        plan.insert(STAGES.index("evaluate"), ("train", "plain_lm"))
    total = 2 + len(plan)
    with _timed(report, "stack"):
        _header(1, total, "local stack (Ray head, MLflow)")
        status = up(StackConfig.load(stack_config))
        print(status.report(), flush=True)
    # The jobs use this stack, whatever ports it was given.
    cfg = cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(update={"tracking_uri": status.mlflow.address})})
    report.config = cfg
    stages = [(stage, cfg if variant == "onegen" else cfg.plain_lm()) for stage, variant in plan]

    if not storage.is_remote(cfg.data.dir):
        with _timed(report, "data"):
            from components.datasets.build import build_datasets

            _header(2, total, f"data build into {cfg.data.dir}")
            print(build_datasets(cfg.data.dir, cfg.data.build).summary(), flush=True)

    for n, (stage, stage_cfg) in enumerate(stages, start=3):
        label = stage if stage_cfg.variant == "onegen" else f"{stage} ({stage_cfg.variant} baseline)"
        _header(n, total, f"{label} (ray job submit)")
        with _timed(report, label):
            code = submit(stage, stage_cfg, status.ray.address)
        if code:
            report.failed = label
            break
    return report


def _header(n: int, total: int, what: str) -> None:
    print(f"\n== [{n}/{total}] {what}", flush=True)


class _timed:
    def __init__(self, report: MainReport, name: str):
        self.report, self.name = report, name

    def __enter__(self):
        self.started = time.perf_counter()

    def __exit__(self, *exc):
        self.report.seconds[self.name] = time.perf_counter() - self.started


def final_table(report: MainReport) -> str:
    """The evaluation read back from the model's MLflow run (ours beside MiniLM, teacher-forced and
    free-running, on the whole index), the promotion, and the time each stage took."""
    from mlflow import MlflowClient

    from pipelines.stages.evaluate import summary_table

    cfg = report.config
    client = MlflowClient(cfg.mlflow.tracking_uri)
    lines = [""]
    run = tracking.training_run(client, cfg.mlflow.experiment, cfg.run_name)
    if run is not None:
        lines.append(summary_table(run.data.metrics, cfg.evaluate.ks))
        lines.append(f"  MLflow run: {cfg.mlflow.tracking_uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    lines += _promotion(client, cfg)
    lines += ["", "  " + ", ".join(f"{name} {s:.0f}s" for name, s in report.seconds.items())
              + f"; total {sum(report.seconds.values()) / 60:.1f} min"]  # fmt: skip
    return "\n".join(lines)


def _promotion(client, cfg: PipelineConfig) -> list[str]:
    from components.platform.registry import champion_version
    from pipelines.stages.promote import PROMOTION_TAG, REASON_TAG

    champion = champion_version(client, cfg.mlflow.registered_model)
    if champion is None:
        return ["  no @champion registered"]
    newest = max(client.search_model_versions(f"name = '{cfg.mlflow.registered_model}'"), key=lambda v: int(v.version))
    reason = newest.tags.get(REASON_TAG, "")
    return [f"  registry: {cfg.mlflow.registered_model} v{newest.version} → @{newest.tags.get(PROMOTION_TAG, '?')} ({reason}); "
            f"@champion is v{champion.version}: {cfg.mlflow.tracking_uri}/#/models/{cfg.mlflow.registered_model}"]  # fmt: skip
