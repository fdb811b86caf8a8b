import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from components.data.corpus import Corpus
from components.model.base import tiny_llama
from components.model.onegen import OneGenModel
from components.retrieval.index import INDEX_FILE, DocumentIndex, build_index, knowledge_base_dirs
from pipelines.config import PipelineConfig, load_config
from pipelines.stages.index import build
from tests.conftest import crane_entities, synthetic_retrieval

# Dev hops: gold pages d0-d3, hard negatives d10, d11 (and d1, itself gold elsewhere).
DEV = [("q0", "d0", ["d10", "d1"]), ("q1", "d1", ["d11"]), ("q2", "d2", []), ("q3", "d3", ["d10"])]


def write_data(directory, corpus) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    corpus.save_jsonl(directory / "corpus.jsonl")
    with open(directory / "dev.jsonl", "w") as f:
        for qid, gold, negatives in DEV:
            f.write(json.dumps({
                "id": qid,
                "messages": [{"role": "user", "content": f"Which is {gold}?"},
                             {"role": "assistant", "content": "Searching.[RQ] Found."}],
                "positives": [[gold]],
                "negatives": [negatives],
            }) + "\n")


def stage_config(data_dir: str, root: str, tracking_uri: str, experiment: str, **overrides) -> PipelineConfig:
    base = load_config("tiny").model_dump()
    base["data"] = {"dir": data_dir, "dev": "dev.jsonl", "corpus": "corpus.jsonl", "entities": overrides.pop("entities", {})}
    base["storage"] = {"root": root, "s3_endpoint_url": overrides.pop("s3_endpoint_url", None)}
    base["mlflow"] = {"tracking_uri": tracking_uri, "experiment": experiment}
    base["index"].update(overrides)
    return PipelineConfig.model_validate(base)


@pytest.fixture
def saved_model(tokenizer):
    """A tiny OneGen model in the tiny preset's format (what the train stage would save)."""
    cfg = load_config("tiny")
    return OneGenModel.build(tiny_llama(tokenizer), tokenizer, cfg.train.model.format)


def stored_vectors(index_dir) -> np.ndarray:
    index = faiss.read_index(str(index_dir / INDEX_FILE))
    return index.reconstruct_n(0, index.ntotal)


def stored_vectors_of(index: DocumentIndex, tmp_path) -> np.ndarray:
    index.save(tmp_path / "in-process")
    return stored_vectors(tmp_path / "in-process")


@pytest.mark.timeout(120)
def test_stage_index_equals_the_in_process_index_and_logs_into_the_training_run(ray_cluster, mlflow_server, saved_model, tmp_path):
    from mlflow.tracking import MlflowClient

    corpus, _ = synthetic_retrieval()
    write_data(tmp_path / "data", corpus)
    cfg = stage_config(str(tmp_path / "data"), str(tmp_path / "storage"), mlflow_server, "index-equal", actors=2, cpus_per_actor=0.5)
    saved_model.save_pretrained(cfg.paths.model)
    client = MlflowClient(mlflow_server)
    train_run = client.create_run(client.create_experiment("index-equal"), run_name="tiny", tags={"onegen.stage": "train"})

    report = build(cfg)

    expected = build_index(saved_model, corpus, batch_size=cfg.index.batch_size)
    loaded = DocumentIndex.load(cfg.paths.index, expected_fingerprint=saved_model.fingerprint())
    assert loaded.corpus.ids == corpus.ids and loaded.fingerprint == expected.fingerprint == report.fingerprint
    np.testing.assert_allclose(stored_vectors(Path(cfg.paths.index)), stored_vectors_of(expected, tmp_path), atol=1e-5)
    assert report.documents == report.corpus_documents == 32  # the whole corpus

    assert report.run_id == train_run.info.run_id
    metrics = client.get_run(report.run_id).data.metrics
    assert metrics["index_documents"] == 32 and metrics["index_seconds"] > 0 and metrics["index_docs_per_s"] > 0
    logged = {a.path for a in client.list_artifacts(report.run_id, "index")}
    assert logged == {"index/index.faiss", "index/documents.jsonl", "index/manifest.json"}
    assert "indexed 32 of 32 documents" in report.summary() and report.precision == "float32"
    assert client.get_run(report.run_id).data.tags["onegen.index.precision"] == "float32"


@pytest.mark.timeout(120)
def test_stage_reads_the_model_and_corpus_from_s3_and_writes_the_index_there(
    ray_cluster, mlflow_server, s3_server, saved_model, tmp_path, monkeypatch
):
    import boto3

    from components.platform import storage

    corpus, _ = synthetic_retrieval()
    write_data(tmp_path / "data", corpus)
    crane_entities().save_jsonl(tmp_path / "data" / "entities.jsonl")  # a second knowledge base
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)  # the AWS credential chain of the driver, as in a cluster
    bucket = f"s3://{s3_server.bucket}"
    cfg = stage_config(f"{bucket}/in", f"{bucket}/runs", mlflow_server, "index-s3", s3_endpoint_url=s3_server.endpoint_url,
                       entities={"cranes": "entities.jsonl"})
    storage.copy_dir(str(saved_model.save_pretrained(tmp_path / "model")), cfg.paths.model, s3_server.endpoint_url)
    storage.copy_dir(str(tmp_path / "data"), f"{bucket}/in", s3_server.endpoint_url)

    report = build(cfg)

    s3 = boto3.client("s3", **s3_server.boto3_kwargs())
    listed = s3.list_objects_v2(Bucket=s3_server.bucket, Prefix="runs/indexes/tiny/")["Contents"]
    keys = {o["Key"] for o in listed if not o["Key"].endswith("/")}  # less the directory markers
    files = ("index.faiss", "documents.jsonl", "manifest.json")
    assert keys == {f"runs/indexes/tiny/{where}{n}" for where in ("", "knowledge_bases/cranes/") for n in files}
    storage.copy_dir(cfg.paths.index, str(tmp_path / "back"), s3_server.endpoint_url)
    loaded = DocumentIndex.load(tmp_path / "back", expected_fingerprint=saved_model.fingerprint())
    assert loaded.ntotal == report.documents == report.corpus_documents == 32  # the whole corpus, always
    assert loaded.corpus.ids == corpus.ids
    expected = build_index(saved_model, Corpus(loaded.corpus), batch_size=cfg.index.batch_size)
    np.testing.assert_allclose(stored_vectors(tmp_path / "back"), stored_vectors_of(expected, tmp_path), atol=1e-5)
    # The entity index inside it: every entity, the same model's vectors, and the report counts it.
    assert knowledge_base_dirs(tmp_path / "back") == {"cranes": tmp_path / "back" / "knowledge_bases" / "cranes"}
    entities = DocumentIndex.load(tmp_path / "back" / "knowledge_bases" / "cranes", expected_fingerprint=saved_model.fingerprint())
    assert entities.corpus.ids == crane_entities().ids and report.knowledge_bases == {"cranes": 4}


def test_onegen_index_with_a_config_and_no_action_submits_the_stage(monkeypatch, capsys):
    import pipelines.cli.stage as command
    from pipelines.cli.main import main

    submitted = []
    monkeypatch.setattr(command, "submit", lambda *args, **kwargs: submitted.append((args, kwargs)) or 0)
    assert main(["index", "--config", "tiny", "--no_wait"]) == 0
    assert submitted == [(("index", load_config("tiny"), "http://127.0.0.1:8265"), {"wait": False})]
    assert main(["index"]) == 2 and "--config PRESET" in capsys.readouterr().err
    assert main(["index", "--config", "tiny", "search", "--index", "i", "--model", "m", "q"]) == 2
    assert submitted == [(("index", load_config("tiny"), "http://127.0.0.1:8265"), {"wait": False})]  # nothing more
