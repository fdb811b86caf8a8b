"""The MLflow tracking side of a pipeline run: one run per trained model, which every later
stage (index, evaluate, promote) finds and logs into, so the UI shows a model with its index,
its evaluation and its promotion in one place.

    train     creates the run: named after the config, tagged onegen.stage=train, params = config
    index     \\
    evaluate   } `training_run` finds it: the latest run of that name tagged onegen.stage=train
    promote   /
"""

from __future__ import annotations

import httpx
from mlflow import MlflowClient
from mlflow.entities import Param, Run

STAGE_TAG = "onegen.stage"  # which stage created the run ("train" for a model's own run)
PIPELINE_TAG = "onegen.run"  # the pipeline config's name (a plain-LM baseline shares it)
VARIANT_TAG = "onegen.variant"
MAX_PARAMS_PER_CALL = 100  # MLflow's limit for log_batch


class TrackingError(RuntimeError):
    """MLflow cannot be used for this run; the message says what to do."""


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail at once when an HTTP tracking server does not answer (MLflow's own client retries for
    minutes first, keeping a failing job silent). Other URIs (a local store) need no server."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout_s, trust_env=False).raise_for_status()
    except httpx.HTTPError as err:
        raise TrackingError(f"the MLflow tracking server {uri} is unreachable ({type(err).__name__}); start the "
                            "local stack with `onegen up` or set mlflow.tracking_uri in the config") from None


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, created if it does not exist yet."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: {"train.optim.lr": "0.0003", ...}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def start_training_run(client: MlflowClient, experiment: str, run_name: str, pipeline: str, variant: str,
                       params: dict) -> str:
    """The model's run: named `run_name`, tagged as a training run, the config as params."""
    run = client.create_run(experiment_id(client, experiment), run_name=run_name,
                            tags={STAGE_TAG: "train", PIPELINE_TAG: pipeline, VARIANT_TAG: variant})
    flat = [Param(k, v) for k, v in flatten(params).items()]
    for i in range(0, len(flat), MAX_PARAMS_PER_CALL):
        client.log_batch(run.info.run_id, params=flat[i : i + MAX_PARAMS_PER_CALL])
    return run.info.run_id


def training_run(client: MlflowClient, experiment: str, run_name: str) -> Run | None:
    """The latest run named `run_name` that the train stage created, or None."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"attributes.run_name = '{run_name}' and tags.`{STAGE_TAG}` = 'train'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def run_for(client: MlflowClient, experiment: str, run_name: str, stage: str) -> str:
    """The id of the model's training run; without one (a model trained elsewhere), a new run
    tagged with `stage`, closed at once, so that nothing the stage logs is lost."""
    found = training_run(client, experiment, run_name)
    if found is not None:
        return found.info.run_id
    run = client.create_run(experiment_id(client, experiment), run_name=run_name, tags={STAGE_TAG: stage})
    client.set_terminated(run.info.run_id)  # a record, not a live run
    return run.info.run_id
