"""promote against a real MLflow server: champion or challenger by the declared metric, re-promotion
without duplicates, and a registered version that loads back (directories for serving, a pyfunc
for MLflow, pages for the UI). Each test owns its registered model, named after the test."""

import copy
import json
import re
import shutil
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from components.config import GenerationConfig
from components.generation.decoder import InStreamDecoder
from components.model.base import tiny_llama
from components.model.onegen import OneGenModel
from components.platform import registry, storage
from components.retrieval.index import DocumentIndex, build_index
from pipelines.config import PipelineConfig, load_config
from pipelines.errors import StageError
from pipelines.stages.promote import promote
from tests.conftest import synthetic_retrieval

# Each promotion here takes 1-3 s; the first test also waits for the MLflow server (8-25 s).
pytestmark = pytest.mark.timeout(180)

EXPERIMENT = "promote-tests"
METRIC = "served_evidence_recall"  # the default promote.metric


def save_model_and_index(model: OneGenModel, corpus, root: Path) -> Path:
    """What the train and index stages leave on disk."""
    model.save_pretrained(root / "model")
    build_index(model, corpus).save(root / "index")
    return root


@pytest.fixture(scope="module")
def saved(base_tokenizer, tmp_path_factory):
    """A random tiny model and an index of the synthetic corpus: promotion only needs files that
    load; answering well is the trained model's test below."""
    tokenizer = copy.deepcopy(base_tokenizer)
    model = OneGenModel.build(tiny_llama(tokenizer), tokenizer)
    return save_model_and_index(model, synthetic_retrieval()[0], tmp_path_factory.mktemp("saved"))


@pytest.fixture
def make_cfg(request, mlflow_server, saved, tmp_path):
    """A config named after the test, with the saved model and index at its paths."""

    def make(**promote_cfg) -> PipelineConfig:
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)
        cfg = PipelineConfig(
            name=name,
            storage={"root": str(tmp_path / "storage")},
            mlflow={"tracking_uri": mlflow_server, "experiment": EXPERIMENT, "registered_model": name},
            promote=promote_cfg,
        )
        shutil.copytree(saved / "model", cfg.paths.model)
        shutil.copytree(saved / "index", cfg.paths.index)
        return cfg

    return make


def training_run(cfg: PipelineConfig, value: float | None) -> str:
    """What the train and evaluate stages leave in MLflow: a run named cfg.name, tagged
    onegen.stage=train, with the metric (if given)."""
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.mlflow.experiment)
    run = client.create_run(experiment_id, run_name=cfg.name, tags={"onegen.stage": "train"})
    if value is not None:
        client.log_metric(run.info.run_id, cfg.promote.metric, value)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def aliases(cfg: PipelineConfig) -> dict[str, str]:
    found = MlflowClient(cfg.mlflow.tracking_uri).get_registered_model(cfg.mlflow.registered_model).aliases
    return {alias: str(version) for alias, version in found.items()}  # int from SQLite, str over REST


def version_tags(cfg: PipelineConfig, version: str) -> dict[str, str]:
    return MlflowClient(cfg.mlflow.tracking_uri).get_model_version(cfg.mlflow.registered_model, version).tags


# -- champion or challenger --------------------------------------------------------------------


def test_the_first_promotion_makes_the_champion_and_tags_why(make_cfg):
    cfg = make_cfg()
    run_id = training_run(cfg, 0.8)

    report = promote(cfg)

    assert (report.version, report.alias, report.reused) == ("1", "champion", False)
    assert aliases(cfg) == {"champion": "1"}
    tags = version_tags(cfg, "1")
    fingerprint = json.loads((Path(cfg.paths.model) / "onegen.json").read_text())["fingerprint"]
    assert tags == {
        "onegen.promotion": "champion",
        "onegen.reason": f"{METRIC} 0.8; there was no champion",
        f"onegen.metric.{METRIC}": "0.8",
        "onegen.run_id": run_id,
        "onegen.fingerprint": fingerprint,
    }
    assert MlflowClient(cfg.mlflow.tracking_uri).get_model_version(cfg.name, "1").run_id == run_id


def test_a_worse_run_becomes_challenger_and_the_champion_stays(make_cfg):
    cfg = make_cfg()
    training_run(cfg, 0.79)
    promote(cfg)
    training_run(cfg, 0.75)

    report = promote(cfg)

    assert (report.version, report.alias) == ("2", "challenger")
    assert aliases(cfg) == {"champion": "1", "challenger": "2"}
    tags = version_tags(cfg, "2")
    assert tags["onegen.promotion"] == "challenger"
    assert tags["onegen.reason"] == f"{METRIC} 0.75 not > champion v1 0.79"


def test_a_better_run_moves_the_champion(make_cfg):
    cfg = make_cfg()
    uri = f"models:/{cfg.name}@champion"
    training_run(cfg, 0.79)
    promote(cfg)
    assert registry.current_version(uri, cfg.mlflow.tracking_uri) == "1"
    training_run(cfg, 0.812)

    report = promote(cfg)

    assert (report.version, report.alias) == ("2", "champion")
    assert aliases(cfg) == {"champion": "2"}
    assert registry.current_version(uri, cfg.mlflow.tracking_uri) == "2"  # what a server follows
    assert version_tags(cfg, "2")["onegen.reason"] == f"{METRIC} 0.812 > champion v1 0.79"


def test_min_delta_in_the_declared_direction(make_cfg):
    cfg = make_cfg(metric="loss", greater_is_better=False, min_delta=0.05)
    training_run(cfg, 0.50)
    promote(cfg)

    training_run(cfg, 0.47)  # better, but by less than min_delta
    assert promote(cfg).alias == "challenger"
    assert version_tags(cfg, "2")["onegen.reason"] == "loss 0.47 not < champion v1 0.5 by more than 0.05"

    training_run(cfg, 0.40)
    assert promote(cfg).alias == "champion"
    assert aliases(cfg) == {"champion": "3", "challenger": "2"}
    assert version_tags(cfg, "3")["onegen.reason"] == "loss 0.4 < champion v1 0.5 by more than 0.05"


def test_promoting_a_run_again_reuses_its_version(make_cfg):
    cfg = make_cfg()
    client = MlflowClient(cfg.mlflow.tracking_uri)
    training_run(cfg, 0.8)
    first = promote(cfg)
    again = promote(cfg)
    assert (again.version, again.alias, again.reused) == (first.version, "champion", True)
    assert "already is the champion" in again.reason
    assert len(client.search_model_versions(f"name = '{cfg.name}'")) == 1

    second = training_run(cfg, 0.7)
    assert promote(cfg).alias == "challenger"
    client.log_metric(second, METRIC, 0.9)  # the evaluate stage ran again on that run
    report = promote(cfg)

    assert (report.version, report.alias, report.reused) == ("2", "champion", True)
    assert aliases(cfg) == {"champion": "2"}  # a champion is not also the challenger
    assert version_tags(cfg, "2")[f"onegen.metric.{METRIC}"] == "0.9"
    assert len(client.search_model_versions(f"name = '{cfg.name}'")) == 2


# -- refusals ----------------------------------------------------------------------------------


def test_a_missing_run_or_metric_is_a_stage_error_and_registers_nothing(make_cfg):
    cfg = make_cfg()
    with pytest.raises(StageError, match="run the train stage first"):
        promote(cfg)
    training_run(cfg, None)
    with pytest.raises(StageError, match=f"no metric '{METRIC}'.*run the evaluate stage first"):
        promote(cfg)
    assert MlflowClient(cfg.mlflow.tracking_uri).search_registered_models(f"name = '{cfg.name}'") == []


def test_an_index_built_by_other_weights_is_refused(make_cfg):
    cfg = make_cfg()
    manifest = Path(cfg.paths.index) / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"fingerprint": "', '"fingerprint": "0'))
    training_run(cfg, 0.8)
    with pytest.raises(StageError, match="run the index stage again"):
        promote(cfg)


# -- what a version holds ----------------------------------------------------------------------


def promoted(name: str, files: Path, tracking_uri: str, root: Path) -> PipelineConfig:
    """A config whose model and index (copied from `files`) have been promoted once."""
    cfg = PipelineConfig(
        name=name, storage={"root": str(root)},
        mlflow={"tracking_uri": tracking_uri, "experiment": EXPERIMENT, "registered_model": name},
    )  # fmt: skip
    shutil.copytree(files / "model", cfg.paths.model)
    shutil.copytree(files / "index", cfg.paths.index)
    training_run(cfg, 0.8)
    promote(cfg)
    return cfg


@pytest.fixture(scope="module")
def champion(mlflow_server, saved, tmp_path_factory) -> PipelineConfig:
    """One promoted version that the loading tests share."""
    return promoted("loaded", saved, mlflow_server, tmp_path_factory.mktemp("champion"))


def test_resolve_gives_directories_that_load(champion, tmp_path):
    resolved = registry.resolve("models:/loaded@champion", champion.mlflow.tracking_uri, tmp_path)

    assert resolved.version == "1"
    model = OneGenModel.from_pretrained(resolved.model_dir)
    index = DocumentIndex.load(resolved.index_dir, expected_fingerprint=model.fingerprint())
    assert index.ntotal == 32
    assert load_config(resolved.config_path) == champion
    # A version's files never change: resolving it again, by number, reuses the cached copy.
    (resolved.model_dir / "marker").touch()
    again = registry.resolve("models:/loaded/1", champion.mlflow.tracking_uri, tmp_path)
    assert again == resolved and (again.model_dir / "marker").exists()


def test_champion_version_is_none_without_one(champion):
    client = MlflowClient(champion.mlflow.tracking_uri)
    assert str(registry.champion_version(client, "loaded").version) == "1"
    assert registry.champion_version(client, "loaded", alias="challenger") is None
    assert registry.champion_version(client, "no-such-model") is None


@pytest.fixture
def global_tracking_uri(mlflow_server):
    """mlflow.pyfunc.load_model resolves models:/ URIs with the process-wide tracking URI."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server)
    yield
    mlflow.set_tracking_uri(previous)


@pytest.mark.timeout(600)  # trained_tiny: ~1 min on an idle machine, once per test run
def test_the_pyfunc_answers_with_a_retrieval_trace(trained_tiny, mlflow_server, global_tracking_uri, tmp_path):
    files = save_model_and_index(trained_tiny.model, trained_tiny.corpus, tmp_path / "files")
    promoted("answering", files, mlflow_server, tmp_path / "storage")
    pyfunc = mlflow.pyfunc.load_model("models:/answering@champion")
    examples = trained_tiny.examples[:4]
    questions = [e.messages[0].content for e in examples]  # the user's turn

    answers = pyfunc.predict(pd.DataFrame({"question": questions}), params={"max_new_tokens": 24})

    # The registered weights, tokenizer and index answer exactly as the in-memory ones do.
    model = trained_tiny.model
    decoder = InStreamDecoder(model, DocumentIndex.load(files / "index"))
    prompts = [model.formatter.prompt([{"role": "user", "content": q}]) for q in questions]
    expected = decoder.generate(prompts, GenerationConfig(max_new_tokens=24))
    assert [a["question"] for a in answers] == questions
    assert [a["answer"] for a in answers] == [g.text for g in expected]
    assert [[h["doc_ids"] for h in a["hops"]] for a in answers] == [[h.doc_ids for h in g.hops] for g in expected]
    assert all(a["hops"] and a["hops"][0]["titles"] and a["hops"][0]["scores"] for a in answers)  # retrieval happened
    (alone,) = pyfunc.predict(questions[:1], params={"max_new_tokens": 24})  # a plain list works too
    assert (alone["answer"], alone["hops"][0]["doc_ids"]) == (answers[0]["answer"], answers[0]["hops"][0]["doc_ids"])


def test_params_mirror_the_generation_config():
    defaults = GenerationConfig()
    assert {k: getattr(defaults, k) for k in registry.PARAMS} == registry.PARAMS


# -- S3 and the UI -----------------------------------------------------------------------------


def test_a_model_and_index_on_s3_are_registered(make_cfg, s3_server, saved, tmp_path, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    local = make_cfg()
    cfg = local.model_copy(update={"storage": local.storage.model_copy(update={
        "root": f"s3://{s3_server.bucket}/{local.name}", "s3_endpoint_url": s3_server.endpoint_url})})  # fmt: skip
    storage.copy_dir(str(saved / "model"), cfg.paths.model, s3_server.endpoint_url)
    storage.copy_dir(str(saved / "index"), cfg.paths.index, s3_server.endpoint_url)
    training_run(cfg, 0.8)

    assert promote(cfg).alias == "champion"
    resolved = registry.resolve(f"models:/{cfg.name}@champion", cfg.mlflow.tracking_uri, tmp_path / "cache")
    model = OneGenModel.from_pretrained(resolved.model_dir)
    DocumentIndex.load(resolved.index_dir, expected_fingerprint=model.fingerprint())


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def test_the_mlflow_ui_serves_the_model_with_its_alias(champion):
    """REST-level: the endpoints the UI's model pages call, and the page itself (no browser here)."""
    base = champion.mlflow.tracking_uri
    for api in ("api", "ajax-api"):  # the public API, and the prefix the UI's JavaScript uses
        status, body = get(f"{base}/{api}/2.0/mlflow/registered-models/get?name=loaded")
        model = json.loads(body)["registered_model"]
        assert status == 200 and {a["alias"]: a["version"] for a in model["aliases"]} == {"champion": "1"}
    _, body = get(f"{base}/ajax-api/2.0/mlflow/model-versions/search?filter=name%3D%27loaded%27")  # the versions table
    (listed,) = json.loads(body)["model_versions"]
    assert listed["version"] == "1" and {"key": "onegen.promotion", "value": "champion"} in listed["tags"]
    _, body = get(f"{base}/ajax-api/2.0/mlflow/model-versions/get?name=loaded&version=1")  # a version's page
    version = json.loads(body)["model_version"]
    assert version["aliases"] == ["champion"]
    _, body = get(f"{base}/ajax-api/2.0/mlflow/logged-models/{version['source'].removeprefix('models:/')}")
    assert json.loads(body)["model"]["info"]["status"] == "LOGGED_MODEL_READY"
    # `#/models/loaded` is routed in the browser: the server's part is the app and its bundle.
    status, page = get(f"{base}/")
    assert status == 200 and "<title>MLflow" in page
    bundle = re.search(r'src="(static-files/[^"]+\.js)"', page).group(1)
    assert get(f"{base}/{bundle}")[0] == 200
