"""index (Ray Data actor pool): the whole corpus → [RD] vectors of the trained model → a FAISS index;
the same for each knowledge base's entities (`data.entities`), saved inside it (`knowledge_bases/<name>/`).

    corpus.jsonl ─▶ documents with their position ─map_batches(EmbedDocuments actors)─▶ (position, vector)
      ─in position order─▶ build_from_vectors ─▶ paths.index, logged to the model's MLflow run

Every document of the corpus is indexed: this index is the one evaluated, registered and served,
so nothing about it may depend on the evaluation's labels.

Each actor loads the model once and embeds whole batches with `OneGenModel.embed_documents`, the
call the in-process `components.retrieval.index.build_index` makes: the two paths give the same vectors.
Ray Data returns batches in any order; the `position` column puts every vector back in its row.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
from mlflow import MlflowClient

from components.config import Precision
from components.data.corpus import Corpus
from components.data.schema import Document
from components.data.screening import load_corpus
from components.model.onegen import OneGenModel
from components.model.precision import autocast, resolved_name
from components.platform import storage, tracking
from components.retrieval.index import KNOWLEDGE_BASES_DIR, build_from_vectors
from pipelines.config import PipelineConfig
from pipelines.errors import StageError
from pipelines.stages.locations import knowledge_base, local_dir, local_file, model_fingerprint


@dataclass
class IndexReport:
    location: str
    documents: int  # indexed
    corpus_documents: int  # in the corpus file (after screening)
    dimension: int
    kind: str
    fingerprint: str
    seconds: float  # embedding (actor start and model load included) and FAISS build
    run_id: str
    precision: str = "float32"  # what `index.precision` resolved to on the driver's node (the actors resolve it on theirs)
    knowledge_bases: dict[str, int] = field(default_factory=dict)  # entity indexes beside the corpus's: entities in each

    @property
    def docs_per_s(self) -> float:
        return (self.documents + sum(self.knowledge_bases.values())) / max(self.seconds, 1e-9)

    def summary(self) -> str:
        return (f"indexed {self.documents} of {self.corpus_documents} documents, dimension {self.dimension}, {self.kind}, model "
                f"{self.fingerprint}, {self.precision}, in {self.seconds:.1f}s ({self.docs_per_s:.1f} docs/s) -> {self.location}; "
                + "".join(f"{kb} knowledge base: {n} entities; " for kb, n in self.knowledge_bases.items())
                + f"MLflow run {self.run_id}")


# -- embedding ----------------------------------------------------------------------------------


class EmbedDocuments:
    """A Ray Data actor: loads the model once, then embeds batches of documents."""

    def __init__(self, model_fs: pafs.FileSystem, model_path: str, fingerprint: str, batch_size: int, threads: int,
                 precision: Precision = "float32"):
        import torch

        torch.set_num_threads(threads)  # as many as the CPUs this actor reserved
        self._scratch = tempfile.TemporaryDirectory(prefix="onegen-model-")  # lives as long as the actor
        self.model = OneGenModel.from_pretrained(local_dir(model_fs, model_path, self._scratch.name))
        if self.model.fingerprint() != fingerprint:  # the model was replaced since the stage started
            raise StageError(f"{model_path}: model {self.model.fingerprint()}, the stage indexes for {fingerprint}")
        self.batch_size, self.precision = batch_size, precision

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        docs = [Document(id=str(i), title=str(t), text=str(x)) for i, t, x in zip(batch["id"], batch["title"], batch["text"])]
        with autocast(self.precision, self.model.device):
            vectors = self.model.embed_documents(docs, self.batch_size).numpy()
        return {"position": batch["position"], "vector": vectors}


def embed_corpus(corpus: Corpus, model_location: str, fingerprint: str, endpoint: str | None, batch_size: int,
                 actors: int, cpus_per_actor: float, precision: Precision = "float32") -> np.ndarray:
    """[len(corpus), H] unit vectors, row i = corpus.at(i), embedded by an actor pool."""
    import ray

    fs, path = storage.filesystem(model_location, endpoint)
    rows = [{"position": i, "id": d.id, "title": d.title, "text": d.text} for i, d in enumerate(corpus)]
    embedded = ray.data.from_items(rows).map_batches(
        EmbedDocuments,
        fn_constructor_kwargs={"model_fs": fs, "model_path": path, "fingerprint": fingerprint,
                               "batch_size": batch_size, "threads": max(1, int(cpus_per_actor)), "precision": precision},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
    )
    vectors: np.ndarray | None = None
    seen = np.zeros(len(corpus), dtype=bool)
    for batch in embedded.iter_batches(batch_format="numpy", batch_size=None):
        if vectors is None:
            vectors = np.empty((len(corpus), batch["vector"].shape[1]), dtype=np.float32)
        vectors[batch["position"]] = batch["vector"]
        seen[batch["position"]] = True
    if vectors is None or not seen.all():
        raise StageError(f"the actor pool returned vectors for {int(seen.sum())} of {len(corpus)} documents")
    return vectors


# -- the stage ----------------------------------------------------------------------------------


def build(cfg: PipelineConfig) -> IndexReport:
    """Run the stage: embed, index, save to `cfg.paths.index`, log to the model's MLflow run."""
    endpoint = cfg.storage.s3_endpoint_url
    run_id = tracking.run_for(MlflowClient(cfg.mlflow.tracking_uri), cfg.mlflow.experiment, cfg.run_name, "index")  # first: a wrong tracking URI fails now, not after the embedding
    with tempfile.TemporaryDirectory(prefix="onegen-index-") as scratch:
        tmp = Path(scratch)
        fingerprint = model_fingerprint(cfg.paths.model, endpoint)
        corpus_path = local_file(f"{cfg.data.dir.rstrip('/')}/{cfg.data.corpus}", endpoint, tmp)
        corpus, screened = load_corpus(corpus_path)
        if screened.quarantined:  # those documents are left out of the index: say so
            print(f"warning: {screened.summary()}", flush=True)
        started = time.perf_counter()
        index = _index(cfg, corpus, fingerprint)
        seconds = time.perf_counter() - started
        saved = _save(index, cfg.paths.index, endpoint, tmp / "index")
        entities = {}
        for kb in cfg.data.entities:  # inside the corpus index's directory: registered and served with it
            started = time.perf_counter()
            entity_index = _index(cfg, knowledge_base(cfg, kb, tmp), fingerprint)
            seconds += time.perf_counter() - started
            _save(entity_index, f"{cfg.paths.index}/{KNOWLEDGE_BASES_DIR}/{kb}", endpoint, saved / KNOWLEDGE_BASES_DIR / kb)
            entities[kb] = entity_index.ntotal
        report = IndexReport(
            location=cfg.paths.index, documents=index.ntotal, corpus_documents=len(corpus), dimension=index.dimension, kind=index.kind, fingerprint=fingerprint, seconds=seconds,
            run_id=run_id, precision=resolved_name(cfg.index.precision), knowledge_bases=entities,
        )
        _log(cfg, report, saved)
    return report


def _index(cfg: PipelineConfig, corpus: Corpus, fingerprint: str):
    vectors = embed_corpus(corpus, cfg.paths.model, fingerprint, cfg.storage.s3_endpoint_url, cfg.index.batch_size,
                           cfg.index.actors, cfg.index.cpus_per_actor, cfg.index.precision)
    return build_from_vectors(vectors, corpus, fingerprint, cfg.index.index)


def _save(index, location: str, endpoint: str | None, scratch: Path) -> Path:
    """Save to `location`; for S3 through `scratch`, replacing what an earlier run left there.
    Returns the local copy (which MLflow logs)."""
    if not storage.is_remote(location):
        shutil.rmtree(Path(location) / KNOWLEDGE_BASES_DIR, ignore_errors=True)  # no entity index of an older run stays
        return index.save(location)
    index.save(scratch)
    fs, path = storage.filesystem(location, endpoint)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    storage.copy_dir(str(scratch), location, endpoint)
    return scratch


def _log(cfg: PipelineConfig, report: IndexReport, index_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.mlflow.tracking_uri)
    for key, value in {"index_documents": report.documents, "index_seconds": report.seconds,
                       "index_docs_per_s": report.docs_per_s}.items():
        client.log_metric(report.run_id, key, float(value))
    # Tags, not params: a rebuilt index replaces them (a param may never change).
    for key, value in {"location": report.location, "fingerprint": report.fingerprint, "kind": report.kind,
                       "precision": report.precision}.items():
        client.set_tag(report.run_id, f"onegen.index.{key}", str(value))
    client.log_artifacts(report.run_id, str(index_dir), artifact_path="index")
