"""The model registry: one MLflow model version holds everything serving needs, promoted by alias.

A version is an MLflow pyfunc model whose artifacts are

    model/          OneGenModel.save_pretrained: HF weights, tokenizer, onegen.json (fingerprint)
    index/          DocumentIndex.save: FAISS index, documents, manifest (the model's fingerprint)
    pipeline.yaml   the pipeline config the model was trained and indexed with

so `models:/<name>@champion` names weights, tokenizer, index and config at once: they move
together and cannot drift apart. Serving reads the directories through `resolve`; anything that
speaks MLflow can also `mlflow.pyfunc.load_model(uri).predict(["a question", ...])`.

The pyfunc class is pickled by reference (`components.platform.registry.OneGenPyfunc`): loading needs this
package importable, i.e. this repo's environment. The code is not bundled with `code_paths`:
MLflow would put that copy first on the import path for the rest of the process, where it would shadow
the repo's own `components`.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import components.cache
from components.cache import build_once
from components.config import GenerationConfig

CHAMPION = "champion"
CHALLENGER = "challenger"
ARTIFACTS = ("model", "index", "config")

# What the pyfunc imports to load and answer, pinned to this environment's versions. Our own
# package is not on PyPI: it comes with the environment (see the module docstring).
REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "faiss-cpu",
                "numpy", "pandas", "pydantic", "pyyaml")  # fmt: skip
# Generation settings a caller may pass as `params` to predict, with GenerationConfig's defaults.
PARAMS = {k: GenerationConfig.model_fields[k].default for k in ("max_new_tokens", "temperature", "top_p", "top_k", "max_retrievals")}

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


# -- the pyfunc model --------------------------------------------------------------------------


class OneGenPyfunc(mlflow.pyfunc.PythonModel):
    """Questions in (one string column), answers with their retrieval trace out."""

    def load_context(self, context) -> None:
        # Imported here: resolving and registering need neither torch nor faiss.
        from components.generation.decoder import InStreamDecoder
        from components.model.onegen import OneGenModel
        from components.retrieval.index import DocumentIndex

        model = OneGenModel.from_pretrained(context.artifacts["model"])
        index = DocumentIndex.load(context.artifacts["index"], expected_fingerprint=model.fingerprint())
        self.decoder = InStreamDecoder(model, index)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[dict]:
        # The signature's one column arrives named "question" or unnamed (from a plain list).
        column = model_input["question"] if "question" in model_input else model_input.iloc[:, 0]
        questions = [str(q) for q in column]
        formatter = self.decoder.model.formatter
        prompts = [formatter.prompt([{"role": "user", "content": q}]) for q in questions]
        generations = self.decoder.generate(prompts, GenerationConfig(**(params or {})))
        return [answer_record(q, g) for q, g in zip(questions, generations)]


def answer_record(question: str, generation) -> dict:
    """A Generation as plain JSON-able data: the answer and, per hop, what was retrieved."""
    hops = [{"step": h.step, "doc_ids": h.doc_ids, "titles": h.titles, "scores": h.scores} for h in generation.hops]
    return {"question": question, "answer": generation.text, "finish_reason": generation.finish_reason, "hops": hops}


SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),
    params=ParamSchema([ParamSpec(k, "long" if isinstance(v, int) else "double", v) for k, v in PARAMS.items()]),
)


# -- registering -------------------------------------------------------------------------------


def register(client: MlflowClient, name: str, run: Run, model_dir: Path, index_dir: Path, config_path: Path, tags: dict[str, str]) -> ModelVersion:
    """Log the pyfunc model to `run` and register it as a new version of `name` carrying `tags`.

    These are mlflow.pyfunc.log_model's steps, done through `client`: log_model reads the
    process-wide tracking URI and experiment, which a stage would otherwise have to set and leave
    behind; and logging into a finished run by resuming it would rewrite its status."""
    run_id = run.info.run_id
    logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id, tags=tags)
    try:
        with tempfile.TemporaryDirectory(prefix="onegen-pyfunc-") as tmp:
            local = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                local,
                python_model=OneGenPyfunc(),
                artifacts={"model": str(model_dir), "index": str(index_dir), "config": str(config_path)},
                signature=SIGNATURE,
                pip_requirements=requirements(),  # explicit: inferring them would load the model
                mlflow_model=Model(artifact_path=logged.artifact_location, run_id=run_id, model_uuid=logged.model_id, model_id=logged.model_id),
            )
            client.log_model_artifacts(logged.model_id, str(local))
    except Exception:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])  # the run lists its model
    _ensure_registered_model(client, name)
    return client.create_model_version(name, f"models:/{logged.model_id}", run_id=run_id, tags=tags, model_id=logged.model_id)


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def requirements() -> list[str]:
    pins = []
    for dist in REQUIREMENTS:
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:  # e.g. faiss-gpu instead of faiss-cpu
            continue
    return pins


# -- reading -----------------------------------------------------------------------------------


def champion_version(client: MlflowClient, name: str, alias: str = CHAMPION) -> ModelVersion | None:
    """The version `alias` points at; None when the model or the alias does not exist."""
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    if alias not in aliases:
        return None
    return client.get_model_version(name, str(aliases[alias]))  # int from SQLite, str over REST


class Resolved(NamedTuple):
    model_dir: Path
    index_dir: Path
    config_path: Path
    version: str  # the version the URI pointed at when resolved (an alias may move later)


def resolve(uri: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> Resolved:
    """Download `models:/<name>@<alias>` or `models:/<name>/<version>` to `cache_dir` (default
    `~/.cache/onegen/registry`) and return
    the local model, index and config paths, and the version. A version's files never change, so
    a version already in the cache is not downloaded again."""
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    mv = _lookup(client, uri)  # the alias pinned to a version first: no download straddles a move
    # Where the version's files are. Not through a models:/ URI: MLflow resolves those with the
    # process-wide registry URI, whatever registry_uri download_artifacts is given.
    source = client.get_model_version_download_uri(mv.name, str(mv.version))
    # Keyed by where the files are too: another server (the test one, a colleague's) may well
    # have its own version 1 of the same name.
    key = f"v{mv.version}-{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    local = _download(source, Path(cache_dir or components.cache.cache_dir() / "registry") / mv.name / key, tracking_uri)
    paths = artifact_paths(local)
    return Resolved(paths["model"], paths["index"], paths["config"], str(mv.version))


def current_version(uri: str, tracking_uri: str | None = None) -> str:
    """The version a models:/ URI points at now; a server polls this to follow an alias."""
    return str(_lookup(MlflowClient(tracking_uri, registry_uri=tracking_uri), uri).version)


def artifact_paths(model_root: Path) -> dict[str, Path]:
    """Where MLflow put each artifact inside a saved pyfunc model (it may rename on collisions)."""
    artifacts = Model.load(model_root).flavors["python_function"].get("artifacts", {})
    missing = [a for a in ARTIFACTS if a not in artifacts]
    if missing:
        raise ValueError(f"{model_root} is not a OneGen registry model: no {', '.join(missing)} artifact")
    return {a: model_root / artifacts[a]["path"] for a in ARTIFACTS}


def _lookup(client: MlflowClient, uri: str) -> ModelVersion:
    match = _MODEL_URI.match(uri)
    if not match:
        raise ValueError(f"{uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    if match["alias"]:
        return client.get_model_version_by_alias(match["name"], match["alias"])
    return client.get_model_version(match["name"], match["version"])


def _download(source: str, entry: Path, tracking_uri: str | None) -> Path:
    """A version's files in the cache, downloaded once and published whole (components.cache)."""

    def download(tmp: Path) -> Path:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp), tracking_uri=tracking_uri))

    return build_once(entry, download)
