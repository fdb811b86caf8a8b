"""promote: register the trained model with its index and config as one MLflow model version, and
move `@champion` to it only if it beats the current champion on the declared metric.

    training run (named cfg.run_name, tagged onegen.stage=train) ─▶ cfg.promote.metric
    paths.model + paths.index + config ─▶ registry.register ─▶ version N
    N vs @champion (metric read from the champion's own run):
        beats it by more than min_delta, or there is none ─▶ @champion = N
        otherwise                                           ─▶ @challenger = N
    tags on N: onegen.promotion, onegen.reason, onegen.metric.<name>, onegen.run_id, onegen.fingerprint

Aliases only: MLflow's stages are deprecated. Promoting the same run again registers nothing new:
the version registered from that run with the same weights (run id and model fingerprint) is
reused and judged again against the champion of the moment; if it already is the champion,
nothing is written. Retrained weights under the same run id have another fingerprint and become
a new version.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion

from components.model.onegen import ONEGEN_CONFIG
from components.platform import registry, storage, tracking
from components.retrieval.index import MANIFEST_FILE
from pipelines.config import PipelineConfig, PromoteConfig, dump_config
from pipelines.errors import StageError
from pipelines.stages.locations import model_fingerprint

RUN_TAG = "onegen.run_id"
FINGERPRINT_TAG = "onegen.fingerprint"
PROMOTION_TAG = "onegen.promotion"
REASON_TAG = "onegen.reason"
METRIC_TAG_PREFIX = "onegen.metric."


@dataclass
class Decision:
    alias: str  # registry.CHAMPION or registry.CHALLENGER
    reason: str
    changed: bool = True  # False: the version already is the champion; nothing to write


@dataclass
class PromoteReport:
    name: str  # the registered model
    version: str
    run_id: str
    metric: str
    value: float
    alias: str
    reason: str
    reused: bool  # the version was registered by an earlier promotion of the same run

    def summary(self) -> str:
        how = "reused" if self.reused else "registered"
        return f"promote: {how} {self.name} v{self.version} from run {self.run_id}; @{self.alias}: {self.reason}"


def promote(cfg: PipelineConfig) -> PromoteReport:
    client = MlflowClient(cfg.mlflow.tracking_uri, registry_uri=cfg.mlflow.tracking_uri)
    run = training_run(client, cfg)
    value = run_metric(run, cfg.promote.metric)
    fingerprint = model_fingerprint(cfg.paths.model, cfg.storage.s3_endpoint_url)
    name = cfg.mlflow.registered_model
    version = registered_from(client, name, run.info.run_id, fingerprint)
    reused = version is not None
    if version is None:
        version = register(client, cfg, run, fingerprint)
    decision = decide(client, name, version, cfg.promote, value)
    if decision.changed:
        apply(client, name, version, decision, cfg.promote.metric, value)
    return PromoteReport(name, str(version.version), run.info.run_id, cfg.promote.metric, value, decision.alias, decision.reason, reused)


# -- what is promoted --------------------------------------------------------------------------


def training_run(client: MlflowClient, cfg: PipelineConfig) -> Run:
    """The model's training run (components.platform.tracking)."""
    run = tracking.training_run(client, cfg.mlflow.experiment, cfg.run_name)
    if run is None:
        raise StageError(f"no training run named {cfg.run_name!r} in experiment {cfg.mlflow.experiment!r} at "
                         f"{cfg.mlflow.tracking_uri}: run the train stage first")
    return run


def run_metric(run: Run, metric: str) -> float:
    if metric not in run.data.metrics:
        logged = ", ".join(sorted(run.data.metrics)) or "none"
        raise StageError(f"training run {run.info.run_id} has no metric {metric!r} (logged: {logged}): run the evaluate stage first")
    return run.data.metrics[metric]


def registered_from(client: MlflowClient, name: str, run_id: str, fingerprint: str) -> ModelVersion | None:
    """The latest version of `name` registered from this run with these weights, if any."""
    found = client.search_model_versions(f"name = '{name}' and tags.`{RUN_TAG}` = '{run_id}'")
    same = [v for v in found if v.tags.get(FINGERPRINT_TAG) == fingerprint]
    if not same:
        return None
    latest = max(same, key=lambda v: int(v.version))
    return client.get_model_version(name, str(latest.version))  # search results carry no aliases


def register(client: MlflowClient, cfg: PipelineConfig, run: Run, fingerprint: str) -> ModelVersion:
    """Gather model, index and config in one local directory (fetching them from S3 if they are
    there) and register them as one version."""
    with tempfile.TemporaryDirectory(prefix="onegen-promote-") as tmp:
        staged = Path(tmp)
        for part, location in (("model", cfg.paths.model), ("index", cfg.paths.index)):
            if not storage.exists(location, cfg.storage.s3_endpoint_url):
                raise StageError(f"no {part} at {location}: run the {'train' if part == 'model' else 'index'} stage first")
            storage.copy_dir(location, str(staged / part), cfg.storage.s3_endpoint_url)
        check_staged(staged, fingerprint, cfg)
        (staged / "pipeline.yaml").write_text(dump_config(cfg))
        tags = {RUN_TAG: run.info.run_id, FINGERPRINT_TAG: fingerprint}
        return registry.register(client, cfg.mlflow.registered_model, run, staged / "model", staged / "index", staged / "pipeline.yaml", tags)


def check_staged(staged: Path, fingerprint: str, cfg: PipelineConfig) -> None:
    """The copies must be the weights looked up before and the index those weights built: an
    index from other weights would make a version that cannot serve."""
    copied = json.loads((staged / "model" / ONEGEN_CONFIG).read_text())["fingerprint"]
    built_by = json.loads((staged / "index" / MANIFEST_FILE).read_text())["fingerprint"]
    if copied != fingerprint:
        raise StageError(f"the model at {cfg.paths.model} changed while it was being promoted: promote again")
    if built_by != fingerprint:
        raise StageError(f"the index at {cfg.paths.index} was built by model {built_by}, the model to promote is {fingerprint}: run the index stage again")


# -- champion or challenger --------------------------------------------------------------------


def decide(client: MlflowClient, name: str, version: ModelVersion, cfg: PromoteConfig, value: float) -> Decision:
    metric = cfg.metric
    champion = registry.champion_version(client, name)
    if champion is None:
        return Decision(registry.CHAMPION, f"{metric} {value:.4g}; there was no champion")
    if str(champion.version) == str(version.version):
        return Decision(registry.CHAMPION, f"v{version.version} already is the champion", changed=False)
    best = champion_metric(client, champion, metric)
    op = ">" if cfg.greater_is_better else "<"
    margin = f" by more than {cfg.min_delta:g}" if cfg.min_delta else ""
    if beats(value, best, cfg):
        return Decision(registry.CHAMPION, f"{metric} {value:.4g} {op} champion v{champion.version} {best:.4g}{margin}")
    return Decision(registry.CHALLENGER, f"{metric} {value:.4g} not {op} champion v{champion.version} {best:.4g}{margin}")


def beats(value: float, best: float, cfg: PromoteConfig) -> bool:
    gain = value - best if cfg.greater_is_better else best - value
    return gain > cfg.min_delta


def champion_metric(client: MlflowClient, champion: ModelVersion, metric: str) -> float:
    """The metric as the champion's own training run logged it."""
    metrics = client.get_run(champion.run_id).data.metrics if champion.run_id else {}
    if metric not in metrics:
        raise StageError(
            f"champion v{champion.version} has no {metric!r} in its run {champion.run_id or '(none)'}: it cannot be compared; "
            f"evaluate it, or move @{registry.CHAMPION} by hand (MlflowClient.set_registered_model_alias)"
        )
    return metrics[metric]


def apply(client: MlflowClient, name: str, version: ModelVersion, decision: Decision, metric: str, value: float) -> None:
    number = str(version.version)
    # Tags first: an alias never points at a version that does not yet say why.
    client.set_model_version_tag(name, number, f"{METRIC_TAG_PREFIX}{metric}", repr(value))
    client.set_model_version_tag(name, number, PROMOTION_TAG, decision.alias)
    client.set_model_version_tag(name, number, REASON_TAG, decision.reason)
    client.set_registered_model_alias(name, decision.alias, number)
    if decision.alias == registry.CHAMPION and registry.CHALLENGER in version.aliases:
        client.delete_registered_model_alias(name, registry.CHALLENGER)  # a champion is no challenger
