"""Inverse cloze: a sentence as the query, its article (most often without that sentence) as the positive."""

from __future__ import annotations

from components.data.schema import Document, Example
from components.datasets.inverse_cloze import ict_examples, query_sentence
from components.datasets.vital_articles import vital_articles
from tests.components.datasets.samples import ARTICLES, synthetic_articles


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
        {"role": "assistant", "content": "She wrote the first published algorithm for the Analytical Engine.[RQ] Ada Lovelace."},
    ]
    dc = next(r for r in rows if r["positives"] == [["Washington, D.C."]])
    assert dc["messages"][1]["content"] == f"{dc['messages'][0]['content']}[RQ] Washington, D.C."
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
