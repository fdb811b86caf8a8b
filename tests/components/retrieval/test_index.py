import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from components.data.corpus import Corpus
from components.data.schema import Document
from components.retrieval.index import (
    DOCUMENTS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    DocumentIndex,
    IndexConfig,
    IndexFileError,
    IndexMismatchError,
    build_from_vectors,
    build_index,
    ivf_cells,
)
from pipelines.cli.main import main


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numbered_corpus(n: int) -> Corpus:
    return Corpus(Document(id=f"d{i}", title=f"Doc {i}", text=f"text {i}") for i in range(n))


def brute_force(docs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ docs.T
    top = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, top, axis=1), top


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    docs, queries = unit_vectors(rng, 2000, 32), unit_vectors(rng, 50, 32)
    return docs, queries, numbered_corpus(len(docs))


# -- search ------------------------------------------------------------------------------------


def test_flat_top_k_equals_brute_force():
    rng = np.random.default_rng(1)
    docs, queries = unit_vectors(rng, 300, 48), unit_vectors(rng, 200, 48)
    index = build_from_vectors(docs, numbered_corpus(300), "fp")
    scores, positions = index.search_arrays(queries, 10)
    want_scores, want_positions = brute_force(docs, queries, 10)
    np.testing.assert_array_equal(positions, want_positions)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


@pytest.fixture(scope="module")
def random_20k():
    rng = np.random.default_rng(2)
    docs, queries = unit_vectors(rng, 20_000, 64), unit_vectors(rng, 500, 64)
    flat = build_from_vectors(docs, numbered_corpus(len(docs)), "fp")
    _, truth = flat.search_arrays(queries, 10)
    return docs, queries, truth


# Uniform random unit vectors have no cluster structure, the worst case for IVF: with nlist 512
# (auto for 20k) it must scan over half the cells to find 95% of the true top 10.
@pytest.mark.parametrize(
    "cfg",
    [IndexConfig(kind="ivf", nprobe=320), IndexConfig(kind="hnsw", hnsw_m=32, ef_construction=100, ef_search=128)],
    ids=["ivf", "hnsw"],
)
def test_approximate_indexes_reach_recall_at_10(random_20k, cfg):
    docs, queries, truth = random_20k
    start = time.perf_counter()
    index = build_from_vectors(docs, numbered_corpus(len(docs)), "fp", cfg)
    built = time.perf_counter()
    _, found = index.search_arrays(queries, 10)
    searched = time.perf_counter()
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    print(f"{index.manifest.config}: recall@10 {recall:.4f}, build {built - start:.2f}s, "
          f"search {len(queries)} queries {searched - built:.3f}s")  # fmt: skip
    assert recall >= 0.95


def test_stored_vectors_come_back_by_document_id(small):
    docs, _, corpus = small
    index = build_from_vectors(docs, corpus, "fp")
    np.testing.assert_array_equal(index.vectors(["d7", "d0", "d1999"]), docs[[7, 0, 1999]])
    assert index.vectors([]).shape == (0, 32)


def test_k_larger_than_the_index_returns_every_document(small):
    docs, queries, _ = small
    index = build_from_vectors(docs[:7], numbered_corpus(7), "fp")
    hits = index.search(queries[:3], 100)
    assert [len(h) for h in hits] == [7, 7, 7]
    assert all(sorted(h.position for h in row) == list(range(7)) for row in hits)
    assert all([h.score for h in row] == sorted((h.score for h in row), reverse=True) for row in hits)


def test_hits_map_positions_to_the_document_store():
    corpus = Corpus(
        [
            Document(id="ada", title="Ada Lovelace", text="Ada Lovelace was born in London."),
            Document(id="byron", title="Lord Byron", text="Lord Byron was a poet."),
            Document(id="london", title="London", text="London is the capital of England."),
        ]
    )
    vectors = np.eye(3, 8, dtype=np.float32)  # document i points along axis i
    index = build_from_vectors(vectors, corpus, "fp")
    query = np.array([[0.1, 0.0, 0.99498744, 0, 0, 0, 0, 0]], dtype=np.float32)  # nearest: london, then ada
    first, second = index.search(query, 2)[0]
    assert (first.position, first.doc_id, first.title, first.text) == (2, "london", "London", "London is the capital of England.")
    assert first.score == pytest.approx(0.99498744)
    assert (second.position, second.doc_id, second.title) == (0, "ada", "Ada Lovelace")
    assert first.document is corpus["london"]


def test_threads_sharing_an_index_get_the_serial_results(small):
    docs, queries, corpus = small
    index = build_from_vectors(docs, corpus, "fp", IndexConfig(kind="hnsw"))
    want = index.search_arrays(queries, 5)[1]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda q: index.search_arrays(q[None], 5)[1][0], list(queries) * 4))
    np.testing.assert_array_equal(np.stack(results), np.concatenate([want] * 4))


# -- validation --------------------------------------------------------------------------------


def bad_queries(dim: int) -> dict[str, tuple[np.ndarray, str]]:
    good = np.eye(2, dim, dtype=np.float32)
    nan = good.copy()
    nan[1, 0] = np.nan
    return {
        "wrong dimension": (np.eye(2, dim + 1, dtype=np.float32), "expected dimension"),
        "1-D": (good[0], "2-D"),
        "float64": (good.astype(np.float64), "float32"),
        "non-finite": (nan, "NaN or infinite"),
        "not unit norm": (good * 3, "not unit norm"),
    }


@pytest.mark.parametrize("case", list(bad_queries(8)))
def test_bad_queries_raise_value_errors_naming_the_parameter(case):
    index = build_from_vectors(np.eye(4, 8, dtype=np.float32), numbered_corpus(4), "fp")
    queries, reason = bad_queries(8)[case]
    with pytest.raises(ValueError, match=f"^queries: .*{reason}"):
        index.search(queries, 2)


@pytest.mark.parametrize("case", ["1-D", "float64", "non-finite", "not unit norm"])
def test_bad_vectors_raise_value_errors_naming_the_parameter(case):
    vectors, reason = bad_queries(8)[case]
    with pytest.raises(ValueError, match=f"^vectors: .*{reason}"):
        build_from_vectors(vectors, numbered_corpus(len(vectors)), "fp")


def test_vectors_must_match_the_corpus():
    with pytest.raises(ValueError, match="^vectors: 3 rows for 4 documents"):
        build_from_vectors(np.eye(3, 8, dtype=np.float32), numbered_corpus(4), "fp")


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_is_a_value_error(k):
    index = build_from_vectors(np.eye(4, 8, dtype=np.float32), numbered_corpus(4), "fp")
    with pytest.raises(ValueError, match="^k must be at least 1"):
        index.search(np.eye(1, 8, dtype=np.float32), k)


def test_ivf_nlist_is_chosen_from_n_or_refused_when_too_many():
    assert ivf_cells(IndexConfig(kind="ivf"), 20_000) == 512  # 4·√n = 566, capped at n/39
    assert ivf_cells(IndexConfig(kind="ivf"), 1_000_000) == 4000  # 4·√n
    assert ivf_cells(IndexConfig(kind="ivf"), 10) == 1
    assert ivf_cells(IndexConfig(kind="ivf", nlist=10), 390) == 10
    with pytest.raises(ValueError, match="nlist=11 needs at least 429 vectors to train .* got 390"):
        ivf_cells(IndexConfig(kind="ivf", nlist=11), 390)


# -- persistence -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip_returns_identical_results(small, tmp_path, kind):
    docs, queries, corpus = small
    index = build_from_vectors(docs, corpus, "fp-a", IndexConfig(kind=kind, nprobe=8, ef_search=40))
    index.save(tmp_path)
    loaded = DocumentIndex.load(tmp_path, expected_fingerprint="fp-a")

    for got, want in zip(loaded.search_arrays(queries, 10), index.search_arrays(queries, 10)):
        np.testing.assert_array_equal(got, want)
    assert loaded.corpus.ids == corpus.ids
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["dimension"] == 32 and manifest["ntotal"] == 2000 and manifest["metric"] == "inner_product"
    assert manifest["config"]["kind"] == kind and manifest["fingerprint"] == "fp-a"
    assert manifest["faiss_version"] and manifest["created"]
    assert (manifest["config"]["nlist"] == 51) == (kind == "ivf")  # 4·√2000 = 179, capped at 2000/39
    assert loaded.manifest == index.manifest


def test_load_for_another_model_names_both_fingerprints(small, tmp_path):
    docs, _, corpus = small
    build_from_vectors(docs, corpus, "model-a").save(tmp_path)
    with pytest.raises(IndexMismatchError, match="built by a different model.*model-a.*model-b"):
        DocumentIndex.load(tmp_path, expected_fingerprint="model-b")


@pytest.mark.parametrize("name", [INDEX_FILE, DOCUMENTS_FILE, MANIFEST_FILE])
def test_corrupt_file_is_named(small, tmp_path, name):
    docs, _, corpus = small
    build_from_vectors(docs, corpus, "fp").save(tmp_path)
    (tmp_path / name).write_bytes(b"\x00garbage{")
    with pytest.raises(IndexFileError, match=re.escape(f"{tmp_path / name}: corrupt")):
        DocumentIndex.load(tmp_path)


def test_truncated_index_file_is_named(small, tmp_path):
    docs, _, corpus = small
    build_from_vectors(docs, corpus, "fp").save(tmp_path)
    data = (tmp_path / INDEX_FILE).read_bytes()
    (tmp_path / INDEX_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match=re.escape(f"{tmp_path / INDEX_FILE}: corrupt")):
        DocumentIndex.load(tmp_path)


@pytest.mark.parametrize("name", [INDEX_FILE, DOCUMENTS_FILE, MANIFEST_FILE])
def test_missing_file_is_named(small, tmp_path, name):
    docs, _, corpus = small
    build_from_vectors(docs, corpus, "fp").save(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / name}: missing")):
        DocumentIndex.load(tmp_path)


def test_documents_disagreeing_with_the_manifest_are_refused(small, tmp_path):
    docs, _, corpus = small
    build_from_vectors(docs, corpus, "fp").save(tmp_path)
    Corpus(list(corpus)[:-1]).save_jsonl(tmp_path / DOCUMENTS_FILE)
    with pytest.raises(IndexFileError, match=re.escape(f"{tmp_path / DOCUMENTS_FILE}: 1999 documents, {MANIFEST_FILE} says 2000")):
        DocumentIndex.load(tmp_path)


# -- with a model, and the CLI -----------------------------------------------------------------


def test_build_index_and_the_cli(tiny_model, small_corpus, tmp_path, capsys):
    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    corpus_path = tmp_path / "corpus.jsonl"
    small_corpus.save_jsonl(corpus_path)

    index = build_index(tiny_model, small_corpus, batch_size=3)  # two batches
    vectors = tiny_model.embed_documents(list(small_corpus)).numpy()
    np.testing.assert_array_equal(index.search_arrays(vectors, 1)[1][:, 0], np.arange(len(small_corpus)))
    assert index.fingerprint == tiny_model.fingerprint()

    out = tmp_path / "index"
    assert main(["index", "build", "--model", str(model_dir), "--corpus", str(corpus_path), "--out", str(out), "--batch_size", "2"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]  # after any library's start-up chatter
    assert summary.startswith("indexed 4 documents, dimension 64, flat, in ") and str(out) in summary
    assert {p.name for p in out.iterdir()} == {INDEX_FILE, DOCUMENTS_FILE, MANIFEST_FILE}

    query = "Where was Ada Lovelace born?"
    assert main(["index", "search", "--index", str(out), "--model", str(model_dir), query, "-k", "3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "\t" in line]  # the hits only
    expected = index.search(tiny_model.embed_queries([query]).numpy(), 3)[0]
    assert [line.split("\t")[:3] for line in lines] == [[str(r), f"{h.score:.4f}", h.doc_id] for r, h in enumerate(expected, 1)]


def test_cli_search_refuses_an_index_of_another_model(tiny_model, small_corpus, tmp_path, capsys):
    model_dir = tiny_model.save_pretrained(tmp_path / "model")
    build_from_vectors(np.eye(4, 64, dtype=np.float32), small_corpus, "another-model").save(tmp_path / "index")
    assert main(["index", "search", "--index", str(tmp_path / "index"), "--model", str(model_dir), "Ada?"]) == 1
    err = capsys.readouterr().err
    assert "built by a different model" in err and "another-model" in err and tiny_model.fingerprint() in err
