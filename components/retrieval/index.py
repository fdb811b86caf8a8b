"""The FAISS index with its document store. Vectors are unit norm and compared by inner product
(cosine), as in training. FAISS stores integer ids; here they are positions in a `Corpus`, which
maps them back to documents: row i of the vectors an index is built from is `corpus.at(i)`.

A saved index is a directory:

    index.faiss      faiss.write_index (faiss's own format; always the CPU form)
    documents.jsonl  the Corpus, in position order
    manifest.json    dimension, metric, kind and params, ntotal, faiss version, created time, and
                     the fingerprint of the model (weights + special tokens) whose vectors these are

An index refuses to load for another model (`IndexMismatchError`): another model's vectors live in
another space, and searching them would raise nothing and be silently wrong.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import faiss
import numpy as np
from pydantic import NonNegativeInt, PositiveInt
from tqdm import tqdm

from components.config import FrozenConfig, IndexConfig
from components.config import IndexKind as Kind
from components.data.corpus import Corpus
from components.data.schema import Document

if TYPE_CHECKING:  # the model pulls in torch and transformers; a search-only process needs neither
    from components.model.onegen import OneGenModel

INDEX_FILE = "index.faiss"
DOCUMENTS_FILE = "documents.jsonl"
# Entity indexes of knowledge bases other than the corpus (WordNet's synsets) are saved inside the
# corpus index's directory, one folder per base, so they move (registry, serving) with it.
KNOWLEDGE_BASES_DIR = "knowledge_bases"
MANIFEST_FILE = "manifest.json"

# |norm - 1| allowed. Float32 vectors are within ~1e-6; a bf16 model normalises in bf16, whose
# 8-bit mantissa leaves norms up to ~4e-3 off. Unnormalised hidden states are off by far more.
UNIT_TOLERANCE = 1e-2
# FAISS k-means warns below 39 training points per centroid: the cells are then poorly placed.
MIN_POINTS_PER_CELL = 39

T = TypeVar("T")


class IndexMismatchError(ValueError):
    """The index was built from another model's vectors."""


class IndexFileError(ValueError):
    """A file of a saved index is corrupt or disagrees with the manifest; the message names it."""


class Manifest(FrozenConfig):
    dimension: PositiveInt
    metric: Literal["inner_product"] = "inner_product"
    config: IndexConfig  # kind and params; for IVF with the nlist actually used
    ntotal: NonNegativeInt
    faiss_version: str
    created: datetime
    fingerprint: str  # OneGenModel.fingerprint() of the model that made the vectors


@dataclass(frozen=True)
class Hit:
    position: int  # the FAISS id: the document's position in the Corpus
    score: float  # inner product of unit vectors: cosine similarity
    document: Document

    @property
    def doc_id(self) -> str:
        return self.document.id

    @property
    def title(self) -> str:
        return self.document.title

    @property
    def text(self) -> str:
        return self.document.text


class DocumentIndex:
    """A FAISS index and the Corpus its ids point into.

    FAISS indexes are not safe for concurrent use: GPU ones not even for searches, CPU ones not
    while anything changes them (and one search already uses every core through OpenMP). So
    searching and saving take a lock: threads of one process may share an instance, one call at a
    time. A server puts it behind a single-threaded actor.
    """

    def __init__(self, index: faiss.Index, corpus: Corpus, manifest: Manifest):
        if not index.ntotal == len(corpus) == manifest.ntotal:
            raise ValueError(f"index has {index.ntotal} vectors, corpus {len(corpus)} documents, manifest says {manifest.ntotal}")
        self.corpus = corpus
        self.manifest = manifest
        self._index = _to_device(index, manifest.config.kind)
        self.on_gpu = self._index is not index
        _set_search_params(self._index, manifest.config, self.on_gpu)
        self._lock = threading.Lock()
        self._has_direct_map = False

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    @property
    def kind(self) -> Kind:
        return self.manifest.config.kind

    @property
    def ntotal(self) -> int:
        return self._index.ntotal

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    # -- search ------------------------------------------------------------------------------

    def search_arrays(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and positions, each [Q, min(k, ntotal)], best first. An approximate index may
        find fewer than k: FAISS pads those slots with position -1."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        x = check_vectors(queries, "queries", self.dimension)
        with self._lock:
            return self._index.search(x, min(k, self.ntotal))

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Per query, at most k hits (fewer when the index holds fewer documents), best first."""
        scores, positions = self.search_arrays(queries, k)
        return [
            [Hit(int(p), float(s), self.corpus.at(int(p))) for s, p in zip(row_scores, row_positions) if p >= 0]
            for row_scores, row_positions in zip(scores, positions)
        ]

    def search_among(self, queries: np.ndarray, candidates: Sequence[Sequence[str]]) -> list[list[Hit]]:
        """Per query, its candidates (document ids; unknown ones skipped) by score, best first: an
        exact inner product whatever the index kind, as a linker chooses among the few entities a
        mention's surface form names."""
        x = check_vectors(queries, "queries", self.dimension)
        if len(candidates) != len(x):
            raise ValueError(f"{len(x)} queries but {len(candidates)} candidate lists")
        out = []
        for query, ids in zip(x, candidates):
            known = [d for d in dict.fromkeys(ids) if d in self.corpus]
            scores = self.vectors(known) @ query
            out.append([Hit(self.corpus.position(known[i]), float(scores[i]), self.corpus[known[i]])
                        for i in np.argsort(-scores, kind="stable")])
        return out

    def vectors(self, doc_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of these documents, [len(doc_ids), H]."""
        if not doc_ids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            if self.kind == "ivf" and not self._has_direct_map:  # IVF maps position → vector only when asked
                faiss.extract_index_ivf(self._index).make_direct_map()
                self._has_direct_map = True
            return np.stack([self._index.reconstruct(self.corpus.position(d)) for d in doc_ids])

    # -- persistence -------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Remove the manifest first, write it last: a save cut short leaves none, and load says so.
        (directory / MANIFEST_FILE).unlink(missing_ok=True)
        with self._lock:
            cpu = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index
            faiss.write_index(cpu, str(directory / INDEX_FILE))
        self.corpus.save_jsonl(directory / DOCUMENTS_FILE)
        (directory / MANIFEST_FILE).write_text(self.manifest.model_dump_json(indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, expected_fingerprint: str | None = None) -> DocumentIndex:
        """Load a saved index; with `expected_fingerprint`, only if that model built it."""
        directory = Path(directory)
        manifest = _read(directory / MANIFEST_FILE, lambda p: Manifest.model_validate_json(p.read_bytes()))
        if expected_fingerprint is not None and manifest.fingerprint != expected_fingerprint:
            raise IndexMismatchError(
                f"the index at {directory} was built by a different model: its vectors come from model "
                f"{manifest.fingerprint}, this model is {expected_fingerprint}; rebuild the index with this model"
            )
        index = _read(directory / INDEX_FILE, lambda p: faiss.read_index(str(p)))
        corpus = _read(directory / DOCUMENTS_FILE, Corpus.load_jsonl)
        if (index.d, index.metric_type, index.ntotal) != (manifest.dimension, faiss.METRIC_INNER_PRODUCT, manifest.ntotal):
            raise IndexFileError(
                f"{directory / INDEX_FILE}: dimension {index.d}, metric {index.metric_type}, {index.ntotal} vectors; "
                f"{MANIFEST_FILE} says dimension {manifest.dimension}, inner product, {manifest.ntotal} vectors"
            )
        if len(corpus) != manifest.ntotal:
            raise IndexFileError(f"{directory / DOCUMENTS_FILE}: {len(corpus)} documents, {MANIFEST_FILE} says {manifest.ntotal}")
        return cls(index, corpus, manifest)


# -- building ----------------------------------------------------------------------------------


def check_vectors(vectors: np.ndarray, name: str, dimension: int | None = None) -> np.ndarray:
    """The float32 [n, dimension] matrix of finite unit vectors FAISS is given, or a ValueError
    naming `name`. Vectors are not normalised here: a non-unit vector means the caller skipped a
    step, and fixing it silently would hide that."""
    x = np.asarray(vectors)  # numpy, or a CPU torch tensor
    if x.dtype != np.float32:
        raise ValueError(f"{name}: expected float32 vectors, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D matrix [n, dimension], got shape {list(x.shape)}")
    if dimension is not None and x.shape[1] != dimension:
        raise ValueError(f"{name}: expected dimension {dimension}, got {x.shape[1]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    off = np.abs(norms - 1) > UNIT_TOLERANCE
    if off.any():
        row = int(np.argmax(off))
        raise ValueError(
            f"{name}: {int(off.sum())} of {len(x)} vectors are not unit norm (row {row} has norm "
            f"{norms[row]:.4g}); L2-normalise them first"
        )
    return np.ascontiguousarray(x)


def ivf_cells(cfg: IndexConfig, n: int) -> int:
    """nlist for n training vectors: the configured one if n can train it, else an error; unset,
    4·√n capped at n/39 so that every cell gets enough points."""
    most = n // MIN_POINTS_PER_CELL
    if cfg.nlist is None:
        return max(1, min(round(4 * math.sqrt(n)), most))
    if cfg.nlist > most:
        raise ValueError(
            f"nlist={cfg.nlist} needs at least {MIN_POINTS_PER_CELL * cfg.nlist} vectors to train "
            f"({MIN_POINTS_PER_CELL} per cell), got {n}: lower nlist, or leave it unset to choose it from n"
        )
    return cfg.nlist


def build_from_vectors(
    vectors: np.ndarray, corpus: Corpus, fingerprint: str, cfg: IndexConfig = IndexConfig()
) -> DocumentIndex:
    """Index precomputed vectors: row i is the document at `corpus.at(i)`. Built on the CPU; a
    GPU, if any, gets the finished index."""
    x = check_vectors(vectors, "vectors")
    if len(x) != len(corpus) or len(x) == 0:
        raise ValueError(f"vectors: {len(x)} rows for {len(corpus)} documents; need one per document, and at least one")
    if cfg.kind == "ivf":
        cfg = cfg.model_copy(update={"nlist": ivf_cells(cfg, len(x))})
    index = _new_index(cfg, x.shape[1])
    index.train(x)  # k-means for IVF; nothing for Flat and HNSW
    index.add(x)
    manifest = Manifest(
        dimension=x.shape[1],
        config=cfg,
        ntotal=index.ntotal,
        faiss_version=faiss.__version__,
        created=datetime.now(timezone.utc),
        fingerprint=fingerprint,
    )
    return DocumentIndex(index, corpus, manifest)


def build_index(
    model: OneGenModel, corpus: Corpus, cfg: IndexConfig = IndexConfig(), batch_size: int = 64
) -> DocumentIndex:
    """Embed every document with `model` (its [RD] vector) and index them: the in-process path."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    docs = list(corpus)
    vectors = np.empty((len(docs), model.hidden_size), dtype=np.float32)
    with tqdm(total=len(docs), desc="embedding documents", unit="doc") as bar:
        for start in range(0, len(docs), batch_size):
            chunk = docs[start : start + batch_size]
            vectors[start : start + len(chunk)] = model.embed_documents(chunk, batch_size).numpy()
            bar.update(len(chunk))
    return build_from_vectors(vectors, corpus, model.fingerprint(), cfg)


# -- FAISS -------------------------------------------------------------------------------------


def _new_index(cfg: IndexConfig, dimension: int) -> faiss.Index:
    if cfg.kind == "flat":
        return faiss.IndexFlatIP(dimension)
    if cfg.kind == "ivf":
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, cfg.nlist, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexHNSWFlat(dimension, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = cfg.ef_construction
    return index


def _to_device(index: faiss.Index, kind: Kind) -> faiss.Index:
    """Flat and IVF move to every GPU faiss sees; HNSW has no GPU form and stays on the CPU."""
    if kind != "hnsw" and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def _set_search_params(index: faiss.Index, cfg: IndexConfig, on_gpu: bool) -> None:
    # Through a ParameterSpace, which reaches the indexes inside multi-GPU replicas too.
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    if cfg.kind == "ivf":
        space.set_index_parameter(index, "nprobe", cfg.nprobe)
    elif cfg.kind == "hnsw":
        space.set_index_parameter(index, "efSearch", cfg.ef_search)


def _read(path: Path, reader: Callable[[Path], T]) -> T:
    """`reader(path)`, with errors that name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is {path.parent} a saved index?")
    try:
        return reader(path)
    except (RuntimeError, ValueError) as err:  # faiss raises RuntimeError; json and pydantic ValueError
        raise IndexFileError(f"{path}: corrupt or unreadable: {err}") from err


def knowledge_base_dirs(index_dir: str | Path) -> dict[str, Path]:
    """Knowledge base name → its entity index directory, for those saved inside `index_dir`."""
    root = Path(index_dir) / KNOWLEDGE_BASES_DIR
    return {p.name: p for p in sorted(root.iterdir()) if (p / MANIFEST_FILE).is_file()} if root.is_dir() else {}
