"""The dataset builders on hand-written rows shaped like the real sources (fast, no MiniLM: the
negative miner is injected), and one build from the real installed packages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from components.data.schema import Document, Example
from components.data.screening import ScreenReport, iter_examples, load_corpus
from components.datasets.build import BuildConfig, build_datasets, split_of
from components.datasets.fanoutqa import fanoutqa_examples, leaves, render
from components.datasets.inverse_cloze import ict_examples, query_sentence
from components.datasets.negatives import MiniLMNegatives
from components.datasets.vital_articles import vital_articles

ARTICLES = {
    "Ada Lovelace": {
        "title": "Ada Lovelace",
        "extract": "Ada Lovelace was a mathematician. She wrote the first published algorithm for the Analytical Engine. "
                   "She died young.",
        "description": "English mathematician", "topic": "People",
    },
    "Charles Babbage": {
        "title": "Charles Babbage",
        "extract": "Charles Babbage was a polymath. He originated the concept of a digital programmable computer.",
        "description": "English mathematician and engineer", "topic": "People",
    },
    "Alan Turing": {
        "title": "Alan Turing", "extract": "Alan Turing was a mathematician and computer scientist.",
        "description": "", "topic": "People",
    },
    "London": {
        "title": "London", "extract": "London is the capital of England. It stands on the River Thames in the south east.",
        "description": "Capital of England", "topic": "Geography",
    },
    "Paris": {"title": "Paris", "extract": "Paris is the capital of France.", "description": "Capital of France", "topic": "Geography"},
    "Washington, D.C.": {
        "title": "Washington, D.C.", "extract": "Washington, D.C. is the capital city of the United States.",
        "description": "Capital of the United States", "topic": "Geography",
    },
    "Analytical Engine": {
        "title": "Analytical Engine", "extract": "The Analytical Engine was a proposed mechanical general-purpose computer.",
        "description": "", "topic": "Technology",
    },
    "Blank": {"title": "Blank", "extract": "   ", "description": "", "topic": "Technology"},  # fails the schema
}


def leaf(qid: str, question: str, answer, title: str) -> dict:
    return {"id": qid, "question": question, "answer": answer, "depends_on": [], "decomposition": [],
            "evidence": {"title": title, "pageid": 1}}


QUESTIONS = [
    {
        "id": "q-nested", "question": "Where did the people behind the Analytical Engine live, and when?",
        "answer": {"Ada Lovelace": "London", "Charles Babbage": "London"},
        "decomposition": [
            leaf("a", "Who wrote the first algorithm?", "Ada Lovelace", "Ada Lovelace"),
            leaf("b", "Which journal published it?", "Taylor's Scientific Memoirs", "Scientific Memoirs"),  # not in corpus
            {
                "id": "c", "question": "Where and when did they live?", "answer": "London", "depends_on": ["a"],
                "evidence": {"title": "London"},
                "decomposition": [
                    leaf("c1", "Which cities were they in?", ["London", "Paris"], "London"),
                    leaf("c2", "When was Babbage alive?", {"born": 1791, "died": [1871, "London"]}, "Charles Babbage"),
                ],
            },
            leaf("d", "How many engines were built?", 0, "Analytical Engine"),
        ],
    },
    {"id": "q-none", "question": "Who won in 1850?", "answer": "Nobody",
     "decomposition": [leaf("e", "Who won?", "Nobody", "Some Missing Page")]},
    {"id": "q-dc", "question": "What is the US capital?", "answer": 1,
     "decomposition": [leaf("f", "What is the capital of the United States?", "Washington, D.C.", "Washington, D.C.")]},
]


class FirstOthers:
    """A fake miner: the first `k` corpus ids that are not the gold page; records what it was asked."""

    def __init__(self, ids: list[str], k: int = 2):
        self.ids, self.k, self.calls = ids, k, []

    def __call__(self, queries, gold):
        self.calls.append((list(queries), list(gold)))
        return [[d for d in self.ids if d != g][: self.k] for g in gold]


def kept_ids() -> list[str]:
    return [t for t in ARTICLES if t != "Blank"]


# --- FanOutQA -------------------------------------------------------------------------------------

def test_render_each_answer_shape():
    assert render("Right") == "Right"
    assert render(["Pat Burrell", "Mark Mulder"]) == "Pat Burrell, Mark Mulder"
    assert render({"Apple": 161000, "Microsoft": 238000}) == "Apple: 161000; Microsoft: 238000"
    assert render({"died": [1871, "London"]}) == "died: 1871, London"
    assert render(2.5) == "2.5" and render(True) == "True" and render(0) == "0"


def test_leaves_are_walked_depth_first():
    assert [x["id"] for x in leaves(QUESTIONS[0]["decomposition"])] == ["a", "b", "c1", "c2", "d"]


def test_fanoutqa_example_text_positives_and_negatives():
    miner = FirstOthers(kept_ids(), k=2)
    rows = fanoutqa_examples(QUESTIONS, set(kept_ids()), miner)

    assert [r["id"] for r in rows] == ["q-nested", "q-dc"]  # q-none has no in-corpus leaf
    nested = rows[0]
    assert nested["messages"] == [
        {"role": "user", "content": "Where did the people behind the Analytical Engine live, and when?"},
        {"role": "assistant", "content":
            "Who wrote the first algorithm?[RQ] Ada Lovelace. "
            "Which cities were they in?[RQ] London, Paris. "
            "When was Babbage alive?[RQ] born: 1791; died: 1871, London. "
            "How many engines were built?[RQ] 0."},
    ]  # leaf "b" is not in the corpus: the final answer would state what was not retrieved
    assert nested["positives"] == [["Ada Lovelace"], ["London"], ["Charles Babbage"], ["Analytical Engine"]]
    assert nested["negatives"] == [
        ["Charles Babbage", "Alan Turing"], ["Ada Lovelace", "Charles Babbage"],
        ["Ada Lovelace", "Alan Turing"], ["Ada Lovelace", "Charles Babbage"],
    ]
    # The out-of-corpus leaf "b" is neither asked nor answered.
    assert "journal" not in nested["messages"][1]["content"] and "Taylor" not in nested["messages"][1]["content"]
    # One batch for all hops, in order, with their gold pages.
    assert miner.calls == [(
        ["Who wrote the first algorithm?", "Which cities were they in?", "When was Babbage alive?",
         "How many engines were built?", "What is the capital of the United States?"],
        ["Ada Lovelace", "London", "Charles Babbage", "Analytical Engine", "Washington, D.C."],
    )]
    for row in rows:
        Example.model_validate(row)


def test_an_answer_that_ends_with_a_period_gets_no_second_one():
    """Also: every leaf of this question is in the corpus, so the final answer is written."""
    rows = fanoutqa_examples(QUESTIONS[2:], set(kept_ids()), FirstOthers(kept_ids()))
    assert rows[0]["messages"][1]["content"] == (
        "What is the capital of the United States?[RQ] Washington, D.C. So the answer is: 1"
    )


def test_minilm_negatives_rank_by_score_and_drop_the_gold_page():
    class Fixed:  # stands in for MiniLMRetriever: query i has vector e_i
        def encode(self, texts):
            return np.eye(3, dtype=np.float32)[: len(texts)]

    doc_vecs = np.array([[0.9, 0, 0], [0.5, 0, 0], [0.7, 0, 0], [0, 1, 0]], dtype=np.float32)
    mine = MiniLMNegatives(Fixed(), ["A", "B", "C", "D"], doc_vecs, k=2)
    # Query 0 ranks A, C, B; A is gold → C, B. Query 1 ranks D first; D is not gold → D then a tie.
    negatives = mine(["q0", "q1"], ["A", "X"])
    assert negatives[0] == ["C", "B"]
    assert negatives[1][0] == "D" and len(negatives[1]) == 2
    assert MiniLMNegatives(Fixed(), ["A"], doc_vecs[:1], k=0)(["q"], ["A"]) == [[]]


# --- vital articles and inverse cloze -------------------------------------------------------------

def test_vital_articles_keep_description_and_topic_and_quarantine_bad_rows(tmp_path):
    articles = vital_articles(ARTICLES, tmp_path / "q.jsonl")
    assert [d.id for d in articles.documents] == kept_ids()
    assert articles.documents[0] == Document(id="Ada Lovelace", title="Ada Lovelace", text=ARTICLES["Ada Lovelace"]["extract"])
    assert articles.descriptions["London"] == "Capital of England" and articles.topics["London"] == "Geography"
    assert (articles.report.read, articles.report.kept, dict(articles.report.by_kind)) == (8, 7, {"empty_text": 1})
    record = json.loads((tmp_path / "q.jsonl").read_text())
    assert record["raw"]["id"] == "Blank" and record["kind"] == "empty_text"


def test_query_sentence_prefers_a_later_sentence_with_content():
    import random

    doc = Document(id="x", title="X", text="X is a thing with many words here. Short one. It was made by people in some old town.")
    assert {query_sentence(doc, random.Random(s)) for s in range(20)} == {"It was made by people in some old town."}
    only_first = Document(id="y", title="Y", text="Y is a thing with many words here. Tiny.")
    assert query_sentence(only_first, random.Random(0)) == "Y is a thing with many words here."
    short = Document(id="z", title="Z", text="Z is.")
    assert query_sentence(short, random.Random(0)) == "Z is."


def test_ict_examples_are_deterministic_and_well_formed():
    articles = vital_articles(ARTICLES)
    rows = ict_examples(articles, seed=0)
    assert rows == ict_examples(vital_articles(ARTICLES), seed=0)
    assert len(rows) == 7 and len({r["id"] for r in rows}) == 7

    ada = next(r for r in rows if r["positives"] == [["Ada Lovelace"]])
    assert ada["messages"] == [
        {"role": "user", "content": "She wrote the first published algorithm for the Analytical Engine."},
        {"role": "assistant", "content": "[RQ] Ada Lovelace."},
    ]
    dc = next(r for r in rows if r["positives"] == [["Washington, D.C."]])
    assert dc["messages"][1]["content"] == "[RQ] Washington, D.C."
    for row in rows:
        Example.model_validate(row)
        (doc_id,), = row["positives"]
        for (negative,) in row["negatives"]:
            assert negative != doc_id and articles.topics[negative] == articles.topics[doc_id]
    # "Analytical Engine" is alone in its topic once "Blank" is quarantined: no negative to give.
    assert next(r for r in rows if r["positives"] == [["Analytical Engine"]])["negatives"] == []


def test_ict_limit_takes_a_seeded_sample():
    articles = vital_articles(ARTICLES)
    three = ict_examples(articles, limit=3, seed=1)
    assert len(three) == 3 and three == ict_examples(articles, limit=3, seed=1)
    order = [d.id for d in articles.documents]
    positions = [order.index(r["positives"][0][0]) for r in three]
    assert positions == sorted(positions)  # corpus order


def synthetic_articles(n: int) -> dict[str, dict]:
    """`n` articles of three sentences each, in ten topics."""
    return {
        f"Thing {i}": {
            "title": f"Thing {i}",
            "extract": f"Thing {i} is an object with a long history. It was made in the year {1000 + i} by many "
                       f"people. Its weight is {i} kilograms on a good day.",
            "description": "", "topic": f"Topic {i % 10}",
        }
        for i in range(n)
    }


def test_ict_cuts_the_query_sentence_out_of_about_90_percent_of_the_articles():
    articles = vital_articles(synthetic_articles(500))
    rows = ict_examples(articles, seed=0)
    redacted = [r for r in rows if r["redact"]]
    print(f"{len(redacted)} of {len(rows)} ICT rows redacted")
    assert 0.85 < len(redacted) / len(rows) < 0.95
    assert all(r["redact"] == [r["messages"][0]["content"]] for r in redacted)  # the query sentence itself
    assert all(r["redact"] == [] for r in rows if r not in redacted)
    # Seeded and stable per article: a sample makes the same choice for each of its articles.
    by_id = {r["id"]: r for r in rows}
    assert all(r == by_id[r["id"]] for r in ict_examples(articles, limit=50, seed=0))
    assert not any(r["redact"] for r in ict_examples(articles, seed=0, redact_rate=0.0))


def test_an_ict_row_neither_inserts_nor_embeds_its_query_sentence(tokenizer):
    from components.data.corpus import Corpus
    from components.data.tokenize import Formatter
    from components.tokens import add_tokens_to_tokenizer

    add_tokens_to_tokenizer(tokenizer)
    formatter = Formatter(tokenizer)
    articles = vital_articles(ARTICLES)
    corpus = Corpus(articles.documents)
    rows = {r["positives"][0][0]: r for r in ict_examples(articles, seed=0, redact_rate=1.0)}
    sentence = "She wrote the first published algorithm for the Analytical Engine."
    assert rows["Ada Lovelace"]["redact"] == [sentence]
    assert rows["Alan Turing"]["redact"] == []  # its only sentence: cut, nothing would be left

    enc = formatter.example(Example.model_validate(rows["Ada Lovelace"]), corpus, 512)
    inner = formatter.text(f" {sentence}")[1:]  # the sentence's tokens as they occur inside the text

    def contains(tokens: list[int]) -> bool:
        return any(tokens[i : i + len(inner)] == inner for i in range(len(tokens)))

    (positive,) = enc.positives[0]
    assert not contains(enc.doc_input_ids[positive])  # the document row embedded for the loss
    (q,) = enc.query_positions
    assert contains(enc.input_ids[:q]) and not contains(enc.input_ids[q:])  # asked in the prompt, not inserted after [RQ]
    assert sentence in corpus["Ada Lovelace"].text and contains(formatter.document(corpus["Ada Lovelace"]))  # the index keeps it


# --- split and build ------------------------------------------------------------------------------

def test_split_is_a_stable_function_of_the_id():
    ids = [f"{i:016x}" for i in range(2000)]
    dev = [q for q in ids if split_of(q, 0.5) == "dev"]
    assert dev == [q for q in ids if split_of(q, 0.5) == "dev"]
    assert 0.45 < len(dev) / len(ids) < 0.55
    assert all(split_of(q, 0.0) == "train" for q in ids) and all(split_of(q, 1.0) == "dev" for q in ids)
    # Growing dev only moves questions into dev: a smaller dev is a subset of a larger one.
    assert set(q for q in ids if split_of(q, 0.2) == "dev") <= set(dev)


def _build(out: Path, **kwargs):
    return build_datasets(out, BuildConfig(**kwargs), summaries=ARTICLES, questions=QUESTIONS, miner=FirstOthers(kept_ids()))


@pytest.mark.timeout(60)
def test_build_writes_clean_files_and_counts_them(tmp_path):
    report = _build(tmp_path, dev_fraction=0.5)

    corpus, corpus_report = load_corpus(tmp_path / "corpus.jsonl")
    assert corpus.ids == kept_ids() and corpus_report.quarantined == 0
    read = {}
    for name in ("train", "dev", "fanoutqa_train", "fanoutqa_dev", "leaves_train", "ict_train"):
        screen = ScreenReport(source=name)
        read[name] = list(iter_examples(tmp_path / f"{name}.jsonl", corpus, screen))
        assert screen.quarantined == 0, name
    ids = {name: {e.id for e in examples} for name, examples in read.items()}
    assert ids["train"] == ids["fanoutqa_train"] | ids["leaves_train"] | ids["ict_train"] and ids["dev"] == ids["fanoutqa_dev"]
    # Each in-corpus leaf of a training question is asked alone; a dev question's leaves never are.
    assert ids["leaves_train"] == {f"q-nested-leaf{n}" for n in range(4)} and ids["fanoutqa_train"] == {"q-nested"}
    first = next(e for e in read["leaves_train"] if e.id == "q-nested-leaf0")
    assert first.prompt[0].content == "Who wrote the first algorithm?" and first.positives == [["Ada Lovelace"]]
    assert first.answer == "Who wrote the first algorithm?[RQ] Ada Lovelace."
    assert ids["fanoutqa_train"] | ids["fanoutqa_dev"] == {"q-nested", "q-dc"}
    assert not ids["train"] & ids["dev"]
    for e in read["fanoutqa_train"] + read["fanoutqa_dev"]:
        assert split_of(e.id, 0.5) == ("dev" if e.id in ids["dev"] else "train")

    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["sources"]["vital_articles"] == {"read": 8, "kept": 7, "quarantined": 1, "by_kind": {"empty_text": 1}}
    assert stats["sources"]["fanoutqa"]["kept"] == 2 and stats["sources"]["ict"]["kept"] == 7
    fanout_hops = stats["files"]["fanoutqa_train.jsonl"]["hops"] + stats["files"]["fanoutqa_dev.jsonl"]["hops"]
    assert fanout_hops == 5  # 4 in-corpus leaves of q-nested + 1 of q-dc
    assert stats["sources"]["fanoutqa_leaves"]["kept"] == 5
    assert stats["splits"]["train"]["examples"] + stats["splits"]["dev"]["examples"] == 13
    assert stats["config"] == BuildConfig(dev_fraction=0.5).model_dump()
    # The one quarantined row is the blank article, with its reason.
    (record,) = [json.loads(line) for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert record["kind"] == "empty_text" and record["raw"]["id"] == "Blank"
    assert "summaries_en-us.json: read 8 = kept 7 + quarantined 1 (empty_text=1)" in report.summary()
    assert "train.jsonl: read 12 = kept 12 + quarantined 0, 15 [RQ]" in report.summary()


@pytest.mark.timeout(60)
def test_a_corpus_sample_is_random_and_fanoutqa_keeps_only_its_pages(tmp_path):
    report = _build(tmp_path / "a", corpus_sample=4, seed=1)
    corpus, _ = load_corpus(tmp_path / "a" / "corpus.jsonl")
    assert len(corpus) == 4 and set(corpus.ids) < set(kept_ids())
    assert _build(tmp_path / "b", corpus_sample=4, seed=1) and load_corpus(tmp_path / "b" / "corpus.jsonl")[0].ids == corpus.ids
    for name in ("fanoutqa_train", "fanoutqa_dev", "leaves_train"):
        for example in iter_examples(tmp_path / "a" / f"{name}.jsonl", corpus, ScreenReport(source=name)):
            assert all(ids[0] in corpus for ids in example.positives)
    assert report.sources["vital_articles"].kept == 7  # the screening still counts every article read


@pytest.mark.timeout(60)
def test_build_is_deterministic(tmp_path):
    _build(tmp_path / "a", seed=3)
    _build(tmp_path / "b", seed=3)
    for name in ("corpus.jsonl", "train.jsonl", "dev.jsonl", "quarantine.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_build_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError):
        _build(tmp_path, dev_fraction=1.5)
    with pytest.raises(ValueError):
        _build(tmp_path, negatives=-1)


# --- the real sources -----------------------------------------------------------------------------

@pytest.fixture
def minilm_cache(request, tmp_path):
    """Embedding the 10,033 articles takes 30-100 s on 2 cores; the build caches the matrix keyed by
    exactly what was embedded, so the matrix a previous run made is handed to this one (a stale
    one is ignored by the build) and saved for the next."""
    from components.retrieval.minilm import MATRIX_FILE, MATRIX_META

    cache = getattr(request.config, "cache", None)  # None under `-p no:cacheprovider`
    if cache is None:
        yield tmp_path
        return
    keep = cache.mkdir("minilm_corpus")
    for name in (MATRIX_FILE, MATRIX_META):
        if (keep / name).is_file():
            shutil.copy(keep / name, tmp_path / name)
    yield tmp_path
    for name in (MATRIX_FILE, MATRIX_META):
        if (tmp_path / name).is_file():
            shutil.copy(tmp_path / name, keep / name)


@pytest.mark.real_model
@pytest.mark.timeout(300)  # ~15 s with a cached MiniLM matrix; the first run embeds (30-100 s)
def test_build_from_the_installed_packages(minilm_cache):
    tmp_path = minilm_cache
    report = build_datasets(tmp_path, BuildConfig(ict_limit=20))

    corpus, corpus_report = load_corpus(tmp_path / "corpus.jsonl")
    assert len(corpus) == report.sources["vital_articles"].kept == 10_033 and corpus_report.quarantined == 0
    hops = {}
    for name in ("train", "dev", "fanoutqa_train", "fanoutqa_dev", "ict_train"):
        screen = ScreenReport(source=name)
        examples = list(iter_examples(tmp_path / f"{name}.jsonl", corpus, screen))
        assert screen.quarantined == 0 and screen.kept == len(examples) > 0, name
        hops[name] = sum(len(e.positives) for e in examples)
        assert all(len(neg) == 3 for e in examples if not e.id.startswith("ict-") for neg in e.negatives)
    assert hops["fanoutqa_train"] + hops["fanoutqa_dev"] == 558  # every in-corpus leaf of FanOutQA dev
    assert report.files["ict_train.jsonl"].screen.kept == 20
    assert not (tmp_path / "quarantine.jsonl").exists()
    assert np.load(tmp_path / "minilm_corpus.npy").shape == (10_033, 384)
